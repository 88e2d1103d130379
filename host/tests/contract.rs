//! The versions of the contract the host serves: a plugin built against
//! the frozen `reconcile:plugin@0.1.0` WIT with raw `wit-bindgen` (no SDK)
//! loads, is reported as 0.1.0, and runs its Kubernetes, log and trace
//! calls as released.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use support::cluster::{cluster, eventually};
use support::{attr, guest};

#[test]
fn inspect_reports_the_contract_version_a_plugin_targets() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .args(["inspect", "--output", "json"])
        .arg(guest("contract-v010"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["wit"], "reconcile:plugin@0.1.0");
    assert_eq!(value["metadata"]["name"], "contract-v010");
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
