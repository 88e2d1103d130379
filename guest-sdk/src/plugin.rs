//! The plugin side of the contract: what a plugin says about itself
//! ([`Metadata`]), what it receives ([`Request`]) and what it returns
//! ([`Action`] or [`Error`]).

use std::fmt;

use kube_core::Resource;
use serde::de::DeserializeOwned;

use crate::bindings::reconcile::plugin::types as wit;
use crate::k8s::{self, ResourceType};

/// A plugin's reconcile logic. Export it with [`plugin!`](crate::plugin!).
pub trait Reconciler {
    /// Describe the plugin. Called once when the host loads it.
    fn metadata() -> Metadata;

    /// Reconcile one object. Each call runs in a fresh instance: keep no
    /// state between calls except what is stored in Kubernetes.
    fn reconcile(request: Request) -> Result<Action>;
}

/// The result type of [`Reconciler::reconcile`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Kubernetes API verb a plugin asks for (named as in RBAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// Read one object.
    Get,
    /// List objects.
    List,
    /// Watch objects.
    Watch,
    /// Create objects.
    Create,
    /// Replace objects.
    Update,
    /// Patch objects, server-side apply included.
    Patch,
    /// Delete objects.
    Delete,
}

impl Verb {
    fn into_wit(self) -> wit::Verb {
        match self {
            Verb::Get => wit::Verb::Get,
            Verb::List => wit::Verb::List,
            Verb::Watch => wit::Verb::Watch,
            Verb::Create => wit::Verb::Create,
            Verb::Update => wit::Verb::Update,
            Verb::Patch => wit::Verb::Patch,
            Verb::Delete => wit::Verb::Delete,
        }
    }
}

/// What a plugin tells the host about itself: a builder.
///
/// ```
/// # use reconcile_sdk::prelude::*;
/// use reconcile_sdk::k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
/// let metadata = Metadata::new("web", "1.2.0")
///     .reconciles::<ConfigMap>()
///     .owns::<Deployment>()
///     .access::<Deployment>(&[Verb::Patch])
///     .finalizer("web.example.com/cleanup");
/// ```
#[derive(Clone, Debug)]
pub struct Metadata {
    name: String,
    version: String,
    primary: Option<ResourceType>,
    owns: Vec<ResourceType>,
    access: Vec<(ResourceType, Vec<Verb>)>,
    http_hosts: Vec<String>,
    finalizer: Option<String>,
    selector: Option<String>,
    field_manager: Option<String>,
}

/// Verbs a reconciled or owned type needs so that the host can watch it.
const WATCH_VERBS: [Verb; 3] = [Verb::Get, Verb::List, Verb::Watch];

