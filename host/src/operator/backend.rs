//! The `k8s` backend against a real API server.
//!
//! Reads of the plugin's primary and owned types come from the controller's
//! reflector stores: no request, no span, counted as cache reads. Every
//! other call goes to the API server inside a `k8s.<verb>` client span
//! (kind Client, bounded attributes, no object bodies) with the W3C
//! `traceparent` header; 429 and 5xx answers are retried (after the
//! server's `Retry-After`, if it asks for one) until the reconcile's
//! deadline before the plugin sees them.

use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    PropagationPolicy,
};
use kube::runtime::reflector::{ObjectRef, Store};
use opentelemetry::propagation::{Injector, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use reconcile_apiserver::convert;
use reconcile_apiserver::registry::{METADATA_FIELD_LABELS, ResourceDef};
use reconcile_apiserver::selectors::{FieldSelector, LabelSelector};
use serde_json::{Value, json};

use super::watch::Namespaces;
use crate::caps::k8s::{
    CallContext, K8sBackend, K8sCall, K8sError, K8sErrorKind, K8sOp, K8sResponse, Propagation,
    ResourceType,
};

/// group, version, kind.
type Gvk = (String, String, String);

/// A reflector store of one type, and what it serves.
#[derive(Clone)]
pub struct Cache {
    /// The type.
    pub resource: ApiResource,
    /// The store.
    pub store: Store<DynamicObject>,
    /// The namespaces it watches: reads elsewhere go to the API server.
    pub namespaces: Namespaces,
    /// Whether the store has listed once.
    pub ready: Ready,
    /// The label selector of the watch, if it is partial (a 0.2.0 plugin's
    /// `primary-selector`): then a miss or a list goes to the API server.
    pub selector: Option<String>,
}

/// Whether a reflector store has listed once, for any number of waiters.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the last of several
/// concurrent waiters (one oneshot receiver shared by all), so the host
/// keeps its own signal, set by the reflector stream's first `InitDone`.
#[derive(Clone, Debug)]
pub struct Ready(tokio::sync::watch::Receiver<bool>);

impl Ready {
    /// A signal and the setter its stream calls on `InitDone`.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Ready(rx))
    }

    /// Whether the store has listed once.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the store has listed; never if its stream ends first.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The backend of one plugin.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    field_manager: String,
    tracer: SdkTracer,
    caches: Vec<Cache>,
    /// group/version/kind -> (plural, namespaced), as the API server serves it.
    served: Arc<Mutex<HashMap<Gvk, (String, bool)>>>,
    /// Writes are refused once a lease this process holds has lapsed.
    fence: crate::lease::Ownership,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("field_manager", &self.field_manager)
            .finish_non_exhaustive()
    }
}

/// The `ApiResource` of a plugin's resource type.
pub fn api_resource(r: &ResourceType) -> ApiResource {
    let api_version = if r.group.is_empty() {
        r.version.clone()
    } else {
        format!("{}/{}", r.group, r.version)
    };
    ApiResource {
        group: r.group.clone(),
        version: r.version.clone(),
        api_version,
        kind: r.kind.clone(),
        plural: r.plural.clone(),
    }
}

fn collection_path(r: &ResourceType, namespace: Option<&str>) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace {
        Some(ns) if r.namespaced => format!("{base}/namespaces/{ns}/{}", r.plural),
        _ => format!("{base}/{}", r.plural),
    }
}

/// The embedded API server's description of a built-in type: its field
/// labels are the real server's (a custom type has the metadata ones).
fn builtin_def(r: &ResourceType) -> Option<&'static ResourceDef> {
    static BUILTINS: std::sync::OnceLock<Vec<ResourceDef>> = std::sync::OnceLock::new();
    BUILTINS
        .get_or_init(reconcile_apiserver::registry::builtins)
        .iter()
        .find(|d| d.group == r.group && d.plural == r.plural && d.version == r.version)
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

fn error_kind_label(kind: K8sErrorKind) -> &'static str {
    match kind {
        K8sErrorKind::NotFound => "not_found",
        K8sErrorKind::Conflict => "conflict",
        K8sErrorKind::Forbidden => "forbidden",
        K8sErrorKind::Invalid => "invalid",
        K8sErrorKind::Unavailable => "unavailable",
        K8sErrorKind::Other => "other",
    }
}

