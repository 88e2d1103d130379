//! One reconcile as the host sees it: the request, the outcome, and the
//! attributes of the `reconcile` root span.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use crate::engine::bindings::types as wit;

/// Names one Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// API group, empty for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.kind, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// Why a reconcile happens: the `reconcile.reason` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The object changed.
    ObjectChanged,
    /// An owned object changed.
    OwnedObjectChanged,
    /// The plugin asked to requeue.
    Requeue,
    /// A retry after an error.
    Retry,
    /// A new plugin version was loaded.
    PluginReloaded,
    /// The object is being deleted.
    Deleting,
    /// Anything else.
    Other,
}

impl Reason {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ObjectChanged => "object_changed",
            Reason::OwnedObjectChanged => "owned_object_changed",
            Reason::Requeue => "requeue",
            Reason::Retry => "retry",
            Reason::PluginReloaded => "plugin_reloaded",
            Reason::Deleting => "deleting",
            Reason::Other => "other",
        }
    }

    pub(crate) fn into_wit(self) -> wit::Reason {
        match self {
            Reason::ObjectChanged => wit::Reason::ObjectChanged,
            Reason::OwnedObjectChanged => wit::Reason::OwnedObjectChanged,
            Reason::Requeue => wit::Reason::Requeue,
            Reason::Retry => wit::Reason::Retry,
            Reason::PluginReloaded => wit::Reason::PluginReloaded,
            Reason::Deleting => wit::Reason::Deleting,
            Reason::Other => wit::Reason::Other,
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Reason::ObjectChanged,
            Reason::OwnedObjectChanged,
            Reason::Requeue,
            Reason::Retry,
            Reason::PluginReloaded,
            Reason::Deleting,
            Reason::Other,
        ]
        .into_iter()
        .find(|r| r.as_str() == s.replace('-', "_"))
        .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

/// One reconcile to run.
#[derive(Clone, Debug)]
pub struct ReconcileRequest {
    /// The object.
    pub object: ObjectRef,
    /// The object as JSON, when it exists.
    pub body: Option<String>,
    /// Why.
    pub reason: Reason,
    /// 1 on the first attempt.
    pub attempt: u32,
    /// The object's `metadata.generation`, when it has one.
    pub generation: Option<i64>,
    /// A parent context for the root span (a propagated trace), if any.
    pub parent: Option<opentelemetry::Context>,
    /// The previous reconcile of the same object, which the root span
    /// links to.
    pub previous: Option<Previous>,
}

/// The root span of an object's previous reconcile, and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Previous {
    /// Its root span.
    pub span: SpanContext,
    /// Its `reconcile.result`.
    pub result: &'static str,
    /// Its `error.type`, when it failed.
    pub error_type: Option<&'static str>,
}

/// The attribute value of a link to the previous reconcile of an object
/// (`link.reason`).
pub const PREVIOUS_RECONCILE: &str = "previous_reconcile";

impl ReconcileRequest {
    /// A first attempt on `object`, triggered by a change.
    pub fn new(object: ObjectRef, body: Option<String>) -> Self {
        let generation = body
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["metadata"]["generation"].as_i64());
        ReconcileRequest {
            object,
            body,
            reason: Reason::ObjectChanged,
            attempt: 1,
            generation,
            parent: None,
            previous: None,
        }
    }

    pub(crate) fn to_wit(&self) -> wit::ReconcileRequest {
        wit::ReconcileRequest {
            object: wit::ObjectRef {
                group: self.object.group.clone(),
                version: self.object.version.clone(),
                kind: self.object.kind.clone(),
                namespace: self.object.namespace.clone(),
                name: self.object.name.clone(),
            },
            body: self.body.clone(),
            reason: self.reason.into_wit(),
            attempt: self.attempt,
        }
    }
}

/// Where a failure came from: the bounded `error.type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The plugin trapped (a panic, an invalid operation).
    Trap,
    /// The reconcile ran past its deadline.
    Timeout,
    /// The plugin ran out of its memory allowance.
    Memory,
    /// The plugin returned an error, or misbehaved (an oversized answer).
    Plugin,
    /// The plugin returned an error caused by a Kubernetes call.
    K8s,
    /// The plugin returned an error caused by an HTTP call.
    Http,
}

impl FailureKind {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Plugin => "plugin",
            FailureKind::K8s => "k8s",
            FailureKind::Http => "http",
        }
    }
}

/// A failed reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Where it came from.
    pub kind: FailureKind,
    /// What happened, for people.
    pub message: String,
    /// Whether to retry with backoff.
    pub retry: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// How a reconcile ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done until something changes.
    Done,
    /// Run again after this long.
    RequeueAfter(Duration),
    /// Failed.
    Failed(Failure),
}

