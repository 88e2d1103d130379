//! Tracing inside a reconcile: events, attributes and child spans under the
//! host's `reconcile` span.
//!
//! Use an [`event`] for a cheap milestone and a [`span`] for a stage that
//! takes time or can fail on its own. Keep names low-cardinality (`render`,
//! not `render web-7f9c`); put identifiers in attributes.
//!
//! ```no_run
//! use reconcile_sdk::trace::{event, set_attribute, span, try_span};
//! let replicas = span("render", || 3);
//! set_attribute("app.replicas", replicas);
//! event("skipped: generation unchanged", &[]);
//! let applied: Result<(), String> = try_span("apply", || Ok(()));
//! ```

use std::fmt::Display;

use crate::bindings::reconcile::plugin::trace as wit;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string.
    String(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl Value {
    pub(crate) fn into_wit(self) -> wit::Value {
        match self {
            Value::String(s) => wit::Value::String(s),
            Value::Int(i) => wit::Value::Int(i),
            Value::Float(f) => wit::Value::Float(f),
            Value::Bool(b) => wit::Value::Boolean(b),
        }
    }
}

/// Add an event to the current span.
pub fn event(name: &str, attributes: &[(&str, Value)]) {
    let attributes: Vec<wit::Attribute> = attributes
        .iter()
        .map(|(key, value)| wit::Attribute {
            key: (*key).to_owned(),
            value: value.clone().into_wit(),
        })
        .collect();
    wit::add_event(name, &attributes);
}

/// Set an attribute on the current span. Keys under `k8s.`, `plugin.`,
/// `reconcile.` and `error.` belong to the host and are ignored.
pub fn set_attribute(key: &str, value: impl Into<Value>) {
    wit::set_attribute(key, &value.into().into_wit());
}

/// An open child span; ends when dropped.
#[derive(Debug)]
pub struct SpanGuard {
    handle: u64,
    error: Option<String>,
}

impl SpanGuard {
    /// Mark the span failed with `message`.
    pub fn fail(&mut self, message: impl Display) {
        self.error = Some(message.to_string());
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        wit::end_span(self.handle, self.error.as_deref());
    }
}

/// Start a child span of the current span; it is current until the guard drops.
pub fn start_span(name: &str) -> SpanGuard {
    SpanGuard {
        handle: wit::start_span(name),
        error: None,
    }
}

/// Run `f` inside a child span named `name`.
pub fn span<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let _guard = start_span(name);
    f()
}

/// Run `f` inside a child span named `name`; an `Err` marks the span failed.
pub fn try_span<T, E: Display>(name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let mut guard = start_span(name);
    let result = f();
    if let Err(e) = &result {
        guard.fail(e);
    }
    result
}
