//! The human view of traces for `dev` and `call`: once a `reconcile` root
//! ends, its trace is printed as one block, one line per span indented
//! under its parent, with duration, status and the key attributes, and the
//! log lines written during it interleaved where they happened.
//!
//! [`TreeView`] is a span processor (it sees each span as it ends, on the
//! thread that ends it) and the sink the [`Logger`](super::logs::Logger)
//! hands the lines of sampled traces to while their root is open. Lines of
//! unsampled traces, and lines written after the root ended, print as
//! usual. `OTEL_TRACES_EXPORTER=console` keeps the full exporter instead.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanId, Status, TraceId};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::logs::{Level, LogRecord};

/// Traces kept open at once; past this the oldest is printed unfinished.
const MAX_OPEN_TRACES: usize = 1024;
/// Spans and log lines kept per trace; past this they are counted, not kept.
const MAX_ENTRIES: usize = 2048;

/// Prints each finished trace as a tree. Cheap to clone.
#[derive(Clone)]
pub struct TreeView {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TreeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeView")
            .field("color", &self.inner.color)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TreeView {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TreeView {}

struct Inner {
    color: bool,
    state: Mutex<State>,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct State {
    /// Open traces, in the order their roots started.
    order: Vec<TraceId>,
    traces: HashMap<TraceId, Trace>,
}

#[derive(Default)]
struct Trace {
    spans: Vec<SpanData>,
    logs: Vec<Line>,
    dropped: usize,
}

struct Line {
    at: SystemTime,
    span_id: SpanId,
    level: Level,
    text: String,
}

impl TreeView {
    /// A view printing to standard output, in colour on a terminal (unless
    /// `NO_COLOR` is set).
    pub fn stdout() -> Self {
        use std::io::IsTerminal as _;
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self::to_writer(std::io::stdout(), color)
    }

    /// A view printing to any writer.
    pub fn to_writer(writer: impl Write + Send + 'static, color: bool) -> Self {
        TreeView {
            inner: Arc::new(Inner {
                color,
                state: Mutex::default(),
                out: Mutex::new(Box::new(writer)),
            }),
        }
    }

    /// The span processor to install on the tracer provider.
    pub fn processor(&self) -> TreeProcessor {
        TreeProcessor(self.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a log line for its trace's block; false if the trace is not
    /// open (the caller prints the line as usual).
    pub(crate) fn capture(&self, record: &LogRecord<'_>) -> bool {
        let Some(ids) = record.trace else {
            return false;
        };
        let mut state = self.state();
        let Some(trace) = state.traces.get_mut(&ids.trace_id) else {
            return false;
        };
        if trace.spans.len() + trace.logs.len() >= MAX_ENTRIES {
            trace.dropped += 1;
            return true;
        }
        let mut text = record.message.to_owned();
        for (key, value) in record.fields {
            if *key == "plugin" {
                continue;
            }
            match value {
                serde_json::Value::String(s)
                    if !s.contains(char::is_whitespace) && !s.is_empty() =>
                {
                    let _ = write!(text, " {key}={s}");
                }
                other => {
                    let _ = write!(text, " {key}={other}");
                }
            }
        }
        trace.logs.push(Line {
            at: SystemTime::now(),
            span_id: ids.span_id,
            level: record.level,
            text,
        });
        true
    }

    fn open(&self, trace_id: TraceId) {
        let evicted = {
            let mut state = self.state();
            if state.traces.contains_key(&trace_id) {
                return;
            }
            state.order.push(trace_id);
            state.traces.insert(trace_id, Trace::default());
            if state.order.len() > MAX_OPEN_TRACES {
                let oldest = state.order.remove(0);
                state.traces.remove(&oldest)
            } else {
                None
            }
        };
        if let Some(trace) = evicted {
            self.print(&trace, true);
        }
    }

    fn end(&self, span: SpanData) {
        let trace_id = span.span_context.trace_id();
        let is_root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let finished = {
            let mut state = self.state();
            let Some(trace) = state.traces.get_mut(&trace_id) else {
                return;
            };
            if trace.spans.len() + trace.logs.len() >= MAX_ENTRIES && !is_root {
                trace.dropped += 1;
                return;
            }
            trace.spans.push(span);
            if !is_root {
                return;
            }
            state.order.retain(|t| *t != trace_id);
            state.traces.remove(&trace_id)
        };
        if let Some(trace) = finished {
            self.print(&trace, false);
        }
    }

    fn flush(&self) {
        let open: Vec<Trace> = {
            let mut state = self.state();
            state.order.clear();
            state.traces.drain().map(|(_, t)| t).collect()
        };
        for trace in open {
            self.print(&trace, true);
        }
    }

    fn print(&self, trace: &Trace, unfinished: bool) {
        let text = render(trace, unfinished, self.inner.color);
        let mut out = self.inner.out.lock().unwrap_or_else(|e| e.into_inner());
        // Nowhere to report a failing console; the block is lost.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// The span processor of a [`TreeView`].
#[derive(Debug)]
pub struct TreeProcessor(TreeView);

impl SpanProcessor for TreeProcessor {
    fn on_start(&self, span: &mut Span, _cx: &Context) {
        let sc = span.span_context();
        if sc.is_sampled() {
            self.0.open(sc.trace_id());
        }
    }

    fn on_end(&self, span: SpanData) {
        self.0.end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.flush();
        Ok(())
    }
}

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_string(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

fn duration(d: Duration) -> String {
    let micros = d.as_micros();
    match micros {
        m if m < 1_000 => format!("{m}µs"),
        m if m < 1_000_000 => format!("{:.1}ms", m as f64 / 1_000.0),
        m => format!("{:.2}s", m as f64 / 1_000_000.0),
    }
}

/// `namespace/name`, or just the name.
fn place(span: &SpanData, ns_key: &str, name_key: &str) -> Option<String> {
    let name = attr_string(span, name_key);
    match (attr_string(span, ns_key), name) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        (Some(ns), None) => Some(ns),
        (None, name) => name,
    }
}

/// The line of one span, without indentation.
fn span_line(span: &SpanData, style: &Style) -> String {
    let mut parts = vec![style.paint("1", &span.name)];
    if span.name == "reconcile" {
        parts.extend(attr_string(span, "plugin.name"));
        parts.extend(attr_string(span, "k8s.kind"));
        parts.extend(place(span, "k8s.namespace", "k8s.name"));
        if let Some(reason) = attr_string(span, "reconcile.reason") {
            parts.push(format!("({reason})"));
        }
        if let Some(attempt) = attr(span, "reconcile.attempt")
            && attempt.as_str() != "1"
        {
            parts.push(format!("attempt {}", attempt.as_str()));
        }
    } else {
        parts.extend(attr_string(span, "k8s.resource"));
        parts.extend(place(span, "k8s.namespace", "k8s.name"));
        parts.extend(attr_string(span, "http.request.method"));
        parts.extend(attr_string(span, "server.address"));
        parts.extend(attr_string(span, "http.response.status_code"));
    }
    let elapsed = span
        .end_time
        .duration_since(span.start_time)
        .unwrap_or_default();
    parts.push(style.paint("2", &duration(elapsed)));
    match &span.status {
        Status::Error { description } => {
            let kind = attr_string(span, "error.type").unwrap_or_else(|| "error".into());
            let text = if description.is_empty() {
                kind
            } else {
                format!("{kind}: {description}")
            };
            parts.push(style.paint("31", &format!("ERROR {text}")));
        }
        _ if span.name == "reconcile" => parts.push(style.paint("32", "ok")),
        _ => {}
    }
    if span.name == "reconcile" {
        parts.push(style.paint("2", &format!("trace_id={}", span.span_context.trace_id())));
    }
    parts.join("  ")
}

enum Entry<'a> {
    Span(&'a SpanData),
    Event(&'a opentelemetry::trace::Event),
    Log(&'a Line),
}

fn render(trace: &Trace, unfinished: bool, color: bool) -> String {
    let style = Style { color };
    let ids: HashSet<SpanId> = trace
        .spans
        .iter()
        .map(|s| s.span_context.span_id())
        .collect();
    let mut children: HashMap<SpanId, Vec<(SystemTime, Entry<'_>)>> = HashMap::new();
    let mut tops: Vec<&SpanData> = Vec::new();
    for span in &trace.spans {
        if ids.contains(&span.parent_span_id) {
            children
                .entry(span.parent_span_id)
                .or_default()
                .push((span.start_time, Entry::Span(span)));
        } else {
            tops.push(span);
        }
        for event in span.events.iter() {
            children
                .entry(span.span_context.span_id())
                .or_default()
                .push((event.timestamp, Entry::Event(event)));
        }
    }
    let mut orphans = Vec::new();
    for line in &trace.logs {
        if ids.contains(&line.span_id) {
            children
                .entry(line.span_id)
                .or_default()
                .push((line.at, Entry::Log(line)));
        } else {
            orphans.push(line);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|(at, _)| *at);
    }
    tops.sort_by_key(|s| s.start_time);
    let mut out = String::new();
    for top in tops {
        write_span(&mut out, top, 0, &children, &style);
    }
    for line in orphans {
        write_log(&mut out, line, 1, &style);
    }
    if trace.dropped > 0 {
        let _ = writeln!(out, "  ({} more spans and lines not shown)", trace.dropped);
    }
    if unfinished {
        let _ = writeln!(out, "  (the reconcile had not finished)");
    }
    out.push('\n');
    out
}

fn write_span(
    out: &mut String,
    span: &SpanData,
    depth: usize,
    children: &HashMap<SpanId, Vec<(SystemTime, Entry<'_>)>>,
    style: &Style,
) {
    let _ = writeln!(out, "{}{}", "  ".repeat(depth), span_line(span, style));
    for (_, entry) in children
        .get(&span.span_context.span_id())
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match entry {
            Entry::Span(child) => write_span(out, child, depth + 1, children, style),
            Entry::Log(line) => write_log(out, line, depth + 1, style),
            Entry::Event(event) => {
                let mut text = format!("· {}", event.name);
                for kv in &event.attributes {
                    if kv.key.as_str() == "exception.stacktrace" {
                        continue;
                    }
                    let _ = write!(text, " {}={}", kv.key, kv.value);
                }
                let _ = writeln!(
                    out,
                    "{}{}",
                    "  ".repeat(depth + 1),
                    style.paint("36", &text)
                );
            }
        }
    }
}

fn write_log(out: &mut String, line: &Line, depth: usize, style: &Style) {
    let (label, code) = match line.level {
        Level::Trace => ("TRACE", "2"),
        Level::Debug => ("DEBUG", "2"),
        Level::Info => ("INFO", "34"),
        Level::Warn => ("WARN", "33"),
        Level::Error => ("ERROR", "31"),
    };
    let _ = writeln!(
        out,
        "{}{} {}",
        "  ".repeat(depth),
        style.paint(code, label),
        line.text
    );
}
