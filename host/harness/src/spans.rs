//! The spans of one reconcile as a tree, with assertions that print the
//! tree when they fail.
// Assertions for tests: failing one panics, as `assert!` does.
#![allow(clippy::panic)]

use std::fmt::Write as _;

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::trace::SpanData;

/// The finished spans of one reconcile (its trace).
#[derive(Clone, Debug)]
pub struct SpanTree {
    spans: Vec<SpanData>,
}

/// One span in a [`SpanTree`].
#[derive(Clone, Copy, Debug)]
pub struct SpanNode<'a> {
    tree: &'a SpanTree,
    span: &'a SpanData,
}

impl SpanTree {
    pub(crate) fn new(mut spans: Vec<SpanData>) -> Self {
        spans.sort_by_key(|s| s.start_time);
        SpanTree { spans }
    }

    /// Every span, by start time.
    pub fn all(&self) -> &[SpanData] {
        &self.spans
    }

    /// The `reconcile` root span.
    #[track_caller]
    pub fn root(&self) -> SpanNode<'_> {
        match self
            .spans
            .iter()
            .find(|s| s.parent_span_id == SpanId::INVALID)
        {
            Some(span) => SpanNode { tree: self, span },
            None => panic!("no root span among:\n{self}"),
        }
    }

    /// The spans named `name`, anywhere in the tree.
    pub fn named(&self, name: &str) -> Vec<SpanNode<'_>> {
        self.spans
            .iter()
            .filter(|s| s.name == name)
            .map(|span| SpanNode { tree: self, span })
            .collect()
    }

    fn children_of(&self, id: SpanId) -> impl Iterator<Item = &SpanData> {
        self.spans.iter().filter(move |s| s.parent_span_id == id)
    }

    fn write_node(&self, out: &mut String, span: &SpanData, depth: usize) {
        let _ = write!(out, "{}{}", "  ".repeat(depth), span.name);
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        if !attributes.is_empty() {
            let _ = write!(out, " [{}]", attributes.join(" "));
        }
        if let Status::Error { description } = &span.status {
            let _ = write!(out, " ERROR {description:?}");
        }
        for event in &span.events.events {
            let _ = write!(out, " event:{}", event.name);
        }
        out.push('\n');
        for child in self.children_of(span.span_context.span_id()) {
            self.write_node(out, child, depth + 1);
        }
    }
}

impl std::fmt::Display for SpanTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        let ids: Vec<SpanId> = self
            .spans
            .iter()
            .map(|s| s.span_context.span_id())
            .collect();
        // Roots, and spans whose parent is not here.
        for span in self
            .spans
            .iter()
            .filter(|s| !ids.contains(&s.parent_span_id))
        {
            self.write_node(&mut out, span, 0);
        }
        if out.is_empty() {
            out.push_str("(no spans)\n");
        }
        f.write_str(&out)
    }
}

impl<'a> SpanNode<'a> {
    /// The span's data.
    pub fn data(&self) -> &'a SpanData {
        self.span
    }

    /// Its name.
    pub fn name(&self) -> &'a str {
        &self.span.name
    }

    /// Its children, by start time.
    pub fn children(&self) -> Vec<SpanNode<'a>> {
        let tree = self.tree;
        tree.children_of(self.span.span_context.span_id())
            .map(|span| SpanNode { tree, span })
            .collect()
    }

    /// Its first child named `name`.
    #[track_caller]
    pub fn child(&self, name: &str) -> SpanNode<'a> {
        match self.children().into_iter().find(|c| c.name() == name) {
            Some(child) => child,
            None => panic!(
                "span {} has no child {name:?}; the trace:\n{}",
                self.name(),
                self.tree
            ),
        }
    }

    /// Its children named `name`.
    pub fn children_named(&self, name: &str) -> Vec<SpanNode<'a>> {
        self.children()
            .into_iter()
            .filter(|c| c.name() == name)
            .collect()
    }

    /// The attribute `key`, as text, if it is there.
    pub fn try_attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    /// The attribute `key`, as text.
    #[track_caller]
    pub fn attr(&self, key: &str) -> String {
        match self.try_attr(key) {
            Some(value) => value,
            None => panic!(
                "span {} has no attribute {key:?}; the trace:\n{}",
                self.name(),
                self.tree
            ),
        }
    }

    /// Asserts that attribute `key` is `value`; returns the span for more.
    #[track_caller]
    pub fn assert_attr(&self, key: &str, value: impl std::fmt::Display) -> Self {
        let found = self.attr(key);
        let value = value.to_string();
        assert!(
            found == value,
            "span {} attribute {key}: expected {value:?}, found {found:?}; the trace:\n{}",
            self.name(),
            self.tree
        );
        *self
    }

    /// Whether the span's status is Error.
    pub fn is_error(&self) -> bool {
        matches!(self.span.status, Status::Error { .. })
    }

    /// The names of its events.
    pub fn events(&self) -> Vec<&'a str> {
        self.span
            .events
            .events
            .iter()
            .map(|e| e.name.as_ref())
            .collect()
    }
}
