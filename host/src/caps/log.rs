//! The `log` interface and the plugin's stdout and stderr: every line
//! becomes a host log line with the plugin name and the current span's ids.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::Value;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::caps::trace::{CurrentSpan, truncate};
use crate::engine::HostState;
use crate::engine::bindings::log as wit;
use crate::telemetry::logs::{Level, LogRecord, Logger};

/// Longest log message, in bytes; longer ones are cut.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most fields on one plugin log line.
pub const MAX_FIELDS: usize = 32;
/// Most stdout + stderr bytes one reconcile may write; the rest is dropped.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Who is logging: the plugin's name and the logger.
#[derive(Clone, Debug)]
pub(crate) struct GuestLog {
    pub(crate) logger: Logger,
    pub(crate) plugin: Arc<str>,
}

pub(crate) fn level(level: wit::Level) -> Level {
    match level {
        wit::Level::Trace => Level::Trace,
        wit::Level::Debug => Level::Debug,
        wit::Level::Info => Level::Info,
        wit::Level::Warn => Level::Warn,
        wit::Level::Error => Level::Error,
    }
}

impl wit::Host for HostState {
    fn enabled(&mut self, l: wit::Level) -> wasmtime::Result<bool> {
        Ok(self.log.logger.plugin_enabled(level(l)))
    }

    fn log(
        &mut self,
        l: wit::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.plugin_log(level(l), message, fields, |v| {
            Value::from(truncate(v, MAX_MESSAGE_BYTES).into_owned())
        });
        Ok(())
    }
}

impl HostState {
    /// Writes one plugin log line (every contract version): bounded
    /// message and fields, the plugin's name and the current span's ids.
    pub(crate) fn plugin_log<V>(
        &mut self,
        l: Level,
        message: String,
        fields: Vec<(String, V)>,
        value: impl Fn(V) -> Value,
    ) {
        if !self.log.logger.plugin_enabled(l) {
            return;
        }
        let message = truncate(message, MAX_MESSAGE_BYTES);
        let fields: Vec<(String, Value)> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (truncate(k, 128).into_owned(), value(v)))
            .collect();
        let mut all: Vec<(&str, Value)> = Vec::with_capacity(fields.len() + 1);
        all.push(("plugin", Value::from(&*self.log.plugin)));
        all.extend(fields.iter().map(|(k, v)| (k.as_str(), v.clone())));
        self.log.logger.write(&LogRecord {
            level: l,
            target: "plugin",
            message: &message,
            fields: &all,
            trace: self.trace.current_span().get(),
        });
    }
}

/// Lines of stderr kept to explain a trap.
const STDERR_TAIL_LINES: usize = 8;

/// The last lines a plugin wrote to stderr in this call. A Rust plugin's
/// panic message lands there just before the trap.
#[derive(Clone, Debug, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: &str) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    /// The last panic message, as `panicked at <file:line:col>: <message>`.
    pub(crate) fn panic_message(&self) -> Option<String> {
        let tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let start = tail
            .iter()
            .rposition(|l| l.starts_with("thread '") && l.contains("panicked at "))?;
        let location = tail[start]
            .split_once("panicked at ")?
            .1
            .trim_end_matches(':');
        let message: Vec<&str> = tail
            .iter()
            .skip(start + 1)
            .take_while(|l| !l.starts_with("note: "))
            .map(String::as_str)
            .collect();
        Some(format!("panicked at {location}: {}", message.join(" ")))
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A plugin's stdout or stderr, turned into log lines. Each call of the
/// plugin gets a fresh one.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<Mutex<OutputState>>,
}

struct OutputState {
    stream: Stream,
    log: GuestLog,
    current: CurrentSpan,
    line: Vec<u8>,
    tail: Option<StderrTail>,
    written: Arc<Mutex<usize>>,
    overflowed: bool,
}

impl GuestOutput {
    /// A stream of the plugin's output; `written` is shared by stdout and
    /// stderr to enforce [`MAX_OUTPUT_BYTES`] on both together.
    /// `tail`, for stderr, keeps its last lines.
    pub(crate) fn new(
        stream: Stream,
        log: GuestLog,
        current: CurrentSpan,
        tail: Option<StderrTail>,
        written: Arc<Mutex<usize>>,
    ) -> Self {
        GuestOutput {
            inner: Arc::new(Mutex::new(OutputState {
                stream,
                log,
                current,
                line: Vec::new(),
                tail,
                written,
                overflowed: false,
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.write(bytes);
    }
}

impl OutputState {
    fn write(&mut self, bytes: &[u8]) {
        let allowed = {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let allowed = bytes.len().min(MAX_OUTPUT_BYTES.saturating_sub(*written));
            *written += allowed;
            allowed
        };
        let mut rest = &bytes[..allowed];
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&rest[..newline]);
            self.emit();
            rest = &rest[newline + 1..];
        }
        self.line.extend_from_slice(rest);
        if self.line.len() >= MAX_MESSAGE_BYTES {
            self.emit();
        }
        if allowed < bytes.len() && !self.overflowed {
            self.overflowed = true;
            self.emit();
            self.record(Level::Warn, &format!("plugin output over {MAX_OUTPUT_BYTES} bytes in one reconcile; the rest is dropped"));
        }
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
        if let Some(tail) = &self.tail {
            tail.push(&text);
        }
        let level = match self.stream {
            Stream::Stdout => Level::Info,
            Stream::Stderr => Level::Warn,
        };
        self.record(level, &text);
    }

    fn record(&self, level: Level, message: &str) {
        if !self.log.logger.plugin_enabled(level) {
            return;
        }
        let stream = match self.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        self.log.logger.write(&LogRecord {
            level,
            target: "plugin",
            message,
            fields: &[
                ("plugin", Value::from(&*self.log.plugin)),
                ("stream", Value::from(stream)),
            ],
            trace: self.current.get(),
        });
    }
}

impl Drop for OutputState {
    fn drop(&mut self) {
        // The plugin's last line may lack a newline.
        self.emit();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
