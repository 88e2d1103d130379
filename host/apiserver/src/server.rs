//! The HTTP side: routing of Kubernetes paths, content negotiation, fault
//! injection, and the handlers of every verb, watch included.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::apply::Scope;
use crate::discovery;
use crate::faults::{Faults, Injection, RequestRecord};
use crate::registry::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{
    Deleted, Event, EventType, Filter, PatchType, Propagation, Store, Stored, WriteOptions, present,
};
use crate::table;
use crate::validation;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Deepest nesting of a request body, as in the real server (Go's JSON
/// decoder and go-yaml both stop at 10,000).
pub const MAX_DEPTH: usize = 10_000;

/// Stack of the server's threads: a body nested `MAX_DEPTH` deep is parsed,
/// merged and dropped recursively (only the pages used are committed).
pub(crate) const STACK_BYTES: usize = 256 * 1024 * 1024;

/// Requests parsed and stored at once; more wait their turn.
pub(crate) const BLOCKING_THREADS: usize = 16;

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) max_watch: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) watch_buffer_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Version,
    Health,
    Api,
    Apis,
    ApiGroup(String),
    GroupVersion(String, String),
    OpenApiRoot,
    OpenApiGroupVersion(String, String),
    Resource(ResourcePath),
    NotFound,
}

#[derive(Debug, PartialEq, Eq, Clone)]
struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_route(path: &str) -> Route {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let resource = |group: &str, version: &str, rest: &[&str]| -> Route {
        let (namespace, rest) = if rest.len() >= 3
            && rest[0] == "namespaces"
            && rest[2] != "status"
            && rest[2] != "finalize"
        {
            (Some(rest[1].to_owned()), &rest[2..])
        } else {
            (None, rest)
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some((*name).to_owned()), None),
            [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
            _ => return Route::NotFound,
        };
        Route::Resource(ResourcePath {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            namespace,
            name,
            subresource,
        })
    };
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez"] => Route::Health,
        ["api"] => Route::Api,
        ["api", v] => Route::GroupVersion(String::new(), (*v).into()),
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis"] => Route::Apis,
        ["apis", g] => Route::ApiGroup((*g).into()),
        ["apis", g, v] => Route::GroupVersion((*g).into(), (*v).into()),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", v] => Route::OpenApiGroupVersion(String::new(), (*v).into()),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiGroupVersion((*g).into(), (*v).into()),
        _ => Route::NotFound,
    }
}

/// A stored object's JSON as served under `def`: its bytes as they are when
/// the versions agree (every built-in type, most CRDs).
fn object_json(def: &ResourceDef, stored: &Stored) -> Bytes {
    if stored.api_version == def.api_version() {
        stored.json.clone()
    } else {
        Bytes::from(present(def, &stored.value()).to_string())
    }
}