impl Metadata {
    /// A plugin named `name` (lower-case, digits and `-`) at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            version: version.into(),
            primary: None,
            owns: Vec::new(),
            access: Vec::new(),
            http_hosts: Vec::new(),
            finalizer: None,
            selector: None,
            field_manager: None,
        }
    }

    /// The resource type the plugin reconciles; asks for get, list and watch on it.
    pub fn reconciles<K: Resource<DynamicType = ()>>(self) -> Self
    where
        K::Scope: k8s::Scope,
    {
        self.reconciles_type(ResourceType::of::<K>())
    }

    /// Like [`reconciles`](Self::reconciles), for a type known at run time.
    pub fn reconciles_type(mut self, resource: ResourceType) -> Self {
        self = self.access_type(resource.clone(), &WATCH_VERBS);
        self.primary = Some(resource);
        self
    }

    /// A resource type whose objects the plugin owns; asks for get, list and watch on it.
    pub fn owns<K: Resource<DynamicType = ()>>(self) -> Self
    where
        K::Scope: k8s::Scope,
    {
        self.owns_type(ResourceType::of::<K>())
    }

    /// Like [`owns`](Self::owns), for a type known at run time.
    pub fn owns_type(mut self, resource: ResourceType) -> Self {
        self = self.access_type(resource.clone(), &WATCH_VERBS);
        self.owns.push(resource);
        self
    }

    /// Ask for `verbs` on resource type `K`.
    pub fn access<K: Resource<DynamicType = ()>>(self, verbs: &[Verb]) -> Self
    where
        K::Scope: k8s::Scope,
    {
        self.access_type(ResourceType::of::<K>(), verbs)
    }

    /// Like [`access`](Self::access), for a type known at run time.
    pub fn access_type(mut self, resource: ResourceType, verbs: &[Verb]) -> Self {
        match self.access.iter_mut().find(|(r, _)| r.same_type(&resource)) {
            Some((_, existing)) => {
                existing.extend_from_slice(verbs);
                existing.sort();
                existing.dedup();
            }
            None => {
                let mut verbs = verbs.to_vec();
                verbs.sort();
                verbs.dedup();
                self.access.push((resource, verbs));
            }
        }
        self
    }

    /// Ask to record Events (`events.k8s.io/v1`), for
    /// [`events::record`](crate::events::record): `get`, `create`, `patch`
    /// and `delete`, so that repeats are counted on one Event.
    pub fn records_events(self) -> Self {
        self.access_type(
            crate::events::event_type(),
            &[Verb::Get, Verb::Create, Verb::Patch, Verb::Delete],
        )
    }

    /// Ask to make HTTP requests to `endpoint`: `scheme://host[:port]`,
    /// where the host is a name, `*.suffix` (any name under it), `*` (any
    /// name) or an IP address; without a scheme, `https`. Requests through
    /// [`http`](crate::http) (or any `wasi:http` client) reach only what
    /// the operator's grant allows, and this must be within it.
    pub fn http_host(mut self, endpoint: impl Into<String>) -> Self {
        self.http_hosts.push(endpoint.into());
        self
    }

    /// Have the host watch only the primary objects that match a label
    /// selector (`app=web,tier!=db`): the plugin is not woken for the
    /// others. Cannot be combined with [`finalizer`](Self::finalizer).
    pub fn selector(mut self, selector: impl Into<String>) -> Self {
        self.selector = Some(selector.into());
        self
    }

    /// The field manager of the plugin's writes (by default its name).
    pub fn field_manager(mut self, manager: impl Into<String>) -> Self {
        self.field_manager = Some(manager.into());
        self
    }

    /// Have the host manage this finalizer: added before the first
    /// reconcile, removed once a [`Reason::Deleting`] reconcile returns
    /// [`Action::Done`].
    pub fn finalizer(mut self, finalizer: impl Into<String>) -> Self {
        self.finalizer = Some(finalizer.into());
        self
    }

    pub(crate) fn into_wit(self) -> wit::PluginMetadata {
        // A plugin without a primary type is refused by the host at load;
        // the empty type makes the message name the problem.
        let primary = self.primary.unwrap_or_else(|| ResourceType {
            group: String::new(),
            version: String::new(),
            kind: String::new(),
            plural: String::new(),
            namespaced: false,
        });
        wit::PluginMetadata {
            name: self.name,
            version: self.version,
            primary: primary.into_wit(),
            owns: self.owns.into_iter().map(ResourceType::into_wit).collect(),
            access: wit::AccessRequest {
                resources: self
                    .access
                    .into_iter()
                    .map(|(resource, verbs)| wit::ResourceAccess {
                        resource: resource.into_wit(),
                        verbs: verbs.into_iter().map(Verb::into_wit).collect(),
                    })
                    .collect(),
                http_hosts: self.http_hosts,
            },
            finalizer: self.finalizer,
            primary_selector: self.selector,
            field_manager: self.field_manager,
        }
    }
}

/// Why a reconcile was triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The object was created or changed.
    ObjectChanged,
    /// An object it owns changed.
    OwnedObjectChanged,
    /// The previous reconcile asked to be called again.
    Requeue,
    /// The previous reconcile failed.
    Retry,
    /// A new version of the plugin was loaded.
    PluginReloaded,
    /// The object is being deleted and the plugin's finalizer holds it.
    Deleting,
    /// Anything else, such as a periodic resync.
    Other,
}

