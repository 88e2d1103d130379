//! Reload latency: from a new `demoapp.wasm` renamed into the watched
//! directory to the first reconcile by its digest (started, and finished),
//! against the embedded API server with one DemoApp.
//!
//! - cached: two versions of demoapp (the built one, and the same with a
//!   custom section, so another digest) whose compiled code is already in
//!   the compile cache, taking turns;
//! - uncached: each reload a new digest (a fresh custom section), so every
//!   load compiles.
//!
//! Beside them, in the same run: loading the same bytes straight through
//! the engine (cached and not), and a reconcile of the DemoApp, so that
//! what the watcher, the swap and the requeue add can be read off.
//!
//! Run: `cargo bench -p reconcile-host --bench reload`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use reconcile_apiserver::ApiServer;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::operator::{self, ControllerSettings, GrantPolicy, Operator};
use reconcile_host::reload::{ReloadConfig, Reloader};
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use serde_json::json;

const CACHED: usize = 40;
const UNCACHED: usize = 20;

type Spans = Arc<Mutex<Vec<(String, SystemTime, SystemTime)>>>;

/// Keeps (digest, start, end) of every `reconcile` root, and of every
/// `plugin.load` span.
#[derive(Debug, Clone, Default)]
struct Roots(Spans, Spans);

impl SpanExporter for Roots {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        for span in batch {
            let kept = match span.name.as_ref() {
                "reconcile" => &self.0,
                "plugin.load" => &self.1,
                _ => continue,
            };
            let digest = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "plugin.digest")
                .map(|kv| kv.value.to_string())
                .unwrap_or_default();
            kept.lock()
                .unwrap()
                .push((digest, span.start_time, span.end_time));
        }
        Ok(())
    }
}

/// One reload: from the rename to the `plugin.load` span's start (the
/// watcher), to its end (the load and swap), to the first reconcile's start
/// and end.
#[derive(Clone, Copy, Debug)]
struct Sample {
    load_start: Duration,
    load_end: Duration,
    start: Duration,
    end: Duration,
}