fn bytes_response(code: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_response(code: u16, value: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    let mut response = json_response(e.code, &e.to_json());
    if let Some(seconds) = e.retry_after()
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn verb(
    method: &Method,
    route: &Route,
    query: &HashMap<String, String>,
) -> (String, Option<ResourcePath>) {
    let Route::Resource(r) = route else {
        return ("discovery".into(), None);
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), r.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    };
    (verb.into(), Some(r.clone()))
}

/// Who a request acts as: the user and groups it impersonates, if any.
fn subject(headers: &HeaderMap) -> crate::authz::Subject {
    let header = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    crate::authz::Subject::impersonating(
        header("impersonate-user").into_iter().next(),
        header("impersonate-group"),
    )
}

/// Serves one request.
pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query: HashMap<String, String> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let route = parse_route(&path);
    let (verb, resource) = verb(&parts.method, &route, &query);
    let record = RequestRecord {
        method: parts.method.to_string(),
        path: path.clone(),
        query: raw_query,
        verb: verb.clone(),
        resource: resource.as_ref().map(|r| r.plural.clone()),
        subresource: resource.as_ref().and_then(|r| r.subresource.clone()),
        namespace: resource.as_ref().and_then(|r| r.namespace.clone()),
        name: resource.as_ref().and_then(|r| r.name.clone()),
        traceparent: parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        user_agent: parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        content_type: parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        received: std::time::SystemTime::now(),
    };
    for injection in shared.faults.on_request(record) {
        match injection {
            Injection::Delay(d) => tokio::time::sleep(d).await,
            Injection::Fail {
                status,
                retry_after,
            } => return error_response(&ApiError::injected(status, retry_after)),
        }
    }
    let body = match tokio::time::timeout(
        shared.body_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if is_too_large(&e) => {
            return error_response(&ApiError::too_large(MAX_BODY_BYTES));
        }
        Ok(Err(e)) => {
            return error_response(&ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )));
        }
        Err(_) => {
            return error_response(&ApiError::timeout(format!(
                "the request body did not arrive within {}s",
                shared.body_timeout.as_secs()
            )));
        }
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let registry = shared.store.registry();
    match route {
        Route::Version => json_response(200, &discovery::version()),
        Route::Health => (StatusCode::OK, "ok").into_response(),
        Route::Api | Route::Apis if accept.contains("as=APIGroupDiscoveryList") => {
            let doc = discovery::aggregated(&registry, route == Route::Api);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, discovery::AGGREGATED_V2)],
                doc.to_string(),
            )
                .into_response()
        }
        Route::Api => json_response(200, &discovery::api_versions()),
        Route::Apis => json_response(200, &discovery::api_group_list(&registry)),
        Route::ApiGroup(g) => match registry.groups().into_iter().find(|(name, _)| *name == g) {
            Some((g, versions)) => json_response(200, &discovery::api_group(&g, &versions)),
            None => error_response(&ApiError::no_route(&path)),
        },
        Route::GroupVersion(g, v) => match discovery::api_resource_list(&registry, &g, &v) {
            Some(doc) => json_response(200, &doc),
            None => error_response(&ApiError::no_route(&path)),
        },
        Route::OpenApiRoot => json_response(200, &discovery::openapi_root(&registry)),
        Route::OpenApiGroupVersion(g, v) => {
            match discovery::openapi_group_version(&registry, &g, &v) {
                Some(doc) => json_response(200, &doc),
                None => error_response(&ApiError::no_route(&path)),
            }
        }
        Route::NotFound => error_response(&ApiError::no_route(&path)),
        Route::Resource(r) => {
            let Some(def) = registry.find(&r.group, &r.version, &r.plural) else {
                return error_response(&ApiError::no_route(&path));
            };
            // As the real request info: `namespaces/foo` is in the
            // namespace `foo` (RoleBindings there apply to it).
            let namespace = r.namespace.as_deref().or_else(|| {
                r.name
                    .as_deref()
                    .filter(|_| def.group.is_empty() && def.plural == "namespaces")
            });
            if let Err(e) = crate::authz::authorize(
                &shared.store,
                &subject(&parts.headers),
                &def,
                &verb,
                namespace,
                r.name.as_deref().unwrap_or_default(),
                r.subresource.as_deref().unwrap_or_default(),
            ) {
                return error_response(&e);
            }
            if !acceptable(&accept) {
                return error_response(&ApiError::not_acceptable(
                    "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
                ));
            }
            let request = ResourceRequest {
                shared: shared.clone(),
                def,
                path: r,
                query,
                headers: parts.headers,
                body,
                accept,
            };
            let method = parts.method;
            let served = if verb == "watch" {
                request.serve(&method, &verb).await
            } else {
                // Parsing, validating and storing a body runs on a blocking
                // thread: a large or hostile one holds up no other request
                // (those that need the store wait for its lock only).
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || runtime.block_on(request.serve(&method, &verb)))
                    .await
                    .unwrap_or_else(|e| Err(ApiError::internal(format!("the request failed: {e}"))))
            };
            match served {
                Ok(response) => response,
                Err(e) => error_response(&e),
            }
        }
    }
}

