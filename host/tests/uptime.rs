//! `plugins/uptime` end to end: the embedded API server, the operator, the
//! plugin built from source, a real HTTP server on `127.0.0.1` standing in
//! for the checked service. Status, the `Available` condition, Events on
//! a change of availability, the requeue at the interval (and no loop on
//! the plugin's own status writes), and the `reconcile → http.client`
//! span tree with `traceparent` at the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use reconcile_host::grants::HttpGrant;
use reconcile_host::operator::GrantPolicy;
use support::attr;
use support::cluster::{cluster, eventually};
use support::server::TestServer;

fn uptime_resource() -> ApiResource {
    ApiResource {
        group: "demo.reconcile.dev".into(),
        version: "v1alpha1".into(),
        api_version: "demo.reconcile.dev/v1alpha1".into(),
        kind: "UptimeCheck".into(),
        plural: "uptimechecks".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_checks_at_its_interval_and_reports_status_conditions_and_events() {
    let server = TestServer::start().await;
    let mut c = cluster().await;
    c.apply(&["deploy/crds"]).await;
    let policy = GrantPolicy::AsRequested {
        http: vec![HttpGrant {
            url: format!("http://127.0.0.1:{}", server.port()),
            private: false,
        }],
    };
    let plugin = c.plugin_with("uptime", &policy).await;
    assert_eq!(plugin.wit_version(), "0.2.0");
    c.start(vec![plugin]).await;

    let api: Api<DynamicObject> =
        Api::namespaced_with(c.client.clone(), "default", &uptime_resource());
    let check: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "demo.reconcile.dev/v1alpha1",
        "kind": "UptimeCheck",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"url": server.url("/ok"), "intervalSeconds": 1},
    }))
    .unwrap();
    api.create(&Default::default(), &check).await.unwrap();

    let status = |o: &DynamicObject| o.data["status"].clone();
    eventually("the first check is in the status", || async {
        status(&api.get("web").await.unwrap())["lastStatusCode"] == 200
    })
    .await;
    let got = status(&api.get("web").await.unwrap());
    assert!(got["latencyMs"].as_u64().is_some(), "{got}");
    assert!(got["lastCheckTime"].as_str().is_some(), "{got}");
    assert_eq!(got["observedGeneration"], 1);
    let available = &got["conditions"][0];
    assert_eq!(available["type"], "Available");
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "Up");

    // Requeued at its interval: the checks come about a second apart, and
    // the plugin's own status writes do not start extra ones.
    let started = Instant::now();
    eventually("three more checks", || async { server.seen().len() >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let checks = server.seen().len();
    let elapsed = started.elapsed();
    assert!(
        checks as f64 <= 2.0 + elapsed.as_secs_f64() * 1.5,
        "{checks} checks in {elapsed:?}: it loops"
    );
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");

    // The span tree: reconcile → http.client, and the server got its ids.
    let roots = c.roots("web");
    let (root, client) = roots
        .iter()
        .find_map(|root| {
            c.children(root)
                .into_iter()
                .find(|s| s.name == "http.client")
                .map(|client| (root.clone(), client))
        })
        .expect("a reconcile with an http.client child");
    assert_eq!(attr(&root, "plugin.name").as_deref(), Some("uptime"));
    assert_eq!(
        attr(&client, "http.response.status_code").as_deref(),
        Some("200")
    );
    let id = client.span_context.span_id().to_string();
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.headers["traceparent"].to_str().unwrap().contains(&id)),
        "no request carried span {id}"
    );

    // Availability changes: the condition flips and a Warning Event says so.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"url": server.url("/status/503")}})),
    )
    .await
    .unwrap();
    eventually("the check reports the service down", || async {
        let s = status(&api.get("web").await.unwrap());
        s["lastStatusCode"] == 503 && s["conditions"][0]["status"] == "False"
    })
    .await;
    let got = status(&api.get("web").await.unwrap());
    assert_eq!(got["conditions"][0]["reason"], "Down");
    assert_eq!(got["observedGeneration"], 2);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(c.client.clone(), "default");
    eventually("an Event for each change of availability", || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
            .filter_map(|e| {
                e.reason
                    .map(|r| format!("{}:{r}", e.type_.unwrap_or_default()))
            })
            .collect();
        reasons.contains(&"Normal:Up".to_owned()) && reasons.contains(&"Warning:Down".to_owned())
    })
    .await;
    c.stop().await;
}
