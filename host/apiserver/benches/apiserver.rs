//! Embedded API server figures, over real HTTP with the kube client:
//! server-side applies per second from one client, listing 10,000
//! ConfigMaps, watch event delivery to 100 concurrent watchers, and the
//! server's resident memory with 10,000 ConfigMaps.
//!
//! The server runs in a child process (this binary, re-run with
//! `RECONCILE_APISERVER_BENCH_SERVE=1`) so that its memory is measured alone.
//!
//! Run: `cargo bench -p reconcile-apiserver --bench apiserver`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;

const OBJECTS: usize = 10_000;
const WATCHERS: usize = 100;
const WATCH_EVENTS: usize = 200;
const LISTS: usize = 20;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(mut samples: Vec<Duration>, q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn configmap(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("cm-{i:05}"), "labels": {"app": "bench", "shard": format!("{}", i % 10)}},
        "data": {"index": i.to_string(), "owner": "benchmark", "payload": "x".repeat(64)}
    })
}

fn serve() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = reconcile_apiserver::ApiServer::start(Default::default())
            .await
            .unwrap();
        println!("{}", server.url());
        // Serve until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        server.shutdown().await;
    });
}

/// The store's apply path alone, in process: what a request costs the
/// server before HTTP.
fn store_applies() -> (f64, f64) {
    use reconcile_apiserver::apply::Scope;
    use reconcile_apiserver::store::{PatchType, Store, WriteOptions};
    let store = Store::new(10_000);
    let def = store.registry().find("", "v1", "configmaps").unwrap();
    let options = WriteOptions {
        manager: "bench".into(),
        dry_run: false,
        force: false,
    };
    let started = Instant::now();
    for i in 0..OBJECTS {
        store
            .patch(
                &def,
                Scope::Main,
                Some("default"),
                &format!("cm-{i:05}"),
                PatchType::Apply,
                &configmap(i),
                &options,
            )
            .unwrap();
    }
    let create = OBJECTS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..OBJECTS {
        let mut cm = configmap(i);
        cm["data"]["owner"] = "changed".into();
        store
            .patch(
                &def,
                Scope::Main,
                Some("default"),
                &format!("cm-{i:05}"),
                PatchType::Apply,
                &cm,
                &options,
            )
            .unwrap();
    }
    (create, OBJECTS as f64 / started.elapsed().as_secs_f64())
}

