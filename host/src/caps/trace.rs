//! The `trace` interface: guest events, attributes and child spans under the
//! host's `reconcile` span, with bounded counts and sizes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::SdkTracer;

use crate::engine::HostState;
use crate::engine::bindings::trace as wit;
use crate::telemetry::logs::TraceIds;

/// Guest child spans one reconcile may start.
pub const MAX_GUEST_SPANS: u32 = 128;
/// Guest events one reconcile may add.
pub const MAX_GUEST_EVENTS: u32 = 256;
/// Guest attributes one reconcile may set (events' attributes included).
pub const MAX_GUEST_ATTRIBUTES: u32 = 512;
/// Guest events, and guest attributes, on any one span: half the
/// tracing SDK's default per-span limits (128), so that a plugin cannot
/// crowd out the host's own (`reconcile.result`, `error.type`,
/// `exception`, ...), which the SDK would drop past its limit.
pub const MAX_GUEST_PER_SPAN: u32 = 64;
/// Longest span or event name, attribute key, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest string attribute value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Attribute prefixes the host owns.
const RESERVED_PREFIXES: [&str; 6] = [
    "k8s.",
    "plugin.",
    "reconcile.",
    "error.",
    "exception.",
    "otel.",
];

/// The plugin's current span (its innermost open span, or the root),
/// shared with the stdout/stderr capture, so that its lines carry its ids,
/// and with `wasi:http`, so that requests become its children.
#[derive(Clone, Debug, Default)]
pub(crate) struct CurrentSpan(Arc<Mutex<Context>>);

impl CurrentSpan {
    pub(crate) fn get(&self) -> Option<TraceIds> {
        let cx = self.context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceIds {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
        })
    }

    /// The current span's context.
    pub(crate) fn context(&self) -> Context {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, cx: &Context) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = cx.clone();
    }
}

/// Per-call tracing state of a guest.
pub(crate) struct GuestTrace {
    tracer: Option<SdkTracer>,
    root: Context,
    open: Vec<(u64, Context)>,
    next_handle: u64,
    spans: u32,
    events: u32,
    attributes: u32,
    /// Guest events and attributes on each span (by handle; 0 is the root).
    per_span: std::collections::HashMap<u64, (u32, u32)>,
    dropped: u32,
    current: CurrentSpan,
}

impl GuestTrace {
    /// Tracing under `root` (the reconcile span's context).
    pub(crate) fn new(tracer: SdkTracer, root: Context) -> Self {
        let current = CurrentSpan::default();
        current.set(&root);
        GuestTrace {
            tracer: Some(tracer),
            root,
            open: Vec::new(),
            next_handle: 1,
            spans: 0,
            events: 0,
            attributes: 0,
            per_span: Default::default(),
            dropped: 0,
            current,
        }
    }

    /// No tracing at all (while `metadata()` runs).
    pub(crate) fn disabled() -> Self {
        GuestTrace {
            tracer: None,
            root: Context::new(),
            open: Vec::new(),
            next_handle: 1,
            spans: 0,
            events: 0,
            attributes: 0,
            per_span: Default::default(),
            dropped: 0,
            current: CurrentSpan::default(),
        }
    }

    /// The context of the innermost open guest span, or the root.
    pub(crate) fn current_context(&self) -> Context {
        self.open
            .last()
            .map(|(_, cx)| cx.clone())
            .unwrap_or_else(|| self.root.clone())
    }

    pub(crate) fn current_span(&self) -> &CurrentSpan {
        &self.current
    }

    /// The tracer, unless tracing is disabled.
    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    /// Telemetry the guest tried to record over the limits.
    pub(crate) fn dropped(&self) -> u32 {
        self.dropped
    }

    /// End guest spans left open.
    pub(crate) fn finish(&mut self) {
        while let Some((_, cx)) = self.open.pop() {
            cx.span().end();
        }
        self.current.set(&self.root);
    }

    fn budget(&mut self, used: fn(&mut Self) -> &mut u32, max: u32, n: u32) -> bool {
        let count = used(self);
        if count.saturating_add(n) > max {
            self.dropped = self.dropped.saturating_add(n.max(1));
            false
        } else {
            *count += n;
            true
        }
    }

    /// Room for `events` more events and `attributes` more attributes on
    /// the current span (an event's own attributes are not the span's) (see [`MAX_GUEST_PER_SPAN`]); counts them if so.
    fn span_budget(&mut self, events: u32, attributes: u32) -> bool {
        let handle = self.open.last().map_or(0, |(h, _)| *h);
        let used = self.per_span.entry(handle).or_default();
        if used.0 + events > MAX_GUEST_PER_SPAN || used.1 + attributes > MAX_GUEST_PER_SPAN {
            self.dropped = self.dropped.saturating_add(1);
            false
        } else {
            used.0 += events;
            used.1 += attributes;
            true
        }
    }