struct ResourceRequest {
    shared: Arc<Shared>,
    def: Arc<ResourceDef>,
    path: ResourcePath,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    accept: String,
}

/// Whether an `Accept` header allows an answer this server gives: JSON
/// (tables included), or anything (YAML and protobuf clients also accept
/// JSON in practice, and are answered with it).
fn acceptable(accept: &str) -> bool {
    accept.trim().is_empty()
        || accept.split(',').any(|range| {
            let media = range
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            matches!(
                media.as_str(),
                "*/*"
                    | "application/*"
                    | "application/json"
                    | "application/yaml"
                    | "application/vnd.kubernetes.protobuf"
                    | "application/json-seq"
                    | "application/vnd.kubernetes.protobuf;stream=watch"
            )
        })
}

/// Whether a body read failed on the size limit (rather than the connection).
fn is_too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The nesting depth of JSON (or YAML flow collections) in `body`, up to
/// `MAX_DEPTH + 1`: brackets outside double-quoted strings.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_DEPTH {
                    break;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a request body of `content_type` as the server does (JSON,
/// YAML or protobuf; depth and size bounded). Runs on a blocking thread
/// in the server: see `handle`.
pub fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/vnd.kubernetes.protobuf" {
        return crate::protobuf::decode(body).map_err(|e| match e {
            crate::protobuf::DecodeError::Malformed(m) => ApiError::bad_request(m),
            crate::protobuf::DecodeError::Unsupported(m) => ApiError::unsupported_media_type(m),
        });
    }
    // No content type is read as JSON, as the real server does.
    let known = media.is_empty()
        || media == "application/json"
        || media == "application/yaml"
        || (media.starts_with("application/")
            && (media.ends_with("+json") || media.ends_with("+yaml")));
    if !known {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (not {media})"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = media.ends_with("yaml");
    if nesting_depth(body) > MAX_DEPTH {
        let what = if yaml { "YAML" } else { "JSON" };
        return Err(ApiError::bad_request(format!(
            "the request body is not valid {what}: exceeded max depth of {MAX_DEPTH}"
        )));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    json.disable_recursion_limit();
    let parsed =
        serde::Deserialize::deserialize(&mut json).and_then(|v: Value| json.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if yaml => {
            let mut budget = serde_saphyr::Budget::default();
            budget.max_depth = MAX_DEPTH;
            budget.flow_nesting_limit = MAX_DEPTH;
            // Every node takes input bytes: the body's size bounds them
            // (the defaults would refuse large but ordinary manifests).
            budget.max_nodes = MAX_BODY_BYTES;
            budget.max_events = 2 * MAX_BODY_BYTES;
            let mut options = serde_saphyr::Options::default();
            options.budget = Some(budget);
            serde_saphyr::from_slice_with_options::<Value>(body, options).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })
        }
        Err(json_error) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {json_error}"
        ))),
    }
}

impl ResourceRequest {
    /// A `SelfSubjectAccessReview`: answered, never stored.
    fn access_review(&self, method: &Method) -> Result<Response, ApiError> {
        if method != Method::POST || self.path.name.is_some() {
            return Err(ApiError::method_not_allowed(
                "selfsubjectaccessreviews can only be created",
            ));
        }
        let subject = subject(&self.headers);
        let body = parse_body(&self.body, &self.content_type())?;
        let answer = crate::authz::review(&self.shared.store, &subject, body)?;
        Ok(json_response(201, &answer))
    }