/// Whether the host retries an answer with this code (idempotent calls).
fn retryable(code: u16) -> bool {
    code == 429 || (500..=599).contains(&code)
}

/// First wait between retries; it doubles, and never passes the deadline.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// The longest `Retry-After` the host waits for within one call; a longer
/// one (or one past the reconcile's deadline) ends the call with the
/// server's answer, and the reconcile's own backoff takes over.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// `Retry-After` in seconds (the form the API server sends; an HTTP date
/// is not used by it and is ignored).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

impl KubeBackend {
    /// A backend writing as `field_manager`, reading the `caches` locally.
    pub fn new(
        client: kube::Client,
        field_manager: &str,
        tracer: SdkTracer,
        caches: Vec<Cache>,
    ) -> Self {
        KubeBackend {
            client,
            field_manager: field_manager.to_owned(),
            tracer,
            caches,
            served: Arc::default(),
            fence: crate::lease::Ownership::everything(),
        }
    }

    fn cache_for(&self, r: &ResourceType, namespace: Option<&str>) -> Option<&Cache> {
        let serves = |c: &&Cache| {
            c.resource.group == r.group
                && c.resource.kind == r.kind
                && c.resource.version == r.version
                && (!r.namespaced || c.namespaces.covers(namespace))
        };
        // A full cache (an owned type's) before a selected one.
        self.caches
            .iter()
            .filter(serves)
            .min_by_key(|c| c.selector.is_some())
    }

