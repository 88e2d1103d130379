//! The sampler variables decide which reconciles are exported: checked
//! with real reconciles of demoapp and an in-memory exporter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use reconcile_host::engine::Limits;
use reconcile_host::reconcile::{Outcome, Reconciled};
use reconcile_host::telemetry::TelemetryConfig;
use support::{Harness, demoapp_request};

fn harness(vars: &[(&str, &str)]) -> Harness {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let config = TelemetryConfig::from_lookup(|k| map.get(k).cloned());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    Harness::with(config.sampler.build(), Limits::default())
}

fn parent(sampled: bool) -> (opentelemetry::Context, SpanContext) {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(
        TraceId::from(0xabcdefu128),
        SpanId::from(0x1234u64),
        flags,
        true,
        TraceState::default(),
    );
    (
        opentelemetry::Context::new().with_remote_span_context(sc.clone()),
        sc,
    )
}

async fn reconcile(h: &Harness, parent: Option<opentelemetry::Context>) -> Reconciled {
    let plugin = h.load("demoapp").await;
    let mut request = demoapp_request();
    request.parent = parent;
    let reconciled = plugin.reconcile(request).await;
    assert_eq!(reconciled.outcome, Outcome::Done);
    reconciled
}

#[tokio::test]
async fn always_off_exports_nothing_but_logs_keep_the_trace_id() {
    let h = harness(&[("OTEL_TRACES_SAMPLER", "always_off")]);
    let reconciled = reconcile(&h, None).await;
    assert!(!reconciled.sampled);
    assert!(h.finished().is_empty());
    // An unsampled reconcile still has ids, and its log lines carry them.
    assert_ne!(reconciled.trace_id, TraceId::INVALID);
    let lines = h.logs.lines();
    let line = lines
        .iter()
        .find(|l| l["message"] == "reconciled DemoApp")
        .unwrap();
    assert_eq!(line["trace_id"], reconciled.trace_id.to_string());
}

#[tokio::test]
async fn traceidratio_zero_exports_nothing() {
    let h = harness(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ]);
    for _ in 0..20 {
        assert!(!reconcile(&h, None).await.sampled);
    }
    assert!(h.finished().is_empty());
}

#[tokio::test]
async fn traceidratio_one_exports_everything() {
    let h = harness(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
    ]);
    for _ in 0..5 {
        assert!(reconcile(&h, None).await.sampled);
    }
    assert_eq!(
        h.finished()
            .iter()
            .filter(|s| s.name == "reconcile")
            .count(),
        5
    );
}

#[tokio::test]
async fn parent_based_follows_a_sampled_parent() {
    let h = harness(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]);
    let (cx, sc) = parent(true);
    let reconciled = reconcile(&h, Some(cx)).await;
    assert!(reconciled.sampled);
    let spans = h.finished();
    let root = spans.iter().find(|s| s.name == "reconcile").unwrap();
    assert_eq!(root.span_context.trace_id(), sc.trace_id());
    assert_eq!(root.parent_span_id, sc.span_id());
    assert!(root.parent_span_is_remote);

    // Without a parent, the root sampler (always_off) decides.
    let h = harness(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]);
    assert!(!reconcile(&h, None).await.sampled);
    assert!(h.finished().is_empty());
}

#[tokio::test]
async fn parent_based_follows_an_unsampled_parent() {
    let h = harness(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")]);
    let (cx, sc) = parent(false);
    let reconciled = reconcile(&h, Some(cx)).await;
    assert!(!reconciled.sampled);
    assert_eq!(reconciled.trace_id, sc.trace_id());
    assert!(h.finished().is_empty());

    // The default sampler is parentbased_always_on: roots are sampled.
    let h = harness(&[]);
    assert!(reconcile(&h, None).await.sampled);
}

#[tokio::test]
async fn parent_based_ratio_keeps_sampled_parents_even_at_zero() {
    let h = harness(&[
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ]);
    assert!(!reconcile(&h, None).await.sampled);
    let (cx, _) = parent(true);
    assert!(reconcile(&h, Some(cx)).await.sampled);
    assert_eq!(
        h.finished()
            .iter()
            .filter(|s| s.name == "reconcile")
            .count(),
        1
    );
}
