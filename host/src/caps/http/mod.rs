//! `wasi:http/outgoing-handler` for `reconcile:plugin@0.2.0` plugins:
//! every request checked, traced and bounded.
//!
//! `wasmtime-wasi-http` turns the guest's `wasi:http` calls into an
//! [`http::Request`] and hands it to [`Hooks::send_request`]. There the
//! host, before any connection:
//!
//! 1. matches the URL against the allow-list ([`HttpPolicy`], from the
//!    grant's `[[http]]` entries; [`allow`] has the rules); a miss fails
//!    with `HTTP-request-denied` and adds an `access.denied` event to the
//!    plugin's current span;
//! 2. enforces the per-reconcile request count and the in-flight cap;
//! 3. starts an `http.client` span (kind Client) under the plugin's current
//!    span, and sets `traceparent`/`tracestate` from it, replacing the
//!    guest's.
//!
//! Then [`send`] resolves the name, drops addresses the entry may not reach
//! (non-public ones unless `private = true`), connects with the connect
//! timeout, speaks TLS (system roots, ALPN `h2` and `http/1.1`) and HTTP/1.1
//! or HTTP/2, and waits for the first byte; everything is bounded by the
//! reconcile's deadline, and the response body by the body cap. Redirects
//! are the guest's to follow, each hop checked again.

pub mod allow;
mod send;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::caps::trace::CurrentSpan;
use allow::{Endpoint, Host, Scheme};

/// Most resources (fields, requests, bodies, streams, pollables) one
/// instance may hold: wasmtime's default is a million, none of them counted
/// against the plugin's memory limit.
pub(crate) const MAX_RESOURCES: usize = 4096;
/// `access.denied` events one reconcile's refused HTTP requests add (each
/// refused request's `http.client` span still says `denied`).
const MAX_DENIED_EVENTS: u32 = 16;

/// Largest headers of one `fields` resource, in bytes.
pub(crate) const MAX_FIELDS_BYTES: usize = 16 * 1024;

/// Largest write to an outgoing body, in bytes (host memory per write).
pub(crate) const MAX_BODY_CHUNK_BYTES: usize = 64 * 1024;

/// The resource table of one instance, bounded.
pub(crate) fn table() -> wasmtime::component::ResourceTable {
    let mut table = wasmtime::component::ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// The `wasi:http` context of one instance, its headers bounded.
pub(crate) fn context() -> wasmtime_wasi_http::WasiHttpCtx {
    let mut ctx = wasmtime_wasi_http::WasiHttpCtx::new();
    ctx.set_field_size_limit(MAX_FIELDS_BYTES);
    ctx
}

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRule {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Whether a name may resolve to a non-public address (loopback,
    /// link-local, private networks). IP literals in `endpoint` need not
    /// say so: naming the address is explicit.
    pub private: bool,
}

/// What a plugin's requests may reach, and their bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPolicy {
    /// The allow-list; empty refuses every request.
    pub rules: Vec<HttpRule>,
    /// Largest response body, in bytes.
    pub max_body_bytes: u64,
    /// Requests one reconcile may make.
    pub max_requests: u32,
    /// Requests one instance may have in flight at once.
    pub max_in_flight: usize,
    /// Longest wait for a connection (DNS, TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for the response headers once connected, and between
    /// two body chunks.
    pub first_byte_timeout: Duration,
}

impl HttpPolicy {
    /// Default response body cap: 16 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
    /// Default requests per reconcile.
    pub const DEFAULT_MAX_REQUESTS: u32 = 64;
    /// Default requests in flight per instance.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
    /// Default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default first-byte timeout.
    pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

    /// A policy allowing `rules`, with the default bounds.
    pub fn new(rules: Vec<HttpRule>) -> Self {
        HttpPolicy {
            rules,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_requests: Self::DEFAULT_MAX_REQUESTS,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: Self::DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }

    /// The first rule a request to `scheme://host:port` falls under.
    fn rule_for(&self, scheme: Scheme, host: &Host, port: u16) -> Option<&HttpRule> {
        self.rules
            .iter()
            .find(|r| r.endpoint.matches(scheme, host, port))
    }
}

/// What the `wasi:http` calls of one reconcile share with the host.
#[derive(Debug)]
pub(crate) struct CallHttp {
    policy: Arc<HttpPolicy>,
    tracer: SdkTracer,
    current: CurrentSpan,
    deadline: Instant,
    requests: AtomicU32,
    in_flight: Arc<AtomicUsize>,
    meter: Meter,
}

/// Counts one plugin's HTTP requests in the metrics.
#[derive(Clone, Debug)]
pub(crate) struct Meter {
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) plugin: Arc<str>,
}

/// The `verb` label of a request: its method, one of a bounded set.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl CallHttp {
    /// Requests of one reconcile under `policy`, traced under the plugin's
    /// `current` span, all done before `deadline`.
    pub(crate) fn new(
        policy: Arc<HttpPolicy>,
        tracer: SdkTracer,
        current: CurrentSpan,
        deadline: Instant,
        meter: Meter,
    ) -> Self {
        CallHttp {
            policy,
            tracer,
            current,
            deadline,
            requests: AtomicU32::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            meter,
        }
    }
}

/// The hooks of one call's `wasi:http` context. Without a [`CallHttp`]
/// (while `metadata()` runs, or for a plugin with no HTTP policy) every
/// request is refused.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    call: Option<Arc<CallHttp>>,
}

impl Hooks {
    pub(crate) fn new(call: Option<CallHttp>) -> Self {
        Hooks {
            call: call.map(Arc::new),
        }
    }

