//! The real kube-rs client, watcher, controller and finalizer helper
//! against the embedded API server over real HTTP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, ResourceExt,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResource, CustomResourceExt, Resource};
use reconcile_apiserver::{ApiServer, ApiServerConfig, Match};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{raw, raw_get, raw_with_head};

async fn server() -> (ApiServer, Client) {
    let config = ApiServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(config).await.unwrap();
    let client = server.client().unwrap();
    (server, client)
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn every_api_verb() {
    let (_server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // create, get, generateName, dryRun
    let created = api
        .create(&PostParams::default(), &cm("one", &[("a", "1")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    assert_eq!(api.get("one").await.unwrap().data.unwrap()["a"], "1");
    let mut generated = cm("", &[]);
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry, &cm("dry", &[])).await.unwrap();
    assert!(
        api.get_opt("dry").await.unwrap().is_none(),
        "dryRun persists nothing"
    );
    let err = api
        .create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    // replace, with a stale version too
    let mut fresh = api.get("one").await.unwrap();
    fresh.data = Some(BTreeMap::from([("a".into(), "2".into())]));
    let replaced = api
        .replace("one", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert!(replaced.resource_version().unwrap().parse::<u64>().unwrap() > rv1);
    let err = api
        .replace("one", &PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // patches: merge, json, strategic, apply
    let pp = PatchParams::default();
    api.patch("one", &pp, &Patch::Merge(json!({"data": {"b": "3"}})))
        .await
        .unwrap();
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/a", "value": "4"}]))
            .unwrap();
    api.patch("one", &pp, &Patch::<()>::Json(json_patch))
        .await
        .unwrap();
    api.patch(
        "one",
        &pp,
        &Patch::Strategic(json!({"metadata": {"labels": {"tier": "x"}}})),
    )
    .await
    .unwrap();
    let applied = api
        .patch("one", &PatchParams::apply("test"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}, "data": {"c": "5"}})))
        .await
        .unwrap();
    let data = applied.data.clone().unwrap();
    assert_eq!(
        (data["a"].as_str(), data["b"].as_str(), data["c"].as_str()),
        ("4", "3", "5")
    );
    assert_eq!(applied.labels()["tier"], "x");
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"test".to_owned()), "{managers:?}");

    // list with selectors, limit and continue
    for i in 0..5 {
        let mut c = cm(&format!("page-{i}"), &[]);
        c.metadata.labels = Some(BTreeMap::from([("page".into(), "yes".into())]));
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    let page = api
        .list(&ListParams::default().labels("page=yes").limit(2))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = api
        .list(
            &ListParams::default()
                .labels("page=yes")
                .limit(10)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.metadata.continue_.is_none());
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=one"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let all_ns: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all_ns
            .list(&ListParams::default().labels("page in (yes)"))
            .await
            .unwrap()
            .items
            .len(),
        5
    );

    // delete and delete_collection
    let gone = api.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(gone.is_right(), "deleted at once: a Status");
    assert!(api.get_opt("one").await.unwrap().is_none());
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("page=yes"),
    )
    .await
    .unwrap();
    assert!(
        api.list(&ListParams::default().labels("page=yes"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // missing namespace, missing object
    let nowhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let err = nowhere
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.message == "namespaces \"nowhere\" not found"),
        "{err:?}"
    );
    let err = api.get("missing").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound" && s.message == "configmaps \"missing\" not found"),
        "{err:?}"
    );
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let (_server, client) = server().await;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let d = api
        .create(&PostParams::default(), &deployment("web", 1))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    // Status writes do not bump generation, and main writes ignore status.
    let s = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(1));
    assert_eq!(s.status.unwrap().ready_replicas, Some(1));
    let s = api.get_status("web").await.unwrap();
    assert_eq!(s.status.unwrap().ready_replicas, Some(1));
    let m = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"readyReplicas": 7}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(m.status.unwrap().ready_replicas, Some(1));
    assert_eq!(
        m.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
    // A spec change does.
    let m = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(m.metadata.generation, Some(2));
    // A write that changes nothing keeps the resourceVersion.
    let same = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), m.resource_version());
    // Invalid objects are 422 with causes.
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.reason == "Invalid"),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_side_apply_conflict_and_force() {
    let (_server, client) = server().await;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let alice = PatchParams::apply("alice");
    api.patch("web", &alice, &Patch::Apply(deployment("web", 1)))
        .await
        .unwrap();
    let bob = PatchParams::apply("bob");
    let err = api
        .patch("web", &bob, &Patch::Apply(deployment("web", 5)))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("conflict with \"alice\""),
        "{}",
        status.message
    );
    assert!(
        status.message.contains(".spec.replicas"),
        "{}",
        status.message
    );
    let forced = api
        .patch(
            "web",
            &bob.clone().force(),
            &Patch::Apply(deployment("web", 5)),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.replicas, Some(5));
    // Ownership moved: now alice conflicts with bob.
    let err = api
        .patch("web", &alice, &Patch::Apply(deployment("web", 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.message.contains("conflict with \"bob\"")),
        "{err:?}"
    );
}

