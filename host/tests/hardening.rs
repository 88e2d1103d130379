//! The host stops when asked, in every state: caches that never sync, a
//! slow first list with `--exit-when-idle`, a client holding a half-sent
//! request to `dev`'s API server; and it refuses files it must not read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use reconcile_apiserver::Match;
use serde_json::json;
use support::cluster::{Cluster, cluster};
use support::guest;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

const ENABLED: &str = "mirror.reconcile.dev/enabled";

const GRANT: &str = r#"
[[resources]]
group = "core"
kind = "ConfigMap"
verbs = ["get", "list", "watch", "patch"]
[[resources]]
group = "events.k8s.io"
kind = "Event"
verbs = ["get", "create", "patch", "delete"]
"#;

/// A directory with the mirror plugin and its grant, and a kubeconfig for `c`.
fn setup(c: &Cluster) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(guest("mirror"), plugins.join("mirror.wasm")).unwrap();
    std::fs::write(plugins.join("mirror.grants.toml"), GRANT).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.server.kubeconfig()).unwrap();
    (dir, plugins, kubeconfig)
}

fn host(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reconcile-host"));
    command
        // Metrics on a free port: hosts of tests that run at once.
        .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
        .args(["--log-format", "json"])
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .env("OTEL_TRACES_EXPORTER", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads the child's stderr until a line contains `what`; returns every
/// line so far, and keeps reading in the background.
async fn wait_for_line(
    child: &mut Child,
    what: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (found_tx, found_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            let hit = line.contains(what);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line with {what:?}:\n{}",
        seen.join("\n")
    );
    for line in seen {
        let _ = found_tx.send(line);
    }
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if found_tx.send(line).is_err() {
                break;
            }
        }
    });
    found_rx
}

/// `reconcile-host run` of `plugins` against the kubeconfig, with `extra` flags.
fn run(home: &Path, plugins: &Path, kubeconfig: &Path, extra: &[&str]) -> Child {
    host(home)
        .arg("run")
        .args(extra)
        .arg("--plugins")
        .arg(plugins)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and asserts a clean exit within 5 s; the log.
async fn stops_cleanly(
    child: &mut Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> String {
    let (status, took) = exit_within(child, Duration::from_secs(20)).await;
    let log = rest(lines).await;
    assert!(status.success(), "{status} after {took:?}:\n{log}");
    assert!(took < Duration::from_secs(5), "{took:?}:\n{log}");
    log
}

fn terminate(child: &Child) {
    let pid = child.id().unwrap().to_string();
    // The shell's own `kill`: no procps needed.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most `limit`) for the child to exit after SIGTERM; its status
/// and how long it took.
async fn exit_within(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let sent = Instant::now();
    terminate(child);
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => (status.unwrap(), sent.elapsed()),
        Err(_) => panic!("still running {limit:?} after SIGTERM"),
    }
}

async fn rest(mut lines: tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    let mut out = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), lines.recv()).await
    {
        out.push(line);
    }
    out.join("\n")
}