fn main() {
    if std::env::var_os("RECONCILE_APISERVER_BENCH_SERVE").is_some() {
        serve();
        return;
    }
    let (store_create, store_update) = store_applies();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("RECONCILE_APISERVER_BENCH_SERVE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let url = url.trim().to_owned();
    let pid = child.id();
    let idle_rss = rss_kib(pid);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.default_namespace = "default".into();
        let client = kube::Client::try_from(config).unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let apply = PatchParams::apply("bench");

        // 1. Server-side applies from one client: create 10,000 by apply,
        //    then re-apply 5,000 with a change.
        let started = Instant::now();
        for i in 0..OBJECTS {
            api.patch(&format!("cm-{i:05}"), &apply, &Patch::Apply(configmap(i))).await.unwrap();
        }
        let create_rate = OBJECTS as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        for i in 0..OBJECTS / 2 {
            let mut cm = configmap(i);
            cm["data"]["owner"] = "changed".into();
            api.patch(&format!("cm-{i:05}"), &apply, &Patch::Apply(cm)).await.unwrap();
        }
        let update_rate = (OBJECTS / 2) as f64 / started.elapsed().as_secs_f64();
        let full_rss = rss_kib(pid);

        // 1b. The same from a lean HTTP/1.1 client: one keep-alive
        //     connection, requests one after another.
        let lean_rate = {
            use http_body_util::{BodyExt, Full};
            let host = url.trim_start_matches("http://").to_owned();
            let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(connection);
            let started = Instant::now();
            for i in 0..OBJECTS {
                let mut cm = configmap(i);
                cm["data"]["owner"] = "lean".into();
                let request = http::Request::patch(format!("/api/v1/namespaces/default/configmaps/cm-{i:05}?fieldManager=bench"))
                    .header("host", &host)
                    .header("content-type", "application/apply-patch+yaml")
                    .body(Full::new(bytes::Bytes::from(cm.to_string())))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
            OBJECTS as f64 / started.elapsed().as_secs_f64()
        };

        // 2. Listing all 10,000.
        let mut typed = Vec::new();
        let mut raw = Vec::new();
        let http = client.clone();
        for _ in 0..LISTS {
            let t = Instant::now();
            let list = api.list(&ListParams::default()).await.unwrap();
            typed.push(t.elapsed());
            assert_eq!(list.items.len(), OBJECTS);
            let t = Instant::now();
            let request = http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new()).unwrap();
            let text = http.request_text(request).await.unwrap();
            raw.push(t.elapsed());
            assert!(text.len() > OBJECTS * 100);
        }

        // 3. Watch delivery to 100 watchers.
        let rv = api.list(&ListParams::default().limit(1)).await.unwrap().metadata.resource_version.unwrap();
        let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> = Arc::new(std::sync::Mutex::new(vec![None; WATCH_EVENTS]));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let mut ready = Vec::new();
        for _ in 0..WATCHERS {
            let api = api.clone();
            let rv = rv.clone();
            let tx = tx.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            tokio::spawn(async move {
                let mut stream = api.watch(&WatchParams::default().labels("bench-watch=yes").timeout(290), &rv).await.unwrap().boxed();
                let _ = ready_tx.send(());
                let mut seen = 0;
                while let Some(Ok(event)) = stream.next().await {
                    if let WatchEvent::Modified(cm) | WatchEvent::Added(cm) = event {
                        let i: usize = cm.data.unwrap_or_default().get("tick").and_then(|t| t.parse().ok()).unwrap_or(0);
                        let _ = tx.send((i, Instant::now()));
                        seen += 1;
                        if seen == WATCH_EVENTS {
                            break;
                        }
                    }
                }
            });
        }
        drop(tx);
        for r in ready {
            r.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let merge = PatchParams::default();
        for i in 0..WATCH_EVENTS {
            let patch = json!({"metadata": {"labels": {"bench-watch": "yes"}}, "data": {"tick": i.to_string()}});
            let t = Instant::now();
            sent.lock().unwrap()[i] = Some(t);
            api.patch("cm-00000", &merge, &Patch::Merge(patch)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut delivery = Vec::new();
        while let Some((i, at)) = rx.recv().await {
            if let Some(Some(t)) = sent.lock().unwrap().get(i) {
                delivery.push(at.saturating_duration_since(*t));
            }
        }
        assert_eq!(delivery.len(), WATCHERS * WATCH_EVENTS, "every watcher saw every event");

        println!();
        println!("embedded API server, one client over HTTP on 127.0.0.1 (server in its own process)");
        println!("server-side applies, creating {OBJECTS} ConfigMaps:   {create_rate:>8.0} /s   (target >= 5,000/s)");
        println!("server-side applies, changing {} ConfigMaps:     {update_rate:>8.0} /s", OBJECTS / 2);
        println!("server-side applies, changing {OBJECTS}, lean HTTP/1.1 client: {lean_rate:>8.0} /s");
        println!("  the store alone, in process (create / change):   {store_create:>8.0} / {store_update:.0} /s");
        println!("list {OBJECTS} ConfigMaps, p50 (raw HTTP body):     {:>8.1} ms  (target <= 50 ms)", ms(percentile(raw.clone(), 0.5)));
        println!("list {OBJECTS} ConfigMaps, p50 (kube typed list):   {:>8.1} ms", ms(percentile(typed, 0.5)));
        println!(
            "watch delivery to {WATCHERS} watchers, p50 / p99:          {:>8.2} / {:.2} ms  (target p50 <= 5 ms; from write start)",
            ms(percentile(delivery.clone(), 0.5)),
            ms(percentile(delivery, 0.99))
        );
        println!(
            "server resident memory: idle {:.1} MiB, with {OBJECTS} ConfigMaps {:.1} MiB  (target <= 100 MiB)",
            idle_rss as f64 / 1024.0,
            full_rss as f64 / 1024.0
        );
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