    /// Checks a plugin's resource type against the API server's discovery
    /// (cached): the plural and scope build the request path, so a plugin
    /// must not choose them (a Secret path under a ConfigMap grant, say).
    pub async fn check_type(&self, r: &ResourceType) -> Result<(), K8sError> {
        let key = (r.group.clone(), r.version.clone(), r.kind.clone());
        let known = self
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (plural, namespaced) = match known {
            Some(served) => served,
            None => {
                let gvk = kube::api::GroupVersionKind::gvk(&r.group, &r.version, &r.kind);
                let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| match e {
                        kube::Error::Api(status) if status.code == 404 => K8sError::new(
                            K8sErrorKind::NotFound,
                            404,
                            "NotFound",
                            format!("the API server has no type {}", r.gvk()),
                        ),
                        other => K8sError::new(
                            K8sErrorKind::Unavailable,
                            0,
                            "ServiceUnavailable",
                            format!("discovery of {} failed: {other}", r.gvk()),
                        ),
                    })?;
                let served = (
                    resource.plural,
                    caps.scope == kube::discovery::Scope::Namespaced,
                );
                self.served
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, served.clone());
                served
            }
        };
        if r.plural != plural || r.namespaced != namespaced {
            let scope = |n: bool| if n { "namespaced" } else { "cluster-scoped" };
            return Err(K8sError::new(
                K8sErrorKind::Invalid,
                400,
                "BadRequest",
                format!(
                    "the API server serves {} as {plural} ({}); the plugin named it {} ({}): rebuild the plugin with the right type",
                    r.gvk(),
                    scope(namespaced),
                    r.plural,
                    scope(r.namespaced)
                ),
            ));
        }
        Ok(())
    }

    async fn read_cache(
        &self,
        cache: &Cache,
        call: &K8sCall,
        deadline: Instant,
    ) -> Result<K8sResponse, K8sError> {
        // Before the first list completes, an empty store would answer
        // "not found" for objects that exist.
        if tokio::time::timeout_at(deadline.into(), cache.ready.wait())
            .await
            .is_err()
        {
            return Err(K8sError::new(
                K8sErrorKind::Unavailable,
                0,
                "ServiceUnavailable",
                format!(
                    "the host's cache of {} has not synced yet (can it list and watch them?)",
                    call.resource.gvk()
                ),
            ));
        }
        // Namespaces mean nothing for cluster-scoped types.
        let namespace = if call.resource.namespaced {
            call.namespace.clone()
        } else {
            None
        };
        let body = match &call.op {
            K8sOp::Get => {
                let name = call.name.clone().unwrap_or_default();
                let mut reference =
                    ObjectRef::<DynamicObject>::new_with(&name, cache.resource.clone());
                if let Some(ns) = &namespace {
                    reference = reference.within(ns);
                }
                let object = cache.store.get(&reference).ok_or_else(|| {
                    K8sError::new(
                        K8sErrorKind::NotFound,
                        404,
                        "NotFound",
                        format!("{} \"{name}\" not found", call.resource.plural),
                    )
                    .in_cache()
                })?;
                serde_json::to_string(&*object)
            }
            K8sOp::List(options) => {
                let labels =
                    LabelSelector::parse(options.label_selector.as_deref().unwrap_or_default())
                        .map_err(|e| K8sError::new(K8sErrorKind::Invalid, 400, "BadRequest", e))?;
                // The field labels the API server serves for the type, so
                // that a cached list answers as the server would.
                let def = builtin_def(&call.resource);
                let field_labels = def.map_or(METADATA_FIELD_LABELS.to_vec(), |d| d.field_labels());
                let fields = FieldSelector::parse_for(
                    options.field_selector.as_deref().unwrap_or_default(),
                    &field_labels,
                )
                .map_err(|e| K8sError::new(K8sErrorKind::Invalid, 400, "BadRequest", e))?;
                // Label paths are those of the stored form (Events: core).
                let stored_form = def.filter(|d| convert::storage_type(d).is_some());
                let mut items: Vec<Value> = Vec::new();
                for object in cache.store.state() {
                    let value = serde_json::to_value(&*object).unwrap_or(Value::Null);
                    let in_namespace = namespace
                        .as_ref()
                        .is_none_or(|ns| value["metadata"]["namespace"].as_str() == Some(ns));
                    let fields_match = match stored_form {
                        Some(d) if !fields.metadata_only() => {
                            fields.matches_object(&convert::to_storage(d, value.clone()))
                        }
                        _ => fields.matches_object(&value),
                    };
                    if in_namespace && labels.matches_object(&value) && fields_match {
                        items.push(value);
                    }
                }
                items.sort_by(|a, b| {
                    let key = |v: &Value| {
                        (
                            v["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            v["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    };
                    key(a).cmp(&key(b))
                });
                // Like informer caches, the cache serves whole lists: no
                // `limit`, no continue token (the API allows more than asked).
                serde_json::to_string(&json!({
                    "apiVersion": cache.resource.api_version,
                    "kind": format!("{}List", cache.resource.kind),
                    "metadata": {},
                    "items": items,
                }))
            }
            _ => {
                return Err(K8sError::new(
                    K8sErrorKind::Other,
                    500,
                    "InternalError",
                    "only reads are served from the cache",
                ));
            }
        };
        let body = body
            .map_err(|e| K8sError::new(K8sErrorKind::Other, 500, "InternalError", e.to_string()))?;
        Ok(K8sResponse {
            body: Some(body),
            from_cache: true,
        })
    }

    fn request(&self, call: &K8sCall) -> Result<http::Request<Vec<u8>>, K8sError> {
        let invalid = |e: String| K8sError::new(K8sErrorKind::Invalid, 400, "BadRequest", e);
        let parse = |body: &str| {
            serde_json::from_str::<Value>(body)
                .map_err(|e| invalid(format!("the object is not valid JSON: {e}")))
        };
        let request =
            kube::core::Request::new(collection_path(&call.resource, call.namespace.as_deref()));
        let name = call.name.clone().unwrap_or_default();
        let manager = Some(self.field_manager.clone());
        let post = PostParams {
            field_manager: manager.clone(),
            ..Default::default()
        };
        let patch_params = PatchParams {
            field_manager: manager.clone(),
            ..Default::default()
        };
        let built = match (&call.op, call.status) {
            (K8sOp::Get, false) => request.get(&name, &Default::default()),
            (K8sOp::Get, true) => request.get_subresource("status", &name),
            (K8sOp::List(o), _) => request.list(&ListParams {
                label_selector: o.label_selector.clone(),
                field_selector: o.field_selector.clone(),
                limit: o.limit,
                continue_token: o.continue_token.clone(),
                ..Default::default()
            }),
            (K8sOp::Create { body }, _) => request.create(&post, body.clone().into_bytes()),
            (K8sOp::Apply { body, force }, status) => {
                let mut params = PatchParams::apply(&self.field_manager);
                params.force = *force;
                let patch = Patch::Apply(parse(body)?);
                if status {
                    request.patch_subresource("status", &name, &params, &patch)
                } else {
                    request.patch(&name, &params, &patch)
                }
            }
            (K8sOp::MergePatch { body } | K8sOp::JsonPatch { body }, status) => {
                let patch = Patch::Merge(parse(body)?);
                let built = if status {
                    request.patch_subresource("status", &name, &patch_params, &patch)
                } else {
                    request.patch(&name, &patch_params, &patch)
                };
                // kube has no JSON patch without its json-patch types; the
                // body is the same JSON, only the media type differs.
                built.map(|mut r| {
                    if matches!(call.op, K8sOp::JsonPatch { .. }) {
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json-patch+json"),
                        );
                    }
                    r
                })
            }
            (K8sOp::Replace { body }, false) => {
                request.replace(&name, &post, body.clone().into_bytes())
            }
            (K8sOp::Replace { body }, true) => {
                request.replace_subresource("status", &name, &post, body.clone().into_bytes())
            }
            (K8sOp::Delete { propagation }, _) => {
                let params = DeleteParams {
                    propagation_policy: propagation.map(|p| match p {
                        Propagation::Background => PropagationPolicy::Background,
                        Propagation::Foreground => PropagationPolicy::Foreground,
                        Propagation::Orphan => PropagationPolicy::Orphan,
                    }),
                    ..Default::default()
                };
                request.delete(&name, &params)
            }
        };
        built.map_err(|e| invalid(e.to_string()))
    }

    /// Sends one request, giving up at the deadline; returns the status,
    /// the body text and the `Retry-After` the server asked for. A request
    /// that never got an answer is code 0.
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
        deadline: Instant,
    ) -> Result<(u16, String, Option<Duration>), K8sError> {
        let unavailable =
            |e: String| K8sError::new(K8sErrorKind::Unavailable, 0, "ServiceUnavailable", e);
        let exchange = async {
            let response = self
                .client
                .send(request.map(kube::client::Body::from))
                .await
                .map_err(|e| unavailable(format!("the API server did not answer: {e}")))?;
            let status = response.status().as_u16();
            let retry_after = retry_after(response.headers());
            let bytes = response
                .into_body()
                .collect_bytes()
                .await
                .map_err(|e| unavailable(format!("the API server's answer broke off: {e}")))?;
            Ok((
                status,
                String::from_utf8_lossy(&bytes).into_owned(),
                retry_after,
            ))
        };
        match tokio::time::timeout_at(deadline.into(), exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(unavailable(
                "the API server did not answer before the reconcile's deadline".to_owned(),
            )),
        }
    }

    async fn remote(&self, call: &K8sCall, cx: &CallContext) -> Result<K8sResponse, K8sError> {
        let mut span = self
            .tracer
            .span_builder(call.span_name())
            .with_kind(SpanKind::Client)
            .with_attributes(span_attributes(call))
            .start_with_context(&self.tracer, &cx.otel);
        let span_cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut attempt = 0u32;
        let result = loop {
            let mut request = match self.request(call) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            TraceContextPropagator::new()
                .inject_context(&span_cx, &mut HeaderInjector(request.headers_mut()));
            let answer = self.send(request, cx.deadline).await;
            let idempotent = matches!(
                call.op,
                K8sOp::Get | K8sOp::List(_) | K8sOp::Apply { .. } | K8sOp::MergePatch { .. }
            );
            let mut asked = None;
            let retry_code = match &answer {
                // Writes that are not idempotent are retried only when the
                // server says it did not act: a retried create that had
                // worked would answer "already exists".
                Ok((status, _, retry_after))
                    if retryable(*status) && (idempotent || *status == 429 || *status == 503) =>
                {
                    asked = *retry_after;
                    Some(*status)
                }
                Err(e)
                    if e.kind == K8sErrorKind::Unavailable
                        && idempotent
                        && Instant::now() < cx.deadline =>
                {
                    Some(e.code)
                }
                _ => None,
            };
            // Exponential from RETRY_BASE, or the server's `Retry-After`
            // when it asks for longer (client-go honours it too).
            // A server asking for more than MAX_RETRY_AFTER is not retried
            // sooner than it asked: the call ends with its answer.
            let backoff = RETRY_BASE.saturating_mul(1 << attempt.min(10));
            let wait = asked.map_or(backoff, |a| a.max(backoff));
            let in_time = asked.is_none_or(|a| a <= MAX_RETRY_AFTER)
                && Instant::now()
                    .checked_add(wait)
                    .is_some_and(|at| at < cx.deadline);
            if let Some(code) = retry_code
                && in_time
            {
                attempt += 1;
                span.add_event(
                    "retry",
                    vec![
                        KeyValue::new("http.response.status_code", i64::from(code)),
                        KeyValue::new("retry.attempt", i64::from(attempt)),
                    ],
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            break answer.and_then(|(status, body, _)| interpret(call, status, body));
        };
        if attempt > 0 {
            span.set_attribute(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt),
            ));
        }
        match &result {
            Ok((status, _)) => span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(*status),
            )),
            Err(e) => {
                if e.code > 0 {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(e.code),
                    ));
                }
                span.set_attribute(KeyValue::new("error.type", error_kind_label(e.kind)));
                span.set_status(Status::error(format!("{} {}", e.code, e.reason)));
            }
        }
        span.end();
        result.map(|(_, body)| K8sResponse::remote(body))
    }
}