async fn source(c: &Cluster, name: &str) {
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {ENABLED: "true"}},
        "data": {"k": "v"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_on_sigterm_while_its_first_list_keeps_failing() {
    let c = cluster().await;
    let (dir, plugins, kubeconfig) = setup(&c);
    c.server.faults().fail(
        Match::any().verb("list").resource("configmaps"),
        u32::MAX,
        500,
    );
    let mut child = run(dir.path(), &plugins, &kubeconfig, &[]);
    let lines = wait_for_line(&mut child, "watching core/v1/ConfigMap").await;
    // Let it fail a few lists and back off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stops_cleanly(&mut child, lines).await;
    assert!(
        c.server
            .faults()
            .requests_matching(&Match::any().verb("list").resource("configmaps"))
            .len()
            >= 2,
        "the list is retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_waits_for_a_slow_first_list_and_reconciles() {
    let c = cluster().await;
    source(&c, "settings").await;
    let (dir, plugins, kubeconfig) = setup(&c);
    let lists = Match::any().verb("list").resource("configmaps");
    c.server.faults().fail(lists.clone(), u32::MAX, 500);
    let mut child = run(dir.path(), &plugins, &kubeconfig, &["--exit-when-idle"]);
    // Lists fail until the host has reported unsynced caches (after 10 s),
    // where the old host counted the controller as started and stopped.
    let lines = wait_for_line(&mut child, "have not synced after 10s").await;
    c.server.faults().clear();
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("exits once idle")
        .unwrap();
    let log = rest(lines).await;
    assert!(status.success(), "{log}");
    assert!(log.contains("caches synced"), "{log}");
    let mirror = Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .get_opt("settings-mirror")
        .await
        .unwrap();
    assert!(
        mirror.is_some(),
        "reconciled after the lists recovered:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_exits_on_sigterm_while_a_client_holds_a_half_sent_request() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(guest("noop"), plugins.join("noop.wasm")).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = host(dir.path())
        .arg("dev")
        .arg("--plugins")
        .arg(&plugins)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .spawn()
        .unwrap();
    let lines = wait_for_line(&mut child, "caches synced").await;
    let server = client_addr(dir.path());
    // Headers started, never finished; and a body promised, never sent.
    let mut headers = tokio::net::TcpStream::connect(&server).await.unwrap();
    headers
        .write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(&server).await.unwrap();
    body.write_all(
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\"",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stops_cleanly(&mut child, lines).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_are_not_regular_files_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).unwrap();
    let fifo = plugins.join("fifo.wasm");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::write(plugins.join("junk.wasm"), b"not wasm at all").unwrap();

    let inspect = |path: &Path| {
        let mut command = host(dir.path());
        command.arg("inspect").arg(path);
        command.output()
    };
    for (path, what) in [
        (
            plugins.join("zero.wasm"),
            "a character device, not a regular file",
        ),
        (fifo.clone(), "a FIFO, not a regular file"),
    ] {
        let output = tokio::time::timeout(Duration::from_secs(30), inspect(&path))
            .await
            .expect("inspect returns")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(what), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }

    // dev names every bad file at once.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        host(dir.path())
            .args(["dev", "--exit-when-idle", "--plugins"])
            .arg(&plugins)
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .output(),
    )
    .await
    .expect("dev returns")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("3 plugins did not load"), "{stderr}");
    for name in ["zero.wasm", "fifo.wasm", "junk.wasm"] {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

/// `reconcile-host cluster` in a child process, and a client for it.
async fn cluster_process(home: &Path) -> (Child, kube::Client) {
    let kubeconfig = home.join("kubeconfig");
    let mut child = host(home)
        .args(["cluster", "--kubeconfig"])
        .arg(&kubeconfig)
        .spawn()
        .unwrap();
    let _lines = wait_for_line(&mut child, "embedded API server running").await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    (child, kube::Client::try_from(config).unwrap())
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// The bound the README documents for the embedded API server under these
/// loads (its history keeps at most 64 MiB of objects, each watch at most
/// 16 MiB queued). The binary's allocator, mimalloc, keeps freed segments
/// for reuse: about 80 MiB more resident than glibc's under these loads
/// (see BENCHMARKS.md); unbounded queues took the server past 800 MiB.
const RSS_BOUND_MIB: u64 = 320;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_memory_stays_bounded_under_big_updates_and_stalled_watchers() {
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    let home = tempfile::tempdir().unwrap();
    let (child, client) = cluster_process(home.path()).await;
    let pid = child.id().unwrap();
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(json!({
            "metadata": {"name": "blobs.hostile.reconcile.dev"},
            "spec": {"group": "hostile.reconcile.dev", "scope": "Namespaced",
                "names": {"plural": "blobs", "singular": "blob", "kind": "Blob"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))
        .unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    let resource = ApiResource {
        group: "hostile.reconcile.dev".into(),
        version: "v1".into(),
        api_version: "hostile.reconcile.dev/v1".into(),
        kind: "Blob".into(),
        plural: "blobs".into(),
    };
    let blobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let before = rss_mib(pid);

    // 300 updates of a 2.9 MB object.
    let apply = PatchParams::apply("hardening").force();
    for i in 0..300u32 {
        let data = format!("{i:08}").repeat(2_900_000 / 8);
        let blob = json!({"apiVersion": "hostile.reconcile.dev/v1", "kind": "Blob",
            "metadata": {"name": "big"}, "spec": {"data": data}});
        blobs
            .patch("big", &apply, &Patch::Apply(&blob))
            .await
            .unwrap();
    }
    let after_updates = rss_mib(pid);

    // 20 watchers that never read, and 200 writes of 200 KB.
    let addr = client_addr(home.path());
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(
                b"GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..200u32 {
        let data = format!("{i:08}").repeat(200_000 / 8);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "stalled"}, "data": {"d": data}});
        configmaps
            .patch("stalled", &apply, &Patch::Apply(&cm))
            .await
            .unwrap();
    }
    let after_watchers = rss_mib(pid);
    println!(
        "embedded API server RSS: {before} MiB at start, {after_updates} MiB after 300 updates of 2.9 MB, {after_watchers} MiB after 200 writes of 200 KB with 20 stalled watchers (bound {RSS_BOUND_MIB} MiB)"
    );
    assert!(
        after_updates < RSS_BOUND_MIB,
        "{after_updates} MiB after the updates"
    );
    assert!(
        after_watchers < RSS_BOUND_MIB,
        "{after_watchers} MiB with stalled watchers"
    );
    // Still serving.
    assert!(configmaps.get("stalled").await.is_ok());
    drop(stalled);
}

/// host:port of the kubeconfig under `home`.
fn client_addr(home: &Path) -> String {
    std::fs::read_to_string(home.join("kubeconfig"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: http://"))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_running_reconcile_after_the_shutdown_grace_and_exits_0() {
    let c = cluster().await;
    source(&c, "spin").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(guest("fault-loop"), plugins.join("fault-loop.wasm")).unwrap();
    // A reconcile may run for a minute: longer than the grace.
    std::fs::write(
        plugins.join("fault-loop.grants.toml"),
        "[[resources]]\ngroup = \"core\"\nkind = \"ConfigMap\"\nverbs = [\"get\", \"list\", \"watch\"]\n[limits]\ndeadline_ms = 60000\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.server.kubeconfig()).unwrap();
    let mut child = run(
        dir.path(),
        &plugins,
        &kubeconfig,
        &["--shutdown-grace", "1"],
    );
    let lines = wait_for_line(&mut child, "caches synced").await;
    // The reconciles of the ConfigMaps are spinning now (they start as
    // soon as the caches have synced).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = stops_cleanly(&mut child, lines).await;
    assert!(log.contains("after the shutdown grace of 1s"), "{log}");
    let stopped = log
        .lines()
        .find(|l| l.contains("\"message\":\"stopped\""))
        .unwrap_or_else(|| panic!("no stop line:\n{log}"));
    assert!(!stopped.contains("\"cut\":0"), "{stopped}");
}
