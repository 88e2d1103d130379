//! The controller path, against the embedded API server:
//! - the time from creating a DemoApp to its `Ready` status (a stand-in
//!   deployment controller marks each Deployment ready as soon as it exists);
//! - no-op reconciles per second: a no-op plugin reconciling 10,000
//!   ConfigMaps (queue + root span + fresh instance + bookkeeping).
//!
//! Run: `cargo bench -p reconcile-host --bench operator`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use reconcile_apiserver::ApiServer;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::operator::{self, ControllerSettings, GrantPolicy, Operator};
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use serde_json::json;
use support::{Discard, percentile};

const APPS: usize = 100;
const CONFIGMAPS: usize = 10_000;

/// Marks every Deployment ready as soon as it appears or changes.
async fn fake_deployment_controller(client: kube::Client) {
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let mut events = api
        .watch(&WatchParams::default().timeout(290), "0")
        .await
        .unwrap()
        .boxed();
    while let Some(Ok(event)) = events.next().await {
        if let WatchEvent::Added(d) | WatchEvent::Modified(d) = event {
            let want = d.spec.replicas.unwrap_or(1);
            if d.status.as_ref().and_then(|s| s.ready_replicas) != Some(want) {
                let name = d.metadata.name.clone().unwrap_or_default();
                let status = json!({"status": {"replicas": want, "readyReplicas": want}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
        }
    }
}

fn ready(app: &DynamicObject) -> bool {
    app.data["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let plugins = xtask::build(&root, xtask::PLUGINS).unwrap();
    let test_plugins = xtask::build(&root, xtask::TEST_PLUGINS).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
        let telemetry = Telemetry::from_provider(provider);
        let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
        let engine = Engine::new(EngineConfig::default(), telemetry.tracer(), logger).unwrap();
        let settings = ControllerSettings::default();

        // 1. DemoApp to Ready.
        let server = ApiServer::start(Default::default()).await.unwrap();
        let client = server.client().unwrap();
        let manifests = operator::manifests::read(&[root.join("deploy/crds")]).unwrap();
        operator::manifests::apply(&client, &manifests).await.unwrap();
        let demoapp = operator::load_plugin(&engine, &plugins["demoapp"], &GrantPolicy::AsRequested { http: vec![] }).await.unwrap();
        let op = Operator::start(client.clone(), vec![demoapp], settings.clone(), telemetry.tracer());
        tokio::spawn(fake_deployment_controller(client.clone()));
        let resource = ApiResource {
            group: "demo.reconcile.dev".into(),
            version: "v1alpha1".into(),
            api_version: "demo.reconcile.dev/v1alpha1".into(),
            kind: "DemoApp".into(),
            plural: "demoapps".into(),
        };
        let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
        let mut watch = apps.watch(&WatchParams::default().timeout(290), "0").await.unwrap().boxed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut to_ready = Vec::new();
        for i in 0..APPS {
            let name = format!("app-{i:03}");
            let app: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "demo.reconcile.dev/v1alpha1", "kind": "DemoApp",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"image": "nginx:1", "replicas": 2, "port": 80}
            }))
            .unwrap();
            let started = Instant::now();
            apps.create(&PostParams::default(), &app).await.unwrap();
            loop {
                match watch.next().await {
                    Some(Ok(WatchEvent::Modified(a))) if a.metadata.name.as_deref() == Some(&name) && ready(&a) => break,
                    Some(Ok(_)) => {}
                    other => panic!("the DemoApp watch ended: {other:?}"),
                }
            }
            to_ready.push(started.elapsed());
        }
        op.stop().await;
        server.shutdown().await;

        // 2. No-op reconciles through the controller path.
        let server = ApiServer::start(Default::default()).await.unwrap();
        let client = server.client().unwrap();
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        for i in 0..CONFIGMAPS {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("cm-{i:05}"));
            maps.create(&PostParams::default(), &cm).await.unwrap();
        }
        let noop = operator::load_plugin(&engine, &test_plugins["noop"], &GrantPolicy::AsRequested { http: vec![] }).await.unwrap();
        let started = Instant::now();
        let op = Operator::start(client.clone(), vec![noop], settings.clone(), telemetry.tracer());
        while op.activity().reconciles() < CONFIGMAPS as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let rate = CONFIGMAPS as f64 / elapsed.as_secs_f64();
        op.stop().await;
        server.shutdown().await;
        telemetry.shutdown(Duration::from_secs(5)).unwrap();

        println!();
        println!("controller path against the embedded API server, spans sampled to a discarding batch exporter");
        println!(
            "DemoApp created -> Ready, {APPS} apps one after another: p50 {:.1} ms, p99 {:.1} ms  (target p50 <= 20 ms)",
            percentile(to_ready.clone(), 0.5).as_secs_f64() * 1e3,
            percentile(to_ready, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "no-op reconciles of {CONFIGMAPS} ConfigMaps, concurrency {}: {rate:.0} /s ({:.2} s from controller start, initial list included)  (target >= 20,000/s)",
            settings.concurrency,
            elapsed.as_secs_f64()
        );
    });
}