fn span_attributes(call: &K8sCall) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("k8s.resource", call.resource.gvk()),
        KeyValue::new("k8s.verb", call.op.verb()),
    ];
    if let Some(ns) = &call.namespace {
        attributes.push(KeyValue::new("k8s.namespace", ns.clone()));
    }
    if let Some(name) = &call.name {
        attributes.push(KeyValue::new("k8s.name", name.clone()));
    }
    if call.status {
        attributes.push(KeyValue::new("k8s.subresource", "status"));
    }
    attributes
}

/// Turns an answer into the plugin's result: the object, `None` for a
/// completed delete, or a typed error from the `Status`.
fn interpret(call: &K8sCall, status: u16, body: String) -> Result<(u16, Option<String>), K8sError> {
    if (200..300).contains(&status) {
        let gone = matches!(call.op, K8sOp::Delete { .. })
            && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["kind"] == "Status");
        return Ok((status, if gone { None } else { Some(body) }));
    }
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let reason = parsed["reason"].as_str().unwrap_or_default().to_owned();
    let message = parsed["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(500).collect());
    Err(K8sError::new(
        K8sErrorKind::from_code(status),
        status,
        reason,
        message,
    ))
}

impl KubeBackend {
    /// Refuses writes once a lease `ownership` holds has lapsed.
    pub fn fenced(mut self, ownership: crate::lease::Ownership) -> Self {
        self.fence = ownership;
        self
    }
}

