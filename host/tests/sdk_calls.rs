//! Every call of the `k8s` interface, made through the guest SDK, arrives at
//! the host's backend as the right call with the right body; and the
//! sandbox gives a plugin no files, environment or network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reconcile_host::caps::k8s::{K8sCall, K8sOp, ListOptions, Propagation};
use reconcile_host::reconcile::Outcome;
use serde_json::{Value, json};
use support::{Harness, RecordingBackend, configmap_request};

fn body(call: &K8sCall) -> Value {
    match &call.op {
        K8sOp::Create { body }
        | K8sOp::Apply { body, .. }
        | K8sOp::Replace { body }
        | K8sOp::MergePatch { body }
        | K8sOp::JsonPatch { body } => serde_json::from_str(body).unwrap(),
        other => panic!("no body in {other:?}"),
    }
}

#[tokio::test]
async fn every_sdk_call_reaches_the_backend_as_sent() {
    let h = Harness::new();
    let backend = RecordingBackend::default();
    {
        let mut objects = backend.objects.lock().unwrap();
        objects.insert("ConfigMap/settings".into(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "apps"}}));
        objects.insert("ClusterRole/admin".into(), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "admin"}}));
    }
    let plugin = h
        .load("k8s-calls")
        .await
        .with_backend(Arc::new(backend.clone()));
    let reconciled = plugin.reconcile(configmap_request("x")).await;
    assert_eq!(
        reconciled.outcome,
        Outcome::Done,
        "{:?}",
        reconciled.outcome
    );

    let calls: Vec<K8sCall> = backend
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    let names: Vec<&str> = calls.iter().map(K8sCall::span_name).collect();
    assert_eq!(
        names,
        vec![
            "k8s.list",
            "k8s.get",
            "k8s.create",
            "k8s.apply",
            "k8s.apply",
            "k8s.patch",
            "k8s.patch",
            "k8s.replace",
            "k8s.delete",
            "k8s.get_status",
            "k8s.apply_status",
            "k8s.patch_status",
            "k8s.replace_status",
            "k8s.get",
            "k8s.apply",
            "k8s.get",
        ],
        "the oversized create and the calls with bad names must not reach the backend"
    );
    // Namespaced ConfigMap calls.
    for call in &calls[..13] {
        assert_eq!(call.namespace.as_deref(), Some("apps"));
        assert_eq!(call.resource.gvk(), "core/v1/ConfigMap");
        assert_eq!(call.resource.plural, "configmaps");
        assert!(call.resource.namespaced);
    }
    assert_eq!(
        calls[0].op,
        K8sOp::List(ListOptions {
            label_selector: Some("app=web".into()),
            field_selector: Some("metadata.name=settings".into()),
            limit: Some(5),
            continue_token: None
        })
    );
    assert_eq!(calls[0].name, None);
    assert_eq!(calls[1].name.as_deref(), Some("settings"));
    // Objects carry apiVersion and kind, added by the SDK where missing.
    for i in [2, 3, 4, 7, 12] {
        let b = body(&calls[i]);
        assert_eq!(
            (b["apiVersion"].as_str(), b["kind"].as_str()),
            (Some("v1"), Some("ConfigMap")),
            "call {i}"
        );
        assert_eq!(b["metadata"]["name"], "settings");
        assert_eq!(b["data"]["k"], "v");
    }
    assert!(matches!(calls[3].op, K8sOp::Apply { force: false, .. }));
    assert!(matches!(calls[4].op, K8sOp::Apply { force: true, .. }));
    assert!(matches!(calls[5].op, K8sOp::MergePatch { .. }));
    assert_eq!(body(&calls[5]), json!({"data": {"k": "w"}}));
    assert!(matches!(calls[6].op, K8sOp::JsonPatch { .. }));
    assert_eq!(
        body(&calls[6]),
        json!([{"op": "remove", "path": "/data/k"}])
    );
    assert_eq!(
        calls[8].op,
        K8sOp::Delete {
            propagation: Some(Propagation::Foreground)
        }
    );
    for call in &calls[9..13] {
        assert!(call.status, "{}", call.span_name());
    }
    assert!(calls[..9].iter().all(|c| !c.status));
    assert_eq!(
        body(&calls[10]),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "status": {"ok": true}})
    );
    // A cluster-scoped typed resource.
    assert_eq!(
        calls[13].resource.gvk(),
        "rbac.authorization.k8s.io/v1/ClusterRole"
    );
    assert_eq!(calls[13].resource.plural, "clusterroles");
    assert!(!calls[13].resource.namespaced);
    assert_eq!(calls[13].namespace, None);
    // A dynamic custom resource.
    assert_eq!(
        calls[14].resource.gvk(),
        "demo.reconcile.dev/v1alpha1/DemoApp"
    );
    assert_eq!(calls[14].resource.plural, "demoapps");
    assert_eq!(calls[14].namespace.as_deref(), Some("apps"));
    let app = body(&calls[14]);
    assert_eq!(
        (app["apiVersion"].as_str(), app["kind"].as_str()),
        (Some("demo.reconcile.dev/v1alpha1"), Some("DemoApp"))
    );
    assert_eq!(app["spec"]["image"], "nginx");
    // The not-found answer reached the plugin as a typed error (it returned done).
    assert_eq!(calls[15].name.as_deref(), Some("missing"));

    // The plugin logged what it got back.
    let lines = h.logs.lines();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "listed" && l["items"] == 0)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "deleted" && l["gone"] == true)
    );
}

#[tokio::test]
async fn the_sandbox_has_no_files_environment_or_network() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let h = Harness::new();
    let plugin = h.load("sandbox-probe").await;
    let mut request = configmap_request("probe");
    let mut object: Value = serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    object["data"] = json!({"connect": addr.to_string()});
    request.body = Some(object.to_string());
    let reconciled = plugin.reconcile(request).await;
    assert_eq!(
        reconciled.outcome,
        Outcome::Done,
        "{:?}",
        reconciled.outcome
    );

    let lines = h.logs.lines();
    for probe in [
        "read_dir",
        "read_file",
        "write_file",
        "env",
        "args",
        "tcp_connect",
        "udp_send",
        "dns",
    ] {
        let line = lines
            .iter()
            .find(|l| l["probe"] == probe)
            .unwrap_or_else(|| panic!("probe {probe} did not run"));
        assert_eq!(line["reached"], false, "{probe}: {}", line["message"]);
    }
    // Let a connection that got through be counted before checking.
    tokio::task::yield_now().await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

/// Every test plugin is used somewhere: nothing is built and forgotten.
#[test]
fn every_test_plugin_has_a_test() {
    let root = xtask::project_root();
    let manifest = std::fs::read_to_string(root.join("tests/plugins/Cargo.toml")).unwrap();
    let members: Vec<String> = manifest
        .split("members = [")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(members.len() >= 10, "{members:?}");
    let mut sources = String::new();
    for dir in ["host/tests", "host/benches"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    for member in members {
        assert!(
            sources.contains(&format!("\"{member}\"")),
            "test plugin {member} is used by no test or bench"
        );
    }
}
