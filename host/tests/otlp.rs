//! Spans reach a real OTLP receiver on 127.0.0.1, over gRPC and over
//! HTTP/protobuf, configured only through the OTEL_* variables; and a
//! collector that is down or stuck never holds up a reconcile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::reconcile::Outcome;
use reconcile_host::telemetry::{Telemetry, TelemetryConfig};
use support::otlp::{Received, Receiver, string_attr};
use support::{Captured, demoapp_request, guest};

fn config(vars: &[(&str, String)]) -> TelemetryConfig {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    TelemetryConfig::from_lookup(|k| map.get(k).cloned())
}

fn engine(telemetry: &Telemetry) -> Engine {
    let logger = reconcile_host::telemetry::logs::Logger::to_writer(
        reconcile_host::telemetry::logs::LogFormat::Json,
        reconcile_host::telemetry::logs::Level::Info,
        Captured::default(),
    );
    let cache_dir = Some(xtask::project_root().join("target/test-compile-cache"));
    Engine::new(
        EngineConfig {
            cache_dir,
            ..EngineConfig::default()
        },
        telemetry.tracer(),
        logger,
    )
    .unwrap()
}

/// Runs `n` demoapp reconciles and shuts telemetry down (flushing).
async fn reconcile_and_flush(telemetry: Telemetry, n: usize) {
    let engine = engine(&telemetry);
    let plugin = engine
        .load_file(&guest("demoapp"))
        .await
        .unwrap()
        .with_backend(Arc::new(support::demoapp_backend()));
    for _ in 0..n {
        assert_eq!(
            plugin.reconcile(demoapp_request()).await.outcome,
            Outcome::Done
        );
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(10)))
        .await
        .unwrap()
        .unwrap();
}