    /// Requests the plugin made (refused ones included).
    pub(crate) fn requests(&self) -> u32 {
        self.call
            .as_ref()
            .map_or(0, |c| c.requests.load(Ordering::Relaxed))
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// Bounded `error.type` values of a failed `http.client` span.
pub(crate) fn error_type(error: &Error) -> &'static str {
    match error {
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => "timeout",
        Error::ConnectionRefused => "connection_refused",
        Error::HttpRequestDenied | Error::DestinationIpProhibited => "denied",
        Error::HttpResponseBodySize(_) => "body_too_large",
        Error::ConnectionLimitReached => "limit_reached",
        Error::DnsError { .. } | Error::DestinationNotFound => "dns_error",
        Error::Tls(_)
        | Error::TlsProtocolError
        | Error::TlsCertificateError
        | Error::TlsAlertReceived { .. } => "tls_error",
        Error::Connect(_)
        | Error::ConnectionTerminated
        | Error::HttpResponseIncomplete
        | Error::DestinationUnavailable
        | Error::DestinationIpUnroutable => "connection_error",
        _ => "protocol_error",
    }
}

/// The `http.client` span of one request; ended (with `error.type` when
/// it failed) when the response body is done, or when it is dropped.
#[derive(Debug)]
pub(crate) struct ClientSpan {
    cx: Context,
    slot: Option<Arc<AtomicUsize>>,
    ended: bool,
    meter: Meter,
    method: &'static str,
    outcome: crate::metrics::CallOutcome,
}

impl ClientSpan {
    fn set_status_code(&mut self, status: http::StatusCode) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        let class = match status.as_u16() {
            400..=499 => Some("4xx"),
            500..=599 => Some("5xx"),
            _ => None,
        };
        if let Some(class) = class {
            self.outcome = crate::metrics::CallOutcome::Error;
            span.set_attribute(KeyValue::new("error.type", class));
            span.set_status(Status::error(class));
        }
    }

    /// Ends the span with `error`.
    pub(crate) fn fail(&mut self, error: &Error) {
        if self.ended {
            return;
        }
        let span = self.cx.span();
        let kind = error_type(error);
        self.outcome = if kind == "denied" {
            crate::metrics::CallOutcome::AccessDenied
        } else {
            crate::metrics::CallOutcome::Error
        };
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(format!("{kind}: {error}")));
        self.end();
    }

    /// Ends the span (and frees the in-flight slot).
    pub(crate) fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.cx.span().end();
            self.meter
                .metrics
                .host_call(&self.meter.plugin, "http", self.method, self.outcome);
        }
        if let Some(slot) = self.slot.take() {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        self.end();
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is left out, as the W3C spec allows.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Where an admitted request goes.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) scheme: Scheme,
    pub(crate) host: Host,
    pub(crate) port: u16,
    pub(crate) private: bool,
}

impl CallHttp {
    /// Checks a request and starts its span; `Err` is what to answer, the
    /// span (when one was started) already ended.
    fn admit(&self, request: &mut http::Request<WasiBody>) -> Result<(Target, ClientSpan), Error> {
        let parent = self.current.context();
        let uri = request.uri();
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(Error::HttpProtocolError),
        };
        // wasmtime sends the guest's authority as `Host`: no user info in it.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(Error::HttpRequestUriInvalid);
        }
        let host = uri
            .host()
            .and_then(Host::parse)
            .ok_or(Error::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method().as_str().to_owned()),
            KeyValue::new("server.address", host.to_string()),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("url.scheme", scheme.as_str()),
        ];
        // Every request counts, refused ones too; past the cap a request
        // gets no span (twice the cap at most), so that a plugin looping
        // on refusals cannot flood the trace.
        let count = self
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let over = count > self.policy.max_requests;
        if over && count > self.policy.max_requests.saturating_mul(2) {
            return Err(Error::ConnectionLimitReached);
        }
        let span = self
            .tracer
            .span_builder("http.client")
            .with_kind(SpanKind::Client)
            .with_attributes(attributes.clone())
            .start_with_context(&self.tracer, &parent);
        let mut client = ClientSpan {
            cx: parent.with_span(span),
            slot: None,
            ended: false,
            meter: self.meter.clone(),
            method: method_label(request.method()),
            outcome: crate::metrics::CallOutcome::Ok,
        };
        if over {
            client.fail(&Error::ConnectionLimitReached);
            return Err(Error::ConnectionLimitReached);
        }
        let Some(rule) = self.policy.rule_for(scheme, &host, port) else {
            attributes.push(KeyValue::new(
                "reason",
                "the grant has no [[http]] entry for this endpoint",
            ));
            // The first few only: the events are on the plugin's span,
            // where the host's own must keep room.
            if count <= MAX_DENIED_EVENTS {
                parent.span().add_event("access.denied", attributes);
            }
            client.fail(&Error::HttpRequestDenied);
            return Err(Error::HttpRequestDenied);
        };
        let in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        client.slot = Some(self.in_flight.clone());
        if in_flight > self.policy.max_in_flight {
            client.fail(&Error::ConnectionLimitReached);
            return Err(Error::ConnectionLimitReached);
        }
        let headers = request.headers_mut();
        headers.remove("traceparent");
        headers.remove("tracestate");
        TraceContextPropagator::new().inject_context(&client.cx, &mut HeaderInjector(headers));
        let target = Target {
            scheme,
            host,
            port,
            private: rule.private,
        };
        Ok((target, client))
    }
}

impl WasiHttpHooks for Hooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        MAX_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let Some(call) = self.call.clone() else {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        let (target, span) = match call.admit(&mut request) {
            Ok(admitted) => admitted,
            Err(error) => return Box::new(async move { Err(error) }),
        };
        let parent = call.current.context();
        let bounds = send::Bounds::new(&call.policy, options, call.deadline);
        Box::new(async move {
            let response = send::send(request, target, bounds, span, parent).await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
