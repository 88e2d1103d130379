//! The Kubernetes API, served by the host: a typed client in the style of
//! kube-rs.
//!
//! Reads of the plugin's reconciled and owned types come from the host's
//! cache; other calls reach the API server as child spans of the reconcile.
//! Every call is checked against the plugin's grant first.
//!
//! ```no_run
//! use reconcile_sdk::k8s::{Api, Patch};
//! use reconcile_sdk::k8s_openapi::api::apps::v1::Deployment;
//!
//! # fn run() -> Result<(), reconcile_sdk::k8s::Error> {
//! let deployments = Api::<Deployment>::namespaced("default");
//! let web = deployments.get("web")?;
//! deployments.patch_status(
//!     "web",
//!     &Patch::Merge(serde_json::json!({"status": {"observedGeneration": 2}})),
//! )?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::marker::PhantomData;

use kube_core::{
    ApiResource, ClusterResourceScope, DynamicResourceScope, NamespaceResourceScope, ObjectList,
    Resource,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::reconcile::plugin::k8s as wit;
use crate::bindings::reconcile::plugin::types as wit_types;

/// A resource type: what the host needs to reach objects of a kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Lower-case plural, as in URLs.
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl ResourceType {
    /// The resource type of a statically typed resource, such as a
    /// k8s-openapi type or a kube `CustomResource`.
    pub fn of<K: Resource<DynamicType = ()>>() -> Self
    where
        K::Scope: Scope,
    {
        ResourceType {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            namespaced: <K::Scope as Scope>::NAMESPACED.unwrap_or(true),
        }
    }

    /// The resource type described by a kube [`ApiResource`].
    pub fn from_api_resource(resource: &ApiResource, namespaced: bool) -> Self {
        ResourceType {
            group: resource.group.clone(),
            version: resource.version.clone(),
            kind: resource.kind.clone(),
            plural: resource.plural.clone(),
            namespaced,
        }
    }

    /// The `apiVersion` of objects of this type (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn same_type(&self, other: &ResourceType) -> bool {
        self.group == other.group && self.version == other.version && self.kind == other.kind
    }

    pub(crate) fn into_wit(self) -> wit_types::ResourceType {
        wit_types::ResourceType {
            group: self.group,
            version: self.version,
            kind: self.kind,
            plural: self.plural,
            namespaced: self.namespaced,
        }
    }

    fn to_wit(&self) -> wit_types::ResourceType {
        self.clone().into_wit()
    }
}

/// Whether a kube resource scope is namespaced; implemented for the scopes
/// of k8s-openapi and kube.
pub trait Scope {
    /// `Some(true)` for namespaced, `Some(false)` for cluster-scoped, `None`
    /// when only known at run time.
    const NAMESPACED: Option<bool>;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: Option<bool> = Some(true);
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: Option<bool> = Some(false);
}

impl Scope for DynamicResourceScope {
    const NAMESPACED: Option<bool> = None;
}

/// Details of an error from the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiStatus {
    /// HTTP status code.
    pub code: u16,
    /// The API server's reason, such as `NotFound`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// A failed Kubernetes call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The object does not exist (404).
    NotFound(ApiStatus),
    /// A stale write, a taken name or a server-side apply conflict (409).
    Conflict(ApiStatus),
    /// Outside the plugin's grant, or refused by the API server (403).
    Forbidden(ApiStatus),
    /// An invalid object or request (400, 422).
    Invalid(ApiStatus),
    /// The API server could not be reached or kept failing (429, 5xx).
    Unavailable(ApiStatus),
    /// Any other status.
    Other(ApiStatus),
    /// The object could not be encoded as JSON.
    Encode(String),
    /// The host's answer could not be decoded as the expected type.
    Decode(String),
}

