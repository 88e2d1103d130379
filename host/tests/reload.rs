//! Hot reload against the embedded cluster, with real plugins built from
//! source, real files, renames and symlinks in a real directory, watched by
//! the host's reloader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::SpanData;
use reconcile_host::grants::HttpGrant;
use reconcile_host::operator::{ControllerSettings, GrantPolicy, Operator};
use reconcile_host::reload::{ReloadConfig, Reloader};
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use support::cluster::{Cluster, cluster, eventually};
use support::{attr, guest};

/// The host's log lines, from every thread (the reloader and controllers
/// run on the runtime's workers), as JSON.
fn host_logs() -> &'static support::Captured {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    static LOGS: std::sync::OnceLock<support::Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = support::Captured::default();
        let logger = Logger::to_writer(LogFormat::Json, Level::Debug, logs.clone());
        let filter = tracing_subscriber::EnvFilter::new("reconcile_host=debug");
        let _ = tracing_subscriber::registry()
            .with(logger.layer().with_filter(filter))
            .try_init();
        logs
    })
}

/// The bytes of guest `name`.
fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// A cluster, an operator driven by a reloader watching a directory.
struct Reloading {
    c: Cluster,
    operator: Arc<Operator>,
    dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The reloader's scan count, once started.
    scans: Arc<std::sync::atomic::AtomicU64>,
}

fn settings() -> ControllerSettings {
    ControllerSettings {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        reload_rate: 200.0,
        ..Default::default()
    }
}