#[tokio::test]
async fn cascading_and_orphan_delete() {
    let (_server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    let reference = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap(), "controller": true}]);
    for name in ["child-a", "child-b"] {
        let mut child = cm(name, &[]);
        child.metadata.owner_references = Some(serde_json::from_value(reference.clone()).unwrap());
        api.create(&PostParams::default(), &child).await.unwrap();
    }
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("dependents collected", || async {
        api.get_opt("child-a").await.unwrap().is_none()
            && api.get_opt("child-b").await.unwrap().is_none()
    })
    .await;

    let owner = api
        .create(&PostParams::default(), &cm("owner2", &[]))
        .await
        .unwrap();
    let mut child = cm("child-c", &[]);
    child.metadata.owner_references = Some(serde_json::from_value(json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.uid().unwrap()}])).unwrap());
    api.create(&PostParams::default(), &child).await.unwrap();
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    api.delete("owner2", &orphan).await.unwrap();
    let child = api.get("child-c").await.unwrap();
    assert!(
        child
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (_server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    let pending = api.delete("held", &DeleteParams::default()).await.unwrap();
    let object = pending.left().expect("the object while finalizers hold it");
    assert!(object.metadata.deletion_timestamp.is_some());
    // No new finalizers once deletion started.
    let err = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "new"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_none());
}

#[tokio::test]
async fn watcher_resumes_after_a_cut_and_relists_after_410() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Errors (the injected ones) are retried by the watcher with backoff.
        while let Some(item) = stream.next().await {
            if let Ok(cm) = item {
                sink.lock().unwrap().push(cm.name_any());
            }
        }
    });
    let has = |name: &'static str| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { seen.lock().unwrap().iter().any(|n| n == name) }
        }
    };
    api.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();
    eventually("first event", has("before")).await;

    // Cut the stream: the watcher re-watches from its last version.
    let lists_before = server
        .faults()
        .requests_matching(&Match::any().verb("list").resource("configmaps"))
        .len();
    let watches_before_cut = server
        .faults()
        .requests_matching(&Match::any().verb("watch").resource("configmaps"))
        .len();
    server.faults().cut_watches();
    // Wait for the re-watch, so that the next event travels on it.
    eventually("a re-watch after the cut", || async {
        server
            .faults()
            .requests_matching(&Match::any().verb("watch").resource("configmaps"))
            .len()
            > watches_before_cut
    })
    .await;
    let rewatch = server
        .faults()
        .requests_matching(&Match::any().verb("watch").resource("configmaps"));
    assert!(
        rewatch.last().is_some_and(
            |r| r.query.contains("resourceVersion=") && !r.query.contains("resourceVersion=0&")
        ),
        "the re-watch resumes from a version: {:?}",
        rewatch.last()
    );
    api.create(&PostParams::default(), &cm("after-cut", &[]))
        .await
        .unwrap();
    eventually("event after a cut", has("after-cut")).await;
    assert_eq!(
        server
            .faults()
            .requests_matching(&Match::any().verb("list").resource("configmaps"))
            .len(),
        lists_before,
        "resumed without a re-list"
    );

    // Keep the watcher away while the version moves past a compaction:
    // its resume then gets ERROR 410 inside a 200 stream, and it re-lists.
    let watches = || {
        server
            .faults()
            .requests_matching(&Match::any().verb("watch").resource("configmaps"))
            .len()
    };
    let watches_before = watches();
    server.faults().fail(
        Match::any().verb("watch").resource("configmaps"),
        1_000,
        500,
    );
    server.faults().cut_watches();
    // Only once a re-watch has been refused can the watcher no longer see
    // what happens next.
    eventually("a refused re-watch", || async {
        watches() > watches_before
    })
    .await;
    api.create(&PostParams::default(), &cm("after-410", &[]))
        .await
        .unwrap();
    server.store().compact();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.faults().clear();
    eventually("event after a 410", has("after-410")).await;
    assert!(
        server
            .faults()
            .requests_matching(&Match::any().verb("list").resource("configmaps"))
            .len()
            > lists_before,
        "re-listed after 410"
    );
    task.abort();
}

