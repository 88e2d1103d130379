//! The `k8s` interface: the plugin's Kubernetes calls.
//!
//! The capability checks what it can without a backend (sizes) and hands
//! every call to a [`K8sBackend`]. The engine works with any backend: the
//! real one talks to an API server; [`NoCluster`] answers `unavailable`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::engine::HostState;
use crate::engine::bindings::k8s as wit;
use crate::engine::bindings::types::ResourceType as WitResourceType;
use crate::metadata::Verb;

/// Largest object or patch a plugin may send, the API server's own limit.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// A resource type as the plugin names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural, as in URLs.
    pub plural: String,
    /// Whether objects are namespaced.
    pub namespaced: bool,
}

impl ResourceType {
    /// `group/version/kind`, with `core` for the core group: the bounded
    /// `k8s.resource` span attribute.
    pub fn gvk(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("{group}/{}/{}", self.version, self.kind)
    }

    pub(crate) fn from_wit(r: WitResourceType) -> Self {
        ResourceType {
            group: r.group,
            version: r.version,
            kind: r.kind,
            plural: r.plural,
            namespaced: r.namespaced,
        }
    }
}

/// What a plugin asks the API to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum K8sOp {
    /// Read one object.
    Get,
    /// List objects.
    List(ListOptions),
    /// Create an object from JSON.
    Create {
        /// The object.
        body: String,
    },
    /// Server-side apply.
    Apply {
        /// The (partial) object.
        body: String,
        /// Take over conflicting fields.
        force: bool,
    },
    /// JSON merge patch.
    MergePatch {
        /// The patch.
        body: String,
    },
    /// JSON patch.
    JsonPatch {
        /// The patch.
        body: String,
    },
    /// Replace (`PUT`).
    Replace {
        /// The object.
        body: String,
    },
    /// Delete.
    Delete {
        /// Propagation policy of dependents.
        propagation: Option<Propagation>,
    },
}

impl K8sOp {
    /// The verb, as in span names (`k8s.<verb>`).
    pub fn verb(&self) -> &'static str {
        match self {
            K8sOp::Get => "get",
            K8sOp::List(_) => "list",
            K8sOp::Create { .. } => "create",
            K8sOp::Apply { .. } => "apply",
            K8sOp::MergePatch { .. } | K8sOp::JsonPatch { .. } => "patch",
            K8sOp::Replace { .. } => "replace",
            K8sOp::Delete { .. } => "delete",
        }
    }

    fn body_len(&self) -> usize {
        match self {
            K8sOp::Create { body }
            | K8sOp::Apply { body, .. }
            | K8sOp::MergePatch { body }
            | K8sOp::JsonPatch { body }
            | K8sOp::Replace { body } => body.len(),
            K8sOp::Get | K8sOp::List(_) | K8sOp::Delete { .. } => 0,
        }
    }
}

/// Options of a list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Label selector.
    pub label_selector: Option<String>,
    /// Field selector.
    pub field_selector: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Continue token.
    pub continue_token: Option<String>,
}

/// Propagation policy of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents in the background.
    Background,
    /// Dependents first.
    Foreground,
    /// Dependents stay.
    Orphan,
}

/// One Kubernetes call from a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sCall {
    /// The resource type.
    pub resource: ResourceType,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name; `None` for list and create.
    pub name: Option<String>,
    /// True for the `status` subresource.
    pub status: bool,
    /// What to do.
    pub op: K8sOp,
}

impl K8sCall {
    /// The span name of this call: `k8s.get`, `k8s.patch_status`, ...
    pub fn span_name(&self) -> &'static str {
        match (self.op.verb(), self.status) {
            ("get", false) => "k8s.get",
            ("get", true) => "k8s.get_status",
            ("list", _) => "k8s.list",
            ("create", _) => "k8s.create",
            ("apply", false) => "k8s.apply",
            ("apply", true) => "k8s.apply_status",
            ("patch", false) => "k8s.patch",
            ("patch", true) => "k8s.patch_status",
            ("replace", false) => "k8s.replace",
            ("replace", true) => "k8s.replace_status",
            _ => "k8s.delete",
        }
    }
}

