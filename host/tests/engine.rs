//! Plugin tests: real components built from source, called through the
//! engine, spans read from an in-memory exporter, logs from a captured sink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use reconcile_host::caps::k8s::K8sOp;
use reconcile_host::reconcile::{FailureKind, Outcome, Reason};
use support::{Harness, RecordingBackend, attr, configmap_request, demoapp_request};

#[tokio::test]
async fn demoapp_reconcile_is_one_root_span_with_every_attribute() {
    let h = Harness::new();
    let plugin = h.load("demoapp").await;
    let mut request = demoapp_request();
    request.reason = Reason::Retry;
    request.attempt = 3;
    let reconciled = plugin.reconcile(request).await;
    assert_eq!(reconciled.outcome, Outcome::Done);
    assert!(reconciled.sampled);

    let spans = h.finished();
    let roots: Vec<_> = spans.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(roots.len(), 1, "exactly one reconcile span: {spans:#?}");
    let root = roots[0];
    assert_eq!(
        root.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "reconcile is a root span"
    );
    assert_eq!(root.span_context.trace_id(), reconciled.trace_id);
    assert_eq!(root.span_kind, SpanKind::Internal);
    let expected = [
        ("k8s.controller", "demoapp"),
        ("k8s.namespace", "default"),
        ("k8s.name", "hello"),
        ("k8s.kind", "DemoApp"),
        ("k8s.group", "demo.reconcile.dev"),
        ("k8s.version", "v1alpha1"),
        ("plugin.name", "demoapp"),
        ("plugin.version", "0.1.0"),
        ("plugin.digest", plugin.digest()),
        ("reconcile.reason", "retry"),
        ("reconcile.attempt", "3"),
        ("reconcile.result", "done"),
    ];
    for (key, value) in expected {
        assert_eq!(attr(root, key).as_deref(), Some(value), "attribute {key}");
    }
    assert!(plugin.digest().starts_with("sha256:") && plugin.digest().len() == 7 + 64);
    assert_eq!(root.status, Status::Unset);
    assert_eq!(attr(root, "error.type"), None);
    // The plugin's own attribute, event and child span hang under the root.
    assert_eq!(attr(root, "demoapp.replicas").as_deref(), Some("2"));
    assert_eq!(
        root.events
            .iter()
            .map(|e| e.name.as_ref())
            .collect::<Vec<_>>(),
        vec!["ready changed"]
    );
    let render = spans
        .iter()
        .find(|s| s.name == "render")
        .expect("render span");
    assert_eq!(render.parent_span_id, root.span_context.span_id());
    assert_eq!(render.span_context.trace_id(), root.span_context.trace_id());
    assert_eq!(spans.len(), 2);

    // The plugin's log line carries the root's trace and span ids.
    let lines = h.logs.lines();
    let rendered = lines
        .iter()
        .find(|l| l["message"] == "reconciled DemoApp")
        .expect("log line");
    assert_eq!(
        rendered["trace_id"],
        root.span_context.trace_id().to_string()
    );
    assert_eq!(rendered["span_id"], root.span_context.span_id().to_string());
    assert_eq!(rendered["plugin"], "demoapp");
    assert_eq!(rendered["replicas"], 2);
}

#[tokio::test]
async fn each_call_gets_its_own_root_span_and_trace() {
    let h = Harness::new();
    let plugin = h.load("demoapp").await;
    let a = plugin.reconcile(demoapp_request()).await;
    let b = plugin.reconcile(demoapp_request()).await;
    assert_ne!(a.trace_id, b.trace_id);
    let roots = h
        .finished()
        .into_iter()
        .filter(|s| s.name == "reconcile")
        .count();
    assert_eq!(roots, 2);
}