impl Error {
    /// The API status, for errors that came from the API or the host.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            Error::NotFound(s)
            | Error::Conflict(s)
            | Error::Forbidden(s)
            | Error::Invalid(s)
            | Error::Unavailable(s)
            | Error::Other(s) => Some(s),
            Error::Encode(_) | Error::Decode(_) => None,
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// True for [`Error::Forbidden`].
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Forbidden(_))
    }

    fn from_wit(error: wit::Error) -> Self {
        let status = |s: wit::ApiStatus| ApiStatus {
            code: s.code,
            reason: s.reason,
            message: s.message,
        };
        match error {
            wit::Error::NotFound(s) => Error::NotFound(status(s)),
            wit::Error::Conflict(s) => Error::Conflict(status(s)),
            wit::Error::Forbidden(s) => Error::Forbidden(status(s)),
            wit::Error::Invalid(s) => Error::Invalid(status(s)),
            wit::Error::Unavailable(s) => Error::Unavailable(status(s)),
            wit::Error::Other(s) => Error::Other(status(s)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Error::NotFound(_) => "not found",
            Error::Conflict(_) => "conflict",
            Error::Forbidden(_) => "forbidden",
            Error::Invalid(_) => "invalid",
            Error::Unavailable(_) => "unavailable",
            Error::Other(_) => "error",
            Error::Encode(message) => return write!(f, "cannot encode the object: {message}"),
            Error::Decode(message) => return write!(f, "cannot decode the answer: {message}"),
        };
        match self.status() {
            Some(s) => write!(f, "{what} ({} {}): {}", s.code, s.reason, s.message),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

/// Options of [`Api::list`].
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    /// Label selector, such as `app=web`.
    pub label_selector: Option<String>,
    /// Field selector, such as `metadata.name=web`.
    pub field_selector: Option<String>,
    /// Maximum number of objects.
    pub limit: Option<u32>,
    /// Continue token of a previous limited list.
    pub continue_token: Option<String>,
}

impl ListParams {
    /// Select by labels.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_owned());
        self
    }

    /// Select by fields.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_owned());
        self
    }

    /// Return at most `limit` objects.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// A patch body.
#[derive(Clone, Debug)]
pub enum Patch<P: Serialize> {
    /// A JSON merge patch (RFC 7386).
    Merge(P),
    /// A JSON patch (RFC 6902): a list of operations.
    Json(P),
}

/// How the dependents of a deleted object are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the object now, dependents in the background.
    Background,
    /// Delete dependents first.
    Foreground,
    /// Leave dependents in place.
    Orphan,
}

/// A typed client for one resource type, in one namespace or in all.
///
/// Built like kube's `Api`: [`Api::namespaced`], [`Api::all`], and
/// [`Api::namespaced_with`] / [`Api::all_with`] / [`Api::cluster_with`] for
/// dynamic objects.
#[derive(Clone, Debug)]
pub struct Api<K> {
    resource: ResourceType,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    /// Objects of `K` in namespace `ns`.
    pub fn namespaced(ns: &str) -> Self {
        Api {
            resource: ResourceType::of::<K>(),
            namespace: Some(ns.to_owned()),
            _kind: PhantomData,
        }
    }
}

impl<K> Api<K>
where
    K: Resource<DynamicType = ()>,
    K::Scope: Scope,
{
    /// Objects of `K` in all namespaces, or of a cluster-scoped `K`.
    pub fn all() -> Self {
        Api {
            resource: ResourceType::of::<K>(),
            namespace: None,
            _kind: PhantomData,
        }
    }
}

impl<K> Api<K>
where
    K: Resource<DynamicType = ApiResource>,
{
    /// Objects of a namespaced dynamic type in namespace `ns`.
    pub fn namespaced_with(ns: &str, resource: &ApiResource) -> Self {
        Api {
            resource: ResourceType::from_api_resource(resource, true),
            namespace: Some(ns.to_owned()),
            _kind: PhantomData,
        }
    }

    /// Objects of a namespaced dynamic type in all namespaces.
    pub fn all_with(resource: &ApiResource) -> Self {
        Api {
            resource: ResourceType::from_api_resource(resource, true),
            namespace: None,
            _kind: PhantomData,
        }
    }

    /// Objects of a cluster-scoped dynamic type.
    pub fn cluster_with(resource: &ApiResource) -> Self {
        Api {
            resource: ResourceType::from_api_resource(resource, false),
            namespace: None,
            _kind: PhantomData,
        }
    }
}

impl<K: DeserializeOwned> Api<K> {
    /// The resource type this client reaches.
    pub fn resource_type(&self) -> &ResourceType {
        &self.resource
    }

    /// The namespace, if the client is namespaced.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Read one object.
    pub fn get(&self, name: &str) -> Result<K, Error> {
        decode(wit::get(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
        ))
    }