/// The class of a failed call, as the plugin sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum K8sErrorKind {
    /// 404.
    NotFound,
    /// 409.
    Conflict,
    /// 403, or outside the grant.
    Forbidden,
    /// 400 or 422.
    Invalid,
    /// 429, 5xx or unreachable, after retries.
    Unavailable,
    /// Anything else.
    Other,
}

impl K8sErrorKind {
    /// The class of an HTTP status code.
    pub fn from_code(code: u16) -> Self {
        match code {
            404 => K8sErrorKind::NotFound,
            409 => K8sErrorKind::Conflict,
            401 | 403 => K8sErrorKind::Forbidden,
            400 | 413 | 415 | 422 => K8sErrorKind::Invalid,
            429 | 500..=599 => K8sErrorKind::Unavailable,
            _ => K8sErrorKind::Other,
        }
    }
}

/// A failed Kubernetes call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sError {
    /// Class.
    pub kind: K8sErrorKind,
    /// HTTP status code (0 when no response arrived).
    pub code: u16,
    /// The API's reason (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// Message for people.
    pub message: String,
    /// Answered from the host's cache (a not-found there is a read that
    /// sent no request, and counts as a cache read).
    pub from_cache: bool,
}

impl K8sError {
    /// An error of class `kind`.
    pub fn new(
        kind: K8sErrorKind,
        code: u16,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        K8sError {
            kind,
            code,
            reason: reason.into(),
            message: message.into(),
            from_cache: false,
        }
    }

    /// The same error, answered from the host's cache.
    pub fn in_cache(mut self) -> Self {
        self.from_cache = true;
        self
    }

    fn into_wit(self) -> wit::Error {
        let status = wit::ApiStatus {
            code: self.code,
            reason: self.reason,
            message: self.message,
        };
        match self.kind {
            K8sErrorKind::NotFound => wit::Error::NotFound(status),
            K8sErrorKind::Conflict => wit::Error::Conflict(status),
            K8sErrorKind::Forbidden => wit::Error::Forbidden(status),
            K8sErrorKind::Invalid => wit::Error::Invalid(status),
            K8sErrorKind::Unavailable => wit::Error::Unavailable(status),
            K8sErrorKind::Other => wit::Error::Other(status),
        }
    }
}

impl fmt::Display for K8sError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for K8sError {}

/// What a backend gets besides the call.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The OpenTelemetry context of the plugin's current span: a backend
    /// that reaches the API server starts its `k8s.<verb>` span from it.
    pub otel: opentelemetry::Context,
    /// When the reconcile's deadline passes: retries stop before it.
    pub deadline: std::time::Instant,
}

/// A backend's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sResponse {
    /// The object (or list) as JSON; `None` only for a delete that completed.
    pub body: Option<String>,
    /// True when served from a local cache (no request, no span).
    pub from_cache: bool,
}

impl K8sResponse {
    /// An answer from the API server.
    pub fn remote(body: Option<String>) -> Self {
        K8sResponse {
            body,
            from_cache: false,
        }
    }
}

/// Serves a plugin's Kubernetes calls.
#[async_trait]
pub trait K8sBackend: Send + Sync + 'static {
    /// Perform one call.
    async fn call(&self, call: K8sCall, cx: &CallContext) -> Result<K8sResponse, K8sError>;
}

/// The backend of a host with no Kubernetes API: every call is `unavailable`.
#[derive(Clone, Debug, Default)]
pub struct NoCluster;

#[async_trait]
impl K8sBackend for NoCluster {
    async fn call(&self, call: K8sCall, _cx: &CallContext) -> Result<K8sResponse, K8sError> {
        Err(K8sError::new(
            K8sErrorKind::Unavailable,
            503,
            "ServiceUnavailable",
            format!(
                "{} of {} refused: this host runs without a Kubernetes API (use `reconcile-host dev` or `run`)",
                call.span_name(),
                call.resource.gvk()
            ),
        ))
    }
}