#[tokio::test]
async fn guest_spans_events_logs_and_k8s_calls_are_parented_correctly() {
    let h = Harness::new();
    let backend = RecordingBackend::default();
    let plugin = h
        .load("traced")
        .await
        .with_backend(Arc::new(backend.clone()));
    let reconciled = plugin.reconcile(configmap_request("web")).await;
    // No `settings` object: the plugin returns done.
    assert_eq!(reconciled.outcome, Outcome::Done);

    let spans = h.finished();
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
    };
    let root = by_name("reconcile");
    let (fetch, render, inner, validate) = (
        by_name("fetch"),
        by_name("render"),
        by_name("render.inner"),
        by_name("validate"),
    );
    let root_id = root.span_context.span_id();
    assert_eq!(fetch.parent_span_id, root_id);
    assert_eq!(render.parent_span_id, root_id);
    assert_eq!(validate.parent_span_id, root_id);
    assert_eq!(inner.parent_span_id, render.span_context.span_id());
    assert_eq!(validate.status, Status::error("validation failed"));
    assert_eq!(fetch.status, Status::Unset);
    assert_eq!(spans.len(), 5);

    // Events land on the current span; reserved keys are left to the host.
    assert_eq!(
        root.events
            .iter()
            .map(|e| e.name.as_ref())
            .collect::<Vec<_>>(),
        vec!["started"]
    );
    assert_eq!(
        fetch
            .events
            .iter()
            .map(|e| e.name.as_ref())
            .collect::<Vec<_>>(),
        vec!["fetched"]
    );
    assert_eq!(attr(root, "traced.items").as_deref(), Some("3"));
    assert_eq!(attr(root, "reconcile.result").as_deref(), Some("done"));
    assert_eq!(attr(root, "plugin.version").as_deref(), Some("1.2.3"));

    // The backend got the call with the fetch span as its parent context.
    let calls = backend.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (call, parent) = &calls[0];
    assert_eq!(call.op, K8sOp::Get);
    assert_eq!(call.name.as_deref(), Some("settings"));
    assert_eq!(call.namespace.as_deref(), Some("default"));
    assert_eq!(call.resource.gvk(), "core/v1/ConfigMap");
    assert_eq!(call.span_name(), "k8s.get");
    assert_eq!(*parent, fetch.span_context.span_id());

    // Log lines, from the log interface and from stdout/stderr, carry the
    // ids of the span current in the plugin when they were written.
    let trace_id = root.span_context.trace_id().to_string();
    let lines = h.logs.lines();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message}: {lines:#?}"))
    };
    let first = line("reconciling web");
    assert_eq!(first["level"], "info");
    // Fields keep their type in the JSON line.
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["first"], true);
    assert_eq!(first["share"], 0.5);
    assert_eq!(first["object"], "web");
    assert_eq!(first["span_id"], root_id.to_string());
    assert_eq!(
        line("inside fetch")["span_id"],
        fetch.span_context.span_id().to_string()
    );
    let deep = line("deep inside");
    assert_eq!(deep["level"], "warn");
    assert_eq!(deep["span_id"], inner.span_context.span_id().to_string());
    let stdout = line("plain stdout line");
    assert_eq!(
        (stdout["stream"].as_str(), stdout["level"].as_str()),
        (Some("stdout"), Some("info"))
    );
    let stderr = line("plain stderr line");
    assert_eq!(
        (stderr["stream"].as_str(), stderr["level"].as_str()),
        (Some("stderr"), Some("warn"))
    );
    for l in [first, stdout, stderr, deep] {
        assert_eq!(l["trace_id"], trace_id);
        assert_eq!(l["plugin"], "traced");
    }
}

#[tokio::test]
async fn k8s_answers_reach_the_plugin() {
    let h = Harness::new();
    let backend = RecordingBackend::default();
    backend.objects.lock().unwrap().insert(
        "ConfigMap/settings".into(),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "b"}}),
    );
    let plugin = h
        .load("traced")
        .await
        .with_backend(Arc::new(backend.clone()));
    assert_eq!(
        plugin.reconcile(configmap_request("web")).await.outcome,
        Outcome::RequeueAfter(Duration::from_secs(30))
    );

    backend
        .objects
        .lock()
        .unwrap()
        .get_mut("ConfigMap/settings")
        .unwrap()["data"]["fail"] = "yes".into();
    let reconciled = plugin.reconcile(configmap_request("web")).await;
    let failure = reconciled.outcome.failure().expect("failed").clone();
    assert_eq!(failure.kind, FailureKind::Plugin);
    assert_eq!(failure.message, "settings asked for a failure");
    assert!(failure.retry);
    let root = h
        .finished()
        .into_iter()
        .filter(|s| s.name == "reconcile")
        .last()
        .unwrap();
    assert_eq!(attr(&root, "reconcile.result").as_deref(), Some("error"));
    assert_eq!(attr(&root, "error.type").as_deref(), Some("plugin"));
}