#[tokio::test]
async fn raw_watch_semantics() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();

    // Resume from a version: only later events, then bookmarks.
    let mut events = api
        .watch(
            &kube::api::WatchParams {
                bookmarks: true,
                ..Default::default()
            }
            .timeout(5),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let first = events.try_next().await.unwrap().unwrap();
    assert!(
        matches!(&first, kube::api::WatchEvent::Added(o) if o.name_any() == "b"),
        "{first:?}"
    );
    let bookmark = events.try_next().await.unwrap().unwrap();
    assert!(
        matches!(bookmark, kube::api::WatchEvent::Bookmark(_)),
        "{bookmark:?}"
    );

    // sendInitialEvents: synthetic ADDED, then the initial-events-end bookmark.
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=2",
        server.url()
    );
    let text = raw_get(&url).await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[1]["type"], "ADDED");
    assert_eq!(lines[2]["type"], "BOOKMARK");
    assert_eq!(
        lines[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // An expired version: HTTP 200 with one ERROR 410 event.
    server.store().compact();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
        server.url()
    );
    let text = raw_get(&url).await;
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "ERROR");
    assert_eq!(line["object"]["code"], 410);
    assert_eq!(line["object"]["reason"], "Expired");
}

#[tokio::test]
async fn bad_input_gets_its_status_and_the_server_keeps_serving() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("keep", &[("k", "v")]))
        .await
        .unwrap();
    let base = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    // method, url, content type, body, expected code and reason
    type Case<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            base.clone(),
            "application/json",
            b"{not json".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            base.clone(),
            "application/yaml",
            b"a: [unclosed".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            base.clone(),
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#.to_vec(),
            422,
            "Invalid",
        ),
        (
            "POST",
            base.clone(),
            "application/json",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.to_vec(),
            422,
            "Invalid",
        ),
        (
            "POST",
            base.clone(),
            "application/json",
            br#"[1,2]"#.to_vec(),
            400,
            "BadRequest",
        ),
        (
            "GET",
            format!("{}/api/v1/namespaces/default/widgets", server.url()),
            "",
            vec![],
            404,
            "NotFound",
        ),
        (
            "GET",
            format!("{}/apis/nope.example.com/v1/things", server.url()),
            "",
            vec![],
            404,
            "NotFound",
        ),
        (
            "PATCH",
            format!("{base}/keep"),
            "application/json-patch+json",
            b"{\"op\":1}".to_vec(),
            422,
            "Invalid",
        ),
        (
            "PATCH",
            format!("{base}/keep"),
            "application/apply-patch+yaml",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keep"}}"#.to_vec(),
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            format!("{base}/keep"),
            "text/plain",
            b"x".to_vec(),
            415,
            "UnsupportedMediaType",
        ),
        (
            "POST",
            base.clone(),
            "application/json",
            vec![b' '; 3 * 1024 * 1024 + 10],
            413,
            "RequestEntityTooLarge",
        ),
        (
            "GET",
            format!("{base}?labelSelector=a%20in%20b"),
            "",
            vec![],
            400,
            "BadRequest",
        ),
        (
            "GET",
            format!("{base}?fieldSelector=spec.x%3D1"),
            "",
            vec![],
            400,
            "BadRequest",
        ),
    ];
    for (method, url, content_type, body, code, reason) in cases {
        let (status, text) = raw(method, &url, content_type, &body).await;
        assert_eq!(status, code, "{method} {url}: {text}");
        let status_object: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: not a Status: {e}: {text}"));
        assert_eq!(status_object["kind"], "Status", "{text}");
        assert_eq!(status_object["reason"], reason, "{method} {url}: {text}");
        assert_eq!(status_object["code"], code);
    }
    // Still serving, and the stored object is untouched.
    let keep = api.get("keep").await.unwrap();
    assert_eq!(keep.data.unwrap()["k"], "v");
}

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "test.reconcile.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: i32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
struct WidgetStatus {
    made: bool,
}

