//! The versions of the contract the host serves: a plugin built against
//! the frozen `reconcile:plugin@0.1.0` WIT with raw `wit-bindgen` (no SDK)
//! loads, is reported as 0.1.0, and runs its Kubernetes, log and trace
//! calls as released; a 0.2.0 plugin runs beside it in the same host, with
//! typed log fields, the request's generation, its own label selector and
//! field manager, and HTTP to an endpoint it did not ask for (nor was
//! granted) refused before any connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use support::cluster::{cluster, eventually};
use support::{attr, guest};

#[test]
fn inspect_reports_the_contract_version_a_plugin_targets() {
    for (plugin, version) in [("contract-v010", "0.1.0"), ("contract-v020", "0.2.0")] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
            .args(["inspect", "--output", "json"])
            .arg(guest(plugin))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(value["wit"], format!("reconcile:plugin@{version}"));
        assert_eq!(value["metadata"]["name"], plugin);
    }
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .arg("inspect")
        .arg(guest("contract-v020"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("selects:     contract=v020"), "{text}");
    assert!(
        text.contains("writes as:   contract-v020-manager"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_frozen_0_1_0_wit_runs_as_released() {
    let mut c = cluster().await;
    let plugin = c.plugin("contract-v010").await;
    assert_eq!(plugin.wit_version(), "0.1.0");
    c.start(vec![plugin]).await;
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "frozen"}})).unwrap();
    Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    eventually("the 0.1.0 plugin reconciled", || async {
        !c.roots("frozen").is_empty()
    })
    .await;
    let root = c.roots("frozen").remove(0);
    assert_eq!(attr(&root, "reconcile.result").as_deref(), Some("requeue"));
    assert_eq!(attr(&root, "plugin.name").as_deref(), Some("contract-v010"));
    // Its guest span, and the read answered from the cache (no k8s.get span).
    let children = c.children(&root);
    assert!(children.iter().any(|s| s.name == "read"), "{children:?}");
    assert!(
        !children.iter().any(|s| s.name == "k8s.get"),
        "{children:?}"
    );
    // Its log line, with its field and the trace of the reconcile.
    let line =
        c.h.logs
            .lines()
            .into_iter()
            .find(|l| l["message"] == "reconciled with the 0.1.0 contract")
            .expect("the plugin's log line");
    assert_eq!(line["found"], "yes");
    assert_eq!(
        line["trace_id"].as_str(),
        Some(root.span_context.trace_id().to_string().as_str())
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_of_both_versions_run_in_one_host() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A real server the 0.2.0 plugin is pointed at: it must see nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });

    let mut c = cluster().await;
    let old = c.plugin("contract-v010").await;
    let new = c.plugin("contract-v020").await;
    assert_eq!((old.wit_version(), new.wit_version()), ("0.1.0", "0.2.0"));
    c.start(vec![old, new]).await;
    let api = Api::<ConfigMap>::namespaced(c.client.clone(), "default");
    for (name, labels) in [
        ("selected", serde_json::json!({"contract": "v020"})),
        ("unselected", serde_json::json!({})),
    ] {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "data": {"authority": authority},
        }))
        .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let line_of_v020 = || {
        c.h.logs
            .lines()
            .into_iter()
            .find(|l| l["message"] == "reconciled with the 0.2.0 contract")
    };
    eventually("both plugins reconciled", || async {
        c.roots("selected").len() >= 2 && line_of_v020().is_some()
    })
    .await;
    // The 0.1.0 plugin reconciles both objects; the 0.2.0 one only the
    // object its selector matches.
    let by = |object: &str, plugin: &str| {
        c.roots(object)
            .iter()
            .filter(|r| attr(r, "plugin.name").as_deref() == Some(plugin))
            .count()
    };
    eventually(
        "the 0.1.0 plugin reconciled the unselected object",
        || async { by("unselected", "contract-v010") >= 1 },
    )
    .await;
    assert_eq!(by("unselected", "contract-v020"), 0);
    assert!(by("selected", "contract-v020") >= 1);
    // Labelled, the other object is selected too.
    api.patch(
        "unselected",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"contract": "v020"}}})),
    )
    .await
    .unwrap();
    eventually(
        "the 0.2.0 plugin reconciled the newly selected object",
        || async { by("unselected", "contract-v020") >= 1 },
    )
    .await;

    let line = line_of_v020().unwrap();
    // Typed fields stay typed in the JSON line.
    assert_eq!(line["generation"], 1);
    assert_eq!(line["attempt"], 1);
    assert_eq!(line["ratio"], 0.5);
    assert_eq!(line["first"], true);
    // HTTP is refused before any connection.
    let http = line["http"].as_str().unwrap();
    assert!(http.contains("HttpRequestDenied"), "{http}");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    // Its write went out under its own field manager.
    eventually("the annotation is applied", || async {
        api.get("selected")
            .await
            .unwrap()
            .metadata
            .annotations
            .is_some_and(|a| a.contains_key("contract.reconcile.dev/seen"))
    })
    .await;
    let managers: Vec<String> = api
        .get("selected")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "contract-v020-manager"),
        "{managers:?}"
    );
    assert!(
        !managers.iter().any(|m| m == "contract-v020"),
        "{managers:?}"
    );
    c.stop().await;
}