#[tokio::test]
async fn without_a_cluster_k8s_calls_are_unavailable_and_the_error_is_k8s() {
    let h = Harness::new();
    let plugin = h.load("traced").await; // default backend: no cluster
    let reconciled = plugin.reconcile(configmap_request("web")).await;
    let failure = reconciled.outcome.failure().expect("failed");
    assert_eq!(failure.kind, FailureKind::K8s);
    assert!(
        failure
            .message
            .contains("unavailable (503 ServiceUnavailable)"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("without a Kubernetes API"),
        "{}",
        failure.message
    );
    let fetch = h
        .finished()
        .into_iter()
        .find(|s| s.name == "fetch")
        .unwrap();
    assert!(matches!(fetch.status, Status::Error { .. }));
}

/// The plugin with a 100 ms deadline. Only looping plugins get it, so
/// that a loaded machine cannot turn another fault into a timeout.
fn hurried(plugin: reconcile_host::engine::Plugin) -> reconcile_host::engine::Plugin {
    let limits = reconcile_host::engine::Limits {
        deadline: Duration::from_millis(100),
        ..plugin.limits()
    };
    plugin.with_limits(limits).unwrap()
}

/// Runs `fault`, checks the failure and its span, then checks that the
/// same engine still reconciles.
async fn assert_fault(fault: &str, kind: FailureKind, message_part: &str) {
    assert_fault_of(fault, "web", kind, message_part).await;
}

/// [`assert_fault`] for the reconcile of the ConfigMap `object`; then the
/// same plugin reconciles another object.
async fn assert_fault_of(fault: &str, object: &str, kind: FailureKind, message_part: &str) {
    let h = Harness::new();
    let _logs = h.capture_host_logs();
    let plugin = h.load(fault).await;
    let plugin = if kind == FailureKind::Timeout {
        hurried(plugin)
    } else {
        plugin
    };
    let reconciled = plugin.reconcile(configmap_request(object)).await;
    let failure = reconciled
        .outcome
        .failure()
        .unwrap_or_else(|| panic!("{fault} did not fail: {:?}", reconciled.outcome));
    assert_eq!(failure.kind, kind, "{fault}: {}", failure.message);
    assert!(
        failure.message.contains(message_part),
        "{fault}: {}",
        failure.message
    );

    let spans = h.finished();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let root = &spans[0];
    assert_eq!(root.name, "reconcile");
    assert_eq!(attr(root, "reconcile.result").as_deref(), Some("error"));
    assert_eq!(attr(root, "error.type").as_deref(), Some(kind.as_str()));
    let Status::Error { description } = &root.status else {
        panic!("status is {:?}", root.status)
    };
    assert_eq!(description.as_ref(), failure.message);
    let exception = root
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("exception event");
    let message = exception
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "exception.message")
        .unwrap();
    assert_eq!(message.value.as_str(), failure.message);

    // The host logged the failure with the reconcile's trace id.
    let lines = h.logs.lines();
    let logged = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reconcile failed"))
        })
        .expect("failure logged");
    assert_eq!(logged["trace_id"], reconciled.trace_id.to_string());
    assert_eq!(logged["error.type"], kind.as_str());

    // The same engine, and the same plugin, keep working.
    let noop = h.load("noop").await;
    assert_eq!(
        noop.reconcile(configmap_request("web")).await.outcome,
        Outcome::Done
    );
    let again = plugin.reconcile(configmap_request(object)).await;
    assert_eq!(again.outcome.failure().map(|f| f.kind), Some(kind));
    if object != "web" {
        let fine = plugin.reconcile(configmap_request("web")).await;
        assert_eq!(fine.outcome, Outcome::Done, "{fault} after {object}");
    }
}