#[async_trait]
impl K8sBackend for KubeBackend {
    async fn call(&self, call: K8sCall, cx: &CallContext) -> Result<K8sResponse, K8sError> {
        self.check_type(&call.resource).await?;
        if matches!(call.op, K8sOp::Get | K8sOp::List(_))
            && !call.status
            && let Some(cache) = self.cache_for(&call.resource, call.namespace.as_deref())
        {
            // A cache of the selected objects only cannot answer a list, or
            // say that an object does not exist.
            let partial = cache.selector.is_some();
            if !(partial && matches!(call.op, K8sOp::List(_))) {
                let read = self.read_cache(cache, &call, cx.deadline).await;
                if !(partial && matches!(&read, Err(e) if e.kind == K8sErrorKind::NotFound)) {
                    return read;
                }
            }
        }
        if !matches!(call.op, K8sOp::Get | K8sOp::List(_)) && self.fence.lapsed() {
            return Err(K8sError::new(
                K8sErrorKind::Unavailable,
                0,
                "LeaseLost",
                "this replica's lease lapsed: it writes nothing more and stops; the replica holding the lease now reconciles the object",
            ));
        }
        self.remote(&call, cx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every waiter wakes when the store lists: kube-runtime's own
    /// `wait_until_ready` wakes only the last of several, which held
    /// `--exit-when-idle` for its whole 10 s sync warning.
    #[tokio::test]
    async fn every_waiter_wakes_when_the_store_lists() {
        let (synced, ready) = Ready::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let ready = ready.clone();
                tokio::spawn(async move { ready.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!ready.is_ready());
        synced.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .expect("joined");
        }
        assert!(ready.is_ready());
    }
}