async fn install_widget_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .unwrap();
    let crd = crds.get("widgets.test.reconcile.dev").await.unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
}

#[tokio::test]
async fn controller_with_owns_reconciles_a_custom_resource_and_its_children() {
    let (_server, client) = server().await;
    install_widget_crd(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let reconciles = Arc::new(AtomicUsize::new(0));

    let ctx = Arc::new((client.clone(), reconciles.clone()));
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(maps.clone(), watcher::Config::default())
        .run(
            |widget: Arc<Widget>, ctx: Arc<(Client, Arc<AtomicUsize>)>| async move {
                ctx.1.fetch_add(1, Ordering::SeqCst);
                let ns = widget.namespace().unwrap();
                let maps: Api<ConfigMap> = Api::namespaced(ctx.0.clone(), &ns);
                let owner = widget.controller_owner_ref(&()).unwrap();
                let child = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{}-child", widget.name_any()), "ownerReferences": [owner]},
                    "data": {"size": widget.spec.size.to_string()}
                });
                maps.patch(&format!("{}-child", widget.name_any()), &PatchParams::apply("widget-controller").force(), &Patch::Apply(child)).await?;
                let widgets: Api<Widget> = Api::namespaced(ctx.0.clone(), &ns);
                widgets.patch_status(&widget.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"made": true}}))).await?;
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _: &kube::Error, _| Action::requeue(Duration::from_millis(100)),
            ctx,
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    widgets
        .create(
            &PostParams::default(),
            &Widget::new("w1", WidgetSpec { size: 3 }),
        )
        .await
        .unwrap();
    eventually("child made", || async {
        maps.get_opt("w1-child").await.unwrap().is_some()
    })
    .await;
    eventually("status written", || async {
        widgets
            .get("w1")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.made)
    })
    .await;
    assert_eq!(
        maps.get("w1-child").await.unwrap().data.unwrap()["size"],
        "3"
    );

    // Deleting the owned child triggers a reconcile of its owner, which
    // makes it again.
    let before = reconciles.load(Ordering::SeqCst);
    maps.delete("w1-child", &DeleteParams::default())
        .await
        .unwrap();
    eventually("child made again", || async {
        maps.get_opt("w1-child").await.unwrap().is_some()
    })
    .await;
    assert!(reconciles.load(Ordering::SeqCst) > before);

    // A spec change reaches the child.
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    eventually("child updated", || async {
        maps.get("w1-child").await.unwrap().data.unwrap()["size"] == "5"
    })
    .await;

    // Deleting the widget collects the child.
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("child collected", || async {
        maps.get_opt("w1-child").await.unwrap().is_none()
    })
    .await;
    handle.abort();
}

