//! What a guest language costs: a no-op plugin in Rust
//! (`tests/plugins/noop`), Python (`tests/plugins/noop-py`, componentize-py)
//! and TypeScript (`tests/plugins/noop-js`, jco componentize), measured in
//! the same run on the same engine settings:
//!
//! - the component's size, and gzip-compressed (as a ConfigMap carries it);
//! - first load: validation and compilation (an empty compile cache);
//! - cached load: a new engine loading the compiled form from the cache;
//! - per reconcile: a fresh store and instance, the root span, the no-op
//!   call and the drop, one at a time (Rust's figure is the baseline).
//!
//! Run: `cargo bench -p reconcile-host --bench languages`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::SdkTracerProvider;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::reconcile::Outcome;
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use support::{Discard, WEB, configmap_request, percentile};

fn engine(telemetry: &Telemetry, cache: &Path) -> Engine {
    let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
    let config = EngineConfig {
        cache_dir: Some(cache.to_owned()),
        ..EngineConfig::default()
    };
    Engine::new(config, telemetry.tracer(), logger).unwrap()
}

fn gzipped(bytes: &[u8]) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap().len()
}

struct Row {
    name: &'static str,
    size: usize,
    gz: usize,
    first_load: Duration,
    cached_load: Duration,
    p50: Duration,
    p99: Duration,
}

fn mb(bytes: usize) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let mut guests = xtask::build(&root, xtask::TEST_PLUGINS).expect("build the test plugins");
    guests.extend(
        xtask::guests::build(&root, &xtask::guests::TEST_GUESTS)
            .expect("build the Python and JavaScript test guests"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
        let telemetry = Telemetry::from_provider(provider);
        let mut rows = Vec::new();
        for (name, calls) in [("noop", 5_000), ("noop-py", 300), ("noop-js", 300)] {
            let path = &guests[name];
            let bytes = std::fs::read(path).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let t = Instant::now();
            let first = engine(&telemetry, cache.path()).load_file(path).await.unwrap();
            let first_load = t.elapsed();
            drop(first);
            let cached_engine = engine(&telemetry, cache.path());
            let t = Instant::now();
            let plugin = cached_engine.load_file(path).await.unwrap();
            let cached_load = t.elapsed();
            let request = configmap_request(WEB);
            for _ in 0..calls / 10 {
                assert_eq!(plugin.reconcile(request.clone()).await.outcome, Outcome::Done);
            }
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                let outcome = plugin.reconcile(request.clone()).await.outcome;
                samples.push(t.elapsed());
                assert_eq!(outcome, Outcome::Done);
            }
            let (p50, p99) = (percentile(samples.clone(), 0.5), percentile(samples, 0.99));
            rows.push(Row {
                name,
                size: bytes.len(),
                gz: gzipped(&bytes),
                first_load,
                cached_load,
                p50,
                p99,
            });
        }
        telemetry.shutdown(Duration::from_secs(5)).unwrap();

        println!();
        println!("guest languages: a no-op plugin each; per reconcile = fresh instance + root span + call, one at a time");
        println!(
            "{:<10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "plugin", ".wasm", "gzip", "first load", "cached load", "p50", "p99", "vs Rust"
        );
        let base = rows[0].p50.as_secs_f64();
        for r in &rows {
            println!(
                "{:<10} {:>10} {:>10} {:>10.2} s {:>9.1} ms {:>9.1} µs {:>9.1} µs {:>9.0}×",
                r.name,
                mb(r.size),
                mb(r.gz),
                r.first_load.as_secs_f64(),
                r.cached_load.as_secs_f64() * 1e3,
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                r.p50.as_secs_f64() / base
            );
        }
    });
}
