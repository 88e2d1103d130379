//! What the benchmarks share.
#![allow(dead_code)]

use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reconcile_host::reconcile::{ObjectRef, ReconcileRequest};

/// An exporter that takes every batch and drops it.
#[derive(Debug)]
pub struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// The `q` quantile of `samples`.
pub fn percentile(mut samples: Vec<Duration>, q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

/// A reconcile of the ConfigMap `default/web` whose JSON is `body`.
pub fn configmap_request(body: &str) -> ReconcileRequest {
    ReconcileRequest::new(
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        },
        Some(body.to_owned()),
    )
}

/// The plain `default/web` ConfigMap.
pub const WEB: &str =
    r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web","namespace":"default"}}"#;