impl Roots {
    /// Waits for the first root by `digest` after `since`, and its load.
    async fn first_by(&self, digest: &str, since: SystemTime) -> Sample {
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = |t: &SystemTime| t.duration_since(since).unwrap_or_default();
        loop {
            let root = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(d, start, _)| d == digest && *start >= since)
                .map(|(_, start, end)| (after(start), after(end)));
            let load = self
                .1
                .lock()
                .unwrap()
                .iter()
                .find(|(d, start, _)| d == digest && *start >= since)
                .map(|(_, start, end)| (after(start), after(end)));
            if let Some((start, end)) = root {
                let (load_start, load_end) = load.unwrap_or_default();
                return Sample {
                    load_start,
                    load_end,
                    start,
                    end,
                };
            }
            assert!(Instant::now() < deadline, "no reconcile by {digest}");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

fn variant(base: &[u8], tag: &str) -> Vec<u8> {
    let mut bytes = base.to_vec();
    bytes.extend(xtask::custom_section("reload-bench", tag.as_bytes()));
    bytes
}

fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn put(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".demoapp.wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join("demoapp.wasm")).unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(mut samples: Vec<Duration>, q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn report(what: &str, samples: &[Sample]) {
    let p = |f: fn(&Sample) -> Duration| {
        let all: Vec<Duration> = samples.iter().map(f).collect();
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            ms(percentile(all.clone(), 0.5)),
            ms(percentile(all, 0.99))
        )
    };
    println!(
        "{what} ({} reloads): to the first reconcile's start {}; to its end {}",
        samples.len(),
        p(|s| s.start),
        p(|s| s.end),
    );
    println!(
        "    of which: rename -> plugin.load starts {}; the load and swap {}; swap -> reconcile starts {}",
        p(|s| s.load_start),
        p(|s| s.load_end.saturating_sub(s.load_start)),
        p(|s| s.start.saturating_sub(s.load_end)),
    );
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let plugins = xtask::build(&root, xtask::PLUGINS).unwrap();
    let base = std::fs::read(&plugins["demoapp"]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let roots = Roots::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(roots.clone())
            .build();
        let telemetry = Telemetry::from_provider(provider);
        let logger = Logger::to_writer(LogFormat::Json, Level::Warn, std::io::sink());
        let cache = tempfile::tempdir().unwrap();
        let engine = Engine::new(
            EngineConfig {
                cache_dir: Some(cache.path().to_owned()),
                ..EngineConfig::default()
            },
            telemetry.tracer(),
            logger,
        )
        .unwrap();
        let server = ApiServer::start(Default::default()).await.unwrap();
        let client = server.client().unwrap();
        let manifests = operator::manifests::read(&[root.join("deploy/crds")]).unwrap();
        operator::manifests::apply(&client, &manifests).await.unwrap();
        let resource = ApiResource {
            group: "demo.reconcile.dev".into(),
            version: "v1alpha1".into(),
            api_version: "demo.reconcile.dev/v1alpha1".into(),
            kind: "DemoApp".into(),
            plural: "demoapps".into(),
        };
        let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
        let app: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "demo.reconcile.dev/v1alpha1", "kind": "DemoApp",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"image": "nginx:1", "replicas": 2, "port": 80}
        }))
        .unwrap();
        apps.create(&PostParams::default(), &app).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let policy = GrantPolicy::AsRequested { http: vec![] };
        let operator = Arc::new(Operator::new(
            client.clone(),
            ControllerSettings::default(),
            telemetry.tracer(),
        ));
        put(dir.path(), &base);
        let mut config = ReloadConfig::new(dir.path().to_owned(), policy.clone());
        config.rescan = Duration::from_secs(600);
        let mut reloader = Reloader::new(engine.clone(), operator.clone(), telemetry.tracer(), config);
        let started = SystemTime::now();
        reloader.scan().await.unwrap();
        roots.first_by(&digest_of(&base), started).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(reloader.watch(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));

        // The two cached versions: compiled once, before measuring.
        let versions = [base.clone(), variant(&base, "b")];
        for bytes in &versions {
            engine.load_bytes(bytes, "warm-up").await.unwrap();
        }
        // Each reload is followed by the baseline: a load of the same kind
        // straight through the engine, while the operator runs.
        let direct = |bytes: Vec<u8>| {
            let engine = engine.clone();
            let policy = policy.clone();
            let dir = dir.path().to_owned();
            async move {
                let t = Instant::now();
                operator::load_plugin_bytes(&engine, &bytes, &dir, &policy)
                    .await
                    .unwrap();
                t.elapsed()
            }
        };
        let mut cached = Vec::new();
        let mut load_cached = Vec::new();
        for i in 0..CACHED + 1 {
            let bytes = &versions[(i + 1) % 2];
            let since = SystemTime::now();
            put(dir.path(), bytes);
            let sample = roots.first_by(&digest_of(bytes), since).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if i > 0 {
                cached.push(sample);
                load_cached.push(direct(versions[i % 2].clone()).await);
            }
        }
        let mut uncached = Vec::new();
        let mut load_uncached = Vec::new();
        for i in 0..UNCACHED {
            let bytes = variant(&base, &format!("fresh-{i}"));
            let since = SystemTime::now();
            put(dir.path(), &bytes);
            uncached.push(roots.first_by(&digest_of(&bytes), since).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
            load_uncached.push(direct(variant(&base, &format!("baseline-{i}"))).await);
        }
        let _ = stop.send(true);
        watcher.await.unwrap();
        operator.stop().await;

        // The reconcile itself, for comparison.
        let reconciles: Vec<Duration> = roots
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, start, end)| end.duration_since(*start).unwrap_or_default())
            .collect();
        server.shutdown().await;

        println!();
        println!(
            "reload of demoapp ({} KiB) by atomic rename into the watched directory, one DemoApp, debounce {} ms",
            base.len() / 1024,
            ReloadConfig::new(dir.path().to_owned(), policy).debounce.as_millis()
        );
        report("cached   (target p50/p99 <= 50 ms)", &cached);
        report("uncached (target p50/p99 <= 1 s)  ", &uncached);
        println!(
            "baseline, taking turns with the reloads: a load through the engine, cached p50 {:.1} ms p99 {:.1} ms; uncached p50 {:.1} ms p99 {:.1} ms; a DemoApp reconcile p50 {:.1} ms p99 {:.1} ms",
            ms(percentile(load_cached.clone(), 0.5)),
            ms(percentile(load_cached, 0.99)),
            ms(percentile(load_uncached.clone(), 0.5)),
            ms(percentile(load_uncached, 0.99)),
            ms(percentile(reconciles.clone(), 0.5)),
            ms(percentile(reconciles, 0.99)),
        );
        telemetry.shutdown(Duration::from_secs(5)).unwrap();
    });
}
