//! Structured log lines, JSON or text, each carrying the `trace_id` and
//! `span_id` of the span current when it was written.
//!
//! Host code logs with `tracing`; the [`LogLayer`] formats those events and
//! takes the ids from the OpenTelemetry context of the running reconcile.
//! Plugin lines (the `log` interface, stdout, stderr) are written with
//! [`Logger::write`] and carry the ids of the plugin's current span.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context as LayerContext;

/// Output format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!("unknown log format {other:?}: use json or text")),
        }
    }
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Unexpected but handled.
    Warn,
    /// Failed.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    fn from_tracing(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::TRACE => Level::Trace,
            tracing::Level::DEBUG => Level::Debug,
            tracing::Level::INFO => Level::Info,
            tracing::Level::WARN => Level::Warn,
            _ => Level::Error,
        }
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(Level::Trace),
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" | "warning" => Ok(Level::Warn),
            "error" => Ok(Level::Error),
            other => Err(format!(
                "unknown log level {other:?}: use trace, debug, info, warn or error"
            )),
        }
    }
}

/// The trace and span a log line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceIds {
    /// Trace id.
    pub trace_id: TraceId,
    /// Span id.
    pub span_id: SpanId,
}

impl TraceIds {
    /// The ids of the span current in the OpenTelemetry context, if any.
    pub fn current() -> Option<Self> {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceIds {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
        })
    }
}

/// One log line before formatting.
#[derive(Debug)]
pub struct LogRecord<'a> {
    /// Severity.
    pub level: Level,
    /// Where it comes from: a host module path, or `plugin`.
    pub target: &'a str,
    /// The message.
    pub message: &'a str,
    /// Key/value fields, in order.
    pub fields: &'a [(&'a str, Value)],
    /// The span it belongs to.
    pub trace: Option<TraceIds>,
}

type Sink = Box<dyn Write + Send>;

/// Where log lines go and how they look. Cheap to clone.
#[derive(Clone)]
pub struct Logger {
    inner: Arc<LoggerInner>,
}

struct LoggerInner {
    format: LogFormat,
    plugin_level: Level,
    sink: Mutex<Sink>,
    /// The tree view that takes the lines of open traces, if one is shown.
    tree: std::sync::OnceLock<super::tree::TreeView>,
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logger")
            .field("format", &self.inner.format)
            .field("plugin_level", &self.inner.plugin_level)
            .finish()
    }
}

impl Logger {
    /// Lines to standard error.
    pub fn stderr(format: LogFormat, plugin_level: Level) -> Self {
        Self::to_writer(format, plugin_level, std::io::stderr())
    }