impl Reloading {
    /// Nothing watched yet: put files in `dir`, then [`start`](Self::start).
    async fn new() -> Self {
        host_logs();
        let c = cluster().await;
        let operator = Arc::new(Operator::new(
            c.client.clone(),
            settings(),
            c.h.provider_tracer(),
        ));
        let (stop, _) = tokio::sync::watch::channel(false);
        Reloading {
            c,
            operator,
            dir: tempfile::tempdir().unwrap(),
            stop,
            task: None,
            scans: Arc::default(),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The first scan, then watching (rescans only every 60 s, so that
    /// what the tests see comes from change events).
    async fn start(&mut self, policy: GrantPolicy) -> reconcile_host::reload::ScanReport {
        let mut config = ReloadConfig::new(self.dir.path().to_owned(), policy);
        config.rescan = Duration::from_secs(60);
        let mut reloader = Reloader::new(
            self.c.h.engine.clone(),
            self.operator.clone(),
            self.c.h.provider_tracer(),
            config,
        );
        let report = reloader.scan().await.unwrap();
        self.scans = reloader.scans();
        let mut stopped = self.stop.subscribe();
        self.task = Some(tokio::spawn(reloader.watch(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
        report
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.operator.stop().await;
    }

    /// The host's log lines about files in this test's directory.
    fn host_lines(&self) -> Vec<serde_json::Value> {
        let dir = self.dir.path().display().to_string();
        host_logs()
            .lines()
            .into_iter()
            .filter(|l| {
                l["file"].as_str().is_some_and(|f| f.starts_with(&dir))
                    || l["dir"].as_str() == Some(&dir)
            })
            .collect()
    }

    /// Asserts that a host line about this test's files has (or, with
    /// `expected` false, that none has) a message matching `check`.
    fn assert_logged(&self, expected: bool, check: impl Fn(&str) -> bool) {
        let lines = self.host_lines();
        let found = lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(&check));
        assert_eq!(found, expected, "{lines:#?}");
    }

    /// `plugin.load` spans so far.
    fn loads(&self) -> Vec<SpanData> {
        self.c
            .h
            .finished()
            .into_iter()
            .filter(|s| s.name == "plugin.load")
            .collect()
    }

    /// Waits for the next `plugin.load` span after `before` of them.
    async fn next_load(&self, before: usize) -> SpanData {
        eventually("a plugin.load span", || async {
            self.loads().len() > before
        })
        .await;
        self.loads().remove(before)
    }

    /// Every reconcile root so far.
    fn all_roots(&self) -> Vec<SpanData> {
        let spans = self.c.h.finished().into_iter();
        spans.filter(|s| s.name == "reconcile").collect()
    }

    /// Reconcile roots of object `name`.
    fn roots(&self, name: &str) -> Vec<SpanData> {
        self.c.roots(name)
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.c.client.clone(), "default")
    }

    /// The ConfigMap `name`'s resourceVersion now.
    async fn resource_version(&self, name: &str) -> String {
        let cm = self.configmaps().get(name).await.unwrap();
        cm.metadata.resource_version.unwrap()
    }

    /// The `<name>-out` ConfigMap's data, if it exists.
    async fn out(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.configmaps()
            .get_opt(&format!("{name}-out"))
            .await
            .unwrap()
            .and_then(|cm| cm.data)
    }

    /// Waits until `<name>-out` says `version`.
    async fn reconciled_by(&self, name: &str, version: &str) {
        eventually(&format!("{name} reconciled by {version}"), || async {
            self.out(name)
                .await
                .is_some_and(|d| d.get("version").map(String::as_str) == Some(version))
        })
        .await;
    }

    /// Creates the ConfigMap `name` the `reload` plugin reconciles.
    async fn object(&self, name: &str, annotations: &[(&str, &str)]) {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": {"reload-test": "yes"},
                "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
        }))
        .unwrap();
        self.configmaps()
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }

    /// Changes the ConfigMap `name` (an annotation `tick`).
    async fn touch(&self, name: &str, tick: usize) {
        let patch = serde_json::json!({"metadata": {"annotations": {"tick": tick.to_string()}}});
        self.configmaps()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }
}

/// Writes `bytes` to `dir/file` as tools that ship files do: to a hidden
/// temporary name, then renamed over the old one.
fn put(dir: &Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// The kubelet's ConfigMap volume layout, written as its atomic writer
/// does: the files in a new timestamped directory, a `..data_tmp` symlink
/// to it renamed over `..data`, the old directory removed; the visible
/// files are symlinks through `..data` (created once).
fn kubelet_update(dir: &Path, files: &[(&str, &[u8])]) {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let ts = format!("..2026_12_02_00_00_00.{stamp}");
    std::fs::create_dir(dir.join(&ts)).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(&ts).join(name), bytes).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &visible).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

fn as_requested() -> GrantPolicy {
    GrantPolicy::AsRequested { http: vec![] }
}

/// The digest the engine gives guest `name`.
async fn digest(r: &Reloading, name: &str) -> String {
    r.c.h
        .engine
        .load_file(&guest(name))
        .await
        .unwrap()
        .digest()
        .to_owned()
}

/// Swaps v1 for v2 with `install`, and checks what a swap promises.
async fn swap_makes_new_reconciles_run_the_new_digest(install: fn(&Path, &[u8])) {
    let mut r = Reloading::new().await;
    install(r.dir.path(), &wasm("reload-v1"));
    let objects = ["a", "b", "c"];
    for name in objects {
        r.object(name, &[]).await;
    }
    let report = r.start(as_requested()).await;
    assert_eq!(report.started, ["reload"], "{report:?}");
    for name in objects {
        r.reconciled_by(name, "1.0.0").await;
    }
    let (v1, v2) = (digest(&r, "reload-v1").await, digest(&r, "reload-v2").await);

    let before = r.loads().len();
    install(r.dir.path(), &wasm("reload-v2"));
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("replaced")
    );
    assert_eq!(attr(&load, "plugin.name").as_deref(), Some("reload"));
    assert_eq!(attr(&load, "plugin.digest").as_deref(), Some(v2.as_str()));
    assert_eq!(
        attr(&load, "plugin.digest.previous").as_deref(),
        Some(v1.as_str())
    );
    assert_eq!(attr(&load, "plugin.cached").as_deref(), Some("true"));
    assert!(attr(&load, "plugin.compile_ms").is_some());