#[tokio::test]
async fn the_finalizer_helper_adds_and_removes_its_finalizer() {
    let (_server, client) = server().await;
    install_widget_crd(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("f1", WidgetSpec { size: 1 }),
        )
        .await
        .unwrap();
    let cleaned = Arc::new(AtomicUsize::new(0));

    let run = |cleaned: Arc<AtomicUsize>| {
        let widgets = widgets.clone();
        async move {
            let w = Arc::new(widgets.get("f1").await.unwrap());
            finalizer(
                &widgets,
                "test.reconcile.dev/cleanup",
                w,
                |event| async move {
                    if let FinalizerEvent::Cleanup(_) = event {
                        cleaned.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, kube::Error>(Action::await_change())
                },
            )
            .await
        }
    };
    // First call: the helper adds its finalizer (a JSON patch with `test` of null).
    run(cleaned.clone()).await.unwrap();
    assert_eq!(
        widgets.get("f1").await.unwrap().finalizers(),
        &["test.reconcile.dev/cleanup".to_owned()]
    );
    // Apply with the finalizer present.
    run(cleaned.clone()).await.unwrap();
    // Delete: the object stays with deletionTimestamp; the helper cleans up and removes it.
    widgets
        .delete("f1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        widgets
            .get("f1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    run(cleaned.clone()).await.unwrap();
    assert_eq!(cleaned.load(Ordering::SeqCst), 1);
    assert!(widgets.get_opt("f1").await.unwrap().is_none());
}

#[tokio::test]
async fn crds_appear_in_discovery_at_once() {
    let (_server, client) = server().await;
    install_widget_crd(&client).await;
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "Widget")
        .expect("Widget discovered");
    assert_eq!(resource.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    // Deleting the CRD removes the type.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("widgets.test.reconcile.dev", &DeleteParams::default())
        .await
        .unwrap();
    let widgets: Api<Widget> = Api::namespaced(client, "default");
    let err = widgets.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn injected_faults() {
    let (server, client) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    // kube-client retries 503 on its own: two injected 503s cost two more requests.
    server
        .faults()
        .fail(Match::any().verb("create").resource("configmaps"), 2, 503);
    api.create(&PostParams::default(), &cm("f", &[]))
        .await
        .unwrap();
    let creates = server
        .faults()
        .requests_matching(&Match::any().verb("create").resource("configmaps"));
    assert_eq!(creates.len(), 3);
    // A 500 reaches the caller.
    server
        .faults()
        .fail(Match::any().verb("create").resource("configmaps"), 2, 500);
    for _ in 0..2 {
        let err = api
            .create(&PostParams::default(), &cm("g", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 500),
            "{err:?}"
        );
    }
    api.create(&PostParams::default(), &cm("g", &[]))
        .await
        .unwrap();
    server.faults().throttle(Match::any().verb("get"), 1, 7);
    let (status, head, text) = raw_with_head(
        "GET",
        &format!("{}/api/v1/namespaces/default/configmaps/f", server.url()),
        "",
        b"",
    )
    .await;
    assert_eq!(status, 429, "{text}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 7"),
        "{head}"
    );
    server.faults().fail(Match::any().verb("patch"), 1, 409);
    let err = api
        .patch("f", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    server
        .faults()
        .delay(Match::any().verb("get"), Duration::from_millis(300));
    let started = std::time::Instant::now();
    api.get("f").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.faults().clear();
    assert!(
        server
            .faults()
            .requests()
            .iter()
            .any(|r| r.verb == "create" && r.resource.as_deref() == Some("configmaps"))
    );
}

#[tokio::test]
async fn odd_status_values_and_foreground_deletes_without_dependents() {
    let (server, client) = server().await;
    let namespaces = format!("{}/api/v1/namespaces", server.url());
    // A status that is not an object: refused on the status subresource,
    // and harmless to a delete when a create stored it.
    let (code, body) = raw(
        "POST",
        &namespaces,
        "application/json",
        br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"odd"},"status":"weird"}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = raw(
        "PATCH",
        &format!("{namespaces}/odd/status"),
        "application/merge-patch+json",
        br#"{"status":"still weird"}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("status must be an object"), "{body}");
    let (code, body) = raw("DELETE", &format!("{namespaces}/odd"), "", b"").await;
    assert_eq!(code, 200, "{body}");
    raw_get(&namespaces).await;

    // Foreground deletion of an object with no dependents completes at
    // once: the answer is the deleted object, not "not found".
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("alone", &[]))
        .await
        .unwrap();
    let foreground = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    api.delete("alone", &foreground).await.unwrap();
    assert!(api.get_opt("alone").await.unwrap().is_none());
}

#[tokio::test]
async fn events_are_one_store_served_under_both_groups() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let (_server, client) = server().await;
    let new: Api<Event> = Api::namespaced(client.clone(), "default");
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    // A watch of core events sees what is written through events.k8s.io.
    let mut watch = watcher(core.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let written: Event = serde_json::from_value(json!({
        "metadata": {"name": "web.1"},
        "eventTime": "2026-12-01T10:00:00.000000Z",
        "reportingController": "mirror", "reportingInstance": "mirror-0",
        "action": "Mirror", "reason": "Mirrored", "note": "mirrored to web-mirror", "type": "Normal",
        "regarding": {"apiVersion": "v1", "kind": "ConfigMap", "name": "web", "namespace": "default", "uid": "u-1"},
        "series": {"count": 2, "lastObservedTime": "2026-12-01T10:01:00.000000Z"}
    }))
    .unwrap();
    let created = new.create(&PostParams::default(), &written).await.unwrap();
    assert_eq!(created.note.as_deref(), Some("mirrored to web-mirror"));
    assert_eq!(
        created.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.message.as_deref(), Some("mirrored to web-mirror"));

    // Read back as core v1, with the core names.
    let as_core = core.get("web.1").await.unwrap();
    assert_eq!(as_core.involved_object.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(as_core.involved_object.uid.as_deref(), Some("u-1"));
    assert_eq!(as_core.reporting_component.as_deref(), Some("mirror"));
    assert_eq!(as_core.reason.as_deref(), Some("Mirrored"));
    assert_eq!(as_core.series.as_ref().and_then(|s| s.count), Some(2));
    assert_eq!(
        as_core.metadata.resource_version,
        created.metadata.resource_version
    );

    // Written as core v1 (client-go's old recorder), read as events.k8s.io.
    let old: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "db.1"},
        "involvedObject": {"kind": "Deployment", "name": "db", "namespace": "default"},
        "reason": "ScalingReplicaSet", "message": "scaled up to 3", "type": "Normal",
        "source": {"component": "deployment-controller"}, "count": 4,
        "firstTimestamp": "2026-12-01T09:00:00Z", "lastTimestamp": "2026-12-01T09:05:00Z"
    }))
    .unwrap();
    core.create(&PostParams::default(), &old).await.unwrap();
    let as_new = new.get("db.1").await.unwrap();
    assert_eq!(as_new.note.as_deref(), Some("scaled up to 3"));
    assert_eq!(as_new.deprecated_count, Some(4));
    assert_eq!(
        as_new
            .deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("deployment-controller")
    );
    assert_eq!(
        new.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Patches through one group land in the other.
    new.patch(
        "web.1",
        &PatchParams::default(),
        &Patch::Merge(json!({"series": {"count": 3}, "note": "again"})),
    )
    .await
    .unwrap();
    let as_core = core.get("web.1").await.unwrap();
    assert_eq!(as_core.series.as_ref().and_then(|s| s.count), Some(3));
    assert_eq!(as_core.message.as_deref(), Some("again"));
    assert!(as_core.involved_object.name.is_some());

    // The standard field selectors, in each group's names.
    let names = |items: Vec<CoreEvent>| -> Vec<String> {
        items.into_iter().map(|e| e.name_any()).collect()
    };
    for (selector, want) in [
        ("involvedObject.name=web", vec!["web.1"]),
        (
            "involvedObject.kind=Deployment,involvedObject.namespace=default",
            vec!["db.1"],
        ),
        ("involvedObject.uid=u-1", vec!["web.1"]),
        ("reason!=Mirrored", vec!["db.1"]),
        ("source=deployment-controller", vec!["db.1"]),
        // No source: the reporting controller stands in, as on a real server.
        ("source=mirror", vec!["web.1"]),
        ("reportingComponent=mirror,type=Normal", vec!["web.1"]),
    ] {
        let listed = core
            .list(&ListParams::default().fields(selector))
            .await
            .unwrap();
        assert_eq!(names(listed.items), want, "{selector}");
    }
    let listed = new
        .list(&ListParams::default().fields("regarding.name=db,reportingController!=mirror"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let err = core
        .list(&ListParams::default().fields("regarding.name=web"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported: regarding.name")),
        "{err}"
    );
}

#[tokio::test]
async fn field_selectors_of_pods_secrets_and_namespaces() {
    use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
    let (_server, client) = server().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node, phase) in [("a", "node-1", "Running"), ("b", "node-2", "Pending")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        // As a kubelet would.
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
    }
    let list = |selector: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().fields(selector))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("spec.nodeName=node-1").await, ["a"]);
    assert_eq!(list("status.phase!=Running").await, ["b"]);
    assert_eq!(list("spec.hostNetwork=false,metadata.name=b").await, ["b"]);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for (name, type_) in [("tls", "kubernetes.io/tls"), ("plain", "Opaque")] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "type": type_})).unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let tls = secrets
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .unwrap();
    assert_eq!(tls.items.len(), 1);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let active = namespaces
        .list(&ListParams::default().fields("status.phase=Active"))
        .await
        .unwrap();
    assert!(active.items.len() >= 4);
    let err = secrets
        .list(&ListParams::default().fields("spec.nodeName=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(s) if s.code == 400),
        "refused"
    );
}
