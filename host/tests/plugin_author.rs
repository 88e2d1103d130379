//! What a first plugin author runs into, with the `mirror` test plugin (a
//! ConfigMap mirror, as written from the README): namespaced grants,
//! applies after another manager's change, repeated Events, grant file
//! names, `run --kubeconfig`, `call` with YAML.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reconcile_host::operator::GrantPolicy;
use serde_json::{Value, json};
use support::cluster::{Cluster, cluster, eventually};
use support::{attr, guest};

const ENABLED: &str = "mirror.reconcile.dev/enabled";

fn grant(namespaces: &[&str]) -> String {
    let ns = match namespaces {
        [] => String::new(),
        list => format!("namespaces = {list:?}"),
    };
    format!(
        r#"
        [[resources]]
        group = "core"
        kind = "ConfigMap"
        verbs = ["get", "list", "watch", "patch"]
        {ns}
        [[resources]]
        group = "events.k8s.io"
        kind = "Event"
        verbs = ["get", "create", "patch", "delete"]
        {ns}
        "#
    )
}

async fn namespace(c: &Cluster, name: &str) {
    let api: Api<Namespace> = Api::all(c.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

async fn source(c: &Cluster, ns: &str, name: &str, data: Value) {
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {ENABLED: "true"}},
        "data": data,
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

async fn mirror_of(c: &Cluster, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(c.client.clone(), ns)
        .get_opt(&format!("{name}-mirror"))
        .await
        .unwrap()
}

async fn idle(c: &Cluster) {
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("the operator is idle", || {
        let activity = activity.clone();
        async move { activity.idle_for(Duration::from_millis(300)) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_grant_watches_only_its_namespaces() {
    let mut c = cluster().await;
    for ns in ["team-a", "other"] {
        namespace(&c, ns).await;
    }
    for ns in ["default", "team-a", "other"] {
        source(&c, ns, "settings", json!({"k": ns})).await;
    }
    let grants = tempfile::tempdir().unwrap();
    std::fs::write(
        grants.path().join("mirror.grants.toml"),
        grant(&["default", "team-a"]),
    )
    .unwrap();
    let plugin = c
        .plugin_with(
            "mirror",
            &GrantPolicy::Files(Some(grants.path().to_owned())),
        )
        .await;
    c.server.faults().clear_requests();
    c.start(vec![plugin]).await;
    for ns in ["default", "team-a"] {
        eventually("the granted namespaces are mirrored", || async {
            mirror_of(&c, ns, "settings").await.is_some()
        })
        .await;
    }
    idle(&c).await;
    let activity = c.operator.as_ref().unwrap().activity().clone();
    assert!(activity.failures().is_empty(), "{:?}", activity.failures());
    assert!(mirror_of(&c, "other", "settings").await.is_none());
    let seen: Vec<String> =
        c.h.finished()
            .iter()
            .filter(|s| s.name == "reconcile")
            .filter_map(|s| attr(s, "k8s.namespace"))
            .collect();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|ns| ns == "default" || ns == "team-a"),
        "reconciled in {seen:?}"
    );
    // Every list and watch of ConfigMaps named a granted namespace.
    let requests = c.server.faults().requests();
    let reads: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.resource.as_deref() == Some("configmaps") && (r.verb == "list" || r.verb == "watch")
        })
        .collect();
    assert!(!reads.is_empty());
    for r in reads {
        assert!(
            matches!(r.namespace.as_deref(), Some("default" | "team-a")),
            "{} {} {:?}",
            r.verb,
            r.path,
            r.namespace
        );
    }

    // A new object in a granted namespace is seen; one elsewhere is not.
    source(&c, "team-a", "later", json!({"x": "1"})).await;
    source(&c, "other", "later", json!({"x": "1"})).await;
    eventually("the new object is mirrored", || async {
        mirror_of(&c, "team-a", "later").await.is_some()
    })
    .await;
    idle(&c).await;
    assert!(mirror_of(&c, "other", "later").await.is_none());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_apply_wins_over_another_managers_patch() {
    let mut c = cluster().await;
    source(&c, "default", "web", json!({"color": "blue"})).await;
    let plugin = c.plugin("mirror").await;
    c.start(vec![plugin]).await;
    eventually("the mirror exists", || async {
        mirror_of(&c, "default", "web").await.is_some()
    })
    .await;
    idle(&c).await;
    // As `kubectl patch` would: another field manager changes the copy.
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let params = PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..Default::default()
    };
    api.patch(
        "web-mirror",
        &params,
        &Patch::Merge(json!({"data": {"color": "red"}})),
    )
    .await
    .unwrap();
    // The owned copy changed: the owner is reconciled and its apply wins.
    eventually("the plugin's value is back", || async {
        mirror_of(&c, "default", "web")
            .await
            .and_then(|m| m.data)
            .and_then(|d| d.get("color").cloned())
            .as_deref()
            == Some("blue")
    })
    .await;
    idle(&c).await;
    let activity = c.operator.as_ref().unwrap().activity().clone();
    assert!(activity.failures().is_empty(), "{:?}", activity.failures());
    let mirror = mirror_of(&c, "default", "web").await.unwrap();
    let managers: Vec<String> = mirror
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    // Under the field manager the plugin chose (`Metadata::field_manager`).
    assert!(
        managers.contains(&"mirror-controller".to_owned()),
        "{managers:?}"
    );
    assert!(!managers.contains(&"mirror".to_owned()), "{managers:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_is_recorded_once_with_a_count() {
    let mut c = cluster().await;
    source(&c, "default", "web", json!({"color": "blue"})).await;
    let plugin = c.plugin("mirror").await;
    c.start(vec![plugin]).await;
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let about_web = ListParams::default().fields("regarding.name=web,reason=Mirrored");
    eventually("the first Event", || async {
        !events.list(&about_web).await.unwrap().items.is_empty()
    })
    .await;
    idle(&c).await;
    // Two more reconciles of the same object record the same Event.
    let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    for n in 0..2 {
        let before = c.roots("web").len();
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": n.to_string()}}})),
        )
        .await
        .unwrap();
        eventually("another reconcile", || async {
            c.roots("web").len() > before
        })
        .await;
        idle(&c).await;
    }
    let roots = c.roots("web");
    assert!(roots.len() >= 3, "{} reconciles", roots.len());
    let list = events.list(&about_web).await.unwrap().items;
    assert_eq!(list.len(), 1, "one Event: {list:#?}");
    let event = &list[0];
    assert_eq!(event.note.as_deref(), Some("mirrored to web-mirror"));
    let series = event.series.as_ref().expect("a series");
    assert_eq!(series.count as usize, roots.len());

    // The same Event, through core v1, with the core names.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let listed = core
        .list(
            &ListParams::default().fields("involvedObject.name=web,involvedObject.kind=ConfigMap"),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message.as_deref(), Some("mirrored to web-mirror"));
    assert_eq!(listed[0].reporting_component.as_deref(), Some("mirror"));
    assert_eq!(
        listed[0].series.as_ref().and_then(|s| s.count),
        Some(series.count)
    );
    c.stop().await;
}

fn write_plugin_dir(dir: &Path, grant_name: &str, grant_text: &str) {
    std::fs::copy(guest("mirror"), dir.join("mirror.wasm")).unwrap();
    std::fs::write(dir.join(grant_name), grant_text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_namespaced_grant_and_kubeconfig_exits_when_idle() {
    let c = cluster().await;
    namespace(&c, "other").await;
    source(&c, "default", "settings", json!({"k": "v"})).await;
    source(&c, "other", "settings", json!({"k": "v"})).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.server.kubeconfig()).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // The plugin name next to the .wasm.
    write_plugin_dir(&plugins, "mirror.grants.toml", &grant(&["default"]));
    let run = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"));
        command
            // Metrics on a free port: hosts of tests that run at once.
            .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
            .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
            .args([
                "--log-format",
                "json",
                "run",
                "--exit-when-idle",
                "--plugins",
            ])
            .arg(&plugins)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .env_remove("KUBECONFIG")
            .env("HOME", dir.path())
            .env("OTEL_TRACES_EXPORTER", "none")
            .kill_on_drop(true);
        command
    };
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        run(&["--context", "reconcile-host"]).output(),
    )
    .await
    .expect("run exits once idle")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("watching core/v1/ConfigMap in namespaces default"),
        "{stderr}"
    );
    assert!(mirror_of(&c, "default", "settings").await.is_some());
    assert!(mirror_of(&c, "other", "settings").await.is_none());

    // A context the kubeconfig lacks is named.
    let output = run(&["--context", "nowhere"]).output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_files_under_grants_dir_use_the_plugin_name() {
    let c = cluster().await;
    source(&c, "default", "settings", json!({"k": "v"})).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.server.kubeconfig()).unwrap();
    let plugins = guest("mirror").parent().unwrap().to_owned();
    for name in ["mirror.grants.toml", "mirror.toml"] {
        let grants = tempfile::tempdir().unwrap();
        std::fs::write(grants.path().join(name), grant(&[])).unwrap();
        // Only the mirror: a directory of its own.
        let only = tempfile::tempdir().unwrap();
        std::fs::copy(plugins.join("mirror.wasm"), only.path().join("mirror.wasm")).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
            // Metrics on a free port: hosts of tests that run at once.
            .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
            .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
            .args(["run", "--exit-when-idle", "--plugins"])
            .arg(only.path())
            .arg("--grants")
            .arg(grants.path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("OTEL_TRACES_EXPORTER", "none")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn call_reads_a_yaml_object_and_the_first_of_several() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("cm.yaml");
    std::fs::write(
        &one,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: default\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let two = dir.path().join("two.yaml");
    std::fs::write(
        &two,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: second\n",
    )
    .unwrap();
    let call = |object: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
            // Metrics on a free port: hosts of tests that run at once.
            .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
            .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
            .args(["--log-format", "json", "call"])
            .arg(guest("noop"))
            .arg("--object")
            .arg(object)
            .env_remove("OTEL_TRACES_EXPORTER")
            .output()
            .unwrap()
    };
    let output = call(&one);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("reconcile  noop  ConfigMap  default/web"),
        "{stdout}"
    );

    let output = call(&two);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("  first  "), "{stdout}");
    assert!(stderr.contains("more than one object"), "{stderr}");

    std::fs::write(dir.path().join("bad.yaml"), "a: [1, 2\n").unwrap();
    let output = call(&dir.path().join("bad.yaml"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml is not a YAML or JSON object"),
        "{stderr}"
    );
}