#[tokio::test]
async fn python_faults_are_contained_like_rust_ones() {
    assert_fault_of(
        "fault-py",
        "loop",
        FailureKind::Timeout,
        "deadline of 100ms",
    )
    .await;
    assert_fault_of(
        "fault-py",
        "memory",
        FailureKind::Memory,
        "its limit is 67108864",
    )
    .await;
    assert_fault_of(
        "fault-py",
        "trap",
        FailureKind::Trap,
        "Python function threw an unexpected exception",
    )
    .await;
}

#[tokio::test]
async fn javascript_faults_are_contained_like_rust_ones() {
    assert_fault_of(
        "fault-js",
        "loop",
        FailureKind::Timeout,
        "deadline of 100ms",
    )
    .await;
    assert_fault_of(
        "fault-js",
        "memory",
        FailureKind::Memory,
        "its limit is 67108864",
    )
    .await;
    assert_fault_of(
        "fault-js",
        "trap",
        FailureKind::Trap,
        "wasm `unreachable` instruction executed",
    )
    .await;
}

#[tokio::test]
async fn an_infinite_loop_times_out() {
    assert_fault("fault-loop", FailureKind::Timeout, "deadline of 100ms").await;
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_cap() {
    assert_fault("fault-memory", FailureKind::Memory, "its limit is 67108864").await;
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_panic_message() {
    assert_fault(
        "fault-panic",
        FailureKind::Trap,
        "panicked at fault-panic/src/lib.rs",
    )
    .await;
}

#[tokio::test]
async fn an_oversized_error_message_is_refused() {
    assert_fault(
        "fault-oversized",
        FailureKind::Plugin,
        "error message of 4194304 bytes",
    )
    .await;
}

#[tokio::test]
async fn faults_running_together_do_not_disturb_each_other() {
    let h = Harness::new();
    let mut calls = Vec::new();
    for name in [
        "fault-loop",
        "fault-memory",
        "fault-panic",
        "noop",
        "demoapp",
    ] {
        let plugin = h.load(name).await;
        let plugin = if name == "fault-loop" {
            hurried(plugin)
        } else {
            plugin
        };
        let request = if name == "demoapp" {
            demoapp_request()
        } else {
            configmap_request("web")
        };
        calls.push(tokio::spawn(async move {
            plugin.reconcile(request).await.outcome
        }));
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let kinds: Vec<_> = outcomes
        .iter()
        .map(|o| o.failure().map(|f| f.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            Some(FailureKind::Timeout),
            Some(FailureKind::Memory),
            Some(FailureKind::Trap),
            None,
            None
        ]
    );
}

#[tokio::test]
async fn a_missing_object_reaches_the_plugin_as_none() {
    let h = Harness::new();
    let plugin = h.load("demoapp").await;
    let mut request = demoapp_request();
    request.body = None;
    request.reason = Reason::Deleting;
    assert_eq!(plugin.reconcile(request).await.outcome, Outcome::Done);
    let root = h
        .finished()
        .into_iter()
        .find(|s| s.name == "reconcile")
        .unwrap();
    assert_eq!(attr(&root, "reconcile.reason").as_deref(), Some("deleting"));
}

#[tokio::test]
async fn an_invalid_spec_is_a_permanent_plugin_error() {
    let h = Harness::new();
    let plugin = h.load("demoapp").await;
    let mut request = demoapp_request();
    let mut body: serde_json::Value =
        serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    body["spec"]["image"] = "".into();
    request.body = Some(body.to_string());
    let failure = plugin
        .reconcile(request)
        .await
        .outcome
        .failure()
        .cloned()
        .unwrap();
    assert_eq!(failure.kind, FailureKind::Plugin);
    assert!(!failure.retry);
    assert!(failure.message.contains("spec.image is empty"));
}