/// Shared handle to a backend.
pub type SharedBackend = Arc<dyn K8sBackend>;

impl K8sCall {
    /// The RBAC verb the call needs.
    pub fn rbac_verb(&self) -> Verb {
        match self.op {
            K8sOp::Get => Verb::Get,
            K8sOp::List(_) => Verb::List,
            K8sOp::Create { .. } => Verb::Create,
            K8sOp::Apply { .. } | K8sOp::MergePatch { .. } | K8sOp::JsonPatch { .. } => Verb::Patch,
            K8sOp::Replace { .. } => Verb::Update,
            K8sOp::Delete { .. } => Verb::Delete,
        }
    }
}

/// Whether `s` can stand as one segment of a request path: the grant check
/// reads the call's fields, so they must mean the same thing in the URL.
fn path_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| matches!(c, '/' | '%' | '?' | '#') || c.is_whitespace() || c.is_control())
}

/// Checks the parts of a call that end up in the request path.
fn check_path(call: &K8sCall) -> Result<(), String> {
    let r = &call.resource;
    if !path_segment(&r.version) || !path_segment(&r.plural) || !path_segment(&r.kind) {
        return Err(format!(
            "resource type {} / {:?} is not a valid type name",
            r.gvk(),
            r.plural
        ));
    }
    if !r.group.is_empty() && !path_segment(&r.group) {
        return Err(format!("API group {:?} is not a valid group name", r.group));
    }
    if let Some(ns) = &call.namespace
        && !reconcile_apiserver::validation::is_label(ns)
    {
        return Err(format!(
            "namespace {ns:?} is not a valid namespace name (a DNS label)"
        ));
    }
    if let Some(name) = &call.name
        && !path_segment(name)
    {
        return Err(format!(
            "object name {name:?} is not a valid name (1-253 characters, no '/', '%', '?', '#' or spaces)"
        ));
    }
    Ok(())
}

impl HostState {
    async fn k8s_call(&mut self, call: K8sCall) -> Result<Option<String>, wit::Error> {
        let size = call.op.body_len();
        if size > MAX_REQUEST_BYTES {
            return Err(K8sError::new(
                K8sErrorKind::Invalid,
                413,
                "RequestEntityTooLarge",
                format!(
                    "{} body is {size} bytes; the limit is {MAX_REQUEST_BYTES}",
                    call.span_name()
                ),
            )
            .into_wit());
        }
        if let Err(message) = check_path(&call) {
            return Err(K8sError::new(
                K8sErrorKind::Invalid,
                400,
                "BadRequest",
                format!("{}: {message}; nothing was sent", call.span_name()),
            )
            .into_wit());
        }
        if let Some(grant) = &self.grant
            && !grant.allows(&call.resource, call.rbac_verb(), call.namespace.as_deref())
        {
            self.metrics.host_call(
                &self.log.plugin,
                "k8s",
                call.op.verb(),
                crate::metrics::CallOutcome::AccessDenied,
            );
            let verb = call.rbac_verb();
            let namespace = call.namespace.clone().unwrap_or_default();
            self.trace.access_denied(
                &call.resource.gvk(),
                &verb.to_string(),
                &namespace,
                call.name.as_deref(),
            );
            let place = if namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {namespace}")
            };
            return Err(K8sError::new(
                K8sErrorKind::Forbidden,
                403,
                "Forbidden",
                format!(
                    "{verb} on {}{place} is not in the plugin's grant ({}); nothing was sent",
                    call.resource.gvk(),
                    grant.source
                ),
            )
            .into_wit());
        }
        let cx = CallContext {
            otel: self.trace.current_context(),
            deadline: self.deadline,
        };
        let backend = self.k8s.clone();
        let verb = call.op.verb();
        let result = backend.call(call, &cx).await;
        let outcome = match &result {
            Ok(_) => crate::metrics::CallOutcome::Ok,
            Err(e) if e.kind == K8sErrorKind::Forbidden => {
                crate::metrics::CallOutcome::AccessDenied
            }
            Err(_) => crate::metrics::CallOutcome::Error,
        };
        self.metrics
            .host_call(&self.log.plugin, "k8s", verb, outcome);
        match result {
            Ok(response) => {
                if response.from_cache {
                    self.cache_reads += 1;
                }
                Ok(response.body)
            }
            Err(e) => {
                if e.from_cache {
                    self.cache_reads += 1;
                }
                Err(e.into_wit())
            }
        }
    }

    async fn k8s_object(&mut self, call: K8sCall) -> wasmtime::Result<Result<String, wit::Error>> {
        let verb = call.span_name();
        Ok(match self.k8s_call(call).await {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(K8sError::new(
                K8sErrorKind::Other,
                500,
                "InternalError",
                format!("{verb}: the backend returned no object"),
            )
            .into_wit()),
            Err(e) => Err(e),
        })
    }
}

