//! demoapp's story, step by step with the plugin test harness: the first
//! reconcile, an update, the Deployment becoming ready, a conflict on
//! apply and its retry, deletion with the finalizer released. Each step
//! checks the objects, the calls the plugin made and the trace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use demoapp::{DemoApp, DemoAppSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use reconcile_test::{FailureKind, Harness, Outcome, Verb};

fn app(image: &str, replicas: i32) -> DemoApp {
    let mut app = DemoApp::new(
        "hello",
        DemoAppSpec {
            image: image.into(),
            replicas,
            port: 8080,
        },
    );
    app.metadata.namespace = Some("default".into());
    app
}

/// Requests as `verb group/resource` (a status write is
/// `patch demo.reconcile.dev/demoapps` too).
fn shape(calls: &[reconcile_test::Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.verb, c.group_resource()))
        .collect()
}

/// The last reconcile's requests, without object names (an Event's name
/// is generated).
fn calls(h: &Harness) -> Vec<String> {
    h.calls()
        .iter()
        .map(|c| {
            let sub = c
                .subresource
                .as_ref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            let manager = c.field_manager.as_deref().unwrap_or("-");
            format!("{} {}{sub} {manager}", c.verb, c.group_resource())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoapp_from_creation_to_deletion() {
    let mut h = Harness::build(reconcile_test::this_crate!())
        .crd::<DemoApp>()
        .start()
        .await
        .unwrap();

    // First reconcile: the finalizer, both children, the status.
    let hello = app("nginx:1.27", 2);
    h.apply(&hello).await.unwrap();
    assert_eq!(h.reconcile(&hello).await.unwrap(), Outcome::Done);
    let deployment = h.must_get::<Deployment>("default", "hello").await;
    assert_eq!(deployment.spec.replicas, Some(2));
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DemoApp", "hello")
    );
    assert!(h.exists::<Service>("default", "hello").await.unwrap());
    // The host's finalizer patch, the children, an Event for the applied
    // Deployment, the status and an Event for the Ready condition. The
    // Deployment read back came from the cache: no request.
    assert_eq!(
        calls(&h),
        [
            "patch demo.reconcile.dev/demoapps demoapp",
            "apply apps/deployments demoapp",
            "apply core/services demoapp",
            "get events.k8s.io/events -",
            "create events.k8s.io/events demoapp",
            "patch demo.reconcile.dev/demoapps/status demoapp",
            "get events.k8s.io/events -",
            "create events.k8s.io/events demoapp",
        ]
    );
    // The plugin's log line, with the reconcile's trace id.
    let logs = h.last_logs();
    let line = logs
        .iter()
        .find(|l| l.message == "reconciled DemoApp")
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(line.fields["replicas"], 2);
    let spans = h.spans();
    let root = spans.root();
    assert_eq!(
        line.trace_id.as_deref(),
        Some(root.data().span_context.trace_id().to_string().as_str())
    );
    root.assert_attr("reconcile.reason", "object_changed")
        .assert_attr("reconcile.result", "done")
        .assert_attr("k8s.cache_reads", 2);
    root.child("render");
    root.child("k8s.apply")
        .assert_attr("k8s.resource", "apps/v1/Deployment")
        .assert_attr("k8s.name", "hello");
    let status = h
        .must_get::<DemoApp>("default", "hello")
        .await
        .status
        .unwrap();
    assert_eq!(status.ready_replicas, Some(0));
    assert_eq!(status.conditions[0].status, "False");

    // What the first reconcile changed wakes the plugin again; it settles.
    let more = h.settle().await.unwrap();
    assert!(
        !more.is_empty() && more.iter().all(|o| *o == Outcome::Done),
        "{more:?}"
    );
    assert!(h.queued().is_empty(), "{:?}", h.queued());

    // An update.
    let hello = app("nginx:1.27", 3);
    h.apply(&hello).await.unwrap();
    assert_eq!(h.reconcile(&hello).await.unwrap(), Outcome::Done);
    let deployment = h.must_get::<Deployment>("default", "hello").await;
    assert_eq!(deployment.spec.replicas, Some(3));
    let spans = h.spans();
    spans
        .root()
        .assert_attr("reconcile.reason", "object_changed")
        .assert_attr("demoapp.replicas", 3);
    // The Deployment changed, so an `Applied` Event is recorded again.
    let made = calls(&h);
    for call in [
        "apply apps/deployments demoapp",
        "apply core/services demoapp",
        "create events.k8s.io/events demoapp",
        "patch demo.reconcile.dev/demoapps/status demoapp",
    ] {
        assert!(made.iter().any(|c| c == call), "{call} not in {made:?}");
    }
    h.settle().await.unwrap();

    // The Deployment controller's part: three replicas ready. The owner
    // is reconciled for its owned object's change and reports Ready.
    h.patch_status::<Deployment>(
        "default",
        "hello",
        serde_json::json!({"replicas": 3, "readyReplicas": 3}),
    )
    .await
    .unwrap();
    let woken = h.settle().await.unwrap();
    assert!(!woken.is_empty());
    let reasons: Vec<String> = h
        .all_spans()
        .iter()
        .rev()
        .take(woken.len())
        .map(|t| t.root().attr("reconcile.reason"))
        .collect();
    assert!(
        reasons.contains(&"owned_object_changed".to_owned()),
        "{reasons:?}"
    );
    // That reconcile read the Deployment from the cache (no request) and
    // wrote the new status.
    let per = h.calls_per_reconcile();
    let traces = h.all_spans();
    let owned = (0..traces.len())
        .rev()
        .find(|&i| traces[i].root().attr("reconcile.reason") == "owned_object_changed")
        .unwrap();
    let woke = shape(&per[owned]);
    assert!(
        woke.contains(&"patch demo.reconcile.dev/demoapps".to_owned()),
        "{woke:?}"
    );
    assert!(!woke.iter().any(|c| c.starts_with("get apps/")), "{woke:?}");
    traces[owned]
        .root()
        .child("k8s.patch_status")
        .assert_attr("http.response.status_code", 200);
    let status = h
        .must_get::<DemoApp>("default", "hello")
        .await
        .status
        .unwrap();
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.conditions[0].status, "True");

    // A conflict on apply: the reconcile fails as a k8s error, and the
    // host retries it after its backoff, on the virtual clock.
    let before = h.now();
    h.fail_next(Verb::Apply, "deployments", 409);
    let hello = app("nginx:1.28", 3);
    h.apply(&hello).await.unwrap();
    let outcomes = h.run_until_idle().await.unwrap();
    match &outcomes[0] {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::K8s, "{f:?}"),
        other => panic!("expected the conflict to fail the reconcile, got {other:?}"),
    }
    assert_eq!(outcomes.last(), Some(&Outcome::Done));
    assert!(
        h.now() >= before + std::time::Duration::from_millis(200),
        "{:?}",
        h.now()
    );
    let traces = h.all_spans();
    let failed = &traces[traces.len() - outcomes.len()];
    let apply = failed.root().child("k8s.apply");
    apply.assert_attr("http.response.status_code", 409);
    assert!(apply.is_error());
    // The failed reconcile stopped at the refused apply; the retry applied
    // the Deployment and the Service and wrote the status.
    let per = h.calls_per_reconcile();
    assert_eq!(
        shape(&per[per.len() - outcomes.len()]),
        ["apply apps/deployments"]
    );
    let retried = shape(&per[per.len() - outcomes.len() + 1]);
    assert_eq!(
        retried[..2],
        ["apply apps/deployments", "apply core/services"]
    );
    assert!(
        retried.contains(&"patch demo.reconcile.dev/demoapps".to_owned()),
        "{retried:?}"
    );
    let retry = &traces[traces.len() - outcomes.len() + 1];
    retry
        .root()
        .assert_attr("reconcile.reason", "retry")
        .assert_attr("reconcile.attempt", 2);
    let deployment = h.must_get::<Deployment>("default", "hello").await;
    let deployment = serde_json::to_value(&deployment).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );

    // Deletion: the plugin's deleting reconcile, then the finalizer goes
    // and so does the DemoApp.
    h.delete::<DemoApp>("default", "hello").await.unwrap();
    let outcomes = h.run_until_idle().await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Done]);
    h.spans().root().assert_attr("reconcile.reason", "deleting");
    // The plugin had nothing to clean up; the host released the finalizer.
    assert_eq!(calls(&h), ["patch demo.reconcile.dev/demoapps demoapp"]);
    assert!(!h.exists::<DemoApp>("default", "hello").await.unwrap());
    // Its children go with it (garbage collection by owner reference).
    assert!(!h.exists::<Deployment>("default", "hello").await.unwrap());
}

/// The README's ten-line test.
#[tokio::test(flavor = "multi_thread")]
async fn applies_the_deployment() {
    let mut h = Harness::build(reconcile_test::this_crate!())
        .crd::<DemoApp>()
        .start()
        .await
        .unwrap();
    let app = DemoApp::new(
        "hello",
        DemoAppSpec {
            image: "nginx".into(),
            replicas: 2,
            port: 8080,
        },
    );
    h.apply(&app).await.unwrap();
    assert_eq!(h.reconcile(&app).await.unwrap(), Outcome::Done);
    let deployment = h.must_get::<Deployment>("default", "hello").await;
    assert_eq!(deployment.spec.replicas, Some(2));
    h.spans()
        .root()
        .child("k8s.apply")
        .assert_attr("k8s.resource", "apps/v1/Deployment");
}