impl Outcome {
    /// The `reconcile.result` attribute: `done`, `requeue` or `error`.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::RequeueAfter(_) => "requeue",
            Outcome::Failed(_) => "error",
        }
    }

    /// The failure, if it failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// A finished reconcile: its outcome and where its trace is.
#[derive(Clone, Debug)]
pub struct Reconciled {
    /// How it ended.
    pub outcome: Outcome,
    /// The trace of its root span.
    pub trace_id: TraceId,
    /// The root span.
    pub span_id: SpanId,
    /// Whether the root span was sampled.
    pub sampled: bool,
    /// The root span's context (for links from the next reconcile).
    pub span: SpanContext,
    /// Wall-clock time of the whole call.
    pub duration: Duration,
}

/// Counts from one call of a plugin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Guest spans, events and attributes dropped over the limits.
    pub telemetry_dropped: u32,
    /// Kubernetes reads served from the host's cache.
    pub cache_reads: u32,
    /// HTTP requests the plugin made (refused ones included).
    pub http_requests: u32,
}

/// The `reconcile` root span of one call.
///
/// Plugin-level attributes are computed once per plugin
/// ([`RootSpan::plugin_attributes`]); the object's are added per call.
#[derive(Debug)]
pub struct RootSpan {
    cx: Context,
}

impl RootSpan {
    /// The attributes every reconcile of a plugin carries.
    pub fn plugin_attributes(name: &str, version: &str, digest: &str) -> Vec<KeyValue> {
        // Shared strings: each reconcile clones pointers, not text.
        let shared = |s: &str| -> std::sync::Arc<str> { std::sync::Arc::from(s) };
        let name = shared(name);
        vec![
            KeyValue::new("k8s.controller", name.clone()),
            KeyValue::new("plugin.name", name),
            KeyValue::new("plugin.version", shared(version)),
            KeyValue::new("plugin.digest", shared(digest)),
        ]
    }

    /// Starts the span, as a child of the request's parent when it has one.
    pub fn start(
        tracer: &SdkTracer,
        plugin_attributes: &[KeyValue],
        request: &ReconcileRequest,
    ) -> Self {
        let object = &request.object;
        let mut attributes = Vec::with_capacity(plugin_attributes.len() + 8);
        attributes.extend(plugin_attributes.iter().cloned());
        if let Some(ns) = &object.namespace {
            attributes.push(KeyValue::new("k8s.namespace", ns.clone()));
        }
        attributes.push(KeyValue::new("k8s.name", object.name.clone()));
        attributes.push(KeyValue::new("k8s.kind", object.kind.clone()));
        attributes.push(KeyValue::new("k8s.group", object.group.clone()));
        attributes.push(KeyValue::new("k8s.version", object.version.clone()));
        attributes.push(KeyValue::new("reconcile.reason", request.reason.as_str()));
        attributes.push(KeyValue::new(
            "reconcile.attempt",
            i64::from(request.attempt),
        ));
        let parent = request.parent.clone().unwrap_or_default();
        let mut builder = tracer
            .span_builder("reconcile")
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes);
        // The object's history: why this one runs after that one.
        if let Some(previous) = &request.previous {
            let mut attributes = vec![
                KeyValue::new("link.reason", PREVIOUS_RECONCILE),
                KeyValue::new("reconcile.reason", request.reason.as_str()),
                KeyValue::new("reconcile.previous.result", previous.result),
            ];
            if let Some(error_type) = previous.error_type {
                attributes.push(KeyValue::new("reconcile.previous.error.type", error_type));
            }
            builder = builder.with_links(vec![Link::new(previous.span.clone(), attributes, 0)]);
        }
        let span = builder.start_with_context(tracer, &parent);
        RootSpan {
            cx: parent.with_span(span),
        }
    }

    /// The context to run the reconcile in.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Records the outcome (result, cache reads, and on failure status
    /// Error, an `exception` event and `error.type`) and ends the span.
    pub fn finish(self, outcome: &Outcome, stats: &CallStats) -> SpanContext {
        let telemetry_dropped = stats.telemetry_dropped;
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("reconcile.result", outcome.result()));
        span.set_attribute(KeyValue::new(
            "k8s.cache_reads",
            i64::from(stats.cache_reads),
        ));
        span.set_attribute(KeyValue::new(
            "http.requests",
            i64::from(stats.http_requests),
        ));
        if telemetry_dropped > 0 {
            span.set_attribute(KeyValue::new(
                "plugin.telemetry_dropped",
                i64::from(telemetry_dropped),
            ));
        }
        if let Outcome::Failed(failure) = outcome {
            span.set_attribute(KeyValue::new("error.type", failure.kind.as_str()));
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", failure.kind.as_str()),
                    KeyValue::new("exception.message", failure.message.clone()),
                ],
            );
            span.set_status(Status::error(failure.message.clone()));
        }
        let sc = span.span_context().clone();
        span.end();
        sc
    }
}