    /// Read one object, `None` if it does not exist.
    pub fn get_opt(&self, name: &str) -> Result<Option<K>, Error> {
        match self.get(name) {
            Ok(object) => Ok(Some(object)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// List objects.
    pub fn list(&self, params: &ListParams) -> Result<ObjectList<K>, Error>
    where
        K: Clone,
    {
        let options = wit::ListOptions {
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            limit: params.limit,
            continue_token: params.continue_token.clone(),
        };
        decode(wit::list(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            &options,
        ))
    }

    /// Create an object.
    pub fn create(&self, object: &K) -> Result<K, Error>
    where
        K: Serialize,
    {
        let body = self.encode(object)?;
        decode(wit::create(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            &body,
        ))
    }

    /// Server-side apply an object, named by its `metadata.name`, with the
    /// plugin as field manager, forcing: fields another manager set (a
    /// `kubectl patch`, say) are taken back, as a controller is expected to
    /// do (`PatchParams::apply(..).force()` in kube-rs). See
    /// [`apply_without_force`](Self::apply_without_force) to be told instead.
    pub fn apply(&self, object: &K) -> Result<K, Error>
    where
        K: Serialize + Resource,
    {
        self.apply_object(object, true)
    }

    /// Server-side apply without forcing: fails with a
    /// [conflict](Error::is_conflict) when another manager owns a field the
    /// object sets to another value, and changes nothing.
    pub fn apply_without_force(&self, object: &K) -> Result<K, Error>
    where
        K: Serialize + Resource,
    {
        self.apply_object(object, false)
    }

    fn apply_object(&self, object: &K, force: bool) -> Result<K, Error>
    where
        K: Serialize + Resource,
    {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or_else(|| Error::Encode("apply needs metadata.name".to_owned()))?;
        self.apply_named(&name, object, force)
    }

    /// Server-side apply of any partial object (a `serde_json::Value`, say)
    /// under `name`.
    pub fn apply_named<P: Serialize>(
        &self,
        name: &str,
        object: &P,
        force: bool,
    ) -> Result<K, Error> {
        let body = self.encode(object)?;
        decode(wit::apply(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
            force,
        ))
    }

    /// Patch an object.
    pub fn patch<P: Serialize>(&self, name: &str, patch: &Patch<P>) -> Result<K, Error> {
        let body = encode_patch(patch)?;
        decode(wit::patch(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
        ))
    }

    /// Replace an object; it must carry the `resourceVersion` it was read at.
    pub fn replace(&self, name: &str, object: &K) -> Result<K, Error>
    where
        K: Serialize,
    {
        let body = self.encode(object)?;
        decode(wit::replace(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
        ))
    }

    /// Delete an object. Returns it while finalizers hold it, `None` once gone.
    pub fn delete(&self, name: &str) -> Result<Option<K>, Error> {
        self.delete_with(name, None)
    }

    /// Delete an object with a propagation policy for its dependents.
    pub fn delete_with(
        &self,
        name: &str,
        propagation: Option<Propagation>,
    ) -> Result<Option<K>, Error> {
        let propagation = propagation.map(|p| match p {
            Propagation::Background => wit::Propagation::Background,
            Propagation::Foreground => wit::Propagation::Foreground,
            Propagation::Orphan => wit::Propagation::Orphan,
        });
        match wit::delete(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            propagation,
        ) {
            Ok(Some(body)) => decode_str(&body).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::from_wit(e)),
        }
    }

    /// Read an object through its `status` subresource.
    pub fn get_status(&self, name: &str) -> Result<K, Error> {
        decode(wit::get_status(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
        ))
    }

    /// Server-side apply of the `status` subresource, from a partial object
    /// holding `apiVersion`, `kind` and `status` (added when missing).
    pub fn apply_status<P: Serialize>(
        &self,
        name: &str,
        object: &P,
        force: bool,
    ) -> Result<K, Error> {
        let body = self.encode(object)?;
        decode(wit::apply_status(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
            force,
        ))
    }

    /// Patch the `status` subresource.
    pub fn patch_status<P: Serialize>(&self, name: &str, patch: &Patch<P>) -> Result<K, Error> {
        let body = encode_patch(patch)?;
        decode(wit::patch_status(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
        ))
    }

    /// Replace the `status` subresource.
    pub fn replace_status(&self, name: &str, object: &K) -> Result<K, Error>
    where
        K: Serialize,
    {
        let body = self.encode(object)?;
        decode(wit::replace_status(
            &self.resource.to_wit(),
            self.namespace.as_deref(),
            name,
            &body,
        ))
    }

    /// Encodes an object, filling in `apiVersion` and `kind` when absent.
    fn encode<P: Serialize>(&self, object: &P) -> Result<String, Error> {
        let mut value = serde_json::to_value(object).map_err(|e| Error::Encode(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.entry("apiVersion")
                .or_insert_with(|| self.resource.api_version().into());
            map.entry("kind")
                .or_insert_with(|| self.resource.kind.clone().into());
        }
        serde_json::to_string(&value).map_err(|e| Error::Encode(e.to_string()))
    }
}

fn encode_patch<P: Serialize>(patch: &Patch<P>) -> Result<wit::PatchBody, Error> {
    let encode = |p: &P| serde_json::to_string(p).map_err(|e| Error::Encode(e.to_string()));
    Ok(match patch {
        Patch::Merge(p) => wit::PatchBody::Merge(encode(p)?),
        Patch::Json(p) => wit::PatchBody::Json(encode(p)?),
    })
}

fn decode<K: DeserializeOwned>(answer: Result<String, wit::Error>) -> Result<K, Error> {
    match answer {
        Ok(body) => decode_str(&body),
        Err(e) => Err(Error::from_wit(e)),
    }
}

fn decode_str<K: DeserializeOwned>(body: &str) -> Result<K, Error> {
    serde_json::from_str(body).map_err(|e| Error::Decode(e.to_string()))
}