    // Every object once with plugin_reloaded, by the new digest.
    for name in objects {
        r.reconciled_by(name, "2.0.0").await;
        assert_eq!(
            r.out(name).await.unwrap()["reason"],
            "PluginReloaded",
            "{name}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in objects {
        let reloaded: Vec<SpanData> = r
            .roots(name)
            .into_iter()
            .filter(|s| attr(s, "reconcile.reason").as_deref() == Some("plugin_reloaded"))
            .collect();
        assert_eq!(reloaded.len(), 1, "{name}: one plugin_reloaded reconcile");
        assert_eq!(
            attr(&reloaded[0], "plugin.digest").as_deref(),
            Some(v2.as_str())
        );
        assert!(reloaded[0].start_time >= load.start_time);
    }
    // A change after the swap runs the new version too.
    r.touch("a", 1).await;
    eventually("a reconciled after its change", || async {
        r.roots("a").iter().any(|s| {
            attr(s, "reconcile.reason").as_deref() == Some("object_changed")
                && s.start_time > load.end_time
        })
    })
    .await;
    last_root_by(&r, "a", &v2).await;
    assert!(r.operator.activity().failures().is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_by_atomic_rename_runs_the_new_digest_and_requeues_each_object_once() {
    swap_makes_new_reconciles_run_the_new_digest(|dir, bytes| put(dir, "reload.wasm", bytes)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_by_the_kubelets_data_symlink_runs_the_new_digest() {
    swap_makes_new_reconciles_run_the_new_digest(|dir, bytes| {
        kubelet_update(dir, &[("reload.wasm", bytes)])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_leave_the_old_version_serving() {
    let mut r = Reloading::new().await;
    let grant = r#"
        [[resources]]
        kind = "ConfigMap"
        verbs = ["get", "list", "watch", "patch"]
    "#;
    std::fs::write(r.path("reload.grants.toml"), grant).unwrap();
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    r.object("a", &[]).await;
    r.start(GrantPolicy::Files(None)).await;
    r.reconciled_by("a", "1.0.0").await;
    let v1 = digest(&r, "reload-v1").await;
    let v2 = wasm("reload-v2");

    let truncated = &v2[..v2.len() / 2];
    let mut metadata_traps = wasm("bad-metadata");
    // Another digest than the guest's own, so that its compile is fresh.
    metadata_traps.extend_from_slice(&xtask::custom_section("reload-test", b"traps"));
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "not a component",
            b"this is not wasm".to_vec(),
            "not_a_component",
            "not a WebAssembly",
        ),
        (
            "the wrong world",
            wasm("not-a-reconciler"),
            "wrong_world",
            "reconcile",
        ),
        (
            "a trapping metadata()",
            metadata_traps,
            "metadata",
            "metadata",
        ),
        (
            "a half-written file",
            truncated.to_vec(),
            "compile",
            "not a valid component",
        ),
    ];
    let mut tick = 0;
    for (what, bytes, error_type, reason) in cases {
        let before = r.loads().len();
        put(r.dir.path(), "reload.wasm", &bytes);
        let load = r.next_load(before).await;
        assert_eq!(
            attr(&load, "plugin.load.result").as_deref(),
            Some("failed"),
            "{what}"
        );
        assert_eq!(
            attr(&load, "error.type").as_deref(),
            Some(error_type),
            "{what}"
        );
        assert!(matches!(load.status, Status::Error { .. }), "{what}");
        let event = load
            .events
            .iter()
            .find(|e| e.name == "exception")
            .expect(what);
        let message = event
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "exception.message")
            .map(|kv| kv.value.to_string())
            .unwrap();
        assert!(message.contains(reason), "{what}: {message}");
        assert_failure_logged(&r, &message, what);
        // The old version keeps serving.
        tick += 1;
        r.touch("a", tick).await;
        expect_reconcile_by(&r, "a", tick, &v1).await;
    }

    // The rest of the half-written file arrives: it loads.
    let before = r.loads().len();
    put(r.dir.path(), "reload.wasm", &v2);
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("replaced")
    );
    r.reconciled_by("a", "2.0.0").await;

    // A grant that no longer covers the plugin: v2 keeps serving.
    let before = r.loads().len();
    std::fs::write(
        r.path("reload.grants.toml"),
        "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\", \"list\", \"watch\"]\n",
    )
    .unwrap();
    let load = r.next_load(before).await;
    assert_eq!(attr(&load, "plugin.load.result").as_deref(), Some("failed"));
    assert_eq!(attr(&load, "error.type").as_deref(), Some("grant"));
    let v2_digest = digest(&r, "reload-v2").await;
    tick += 1;
    r.touch("a", tick).await;
    expect_reconcile_by(&r, "a", tick, &v2_digest).await;
    let failures = r.operator.activity().failures();
    assert!(
        failures
            .iter()
            .any(|(what, why)| what.contains("reload.wasm") && why.contains("patch")),
        "{failures:?}"
    );
    r.stop().await;
}

/// The host logged one error line naming the file and the reason.
fn assert_failure_logged(r: &Reloading, message: &str, what: &str) {
    let lines = r.host_lines();
    let line = lines
        .iter()
        .find(|l| {
            l["level"] == "error" && l["message"].as_str().is_some_and(|m| m.contains(message))
        })
        .unwrap_or_else(|| panic!("{what}: no error line with {message}: {lines:?}"));
    assert!(
        line["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("reload.wasm")),
        "{what}: {line}"
    );
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("the running version keeps serving")),
        "{what}: {line}"
    );
}

/// Waits for the reconcile of `name` after its change number `tick`, and
/// checks that `digest` ran it.
async fn expect_reconcile_by(r: &Reloading, name: &str, tick: usize, digest: &str) {
    let version = r.resource_version(name).await;
    eventually(
        &format!("{name} reconciled after change {tick}"),
        || async {
            r.out(name)
                .await
                .is_some_and(|d| d.get("generation") == Some(&version))
        },
    )
    .await;
    last_root_by(r, name, digest).await;
}

/// Waits until the latest reconcile of `name` (by start) is by `digest`.
async fn last_root_by(r: &Reloading, name: &str, digest: &str) {
    eventually(
        &format!("the last reconcile of {name} by {digest}"),
        || async {
            let last = r.roots(name).into_iter().max_by_key(|s| s.start_time);
            last.is_some_and(|s| attr(&s, "plugin.digest").as_deref() == Some(digest))
        },
    )
    .await;
}

/// A server whose `/hold` answers only once released.
async fn hold_server() -> (String, tokio::sync::watch::Sender<bool>) {
    let (release, released) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().route(
        "/hold",
        axum::routing::get(move || {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                "released"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_running_during_the_swap_finishes_on_the_old_digest() {
    let (url, release) = hold_server().await;
    let mut r = Reloading::new().await;
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    let policy = GrantPolicy::AsRequested {
        http: vec![HttpGrant {
            url: url.clone(),
            private: false,
        }],
    };
    r.start(policy).await;
    let (v1, v2) = (digest(&r, "reload-v1").await, digest(&r, "reload-v2").await);
    // Its reconcile waits on its GET.
    r.object("held", &[("wait", &format!("{url}/hold"))]).await;
    eventually("the held reconcile running", || async {
        r.operator.activity().running() > 0
    })
    .await;

    let before = r.loads().len();
    put(r.dir.path(), "reload.wasm", &wasm("reload-v2"));
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("replaced")
    );
    assert!(
        r.roots("held").is_empty(),
        "the held reconcile is still running"
    );
    release.send_replace(true);

    // The held reconcile finished on v1, and what it wrote stayed until
    // v2's plugin_reloaded reconcile.
    r.reconciled_by("held", "2.0.0").await;
    let mut roots = r.roots("held");
    roots.sort_by_key(|s| s.start_time);
    assert_eq!(roots.len(), 2, "{roots:#?}");
    let (old, new) = (&roots[0], &roots[1]);
    assert_eq!(attr(old, "plugin.digest").as_deref(), Some(v1.as_str()));
    assert_eq!(
        attr(old, "reconcile.reason").as_deref(),
        Some("object_changed")
    );
    assert_eq!(old.status, Status::Unset);
    assert!(old.start_time < load.start_time && old.end_time > load.end_time);
    assert_eq!(attr(new, "plugin.digest").as_deref(), Some(v2.as_str()));
    assert_eq!(
        attr(new, "reconcile.reason").as_deref(),
        Some("plugin_reloaded")
    );
    assert!(
        new.start_time >= old.end_time,
        "one object, one reconcile at a time"
    );
    // v1's write went through: v2 found its own output already there.
    let applies: Vec<String> =
        r.c.h
            .finished()
            .iter()
            .filter(|s| s.name == "k8s.apply" && s.parent_span_id == old.span_context.span_id())
            .map(|s| format!("{:?}", s.status))
            .collect();
    assert_eq!(applies, ["Unset"], "v1 applied its result");
    assert!(r.operator.activity().failures().is_empty());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_primary_type_replaces_the_controller_without_overlap() {
    let (url, release) = hold_server().await;
    let mut r = Reloading::new().await;
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    r.object("cm-1", &[]).await;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "secret-1", "labels": {"reload-test": "yes"}},
    }))
    .unwrap();
    Api::<Secret>::namespaced(r.c.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let policy = GrantPolicy::AsRequested {
        http: vec![HttpGrant {
            url: url.clone(),
            private: false,
        }],
    };
    r.start(policy).await;
    r.reconciled_by("cm-1", "1.0.0").await;
    // A v1 reconcile is running when the new version arrives.
    r.object("cm-held", &[("wait", &format!("{url}/hold"))])
        .await;
    eventually("the held reconcile running", || async {
        r.operator.activity().running() > 0
    })
    .await;
    let before = r.loads().len();
    put(r.dir.path(), "reload.wasm", &wasm("reload-secret"));
    // The old controller drains: nothing of the new one runs meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        r.out("secret-1").await.is_none(),
        "the new controller waits for the drain"
    );
    assert_eq!(r.loads().len(), before, "the load ends with the swap");
    release.send_replace(true);
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("replaced")
    );
    r.reconciled_by("secret-1", "3.0.0").await;

    let v3 = digest(&r, "reload-secret").await;
    let roots = r.all_roots();
    let (new, old): (Vec<_>, Vec<_>) = roots
        .iter()
        .partition(|s| attr(s, "plugin.digest").as_deref() == Some(v3.as_str()));
    let held = old
        .iter()
        .find(|s| attr(s, "k8s.name").as_deref() == Some("cm-held"))
        .expect("the held reconcile finished");
    assert_eq!(held.status, Status::Unset, "it finished, not cut");
    let old_end = old.iter().map(|s| s.end_time).max().unwrap();
    let new_start = new.iter().map(|s| s.start_time).min().unwrap();
    assert!(
        held.end_time <= new_start && old_end <= new_start,
        "the old controller drained before the new one started"
    );
    assert!(
        new.iter()
            .all(|s| attr(s, "k8s.kind").as_deref() == Some("Secret"))
    );
    r.assert_logged(true, |m| m.contains("replaced, with a new controller"));
    // ConfigMaps are not reconciled any more.
    let count = r.roots("cm-1").len();
    r.touch("cm-1", 99).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.roots("cm-1").len(), count);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_keeps_its_controller_and_a_duplicate_waits_its_turn() {
    let mut r = Reloading::new().await;
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    r.object("a", &[]).await;
    r.start(as_requested()).await;
    r.reconciled_by("a", "1.0.0").await;
    let v1 = digest(&r, "reload-v1").await;

    // mv: the same plugin from another file name, the controller kept.
    let before = r.loads().len();
    std::fs::rename(r.path("reload.wasm"), r.path("renamed.wasm")).unwrap();
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("unchanged")
    );
    assert!(
        attr(&load, "plugin.file")
            .unwrap()
            .ends_with("renamed.wasm")
    );
    assert_eq!(r.operator.plugins().await.len(), 1);
    r.touch("a", 1).await;
    expect_reconcile_by(&r, "a", 1, &v1).await;
    r.assert_logged(false, |m| m.starts_with("removed"));

    // A second file with the same plugin name is refused while the first
    // serves, and takes over when the first goes.
    let before = r.loads().len();
    put(r.dir.path(), "second.wasm", &wasm("reload-v2"));
    let load = r.next_load(before).await;
    assert_eq!(attr(&load, "plugin.load.result").as_deref(), Some("failed"));
    assert_eq!(attr(&load, "error.type").as_deref(), Some("duplicate"));
    r.touch("a", 2).await;
    expect_reconcile_by(&r, "a", 2, &v1).await;
    std::fs::remove_file(r.path("renamed.wasm")).unwrap();
    r.reconciled_by("a", "2.0.0").await;
    assert_eq!(r.out("a").await.unwrap()["reason"], "PluginReloaded");
    assert_eq!(r.operator.plugins().await.len(), 1);

    // A file that switches to another plugin releases the name too: its
    // refused duplicate loads.
    let before = r.loads().len();
    put(r.dir.path(), "third.wasm", &wasm("reload-v1"));
    let load = r.next_load(before).await;
    assert_eq!(attr(&load, "error.type").as_deref(), Some("duplicate"));
    put(r.dir.path(), "second.wasm", &wasm("noop"));
    let v1 = digest(&r, "reload-v1").await;
    eventually("noop from second.wasm, reload from third.wasm", || async {
        let mut running: Vec<(String, String)> = r
            .operator
            .plugins()
            .await
            .iter()
            .map(|p| (p.metadata().name.clone(), p.digest().to_owned()))
            .collect();
        running.sort();
        running.len() == 2 && running[0].0 == "noop" && running[1] == ("reload".into(), v1.clone())
    })
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_grant_reloads_its_plugin_and_an_idle_directory_is_not_rescanned() {
    let mut r = Reloading::new().await;
    let grant =
        "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\", \"list\", \"watch\", \"patch\"]\n";
    std::fs::write(r.path("reload.grants.toml"), grant).unwrap();
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    r.object("a", &[]).await;
    r.start(GrantPolicy::Files(None)).await;
    let scans = r.scans.clone();
    r.reconciled_by("a", "1.0.0").await;

    // The scans' own reads are not changes: an idle directory is quiet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = scans.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(scans.load(std::sync::atomic::Ordering::Relaxed), settled);

    // A new grant (a shorter deadline) is a new version of the plugin.
    let before = r.loads().len();
    std::fs::write(
        r.path("reload.grants.toml"),
        format!("{grant}[limits]\ndeadline_ms = 5000\n"),
    )
    .unwrap();
    let load = r.next_load(before).await;
    assert_eq!(
        attr(&load, "plugin.load.result").as_deref(),
        Some("replaced")
    );
    eventually("a reconciled again after the grant changed", || async {
        r.out("a")
            .await
            .is_some_and(|d| d["reason"] == "PluginReloaded")
    })
    .await;
    assert!(scans.load(std::sync::atomic::Ordering::Relaxed) > settled);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_stops_the_controller_and_a_new_file_starts_one() {
    let mut r = Reloading::new().await;
    put(r.dir.path(), "reload.wasm", &wasm("reload-v1"));
    // A file that does not load does not keep the other from starting.
    put(r.dir.path(), "junk.wasm", b"junk");
    r.object("a", &[]).await;
    let report = r.start(as_requested()).await;
    assert_eq!(report.started, ["reload"]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].0.ends_with("junk.wasm"));
    r.reconciled_by("a", "1.0.0").await;

    std::fs::remove_file(r.path("reload.wasm")).unwrap();
    eventually("the controller stopped", || async {
        r.operator.plugins().await.is_empty()
    })
    .await;
    r.assert_logged(true, |m| m.starts_with("removed"));
    let count = r.roots("a").len();
    r.touch("a", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.roots("a").len(), count, "no reconcile once removed");

    // A file appearing starts a controller, which catches up.
    put(r.dir.path(), "reload.wasm", &wasm("reload-v2"));
    r.reconciled_by("a", "2.0.0").await;
    assert_eq!(r.operator.plugins().await.len(), 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_no_reconcile_and_fail_none() {
    let mut r = Reloading::new().await;
    let versions = [wasm("reload-v1"), wasm("reload-v2")];
    put(r.dir.path(), "reload.wasm", &versions[0]);
    let objects: Vec<String> = (0..6).map(|i| format!("obj-{i}")).collect();
    for name in &objects {
        r.object(name, &[]).await;
    }
    r.start(as_requested()).await;
    for name in &objects {
        r.reconciled_by(name, "1.0.0").await;
    }
    let r = Arc::new(r);
    // Objects change all the time.
    let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
    let load = {
        let r = r.clone();
        let objects = objects.clone();
        tokio::spawn(async move {
            let mut tick = 0;
            while !*load_stopped.borrow() {
                r.touch(&objects[tick % objects.len()], tick).await;
                tick += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tick
        })
    };
    for i in 1..=100 {
        let before = r.loads().len();
        put(r.dir.path(), "reload.wasm", &versions[i % 2]);
        let load = r.next_load(before).await;
        assert_eq!(
            attr(&load, "plugin.load.result").as_deref(),
            Some("replaced"),
            "reload {i}"
        );
    }
    stop_load.send_replace(true);
    let changes = load.await.unwrap();
    assert!(changes > 100, "{changes} changes during the reloads");

    // The 100th reload put v1 back: every object ends reconciled by it,
    // at its latest resourceVersion.
    let v1 = digest(&r, "reload-v1").await;
    for name in &objects {
        let version = r.resource_version(name).await;
        eventually(
            &format!("{name} reconciled at its last change by v1"),
            || async {
                r.out(name).await.is_some_and(|d| {
                    d.get("generation") == Some(&version)
                        && d.get("version").map(String::as_str) == Some("1.0.0")
                })
            },
        )
        .await;
        // Its root span ends (and is exported) just after the write.
        last_root_by(&r, name, &v1).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in &objects {
        last_root_by(&r, name, &v1).await;
    }
    let roots = r.all_roots();
    let failed: Vec<&SpanData> = roots
        .iter()
        .filter(|s| matches!(s.status, Status::Error { .. }))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed reconciles: {failed:#?}",
        failed.len()
    );
    assert!(r.operator.activity().failures().is_empty());
    let r = Arc::into_inner(r).unwrap();
    r.stop().await;
}

/// Reads `lines` until one contains `what`; returns the lines read.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    what: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
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
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_the_plugins_it_runs_and_reloads_them_on_change() {
    use tokio::io::AsyncBufReadExt as _;
    let home = tempfile::tempdir().unwrap();
    let plugins = home.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    put(&plugins, "reload.wasm", &wasm("reload-v1"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .args(["--log-format", "json", "dev", "--plugins"])
        .arg(&plugins)
        .arg("--kubeconfig")
        .arg(home.path().join("kubeconfig"))
        .env("HOME", home.path())
        .env("OTEL_TRACES_EXPORTER", "none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    read_until(&mut lines, "plugins running: reload 1.0.0").await;
    read_until(&mut lines, "watching for plugin changes").await;

    put(&plugins, "reload.wasm", &wasm("reload-v2"));
    let seen = read_until(&mut lines, "plugins running: reload 2.0.0").await;
    assert!(
        seen.iter()
            .any(|l| l.contains("\"message\":\"replaced: new reconciles run this version")),
        "{seen:#?}"
    );

    put(&plugins, "reload.wasm", b"not wasm");
    let seen = read_until(&mut lines, "did not load").await;
    let line = seen.last().unwrap();
    assert!(line.contains("the running version keeps serving"), "{line}");
    assert!(line.contains("reload.wasm"), "{line}");

    std::fs::remove_file(plugins.join("reload.wasm")).unwrap();
    read_until(&mut lines, "no plugins running").await;

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