/// One reconcile: which object, why, and the object itself.
#[derive(Clone, Debug)]
pub struct Request {
    group: String,
    version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    body: Option<String>,
    reason: Reason,
    attempt: u32,
    generation: Option<i64>,
}

impl Request {
    pub(crate) fn from_wit(request: wit::ReconcileRequest) -> Self {
        let reason = match request.reason {
            wit::Reason::ObjectChanged => Reason::ObjectChanged,
            wit::Reason::OwnedObjectChanged => Reason::OwnedObjectChanged,
            wit::Reason::Requeue => Reason::Requeue,
            wit::Reason::Retry => Reason::Retry,
            wit::Reason::PluginReloaded => Reason::PluginReloaded,
            wit::Reason::Deleting => Reason::Deleting,
            wit::Reason::Other => Reason::Other,
        };
        let object = request.object;
        Request {
            group: object.group,
            version: object.version,
            kind: object.kind,
            namespace: object.namespace,
            name: object.name,
            body: request.body,
            reason,
            attempt: request.attempt,
            generation: request.generation,
        }
    }

    /// Name of the object.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace of the object, for namespaced types.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// API group of the object (empty for the core group).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// API version of the object.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Kind of the object.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Why this reconcile happens.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// 1 on the first attempt, counting up while retries follow errors.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The object's `metadata.generation`, when it has one: compare it with
    /// `status.observedGeneration` to tell a spec change from a status one.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// The object as JSON, when it exists.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// The object decoded as `K`, or `None` when it no longer exists.
    pub fn object<K: DeserializeOwned>(&self) -> Result<Option<K>> {
        match &self.body {
            None => Ok(None),
            Some(body) => serde_json::from_str(body).map(Some).map_err(|e| {
                Error::permanent(format!(
                    "cannot decode the {} {}: {e}",
                    self.kind, self.name
                ))
            }),
        }
    }
}

/// What the host should do after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    Done,
    /// Reconcile again after this long.
    RequeueAfter(std::time::Duration),
}

impl Action {
    pub(crate) fn into_wit(self) -> wit::Action {
        match self {
            Action::Done => wit::Action::Done,
            Action::RequeueAfter(after) => {
                wit::Action::RequeueAfter(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Where an [`Error`] came from; the host records it as `error.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The plugin's own logic.
    Plugin,
    /// A Kubernetes API call.
    K8s,
    /// An outbound HTTP call.
    Http,
}

/// A failed reconcile. Retried with backoff unless made
/// [`permanent`](Error::permanent).
///
/// Kubernetes errors convert with `?`:
///
/// ```no_run
/// # use reconcile_sdk::prelude::*;
/// # use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
/// fn settings(ns: &str) -> Result<ConfigMap> {
///     Ok(Api::<ConfigMap>::namespaced(ns).get("settings")?)
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
    retry: bool,
    kind: ErrorKind,
}

impl Error {
    /// An error of the plugin's own logic, retried with backoff.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retry: true,
            kind: ErrorKind::Plugin,
        }
    }

    /// An error that retrying cannot fix until the object changes (an
    /// invalid spec, say): the host does not retry it.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            retry: false,
            kind: ErrorKind::Plugin,
        }
    }

    /// Set where the error came from.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host will retry.
    pub fn retry(&self) -> bool {
        self.retry
    }

    /// Where the error came from.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub(crate) fn into_wit(self) -> wit::ReconcileError {
        wit::ReconcileError {
            message: self.message,
            retry: self.retry,
            kind: match self.kind {
                ErrorKind::Plugin => wit::ErrorKind::Plugin,
                ErrorKind::K8s => wit::ErrorKind::K8s,
                ErrorKind::Http => wit::ErrorKind::Http,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<k8s::Error> for Error {
    fn from(error: k8s::Error) -> Self {
        // Invalid requests and denied access do not heal by retrying the
        // same call, but the object or the grant may change: retry anyway,
        // with backoff, as controller-runtime does.
        Error {
            message: error.to_string(),
            retry: true,
            kind: ErrorKind::K8s,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Error::new(format!("JSON: {error}"))
    }
}
