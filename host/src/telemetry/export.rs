//! The span exporter, watched: a collector that refuses connections, a
//! host that does not resolve, a timeout, each drop a batch of spans. The
//! host says so once per cause (again at most once a minute) and counts
//! every dropped span, instead of losing them silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// How often one cause of failed exports is logged again.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Spans the exporter could not deliver, shared with [`super::Telemetry`].
#[derive(Debug, Default)]
pub struct Drops {
    spans: AtomicU64,
    exported: AtomicU64,
    warned: Mutex<HashMap<String, Instant>>,
}

impl Drops {
    /// Spans dropped so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Spans the exporter delivered so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Counts `n` dropped spans; true if `cause` should be logged now.
    fn record(&self, n: usize, cause: &str) -> bool {
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match warned.get(cause) {
            Some(at) if now.duration_since(*at) < WARN_EVERY => false,
            _ => {
                warned.insert(cause.to_owned(), now);
                true
            }
        }
    }
}

/// An exporter whose failures are logged and counted.
#[derive(Debug)]
pub struct Observed<E> {
    inner: E,
    endpoint: String,
    variable: &'static str,
    drops: Arc<Drops>,
}

impl<E> Observed<E> {
    /// Wraps `inner`, which sends to `endpoint` (set by `variable`).
    pub fn new(inner: E, endpoint: &str, variable: &'static str, drops: Arc<Drops>) -> Self {
        Observed {
            inner,
            endpoint: endpoint.to_owned(),
            variable,
            drops,
        }
    }
}

/// A cause without the parts that change from one failure to the next.
fn cause_of(error: &str) -> String {
    let mut cause: String = error.chars().take(300).collect();
    if let Some(i) = cause.find(" after ") {
        cause.truncate(i);
    }
    cause
}

impl<E: SpanExporter> SpanExporter for Observed<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        if result.is_ok() {
            self.drops.exported.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Err(error) = &result {
            let text = error.to_string();
            let cause = cause_of(&text);
            if self.drops.record(n, &cause) {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    dropped = self.drops.spans(),
                    "cannot export {n} spans to {}: {text}; {} spans dropped so far (is the collector running? check {})",
                    self.endpoint,
                    self.drops.spans(),
                    self.variable,
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_cause_and_every_span_counted() {
        let drops = Drops::default();
        assert!(drops.record(3, "connection refused"));
        assert!(!drops.record(2, "connection refused"));
        assert!(drops.record(1, "dns error"));
        assert_eq!(drops.spans(), 6);
        assert_eq!(
            cause_of("request timed out after 10.002s"),
            "request timed out"
        );
    }
}
