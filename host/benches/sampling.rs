//! What tracing, retention and metrics cost on the controller path: no-op
//! reconciles per second of 10,000 ConfigMaps against the embedded API
//! server (queue, root span, fresh instance, bookkeeping), with
//! - tracing off (`always_off`), the baseline;
//! - 1% head sampling with retention (errors, slower than 2 s), the
//!   production setting, and 1% without it;
//! - 100% sampling;
//! - metrics on, tracing off, against the baseline.
//!
//! Spans go through the batch processor to an exporter that discards.
//! The configurations take turns, round after round, in one process; the
//! median round of each is printed.
//!
//! Run: `cargo bench -p reconcile-host --bench sampling`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

/// The host binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use reconcile_apiserver::ApiServer;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::metrics::{Metrics, MetricsConfig};
use reconcile_host::operator::{self, ControllerSettings, GrantPolicy, Operator};
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use reconcile_host::telemetry::{Telemetry, TelemetryConfig};
use support::Discard;

const CONFIGMAPS: usize = 10_000;
const ROUNDS: usize = 18;

struct Setup {
    name: &'static str,
    vars: &'static [(&'static str, &'static str)],
    metrics: bool,
}

const SETUPS: [Setup; 6] = [
    Setup {
        name: "tracing off (baseline)",
        vars: &[("OTEL_TRACES_SAMPLER", "always_off")],
        metrics: false,
    },
    Setup {
        name: "1% with retention",
        vars: &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ],
        metrics: false,
    },
    Setup {
        name: "1% without retention",
        vars: &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("RECONCILE_HOST_TRACES_KEEP_ERRORS", "false"),
            ("RECONCILE_HOST_TRACES_KEEP_SLOWER_THAN_MS", "0"),
        ],
        metrics: false,
    },
    Setup {
        name: "100%",
        vars: &[("OTEL_TRACES_SAMPLER", "always_on")],
        metrics: false,
    },
    Setup {
        name: "tracing off, again",
        vars: &[("OTEL_TRACES_SAMPLER", "always_off")],
        metrics: false,
    },
    Setup {
        name: "metrics on, tracing off",
        vars: &[("OTEL_TRACES_SAMPLER", "always_off")],
        metrics: true,
    },
];

/// CPU time of the whole process so far (user and system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One round: a controller of the no-op plugin reconciles every ConfigMap.
/// Reconciles per second, and CPU µs per reconcile (the API server's work
/// included: it runs in this process).
async fn round(server: &ApiServer, noop: &[u8], setup: &Setup) -> (f64, f64) {
    let vars: HashMap<&str, &str> = setup.vars.iter().copied().collect();
    let config = TelemetryConfig::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned()));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let telemetry = Telemetry::init_with_exporter(&config, Discard);
    let metrics = if setup.metrics {
        Metrics::new(&MetricsConfig::default(), Some(telemetry.clone()))
    } else {
        Metrics::disabled()
    };
    let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
    let engine = Engine::new(
        EngineConfig {
            metrics: metrics.clone(),
            ..EngineConfig::default()
        },
        telemetry.tracer(),
        logger,
    )
    .unwrap();
    let client = operator::host_client(server.client_config().unwrap(), &metrics).unwrap();
    let plugin = operator::load_plugin_bytes(
        &engine,
        noop,
        std::path::Path::new("noop.wasm"),
        &GrantPolicy::AsRequested { http: vec![] },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let cpu = cpu_time();
    let op = Operator::start(
        client,
        vec![plugin],
        ControllerSettings::default(),
        telemetry.tracer(),
    );
    while op.activity().reconciles() < CONFIGMAPS as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = CONFIGMAPS as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / CONFIGMAPS as f64;
    op.stop().await;
    if setup.metrics {
        // The scrape works, and counted what ran.
        let text = metrics.encode(true).unwrap().unwrap();
        assert!(text.contains(
            "controller_runtime_reconcile_total{controller=\"noop\",result=\"success\"} 10000"
        ));
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    (rate, cpu_us)
}

/// What the root span alone costs under `setup`: ns per start and finish.
fn root_span_ns(setup: &Setup) -> f64 {
    use reconcile_host::reconcile::{CallStats, ObjectRef, Outcome, ReconcileRequest, RootSpan};
    let vars: HashMap<&str, &str> = setup.vars.iter().copied().collect();
    let config = TelemetryConfig::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned()));
    let telemetry = Telemetry::init_with_exporter(&config, Discard);
    let tracer = telemetry.tracer();
    let attributes = RootSpan::plugin_attributes("noop", "1.0.0", "sha256:0");
    let request = ReconcileRequest::new(
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: "cm-00001".into(),
        },
        None,
    );
    const N: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..N {
        let root = RootSpan::start(&tracer, &attributes, &request);
        std::hint::black_box(root.finish(&Outcome::Done, &CallStats::default()));
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(N);
    telemetry.shutdown(Duration::from_secs(5)).unwrap();
    ns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let test_plugins = xtask::build(&root, xtask::TEST_PLUGINS).unwrap();
    let noop = std::fs::read(&test_plugins["noop"]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = ApiServer::start(Default::default()).await.unwrap();
        let maps: Api<ConfigMap> = Api::namespaced(server.client().unwrap(), "default");
        for i in 0..CONFIGMAPS {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("cm-{i:05}"));
            maps.create(&PostParams::default(), &cm).await.unwrap();
        }
        // One warm-up round, not counted.
        round(&server, &noop, &SETUPS[0]).await;
        // `SAMPLING_ONLY=N` runs setup N alone (for a profiler).
        let only: Option<usize> = std::env::var("SAMPLING_ONLY").ok().and_then(|v| v.parse().ok());
        if let Some(i) = only {
            for _ in 0..ROUNDS * 3 {
                round(&server, &noop, &SETUPS[i]).await;
            }
            return;
        }
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
        // Each round starts with another setup, so that none always runs
        // after the same one.
        for r in 0..ROUNDS {
            for k in 0..SETUPS.len() {
                let i = (r + k) % SETUPS.len();
                let setup = &SETUPS[i];
                let (rate, cpu) = round(&server, &noop, setup).await;
                rates[i].push(rate);
                cpus[i].push(cpu);
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        let cpus: Vec<f64> = cpus.into_iter().map(median).collect();
        println!();
        println!(
            "no-op reconciles of {CONFIGMAPS} ConfigMaps through the controller path, concurrency 4, median of {ROUNDS} rounds"
        );
        println!(
            "{:<26} {:>10} {:>16} {:>12}",
            "setup", "rate", "CPU/reconcile", "CPU cost"
        );
        for ((setup, rate), cpu) in SETUPS.iter().zip(&rates).zip(&cpus) {
            let cost = (cpu - cpus[0]) / cpus[0] * 100.0;
            println!(
                "{:<26} {rate:>8.0}/s {cpu:>13.1} µs {cost:>+11.1}%",
                setup.name
            );
        }
        println!("(\"tracing off, again\" shows the noise; CPU cost is against the baseline)");
        println!("targets: 1% with retention <= 5%, metrics on <= 3%");
        server.shutdown().await;
    });
    println!();
    println!("the root span alone (start and finish, no plugin), ns per reconcile");
    for setup in &SETUPS[..4] {
        println!("{:<26} {:>8.0} ns", setup.name, root_span_ns(setup));
    }
}