fn call(
    resource: WitResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    op: K8sOp,
) -> K8sCall {
    K8sCall {
        resource: ResourceType::from_wit(resource),
        namespace,
        name,
        status,
        op,
    }
}

fn patch_op(body: wit::PatchBody) -> K8sOp {
    match body {
        wit::PatchBody::Merge(body) => K8sOp::MergePatch { body },
        wit::PatchBody::Json(body) => K8sOp::JsonPatch { body },
    }
}

impl wit::Host for HostState {
    async fn get(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(resource, namespace, Some(name), false, K8sOp::Get))
            .await
    }

    async fn list(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        options: wit::ListOptions,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        let options = ListOptions {
            label_selector: options.label_selector,
            field_selector: options.field_selector,
            limit: options.limit,
            continue_token: options.continue_token,
        };
        self.k8s_object(call(resource, namespace, None, false, K8sOp::List(options)))
            .await
    }

    async fn create(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        object: String,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(
            resource,
            namespace,
            None,
            false,
            K8sOp::Create { body: object },
        ))
        .await
    }

    async fn apply(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        object: String,
        force: bool,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(
            resource,
            namespace,
            Some(name),
            false,
            K8sOp::Apply {
                body: object,
                force,
            },
        ))
        .await
    }

    async fn patch(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        body: wit::PatchBody,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(resource, namespace, Some(name), false, patch_op(body)))
            .await
    }

    async fn replace(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        object: String,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(
            resource,
            namespace,
            Some(name),
            false,
            K8sOp::Replace { body: object },
        ))
        .await
    }

    async fn delete(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        propagation: Option<wit::Propagation>,
    ) -> wasmtime::Result<Result<Option<String>, wit::Error>> {
        let propagation = propagation.map(|p| match p {
            wit::Propagation::Background => Propagation::Background,
            wit::Propagation::Foreground => Propagation::Foreground,
            wit::Propagation::Orphan => Propagation::Orphan,
        });
        Ok(self
            .k8s_call(call(
                resource,
                namespace,
                Some(name),
                false,
                K8sOp::Delete { propagation },
            ))
            .await)
    }

    async fn get_status(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(resource, namespace, Some(name), true, K8sOp::Get))
            .await
    }

    async fn apply_status(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        object: String,
        force: bool,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(
            resource,
            namespace,
            Some(name),
            true,
            K8sOp::Apply {
                body: object,
                force,
            },
        ))
        .await
    }

    async fn patch_status(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        body: wit::PatchBody,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(resource, namespace, Some(name), true, patch_op(body)))
            .await
    }

    async fn replace_status(
        &mut self,
        resource: WitResourceType,
        namespace: Option<String>,
        name: String,
        object: String,
    ) -> wasmtime::Result<Result<String, wit::Error>> {
        self.k8s_object(call(
            resource,
            namespace,
            Some(name),
            true,
            K8sOp::Replace { body: object },
        ))
        .await
    }
}