/// Decodes what the receiver got and checks resource, scope, spans and tree.
fn assert_received(received: &Received, reconciles: usize) {
    let requests = received.lock().unwrap().clone();
    assert!(!requests.is_empty(), "the receiver got nothing");
    let mut spans: Vec<Span> = Vec::new();
    for request in &requests {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().unwrap();
            assert_eq!(
                string_attr(&resource.attributes, "service.name").as_deref(),
                Some("otlp-test")
            );
            assert_eq!(
                string_attr(&resource.attributes, "service.version").as_deref(),
                Some(env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(
                string_attr(&resource.attributes, "k8s.pod.name").as_deref(),
                Some("host-0")
            );
            assert_eq!(
                string_attr(&resource.attributes, "k8s.namespace.name").as_deref(),
                Some("operators")
            );
            assert_eq!(
                string_attr(&resource.attributes, "deployment.environment").as_deref(),
                Some("test")
            );
            for ss in &rs.scope_spans {
                assert_eq!(ss.scope.as_ref().unwrap().name, "reconcile-host");
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == "reconcile").collect();
    let renders: Vec<&Span> = spans.iter().filter(|s| s.name == "render").collect();
    assert_eq!(roots.len(), reconciles);
    assert_eq!(renders.len(), reconciles);
    for root in &roots {
        assert!(root.parent_span_id.is_empty());
        assert_eq!(
            string_attr(&root.attributes, "k8s.controller").as_deref(),
            Some("demoapp")
        );
        assert_eq!(
            string_attr(&root.attributes, "k8s.name").as_deref(),
            Some("hello")
        );
        assert_eq!(
            string_attr(&root.attributes, "reconcile.result").as_deref(),
            Some("done")
        );
        assert_eq!(
            string_attr(&root.attributes, "reconcile.attempt").as_deref(),
            Some("1")
        );
        let render = renders
            .iter()
            .find(|r| r.trace_id == root.trace_id)
            .expect("render in the same trace");
        assert_eq!(render.parent_span_id, root.span_id);
    }
}

fn vars(protocol: &str, endpoint: String) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_TRACES_EXPORTER", "otlp".into()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "otlp-test".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ),
        ("POD_NAME", "host-0".into()),
        ("POD_NAMESPACE", "operators".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_grpc_receiver() {
    let (addr, received) = Receiver::start().await;
    let telemetry = Telemetry::init(&config(&vars("grpc", format!("http://{addr}")))).unwrap();
    reconcile_and_flush(telemetry, 3).await;
    assert_received(&received, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_protobuf_receiver() {
    use axum::http::{HeaderMap, StatusCode};
    let received: Received = Arc::default();
    let sink = received.clone();
    let headers_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let content_types = headers_seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            let content_types = content_types.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                content_types.lock().unwrap().push(content_type);
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        sink.lock().unwrap().push(request);
                        (
                            StatusCode::OK,
                            ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec(),
                        )
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let telemetry =
        Telemetry::init(&config(&vars("http/protobuf", format!("http://{addr}")))).unwrap();
    reconcile_and_flush(telemetry, 2).await;
    assert_received(&received, 2);
    assert!(
        headers_seen
            .lock()
            .unwrap()
            .iter()
            .all(|c| c == "application/x-protobuf")
    );
}

/// A port where nothing listens.
async fn refused_endpoint() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A collector that accepts connections and never answers; reports each
/// accepted connection.
async fn stuck_endpoint() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

async fn reconciles_succeed_while_the_collector_is_stuck(protocol: &str) {
    let (addr, mut accepted) = stuck_endpoint().await;
    let mut vars = vars(protocol, format!("http://{addr}"));
    vars.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "600000".into()));
    let telemetry = Telemetry::init(&config(&vars)).unwrap();
    let engine = engine(&telemetry);
    let plugin = engine
        .load_file(&guest("demoapp"))
        .await
        .unwrap()
        .with_backend(Arc::new(support::demoapp_backend()));
    assert_eq!(
        plugin.reconcile(demoapp_request()).await.outcome,
        Outcome::Done
    );
    // Push an export out now; it hangs on the stuck collector (its timeout
    // is ten minutes), on a thread of its own.
    let provider = telemetry.provider().clone();
    std::thread::spawn(move || provider.force_flush());
    accepted.recv().await.expect("the exporter connected");
    // With an export stuck, reconciles still complete.
    for _ in 0..20 {
        assert_eq!(
            plugin.reconcile(demoapp_request()).await.outcome,
            Outcome::Done
        );
    }
    // Shutdown gives up after its own timeout instead of holding the process.
    let result =
        tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_millis(500)))
            .await
            .unwrap();
    assert!(result.is_err(), "the stuck export cannot have completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_grpc_collector_never_holds_a_reconcile() {
    reconciles_succeed_while_the_collector_is_stuck("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_http_collector_never_holds_a_reconcile() {
    reconciles_succeed_while_the_collector_is_stuck("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_reconciles() {
    for protocol in ["grpc", "http/protobuf"] {
        let addr = refused_endpoint().await;
        let telemetry =
            Telemetry::init(&config(&vars(protocol, format!("http://{addr}")))).unwrap();
        let engine = engine(&telemetry);
        let plugin = engine
            .load_file(&guest("demoapp"))
            .await
            .unwrap()
            .with_backend(Arc::new(support::demoapp_backend()));
        for _ in 0..10 {
            assert_eq!(
                plugin.reconcile(demoapp_request()).await.outcome,
                Outcome::Done
            );
        }
        let flushed = telemetry.clone();
        let _ = tokio::task::spawn_blocking(move || flushed.shutdown(Duration::from_secs(2)))
            .await
            .unwrap();
        // Every span of the ten reconciles is counted as dropped.
        assert!(
            telemetry.dropped_spans() >= 10,
            "{protocol}: {} dropped",
            telemetry.dropped_spans()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_unusable_collector_is_a_warning_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let object = dir.path().join("cm.yaml");
    std::fs::write(
        &object,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: default\n",
    )
    .unwrap();
    let refused = refused_endpoint().await;
    for (variable, value, expect) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{refused}"),
            "cannot export",
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "ftp://collector:4318".to_owned(),
            "the scheme is ftp",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
            .args(["--log-format", "json", "call"])
            .arg(guest("noop"))
            .arg("--object")
            .arg(&object)
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env(variable, &value)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{variable}={value}: {stderr}");
        let warning = stderr
            .lines()
            .find(|l| l.contains(expect))
            .unwrap_or_else(|| panic!("{variable}={value}: no warning:\n{stderr}"));
        assert!(warning.contains("\"level\":\"warn\""), "{warning}");
        assert!(warning.contains(variable), "{warning}");
    }
}
