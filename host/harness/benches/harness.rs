//! The harness's per-reconcile cost beside a bare engine call, and one
//! full demoapp story, in the same run.
//!
//! - bare: `Plugin::reconcile` of the no-op plugin (`tests/plugins/noop`)
//!   with the in-memory exporter, as the harness has it;
//! - harness: `Harness::reconcile_named` of the same plugin on a ConfigMap:
//!   the list of its type that fills the host's cache before and after,
//!   the host's reconcile step, the bookkeeping;
//! - story: demoapp from creation to deletion (apply, reconcile, settle,
//!   update, the Deployment ready, a 409 and its retry, delete), harness
//!   started once per story.
//!
//! Run: `cargo bench -p reconcile-test --bench harness`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::reconcile::{ObjectRef, Outcome, ReconcileRequest};
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use reconcile_test::{Harness, PluginSource, Verb};

const WARMUP: usize = 50;
const CALLS: usize = 500;
const STORIES: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn show(name: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let p50 = percentile(&times, 0.5);
    println!(
        "{name:<28} p50 {:>9.1} µs   p99 {:>9.1} µs   ({} runs)",
        p50.as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.len()
    );
    p50
}

fn configmap() -> ReconcileRequest {
    let body =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web","namespace":"default"}}"#;
    ReconcileRequest::new(
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: "web".into(),
        },
        Some(body.into()),
    )
}

async fn bare(noop: &std::path::Path) -> Duration {
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .with_sampler(Sampler::AlwaysOn)
        .build();
    let telemetry = Telemetry::from_provider(provider);
    let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
    let engine = Engine::new(EngineConfig::default(), telemetry.tracer(), logger).unwrap();
    let plugin = engine.load_file(noop).await.unwrap();
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let r = plugin.reconcile(configmap()).await;
        let took = started.elapsed();
        assert_eq!(r.outcome, Outcome::Done);
        spans.reset();
        if i >= WARMUP {
            times.push(took);
        }
    }
    show("bare Plugin::reconcile", times)
}

async fn harness(noop: &std::path::Path) -> Duration {
    let mut h = Harness::build(PluginSource::Wasm(noop.to_path_buf()))
        .start()
        .await
        .unwrap();
    h.apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web, namespace: default}\n")
        .await
        .unwrap();
    let mut times = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let outcome = h.reconcile_named("default", "web").await.unwrap();
        let took = started.elapsed();
        assert_eq!(outcome, Outcome::Done);
        if i >= WARMUP {
            times.push(took);
        }
    }
    show("harness h.reconcile", times)
}

async fn story(demoapp: &std::path::Path, crd: &std::path::Path, example: &str) -> Duration {
    let mut times = Vec::with_capacity(STORIES);
    for _ in 0..STORIES {
        let started = Instant::now();
        let mut h = Harness::build(PluginSource::Wasm(demoapp.to_path_buf()))
            .manifest_file(crd)
            .unwrap()
            .start()
            .await
            .unwrap();
        h.apply_yaml(example).await.unwrap();
        h.reconcile_named("default", "hello").await.unwrap();
        h.settle().await.unwrap();
        h.apply_yaml(&example.replace("replicas: 2", "replicas: 3"))
            .await
            .unwrap();
        h.settle().await.unwrap();
        h.patch_status::<k8s_openapi::api::apps::v1::Deployment>(
            "default",
            "hello",
            serde_json::json!({"replicas": 3, "readyReplicas": 3}),
        )
        .await
        .unwrap();
        h.settle().await.unwrap();
        h.fail_next(Verb::Apply, "deployments", 409);
        h.apply_yaml(&example.replace("replicas: 2", "replicas: 4"))
            .await
            .unwrap();
        h.run_until_idle().await.unwrap();
        h.delete::<demoapp_type::DemoApp>("default", "hello")
            .await
            .unwrap();
        h.run_until_idle().await.unwrap();
        let reconciles = h.reconciles();
        h.shutdown().await;
        times.push(started.elapsed());
        assert!(reconciles >= 8, "{reconciles}");
    }
    show("demoapp story (whole)", times)
}

/// A stand-in for demoapp's type: the harness only needs its name.
mod demoapp_type {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Deserialize, Serialize)]
    pub struct DemoApp {
        pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    }

    impl kube::Resource for DemoApp {
        type DynamicType = ();
        type Scope = k8s_openapi::NamespaceResourceScope;
        fn kind(_: &()) -> std::borrow::Cow<'_, str> {
            "DemoApp".into()
        }
        fn group(_: &()) -> std::borrow::Cow<'_, str> {
            "demo.reconcile.dev".into()
        }
        fn version(_: &()) -> std::borrow::Cow<'_, str> {
            "v1alpha1".into()
        }
        fn plural(_: &()) -> std::borrow::Cow<'_, str> {
            "demoapps".into()
        }
        fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            &self.metadata
        }
        fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            &mut self.metadata
        }
    }
}

fn main() {
    let root = xtask::project_root();
    let test_plugins = xtask::build(&root, xtask::TEST_PLUGINS).unwrap();
    let plugins = xtask::build(&root, xtask::PLUGINS).unwrap();
    let noop = test_plugins["noop"].clone();
    let demoapp = plugins["demoapp"].clone();
    let crd = root.join("deploy/crds/demoapp.yaml");
    let example = std::fs::read_to_string(root.join("deploy/examples/demoapp.yaml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bare = bare(&noop).await;
        let harness = harness(&noop).await;
        println!(
            "harness overhead per reconcile (p50): {:.1} µs",
            (harness.saturating_sub(bare)).as_secs_f64() * 1e6
        );
        story(&demoapp, &crd, &example).await;
    });
}