    fn namespace(&self) -> Option<&str> {
        self.path.namespace.as_deref()
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.query.get("dryRun").map(String::as_str) {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            ))),
        }
    }

    /// The request's field manager; too long a one is refused.
    fn checked_manager(&self, options_kind: &str) -> Result<String, ApiError> {
        let manager = self.manager();
        validation::check_field_manager(options_kind, &manager)?;
        Ok(manager)
    }

    fn manager(&self) -> String {
        if let Some(m) = self.query.get("fieldManager").filter(|m| !m.is_empty()) {
            return m.clone();
        }
        let agent = self
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        agent.split('/').next().unwrap_or("unknown").to_owned()
    }

    fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    fn filter(&self) -> Result<Filter, ApiError> {
        let labels = match self.query.get("labelSelector") {
            Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request)?,
            None => LabelSelector::default(),
        };
        let fields = match self.query.get("fieldSelector") {
            Some(s) => FieldSelector::parse_for(s, &self.def.field_labels())
                .map_err(ApiError::bad_request)?,
            None => FieldSelector::default(),
        };
        Ok(Filter {
            namespace: self.path.namespace.clone(),
            labels,
            fields,
        })
    }

    fn scope(&self) -> Result<Scope, ApiError> {
        match self.path.subresource.as_deref() {
            None => Ok(Scope::Main),
            Some("status") if self.def.status => Ok(Scope::Status),
            Some(_) => Err(ApiError::no_route(&format!(
                "{}/{}",
                self.def.plural,
                self.path.subresource.as_deref().unwrap_or_default()
            ))),
        }
    }

    async fn serve(self, method: &Method, verb: &str) -> Result<Response, ApiError> {
        let def = self.def.clone();
        let no_route = || ApiError::no_route(&def.plural);
        // A namespaced type needs a namespace except to list or watch
        // across all; a cluster-scoped type never takes one.
        if def.namespaced && self.path.namespace.is_none() && !matches!(verb, "list" | "watch") {
            return Err(no_route());
        }
        if !def.namespaced && self.path.namespace.is_some() {
            return Err(no_route());
        }
        if def.group == "authorization.k8s.io" && def.plural == "selfsubjectaccessreviews" {
            return self.access_review(method);
        }
        let scope = self.scope()?;
        let store = &self.shared.store;
        let name = self.path.name.clone().unwrap_or_default();
        match (method.as_str(), verb) {
            ("GET", "get") => {
                let stored = store.get(&def, self.namespace(), &name)?;
                if table::wants_table(&self.accept) {
                    let object = present(&def, &stored.value());
                    return Ok(json_response(
                        200,
                        &table::table(&def, &[object], json!({})),
                    ));
                }
                Ok(bytes_response(200, object_json(&def, &stored)))
            }
            ("GET", "list") => self.list(),
            ("GET", "watch") => self.watch(),
            ("POST", _) if self.path.name.is_none() => {
                let body = parse_body(&self.body, &self.content_type())?;
                let options = WriteOptions {
                    manager: self.checked_manager("CreateOptions")?,
                    dry_run: self.dry_run()?,
                    force: false,
                };
                let created = store.create(&def, self.namespace(), body, &options)?;
                Ok(bytes_response(201, object_json(&def, &created)))
            }
            ("PUT", _) if self.path.name.is_some() => {
                let body = parse_body(&self.body, &self.content_type())?;
                let options = WriteOptions {
                    manager: self.checked_manager("UpdateOptions")?,
                    dry_run: self.dry_run()?,
                    force: false,
                };
                let updated = store.update(&def, scope, self.namespace(), &name, body, &options)?;
                Ok(bytes_response(200, object_json(&def, &updated)))
            }
            ("PATCH", _) if self.path.name.is_some() => {
                let content_type = self.content_type();
                let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                    "application/merge-patch+json" => PatchType::Merge,
                    "application/json-patch+json" => PatchType::Json,
                    "application/strategic-merge-patch+json" => PatchType::Strategic,
                    "application/apply-patch+yaml" | "application/apply-patch+json" => {
                        PatchType::Apply
                    }
                    other => {
                        return Err(ApiError::unsupported_media_type(format!(
                            "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                        )));
                    }
                };
                let force = match self.query.get("force").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") if kind == PatchType::Apply => true,
                    Some("true") => {
                        return Err(ApiError::bad_request(
                            "force: Forbidden: may not be specified for non-apply patch",
                        ));
                    }
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "force: invalid value {other:?}"
                        )));
                    }
                };
                if kind == PatchType::Apply
                    && self.query.get("fieldManager").is_none_or(|m| m.is_empty())
                {
                    return Err(ApiError::bad_request(
                        "PATCH, fieldManager is required for apply requests",
                    ));
                }
                // An apply that creates the object is authorized as a
                // create too, as the real API server does.
                if kind == PatchType::Apply
                    && scope == Scope::Main
                    && store.get(&def, self.namespace(), &name).is_err()
                {
                    crate::authz::authorize(
                        store,
                        &subject(&self.headers),
                        &def,
                        "create",
                        self.namespace(),
                        &name,
                        "",
                    )?;
                }
                let body = parse_body(&self.body, &content_type)?;
                let options = WriteOptions {
                    manager: self.checked_manager("PatchOptions")?,
                    dry_run: self.dry_run()?,
                    force,
                };
                let (object, created) =
                    store.patch(&def, scope, self.namespace(), &name, kind, &body, &options)?;
                Ok(bytes_response(
                    if created { 201 } else { 200 },
                    object_json(&def, &object),
                ))
            }
            ("DELETE", "delete") => {
                let options: Value = if self.body.is_empty() {
                    json!({})
                } else {
                    parse_body(&self.body, &self.content_type())?
                };
                let propagation = self.propagation(&options)?;
                let preconditions = options.get("preconditions").cloned().unwrap_or(Value::Null);
                match store.delete(
                    &def,
                    self.namespace(),
                    &name,
                    propagation,
                    &preconditions,
                    self.dry_run()?,
                )? {
                    Deleted::Pending(object) => Ok(json_response(200, &object)),
                    Deleted::Gone(object) => {
                        let uid = object["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        Ok(json_response(200, &status::success(&def, &name, &uid)))
                    }
                }
            }
            ("DELETE", "deletecollection") => {
                let options: Value = if self.body.is_empty() {
                    json!({})
                } else {
                    parse_body(&self.body, &self.content_type())?
                };
                let propagation = self.propagation(&options)?;
                let deleted =
                    store.delete_collection(&def, &self.filter()?, propagation, self.dry_run()?)?;
                Ok(json_response(
                    200,
                    &json!({
                        "apiVersion": def.api_version(), "kind": def.list_kind(),
                        "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": deleted,
                    }),
                ))
            }
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {}",
                self.path_text()
            ))),
        }
    }

    fn path_text(&self) -> String {
        match &self.path.name {
            Some(n) => format!("{} {n}", self.def.plural),
            None => self.def.plural.clone(),
        }
    }

    fn propagation(&self, options: &Value) -> Result<Propagation, ApiError> {
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.query.get("propagationPolicy").cloned())
            .or_else(|| {
                options
                    .get("orphanDependents")
                    .and_then(Value::as_bool)
                    .map(|o| {
                        if o {
                            "Orphan".into()
                        } else {
                            "Background".into()
                        }
                    })
            });
        match policy.as_deref() {
            None | Some("Background") => Ok(Propagation::Background),
            Some("Foreground") => Ok(Propagation::Foreground),
            Some("Orphan") => Ok(Propagation::Orphan),
            Some(other) => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}"
            ))),
        }
    }

    fn list(&self) -> Result<Response, ApiError> {
        let def = &self.def;
        let limit = match self.query.get("limit").filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => match l.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => return Err(ApiError::bad_request(format!("limit: invalid value {l:?}"))),
            },
        };
        let page = self.shared.store.list(
            def,
            &self.filter()?,
            limit,
            self.query
                .get("continue")
                .map(String::as_str)
                .filter(|c| !c.is_empty()),
        )?;
        let mut metadata = json!({"resourceVersion": page.rv.to_string()});
        if let Some(token) = &page.continue_token {
            metadata["continue"] = token.clone().into();
        }
        if let Some(remaining) = page.remaining {
            metadata["remainingItemCount"] = remaining.into();
        }
        if table::wants_table(&self.accept) {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|o| present(def, &o.value()))
                .collect();
            return Ok(json_response(200, &table::table(def, &items, metadata)));
        }
        // The stored bytes, joined: no object is parsed or copied twice.
        let head =
            json!({"apiVersion": def.api_version(), "kind": def.list_kind(), "metadata": metadata})
                .to_string();
        let mut body = Vec::with_capacity(
            head.len() + page.items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 16,
        );
        body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        body.extend_from_slice(b",\"items\":[");
        for (i, object) in page.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&object_json(def, object));
        }
        body.extend_from_slice(b"]}");
        Ok(bytes_response(200, Bytes::from(body)))
    }

    fn watch(&self) -> Result<Response, ApiError> {
        let flag = |k: &str| matches!(self.query.get(k).map(String::as_str), Some("true" | "1"));
        let timeout = match self.query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
            None => self.shared.max_watch,
            Some(t) => Duration::from_secs(t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}"))
            })?)
            .min(self.shared.max_watch),
        };
        let send_initial = flag("sendInitialEvents");
        let bookmarks = flag("allowWatchBookmarks");
        if send_initial && !bookmarks {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
        let start = match self.query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion: invalid value {rv:?}"))
            })?),
        };
        let watch = Watch {
            store: self.shared.store.clone(),
            def: self.def.clone(),
            filter: self.filter()?,
            table: table::wants_table(&self.accept),
            start: if send_initial { None } else { start },
            initial: send_initial || start.is_none(),
            bookmarks,
            initial_end_bookmark: send_initial,
            timeout,
            bookmark_interval: self.shared.bookmark_interval,
            cut: self.shared.faults.cut_signal(),
        };
        let queue = Arc::new(WatchQueue::new(self.shared.watch_buffer_bytes));
        let (reader, gone) = oneshot::channel::<()>();
        tokio::spawn(watch.run(WatchSink {
            queue: queue.clone(),
            gone,
        }));
        let stream = futures::stream::unfold((queue, reader), |(queue, reader)| async move {
            queue
                .pop()
                .await
                .map(|b| (Ok::<_, Infallible>(b), (queue, reader)))
        });
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

