//! The harness itself: what a failing assertion or a wrong step says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use reconcile_test::{Error, Harness, Outcome, PluginSource, Verb};

fn demoapp() -> PluginSource {
    PluginSource::Crate(xtask::project_root().join("plugins/demoapp"))
}

fn example() -> String {
    std::fs::read_to_string(xtask::project_root().join("deploy/examples/demoapp.yaml")).unwrap()
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion passed");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

async fn started() -> Harness {
    Harness::build(demoapp())
        .manifest_file(xtask::project_root().join("deploy/crds/demoapp.yaml"))
        .unwrap()
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_assertions_say_what_differed_and_print_the_trace() {
    let mut h = started().await;
    h.apply_file(xtask::project_root().join("deploy/examples/demoapp.yaml"))
        .await
        .unwrap();
    assert_eq!(
        h.reconcile_named("default", "hello").await.unwrap(),
        Outcome::Done
    );
    let spans = h.spans();

    let message = panic_message(|| {
        spans.root().assert_attr("reconcile.result", "requeue");
    });
    assert!(
        message.contains(
            r#"span reconcile attribute reconcile.result: expected "requeue", found "done""#
        ),
        "{message}"
    );
    // The trace, compactly: one line per span, children indented.
    assert!(
        message.contains("\n  k8s.apply [k8s.resource=apps/v1/Deployment"),
        "{message}"
    );

    let message = panic_message(|| {
        spans.root().child("k8s.delete");
    });
    assert!(
        message.contains(r#"span reconcile has no child "k8s.delete""#),
        "{message}"
    );

    let message = panic_message(|| {
        spans.root().child("k8s.apply").attr("url.full");
    });
    assert!(
        message.contains(r#"span k8s.apply has no attribute "url.full""#),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_steps_are_errors_that_say_what_to_do() {
    let mut h = started().await;
    let e = h.reconcile_named("default", "nope").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no DemoApp default/nope to reconcile: apply it first"
    );

    // A plugin that fails for ever is never idle; the virtual clock runs
    // through the backoff without waiting for it.
    h.fail_times(Verb::Apply, "deployments", 409, 1000);
    h.apply_yaml(&example()).await.unwrap();
    let started = std::time::Instant::now();
    let e = h.run_until_idle().await.unwrap_err();
    assert!(matches!(e, Error::StillBusy { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("still busy after 200 reconciles"),
        "{text}"
    );
    assert!(text.contains("step it with advance()"), "{text}");
    // 200 retries, mostly at the 300 s cap: hours on the virtual clock.
    assert!(
        h.now() > std::time::Duration::from_secs(3600),
        "{:?}",
        h.now()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_smaller_than_the_plugin_asks_is_refused() {
    let e = Harness::build(demoapp())
        .grant("[[resources]]\ngroup = \"demo.reconcile.dev\"\nkind = \"DemoApp\"\nverbs = [\"get\", \"list\", \"watch\"]\n")
        .start()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("cannot load the plugin: plugin demoapp asks for more than its grant"),
        "{text}"
    );
    assert!(text.contains("patch on apps/Deployment"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_names_what_is_there() {
    let mut h = started().await;
    h.apply_yaml(&example()).await.unwrap();
    h.settle().await.unwrap();
    let h = std::sync::Arc::new(h);
    let shared = h.clone();
    let joined = tokio::spawn(async move {
        shared
            .must_get::<k8s_openapi::api::apps::v1::Deployment>("default", "nope")
            .await;
    })
    .await
    .unwrap_err();
    let payload = joined.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains(r#"no Deployment default/nope; in default: ["hello"]"#),
        "{message}"
    );
    assert!(
        message.contains("harness.rs:"),
        "names the test's line: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_times_the_reconcile_out() {
    let mut h = Harness::build(demoapp())
        .manifest_file(xtask::project_root().join("deploy/crds/demoapp.yaml"))
        .unwrap()
        .grant(GRANT_WITH_A_SHORT_DEADLINE)
        .start()
        .await
        .unwrap();
    h.apply_yaml(&example()).await.unwrap();
    h.delay(
        Verb::Apply,
        "deployments",
        std::time::Duration::from_secs(3),
    );
    match h.reconcile_named("default", "hello").await.unwrap() {
        Outcome::Failed(f) => assert_eq!(f.kind, reconcile_test::FailureKind::Timeout, "{f:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    h.spans().root().assert_attr("error.type", "timeout");
}

const GRANT_WITH_A_SHORT_DEADLINE: &str = r#"
[[resources]]
group = "demo.reconcile.dev"
kind = "DemoApp"
verbs = ["get", "list", "watch", "patch"]
[[resources]]
group = "apps"
kind = "Deployment"
verbs = ["get", "list", "watch", "patch"]
[[resources]]
kind = "Service"
verbs = ["get", "list", "watch", "patch"]
[[resources]]
group = "events.k8s.io"
kind = "Event"
verbs = ["get", "create", "patch", "delete"]
[limits]
deadline_ms = 1000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reach_the_plugin_not_the_test() {
    let mut h = started().await;
    // The harness lists the plugin's types and the test reads objects:
    // none of that takes the faults meant for the plugin.
    h.fail_times(Verb::List, "demoapps", 500, 5);
    h.fail_times(Verb::Get, "deployments", 500, 5);
    h.apply_yaml(&example()).await.unwrap();
    let outcomes = h.settle().await.unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Done), "{outcomes:?}");
    h.must_get::<k8s_openapi::api::apps::v1::Deployment>("default", "hello")
        .await;
    // A server-side apply fault on DemoApps is not taken by the status
    // merge patch: demoapp never applies a DemoApp, so its reconcile is
    // done.
    h.fail_next(Verb::Apply, "demoapps", 409);
    h.apply_yaml(&example().replace("replicas: 2", "replicas: 3"))
        .await
        .unwrap();
    assert_eq!(h.settle().await.unwrap()[0], Outcome::Done);
}
