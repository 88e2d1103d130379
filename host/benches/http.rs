//! One GET to a loopback server from a plugin through the host (allow-list,
//! `http.client` span, `traceparent`, fresh connection, body cap) beside
//! the same GET from native Rust with hyper, in the same run.
//!
//! The plugin path is a whole reconcile of `tests/plugins/http-get` (fresh
//! instance, root span, one `reconcile_sdk::http::get`); a no-op reconcile
//! is measured too, so that the GET's own share shows. The native path is
//! the same root span around a hyper GET on a fresh connection (what the
//! host does per request), and, for reference, over a kept-alive one.
//!
//! Run: `cargo bench -p reconcile-host --bench http`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_sdk::trace::SdkTracerProvider;
use reconcile_host::engine::{Engine, EngineConfig};
use reconcile_host::grants::Grant;
use reconcile_host::reconcile::{CallStats, Outcome, ReconcileRequest, RootSpan};
use reconcile_host::telemetry::Telemetry;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use support::{Discard, configmap_request};

const WARMUP: usize = 500;
const CALLS: usize = 5_000;
/// The paths take turns in rounds of `CALLS / ROUNDS`, so that drift in
/// the machine's speed falls on all of them alike.
const ROUNDS: usize = 20;

fn request(url: &str) -> ReconcileRequest {
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web", "namespace": "default"},
        "data": {"url": url},
    });
    configmap_request(&body.to_string())
}

/// A loopback HTTP/1.1 server answering 200 `ok` (keep-alive allowed).
async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// GET `/` on a fresh connection.
async fn native_get(addr: std::net::SocketAddr) -> Outcome {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let ok = response.status() == 200;
    black_box(response.into_body().collect().await.unwrap().to_bytes());
    if ok {
        Outcome::Done
    } else {
        Outcome::RequeueAfter(Duration::ZERO)
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figures {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// `n` calls of `f`, timed one by one.
async fn batch<F, Fut>(f: &mut F, n: usize, samples: &mut Vec<Duration>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    for _ in 0..n {
        let t = Instant::now();
        let outcome = f().await;
        samples.push(t.elapsed());
        assert_eq!(outcome, Outcome::Done);
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // As the host binary does; SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let root = xtask::project_root();
    let guests = xtask::build(&root, xtask::TEST_PLUGINS).expect("build the test plugins");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let addr = serve().await;
        let url = format!("http://{addr}/");
        let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
        let telemetry = Telemetry::from_provider(provider);
        let logger = Logger::to_writer(LogFormat::Json, Level::Info, std::io::sink());
        let engine = Engine::new(EngineConfig::default(), telemetry.tracer(), logger).unwrap();
        let grant = Grant::from_toml(
            &format!("[[http]]\nurl = \"http://{addr}\"\n"),
            Path::new("http-get.grants.toml"),
        )
        .unwrap();
        let plugin = engine
            .load_file(&guests["http-get"])
            .await
            .unwrap()
            .with_grant(Arc::new(grant));
        let noop = engine.load_file(&guests["noop"]).await.unwrap();
        let get = request(&url);
        let nothing = request(&url);

        let no_url = ReconcileRequest::new(get.object.clone(), None);
        let mut wasm = || {
            let plugin = plugin.clone();
            let get = get.clone();
            async move { plugin.reconcile(get).await.outcome }
        };
        let mut wasm_idle = || {
            let plugin = plugin.clone();
            let no_url = no_url.clone();
            async move { plugin.reconcile(no_url).await.outcome }
        };
        let mut wasm_noop = || {
            let noop = noop.clone();
            let nothing = nothing.clone();
            async move { noop.reconcile(nothing).await.outcome }
        };
        let tracer = telemetry.tracer();
        let attributes = RootSpan::plugin_attributes("native", "0.1.0", "sha256:native");
        let mut native = || {
            let tracer = tracer.clone();
            let attributes = attributes.clone();
            let get = get.clone();
            async move {
                let span = RootSpan::start(&tracer, &attributes, &get);
                let outcome = native_get(addr).await;
                span.finish(&outcome, &CallStats::default());
                outcome
            }
        };
        // For reference: a kept-alive connection (no handshake per GET).
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        let mut pooled = || {
            let sender = sender.clone();
            async move {
                let request = http::Request::get("/")
                    .header("host", addr.to_string())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let mut sender = sender.lock().await;
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                black_box(response.into_body().collect().await.unwrap().to_bytes());
                Outcome::Done
            }
        };
        let mut samples: [Vec<Duration>; 5] = Default::default();
        let mut ignored = Vec::new();
        batch(&mut wasm, WARMUP, &mut ignored).await;
        batch(&mut wasm_idle, WARMUP, &mut ignored).await;
        batch(&mut wasm_noop, WARMUP, &mut ignored).await;
        batch(&mut native, WARMUP, &mut ignored).await;
        batch(&mut pooled, WARMUP, &mut ignored).await;
        for _ in 0..ROUNDS {
            let n = CALLS / ROUNDS;
            batch(&mut wasm, n, &mut samples[0]).await;
            batch(&mut wasm_idle, n, &mut samples[1]).await;
            batch(&mut wasm_noop, n, &mut samples[2]).await;
            batch(&mut native, n, &mut samples[3]).await;
            batch(&mut pooled, n, &mut samples[4]).await;
        }
        let [wasm, wasm_idle, wasm_noop, native, pooled] = samples.map(figures);
        telemetry.shutdown(Duration::from_secs(5)).unwrap();

        println!();
        println!("one GET to 127.0.0.1: {CALLS} calls per path after {WARMUP} warm-up, one at a time, paths taking turns in {ROUNDS} rounds, spans sampled, discarding exporter");
        println!("{:<58} {:>10} {:>10}", "", "p50", "p99");
        for (label, f) in [
            ("plugin GET through the host (whole reconcile)", &wasm),
            ("the same plugin, no GET (its instance + root span)", &wasm_idle),
            ("no-op plugin (instance + root span)", &wasm_noop),
            ("native hyper GET, fresh connection, same root span", &native),
            ("native hyper GET, kept-alive connection (reference)", &pooled),
        ] {
            println!("{label:<58} {:>7.1} µs {:>7.1} µs", us(f.p50), us(f.p99));
        }
        let ratio = us(wasm.p50) / us(native.p50);
        let extra = us(wasm.p50) - us(native.p50);
        println!("plugin / native (fresh connection) at p50: {ratio:.2}x, +{extra:.1} µs");
        let met = ratio <= 1.5 || extra <= 50.0;
        println!(
            "target: p50 within 1.5x of native or within +50 µs: {}",
            if met { "met" } else { "missed" }
        );
    });
}