/// What a watch has queued for its client, bounded in bytes: a client that
/// stops reading has its watch ended (and the queue dropped) once it is
/// `limit` behind, as the real server closes a watcher whose buffer is full.
struct WatchQueue {
    state: std::sync::Mutex<QueueState>,
    /// Wakes the reader (an item or the end) and the writer (room).
    readable: Notify,
    writable: Notify,
    limit: usize,
}

#[derive(Default)]
struct QueueState {
    items: std::collections::VecDeque<Bytes>,
    bytes: usize,
    ended: bool,
}

/// Chunks queued at most, whatever their size (an event is one to three).
const WATCH_QUEUE_CHUNKS: usize = 3 * 4096;

/// How long a live event waits for room before the watch is ended.
const WATCH_ROOM_WAIT: Duration = Duration::from_secs(5);

impl WatchQueue {
    fn new(limit: usize) -> Self {
        WatchQueue {
            state: std::sync::Mutex::default(),
            readable: Notify::new(),
            writable: Notify::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self, state: &QueueState) -> bool {
        state.bytes >= self.limit || state.items.len() >= WATCH_QUEUE_CHUNKS
    }

    /// Queues chunks; false (and the queue emptied and ended) if the client
    /// is already too far behind.
    fn push(&self, chunks: impl IntoIterator<Item = Bytes>) -> bool {
        let mut state = self.lock();
        if state.ended {
            return false;
        }
        if self.full(&state) {
            state.items.clear();
            state.bytes = 0;
            state.ended = true;
            drop(state);
            self.readable.notify_one();
            return false;
        }
        for chunk in chunks {
            state.bytes += chunk.len();
            state.items.push_back(chunk);
        }
        drop(state);
        self.readable.notify_one();
        true
    }

    /// Queues a live event, waiting up to `WATCH_ROOM_WAIT` for room; false
    /// (and the watch ended) if the client is still too far behind.
    async fn push_live(&self, chunks: Vec<Bytes>) -> bool {
        let _ = tokio::time::timeout(WATCH_ROOM_WAIT, self.wait_for_room()).await;
        self.push(chunks)
    }

    async fn wait_for_room(&self) {
        loop {
            let room = self.writable.notified();
            {
                let state = self.lock();
                if state.ended || !self.full(&state) {
                    return;
                }
            }
            room.await;
        }
    }

    /// Waits for room, then queues (for the initial events, which a slow
    /// client may take its time over).
    async fn push_when_room(&self, chunks: impl IntoIterator<Item = Bytes>) {
        self.wait_for_room().await;
        self.push(chunks);
    }

    fn end(&self) {
        self.lock().ended = true;
        self.readable.notify_one();
    }

    /// The next chunk; `None` once the watch has ended and the queue is empty.
    async fn pop(&self) -> Option<Bytes> {
        loop {
            let more = self.readable.notified();
            {
                let mut state = self.lock();
                if let Some(chunk) = state.items.pop_front() {
                    state.bytes = state.bytes.saturating_sub(chunk.len());
                    drop(state);
                    self.writable.notify_one();
                    return Some(chunk);
                }
                if state.ended {
                    return None;
                }
            }
            more.await;
        }
    }
}

/// The writing end of a watch: its queue, and whether the client is gone.
struct WatchSink {
    queue: Arc<WatchQueue>,
    /// Resolves (with an error) once the response body is dropped.
    gone: oneshot::Receiver<()>,
}

impl Drop for WatchSink {
    fn drop(&mut self) {
        self.queue.end();
    }
}

/// One open watch.
struct Watch {
    store: Arc<Store>,
    def: Arc<ResourceDef>,
    filter: Filter,
    table: bool,
    start: Option<u64>,
    initial: bool,
    bookmarks: bool,
    initial_end_bookmark: bool,
    timeout: Duration,
    bookmark_interval: Duration,
    cut: tokio::sync::watch::Receiver<u64>,
}

impl Watch {
    fn line(kind: &str, object: Value) -> Bytes {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    /// An event line around a stored object: its bytes are shared, not
    /// copied, between the store and every watch.
    fn stored_line(&self, kind: &str, object: &Stored) -> Vec<Bytes> {
        if self.table {
            return vec![Self::line(kind, self.object(&object.value()))];
        }
        let head = match kind {
            "ADDED" => &b"{\"type\":\"ADDED\",\"object\":"[..],
            "MODIFIED" => &b"{\"type\":\"MODIFIED\",\"object\":"[..],
            "DELETED" => &b"{\"type\":\"DELETED\",\"object\":"[..],
            _ => &b"{\"type\":\"ERROR\",\"object\":"[..],
        };
        vec![
            Bytes::from_static(head),
            object_json(&self.def, object),
            Bytes::from_static(b"}\n"),
        ]
    }

    fn object(&self, object: &Value) -> Value {
        let object = present(&self.def, object);
        if self.table {
            table::table(&self.def, &[object], json!({}))
        } else {
            object
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        Self::line(
            "BOOKMARK",
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": metadata}),
        )
    }

    /// The event as this watch sees it (selectors can turn a modification
    /// into an ADDED or DELETED).
    fn translate(&self, event: &Event) -> Option<Vec<Bytes>> {
        if event.key != self.def.storage_key() {
            return None;
        }
        let now = self.filter.matches(&event.object);
        let kind = match event.kind {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now => "DELETED",
            EventType::Modified => match (
                event
                    .previous
                    .as_ref()
                    .is_some_and(|p| self.filter.matches(p)),
                now,
            ) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(self.stored_line(kind, &event.object))
    }

    async fn run(mut self, mut sink: WatchSink) {
        let queue = sink.queue.clone();
        let (mut rx, mut last) = if self.initial {
            // Off the serving thread: a long write may hold the store's lock.
            let (store, def, filter) = (self.store.clone(), self.def.clone(), self.filter.clone());
            let Ok((items, rv, rx)) =
                tokio::task::spawn_blocking(move || store.snapshot(&def, &filter)).await
            else {
                return;
            };
            for item in items {
                tokio::select! {
                    () = queue.push_when_room(self.stored_line("ADDED", &item)) => {}
                    _ = &mut sink.gone => return,
                }
            }
            if self.initial_end_bookmark {
                tokio::select! {
                    () = queue.push_when_room([self.bookmark(rv, true)]) => {}
                    _ = &mut sink.gone => return,
                }
            }
            (rx, rv)
        } else {
            let from = self.start.unwrap_or_default();
            let store = self.store.clone();
            let Ok(start) = tokio::task::spawn_blocking(move || store.watch_from(from)).await
            else {
                return;
            };
            match start {
                Some((backlog, rx)) => {
                    let mut last = from;
                    for event in backlog {
                        last = last.max(event.rv);
                        if let Some(line) = self.translate(&event) {
                            tokio::select! {
                                () = queue.push_when_room(line) => {}
                                _ = &mut sink.gone => return,
                            }
                        }
                    }
                    (rx, last)
                }
                None => {
                    let e = ApiError::expired(format!(
                        "too old resource version: {from} ({})",
                        self.store.compacted()
                    ));
                    queue.push([Self::line("ERROR", e.to_json())]);
                    return;
                }
            }
        };
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(self.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = self.cut.changed() => return,
                _ = &mut sink.gone => return,
                _ = ticker.tick(), if self.bookmarks => {
                    if !queue.push_live(vec![self.bookmark(last, false)]).await {
                        return;
                    }
                }
                received = rx.recv() => match received {
                    Ok(event) => {
                        if event.rv <= last {
                            continue;
                        }
                        last = event.rv;
                        if let Some(line) = self.translate(&event)
                            && !queue.push_live(line).await
                        {
                            tracing::debug!(
                                resource = %self.def.plural,
                                "ended a watch whose client fell {} bytes behind",
                                queue.limit
                            );
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired("the watch fell behind; list again");
                        queue.push([Self::line("ERROR", e.to_json())]);
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(
        group: &str,
        plural: &str,
        ns: Option<&str>,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Route {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        })
    }

    #[test]
    fn routes() {
        assert_eq!(
            parse_route("/api/v1/namespaces"),
            r("", "namespaces", None, None, None)
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/default"),
            r("", "namespaces", None, Some("default"), None)
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/default/status"),
            r("", "namespaces", None, Some("default"), Some("status"))
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/default/configmaps"),
            r("", "configmaps", Some("default"), None, None)
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/default/configmaps/a"),
            r("", "configmaps", Some("default"), Some("a"), None)
        );
        assert_eq!(
            parse_route("/apis/apps/v1/namespaces/x/deployments/d/status"),
            Route::Resource(ResourcePath {
                group: "apps".into(),
                version: "v1".into(),
                plural: "deployments".into(),
                namespace: Some("x".into()),
                name: Some("d".into()),
                subresource: Some("status".into())
            })
        );
        assert_eq!(
            parse_route("/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"),
            Route::Resource(ResourcePath {
                group: "rbac.authorization.k8s.io".into(),
                version: "v1".into(),
                plural: "clusterroles".into(),
                namespace: None,
                name: Some("admin".into()),
                subresource: None
            })
        );
        assert_eq!(parse_route("/version"), Route::Version);
        assert_eq!(parse_route("/apis/apps"), Route::ApiGroup("apps".into()));
        assert_eq!(parse_route("/nope"), Route::NotFound);
    }
}
