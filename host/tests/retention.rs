//! Error- and latency-biased retention, end to end to a real OTLP receiver:
//! at 1% head sampling, every failed and every slow reconcile's trace is
//! exported whole, and nothing else beyond the head-sampled ones; with
//! retention off only those; and the buffer's caps hold against a plugin
//! that makes far more spans than they allow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::Span;
use reconcile_host::caps::k8s::{
    CallContext, K8sBackend, K8sCall, K8sError, K8sErrorKind, K8sResponse,
};
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::reconcile::Outcome;
use reconcile_host::telemetry::{Telemetry, TelemetryConfig};
use support::otlp::{Received, Receiver, spans, string_attr};
use support::{Captured, RecordingBackend, demoapp_request, guest};

/// What the next calls do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Slow(Duration),
}

/// demoapp's API server: answers as [`RecordingBackend`], or fails, or is
/// slow, as the test says.
#[derive(Clone)]
struct Scripted {
    inner: RecordingBackend,
    mode: Arc<Mutex<Mode>>,
}

#[async_trait::async_trait]
impl K8sBackend for Scripted {
    async fn call(&self, call: K8sCall, cx: &CallContext) -> Result<K8sResponse, K8sError> {
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Ok => {}
            Mode::Fail => {
                return Err(K8sError::new(
                    K8sErrorKind::Unavailable,
                    503,
                    "ServiceUnavailable",
                    "the test's API server is down",
                ));
            }
            Mode::Slow(delay) => tokio::time::sleep(delay).await,
        }
        self.inner.call(call, cx).await
    }
}