    /// Records a Kubernetes call refused by the grant on the current span
    /// (within the guest's per-span budget: a plugin looping on refused
    /// calls must not crowd out the host's own events).
    pub(crate) fn access_denied(
        &mut self,
        resource: &str,
        verb: &str,
        namespace: &str,
        name: Option<&str>,
    ) {
        let mut attributes = vec![
            KeyValue::new("k8s.resource", resource.to_owned()),
            KeyValue::new("k8s.verb", verb.to_owned()),
            KeyValue::new("k8s.namespace", namespace.to_owned()),
        ];
        if !self.span_budget(1, 0) {
            return;
        }
        if let Some(name) = name {
            attributes.push(KeyValue::new("k8s.name", name.to_owned()));
        }
        self.current_context()
            .span()
            .add_event("access.denied", attributes);
    }

    fn start_span(&mut self, name: String) -> u64 {
        let Some(tracer) = self.tracer.clone() else {
            return 0;
        };
        if !self.budget(|s| &mut s.spans, MAX_GUEST_SPANS, 1) {
            return 0;
        }
        let parent = self.current_context();
        let span = tracer
            .span_builder(truncate(name, MAX_NAME_BYTES))
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        let handle = self.next_handle;
        self.next_handle += 1;
        self.current.set(&cx);
        self.open.push((handle, cx));
        handle
    }

    fn end_span(&mut self, handle: u64, error: Option<String>) {
        let Some(position) = self.open.iter().position(|(h, _)| *h == handle) else {
            return;
        };
        while self.open.len() > position + 1 {
            if let Some((_, cx)) = self.open.pop() {
                cx.span().end();
            }
        }
        if let Some((_, cx)) = self.open.pop() {
            let span = cx.span();
            if let Some(message) = error {
                span.set_status(Status::error(truncate(message, MAX_VALUE_BYTES)));
            }
            span.end();
        }
        let current = self.current_context();
        self.current.set(&current);
    }

    fn add_event(&mut self, name: String, attributes: Vec<wit::Attribute>) {
        if self.tracer.is_none() {
            return;
        }
        let n = u32::try_from(attributes.len()).unwrap_or(u32::MAX);
        if !self.budget(|s| &mut s.events, MAX_GUEST_EVENTS, 1)
            || !self.budget(|s| &mut s.attributes, MAX_GUEST_ATTRIBUTES, n)
            || !self.span_budget(1, 0)
        {
            return;
        }
        let attributes = attributes
            .into_iter()
            .map(|a| key_value(a.key, a.value))
            .collect();
        self.current_context()
            .span()
            .add_event(truncate(name, MAX_NAME_BYTES), attributes);
    }

    fn set_attribute(&mut self, key: String, value: wit::Value) {
        if self.tracer.is_none() || RESERVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            return;
        }
        if !self.budget(|s| &mut s.attributes, MAX_GUEST_ATTRIBUTES, 1) || !self.span_budget(0, 1) {
            return;
        }
        self.current_context()
            .span()
            .set_attribute(key_value(key, value));
    }
}

fn key_value(key: String, value: wit::Value) -> KeyValue {
    let value = match value {
        wit::Value::String(s) => OtelValue::from(truncate(s, MAX_VALUE_BYTES)),
        wit::Value::Int(i) => OtelValue::I64(i),
        wit::Value::Float(f) => OtelValue::F64(f),
        wit::Value::Boolean(b) => OtelValue::Bool(b),
    };
    KeyValue::new(truncate(key, MAX_NAME_BYTES), value)
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> Cow<'static, str> {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    Cow::Owned(s)
}

impl wit::Host for HostState {
    fn add_event(&mut self, name: String, attributes: Vec<wit::Attribute>) -> wasmtime::Result<()> {
        self.trace.add_event(name, attributes);
        Ok(())
    }

    fn set_attribute(&mut self, key: String, value: wit::Value) -> wasmtime::Result<()> {
        self.trace.set_attribute(key, value);
        Ok(())
    }

    fn start_span(&mut self, name: String) -> wasmtime::Result<u64> {
        Ok(self.trace.start_span(name))
    }

    fn end_span(&mut self, span: u64, error: Option<String>) -> wasmtime::Result<()> {
        self.trace.end_span(span, error);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("hello".into(), 10), "hello");
        assert_eq!(truncate("hello".into(), 3), "hel");
    }
}