    /// Lines to any writer (a file, a test buffer).
    pub fn to_writer(
        format: LogFormat,
        plugin_level: Level,
        writer: impl Write + Send + 'static,
    ) -> Self {
        Logger {
            inner: Arc::new(LoggerInner {
                format,
                plugin_level,
                sink: Mutex::new(Box::new(writer)),
                tree: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The format of the lines.
    pub fn format(&self) -> LogFormat {
        self.inner.format
    }

    /// Whether plugin lines at `level` are written.
    pub fn plugin_enabled(&self, level: Level) -> bool {
        level >= self.inner.plugin_level
    }

    /// Hand the lines of traces the tree view shows to it (they print in
    /// its blocks instead of here). Only the first view attached counts.
    pub fn attach_tree(&self, tree: super::tree::TreeView) {
        let _ = self.inner.tree.set(tree);
    }

    /// Write one line.
    pub fn write(&self, record: &LogRecord<'_>) {
        if let Some(tree) = self.inner.tree.get()
            && tree.capture(record)
        {
            return;
        }
        let mut line = match self.inner.format {
            LogFormat::Json => format_json(record),
            LogFormat::Text => format_text(record),
        };
        line.push('\n');
        // A poisoned lock only means another thread panicked mid-write; the
        // sink itself is still usable.
        let mut sink = self.inner.sink.lock().unwrap_or_else(|e| e.into_inner());
        // Nowhere to report a failing log sink; dropping the line is all we can do.
        let _ = sink.write_all(line.as_bytes());
        let _ = sink.flush();
    }

    /// A `tracing` layer writing host events through this logger.
    pub fn layer(&self) -> LogLayer {
        LogLayer {
            logger: self.clone(),
        }
    }
}

fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

fn format_json(record: &LogRecord<'_>) -> String {
    let mut map = Map::new();
    map.insert("timestamp".into(), timestamp().into());
    map.insert("level".into(), record.level.as_str().into());
    map.insert("target".into(), record.target.into());
    map.insert("message".into(), record.message.into());
    for (key, value) in record.fields {
        // Reserved keys keep their meaning; a field of the same name is renamed.
        let key = match *key {
            "timestamp" | "level" | "target" | "message" | "trace_id" | "span_id" => {
                format!("field.{key}")
            }
            other => other.to_owned(),
        };
        map.insert(key, value.clone());
    }
    if let Some(ids) = record.trace {
        map.insert("trace_id".into(), ids.trace_id.to_string().into());
        map.insert("span_id".into(), ids.span_id.to_string().into());
    }
    Value::Object(map).to_string()
}

fn format_text(record: &LogRecord<'_>) -> String {
    use std::fmt::Write as _;
    let mut line = format!(
        "{} {:>5} {}: {}",
        timestamp(),
        record.level.as_str().to_ascii_uppercase(),
        record.target,
        record.message
    );
    for (key, value) in record.fields {
        match value {
            Value::String(s)
                if !s.is_empty()
                    && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') =>
            {
                let _ = write!(line, " {key}={s}");
            }
            Value::String(s) => {
                let _ = write!(line, " {key}={s:?}");
            }
            other => {
                let _ = write!(line, " {key}={other}");
            }
        }
    }
    if let Some(ids) = record.trace {
        let _ = write!(line, " trace_id={} span_id={}", ids.trace_id, ids.span_id);
    }
    line
}

/// A `tracing` layer that formats events with a [`Logger`], adding the ids
/// of the current OpenTelemetry span.
#[derive(Clone, Debug)]
pub struct LogLayer {
    logger: Logger,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let fields: Vec<(&str, Value)> = visitor
            .fields
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let metadata = event.metadata();
        self.logger.write(&LogRecord {
            level: Level::from_tracing(metadata.level()),
            target: metadata.target(),
            message: &visitor.message,
            fields: &fields,
            trace: TraceIds::current(),
        });
    }
}

/// Longest message or field value the host logs: a failing list's body in
/// a client error would otherwise make one line of hundreds of kilobytes.
pub const MAX_VALUE_BYTES: usize = 4096;

/// `s`, cut at `MAX_VALUE_BYTES` (on a character boundary) with a note of
/// how much was left out.
fn bounded(mut s: String) -> String {
    if s.len() <= MAX_VALUE_BYTES {
        return s;
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… [{cut} more bytes]"));
    s
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = bounded(value.to_owned());
        } else {
            self.fields
                .push((field.name(), bounded(value.to_owned()).into()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), value.into()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .push((field.name(), bounded(value.to_string()).into()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = bounded(format!("{value:?}"));
        } else {
            self.fields
                .push((field.name(), bounded(format!("{value:?}")).into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|b| b.clone()).unwrap_or_default())
                .unwrap_or_default()
        }
    }

    fn ids() -> TraceIds {
        TraceIds {
            trace_id: TraceId::from(0x0102u128),
            span_id: SpanId::from(0x0304u64),
        }
    }

    #[test]
    fn json_lines_carry_fields_and_ids_and_protect_reserved_keys() -> Result<(), serde_json::Error>
    {
        let buffer = Buffer::default();
        let logger = Logger::to_writer(LogFormat::Json, Level::Info, buffer.clone());
        logger.write(&LogRecord {
            level: Level::Warn,
            target: "plugin",
            message: "hello",
            fields: &[
                ("plugin", "demo".into()),
                ("message", "sneaky".into()),
                ("n", 3.into()),
            ],
            trace: Some(ids()),
        });
        let line: Value = serde_json::from_str(buffer.text().trim())?;
        assert_eq!(line["level"], "warn");
        assert_eq!(line["message"], "hello");
        assert_eq!(line["field.message"], "sneaky");
        assert_eq!(line["plugin"], "demo");
        assert_eq!(line["n"], 3);
        assert_eq!(line["trace_id"], "00000000000000000000000000000102");
        assert_eq!(line["span_id"], "0000000000000304");
        Ok(())
    }

    #[test]
    fn text_lines_quote_values_with_spaces() {
        let buffer = Buffer::default();
        let logger = Logger::to_writer(LogFormat::Text, Level::Info, buffer.clone());
        logger.write(&LogRecord {
            level: Level::Info,
            target: "t",
            message: "m",
            fields: &[("a", "b c".into()), ("d", "e".into())],
            trace: Some(ids()),
        });
        let text = buffer.text();
        assert!(text.contains(" INFO t: m a=\"b c\" d=e trace_id=00000000000000000000000000000102 span_id=0000000000000304"), "{text}");
    }

    #[test]
    fn long_values_are_cut_with_a_note() {
        let long = "é".repeat(MAX_VALUE_BYTES);
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_VALUE_BYTES + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("… [{} more bytes]", long.len() - MAX_VALUE_BYTES)));
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn plugin_level_filters() {
        let logger = Logger::to_writer(LogFormat::Json, Level::Warn, std::io::sink());
        assert!(!logger.plugin_enabled(Level::Info));
        assert!(logger.plugin_enabled(Level::Error));
    }
}