fn telemetry(otlp: std::net::SocketAddr, extra: &[(&str, &str)]) -> Telemetry {
    let mut vars: HashMap<String, String> = [
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", "0.01".to_owned()),
        (
            "RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS",
            "200".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = TelemetryConfig::from_lookup(|k| vars.get(k).cloned());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    Telemetry::init(&config).unwrap()
}

fn engine(telemetry: &Telemetry) -> Engine {
    let logger = reconcile_host::telemetry::logs::Logger::to_writer(
        reconcile_host::telemetry::logs::LogFormat::Json,
        reconcile_host::telemetry::logs::Level::Error,
        Captured::default(),
    );
    Engine::new(
        EngineConfig {
            cache_dir: Some(xtask::project_root().join("target/test-compile-cache")),
            ..EngineConfig::default()
        },
        telemetry.tracer(),
        logger,
    )
    .unwrap()
}

async fn flush(telemetry: Telemetry) {
    tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exported spans, by trace id.
fn traces(received: &Received) -> BTreeMap<String, Vec<Span>> {
    let mut traces: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for span in spans(received) {
        traces.entry(hex(&span.trace_id)).or_default().push(span);
    }
    traces
}

/// One run: 1000 demoapp reconciles, of which 20 fail and 5 are slow.
struct Run {
    failed: BTreeSet<String>,
    slow: BTreeSet<String>,
    sampled: BTreeSet<String>,
    received: Received,
    telemetry_stats: (u64, u64, u64),
}

async fn thousand_reconciles(extra: &[(&str, &str)]) -> Run {
    let (otlp, received) = Receiver::start().await;
    let telemetry = telemetry(otlp, extra);
    let mode = Arc::new(Mutex::new(Mode::Ok));
    let backend = Scripted {
        inner: support::demoapp_backend(),
        mode: mode.clone(),
    };
    let plugin = engine(&telemetry)
        .load_file(&guest("demoapp"))
        .await
        .unwrap()
        .with_backend(Arc::new(backend));
    let (mut failed, mut slow, mut sampled) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for i in 0..1000 {
        let this = if i % 50 == 7 {
            Mode::Fail
        } else if i % 200 == 99 {
            Mode::Slow(Duration::from_millis(250))
        } else {
            Mode::Ok
        };
        *mode.lock().unwrap() = this;
        let reconciled = plugin.reconcile(demoapp_request()).await;
        let trace = reconciled.trace_id.to_string();
        match this {
            Mode::Fail => {
                assert!(matches!(reconciled.outcome, Outcome::Failed(_)));
                failed.insert(trace.clone());
            }
            Mode::Slow(_) => {
                assert_eq!(reconciled.outcome, Outcome::Done);
                slow.insert(trace.clone());
            }
            Mode::Ok => assert_eq!(reconciled.outcome, Outcome::Done),
        }
        if reconciled.sampled {
            sampled.insert(trace);
        }
    }
    let retention = telemetry.retention().clone();
    flush(telemetry).await;
    Run {
        failed,
        slow,
        sampled,
        received,
        telemetry_stats: (
            retention.kept_errors(),
            retention.kept_slow(),
            retention.discarded(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_one_percent_every_failed_and_slow_trace_is_exported_whole_and_no_other() {
    let run = thousand_reconciles(&[]).await;
    assert_eq!(run.failed.len(), 20);
    assert_eq!(run.slow.len(), 5);
    // About 1% of the other 975 are head-sampled (the mean is 9.75).
    let others: BTreeSet<&String> = run
        .sampled
        .iter()
        .filter(|t| !run.failed.contains(*t) && !run.slow.contains(*t))
        .collect();
    assert!(
        (1..=30).contains(&others.len()),
        "{} head-sampled",
        others.len()
    );

    let traces = traces(&run.received);
    let expected: BTreeSet<String> = run
        .failed
        .iter()
        .chain(&run.slow)
        .chain(&run.sampled)
        .cloned()
        .collect();
    let exported: BTreeSet<String> = traces.keys().cloned().collect();
    assert_eq!(
        exported, expected,
        "exactly the failed, slow and head-sampled traces"
    );

    for (trace, spans) in &traces {
        // Whole: the root and its child, the child's parent intact.
        let root = spans.iter().find(|s| s.name == "reconcile").unwrap();
        assert!(
            root.parent_span_id.is_empty(),
            "{trace}: the root has no parent"
        );
        let render = spans.iter().find(|s| s.name == "render").unwrap();
        assert_eq!(render.parent_span_id, root.span_id, "{trace}");
        assert_eq!(spans.len(), 2, "{trace}: {spans:#?}");
        let why = if run.sampled.contains(trace) {
            None
        } else if run.failed.contains(trace) {
            Some("error")
        } else {
            Some("slow")
        };
        for span in spans {
            assert_eq!(
                string_attr(&span.attributes, "reconcile.retained").as_deref(),
                why,
                "{trace}: {}",
                span.name
            );
            // Exported as sampled.
            assert_eq!(span.flags & 0x1, 0x1, "{trace}: {}", span.name);
        }
        if why == Some("error") {
            assert_eq!(
                string_attr(&root.attributes, "error.type").as_deref(),
                Some("k8s")
            );
        }
    }
    let sampled_failed = run.failed.intersection(&run.sampled).count() as u64;
    let sampled_slow = run.slow.intersection(&run.sampled).count() as u64;
    let (kept_errors, kept_slow, discarded) = run.telemetry_stats;
    assert_eq!(kept_errors, 20 - sampled_failed);
    assert_eq!(kept_slow, 5 - sampled_slow);
    assert_eq!(
        discarded,
        1000 - run.sampled.len() as u64 - kept_errors - kept_slow
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retention_off_only_the_head_sampled_traces_are_exported() {
    let run = thousand_reconciles(&[
        ("RECONCILE_HOST_TRACES_KEEP_ERRORS", "false"),
        ("RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS", "0"),
    ])
    .await;
    let exported: BTreeSet<String> = traces(&run.received).keys().cloned().collect();
    assert_eq!(exported, run.sampled);
    assert!(!run.sampled.is_empty());
    assert!(
        run.failed.iter().any(|t| !exported.contains(t)),
        "some failures are lost without retention"
    );
    assert_eq!(run.telemetry_stats, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_caps_hold_against_a_plugin_that_floods_spans() {
    let (otlp, received) = Receiver::start().await;
    // Nothing head-sampled: everything exported is retained.
    let telemetry = telemetry(
        otlp,
        &[
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("RECONCILE_HOST_TRACES_MAX_SPANS_PER_TRACE", "50"),
            ("RECONCILE_HOST_TRACES_MAX_BUFFERED_SPANS", "400"),
        ],
    );
    let retention = telemetry.retention().clone();
    // The conformance suite's flooding plugin, built from source.
    let flood =
        xtask::build(&xtask::project_root(), xtask::CONFORMANCE_PLUGINS).unwrap()["cf-flood"]
            .clone();
    let plugin = engine(&telemetry).load_file(&flood).await.unwrap();

    // One reconcile: its 128 guest spans (the host's own cap) meet the
    // per-trace cap of 50.
    let reconciled = plugin.reconcile(support::configmap_request("one")).await;
    assert!(matches!(reconciled.outcome, Outcome::Failed(_)));
    let dropped_by_one = retention.spans_dropped();
    assert!(dropped_by_one >= 78, "{dropped_by_one}");
    assert_eq!(retention.buffered(), 0);

    // Twenty at once: the buffer never holds more than 400 spans.
    let highest = Arc::new(AtomicU64::new(0));
    let watching = {
        let (retention, highest) = (retention.clone(), highest.clone());
        tokio::spawn(async move {
            loop {
                highest.fetch_max(retention.buffered(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let runs = (0..20).map(|i| {
        let plugin = plugin.clone();
        tokio::spawn(async move {
            plugin
                .reconcile(support::configmap_request(&format!("flood-{i}")))
                .await
        })
    });
    let mut trace_ids = vec![reconciled.trace_id.to_string()];
    for run in runs {
        let reconciled = run.await.unwrap();
        assert!(matches!(reconciled.outcome, Outcome::Failed(_)));
        trace_ids.push(reconciled.trace_id.to_string());
    }
    watching.abort();
    let highest = highest.load(Ordering::Relaxed);
    assert!(highest <= 400, "{highest} spans buffered");
    assert!(highest > 0, "the buffer was used");
    assert_eq!(retention.buffered(), 0, "every trace decided");
    assert!(retention.spans_dropped() >= dropped_by_one + 20 * 78);
    flush(telemetry).await;

    // Every failed trace is exported with its root, within the cap.
    let traces = traces(&received);
    for trace in &trace_ids {
        let spans = traces
            .get(trace)
            .unwrap_or_else(|| panic!("{trace} not exported"));
        assert!(spans.len() <= 51, "{trace}: {} spans", spans.len());
        let root = spans.iter().find(|s| s.name == "reconcile").unwrap();
        for span in spans {
            assert!(
                span.span_id == root.span_id || span.parent_span_id == root.span_id,
                "parents intact"
            );
        }
    }
    let first = &traces[&trace_ids[0]];
    assert_eq!(first.len(), 51);
    let root = first.iter().find(|s| s.name == "reconcile").unwrap();
    assert_eq!(
        string_attr(&root.attributes, "reconcile.retained.dropped_spans"),
        Some(dropped_by_one.to_string())
    );
}
