//! Per-reconcile overhead of the engine: a no-op plugin called through
//! `Plugin::reconcile` (fresh store + instance + root span + call + drop),
//! beside a native Rust no-op inside the same root span, in the same run.
//!
//! Spans are sampled and go through the batch processor to an exporter that
//! discards them, as in production minus the network.
//!
//! Run: `cargo bench -p reconcile-host --bench reconcile_overhead`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::reconcile::{Outcome, ReconcileRequest, RootSpan};
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use support::{Discard, WEB, configmap_request};

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

fn figures(mut samples: Vec<Duration>, total: Duration) -> Figures {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figures {
        p50: at(0.50),
        p99: at(0.99),
        per_second: samples.len() as f64 / total.as_secs_f64(),
    }
}

async fn measure<F, Fut>(mut f: F) -> Figures
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    for _ in 0..WARMUP {
        assert_eq!(f().await, Outcome::Done);
    }
    let mut samples = Vec::with_capacity(CALLS);
    let started = Instant::now();
    for _ in 0..CALLS {
        let t = Instant::now();
        let outcome = f().await;
        samples.push(t.elapsed());
        black_box(outcome);
    }
    figures(samples, started.elapsed())
}

/// The native baseline: the same root span around a Rust no-op.
fn native_noop(request: &ReconcileRequest) -> Outcome {
    black_box(request);
    Outcome::Done
}

fn print(label: &str, f: &Figures) {
    println!(
        "{label:<44} {:>9.1} µs {:>9.1} µs {:>12.0}",
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6,
        f.per_second
    );
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let guests = xtask::build(&root, xtask::TEST_PLUGINS).expect("build the test plugins");
    let noop = guests.get("noop").expect("the noop plugin").clone();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut results = Vec::new();
        for (label, sampler) in [("sampled", Sampler::AlwaysOn), ("not sampled", Sampler::AlwaysOff)] {
            let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).with_sampler(sampler).build();
            let telemetry = Telemetry::from_provider(provider);
            let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
            let engine = Engine::new(EngineConfig::default(), telemetry.tracer(), logger).unwrap();
            let plugin = engine.load_file(&noop).await.unwrap();
            let request = configmap_request(WEB);

            let wasm = measure(|| {
                let plugin = plugin.clone();
                let request = request.clone();
                async move { plugin.reconcile(request).await.outcome }
            })
            .await;
            let tracer = telemetry.tracer();
            let attributes = RootSpan::plugin_attributes("noop", "0.1.0", plugin.digest());
            let native = measure(|| {
                let request = request.clone();
                let tracer = tracer.clone();
                let attributes = attributes.clone();
                async move {
                    let span = RootSpan::start(&tracer, &attributes, &request);
                    let outcome = native_noop(&request);
                    span.finish(&outcome, &reconcile_host::reconcile::CallStats::default());
                    outcome
                }
            })
            .await;
            results.push((label, wasm, native));
            telemetry.shutdown(Duration::from_secs(5)).unwrap();
        }

        println!();
        println!("reconcile overhead: {CALLS} calls after {WARMUP} warm-up, one at a time, batch span processor, discarding exporter");
        println!("{:<44} {:>12} {:>12} {:>12}", "", "p50", "p99", "calls/s");
        for (label, wasm, native) in &results {
            print(&format!("wasm noop, fresh instance + root span ({label})"), wasm);
            print(&format!("native noop, same root span ({label})"), native);
        }
        let (_, sampled, _) = &results[0];
        let met = sampled.p50 <= Duration::from_micros(15) && sampled.p99 <= Duration::from_micros(60);
        println!(
            "target (sampled wasm): p50 <= 15 µs, p99 <= 60 µs: {}",
            if met { "met" } else { "missed" }
        );
    });
}
