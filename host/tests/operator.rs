//! End to end: plugins as controllers against the embedded API server,
//! with the real demoapp.wasm, spans from an in-memory exporter and the
//! API server's own request log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use reconcile_apiserver::Match;
use reconcile_host::engine::Limits;
use reconcile_host::operator::{self, GrantPolicy};
use serde_json::{Value, json};
use support::cluster::{cluster, eventually};
use support::{Harness, attr, guest};

fn demoapps(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "demo.reconcile.dev".into(),
        version: "v1alpha1".into(),
        api_version: "demo.reconcile.dev/v1alpha1".into(),
        kind: "DemoApp".into(),
        plural: "demoapps".into(),
    };
    Api::namespaced_with(client.clone(), "default", &resource)
}

fn ready(app: &DynamicObject) -> Option<String> {
    app.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoapp_lifecycle() {
    lifecycle("demoapp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoapp_py_lifecycle() {
    lifecycle("demoapp-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoapp_js_lifecycle() {
    lifecycle("demoapp-js").await;
}

/// The example DemoApp's story with the demoapp plugin `name` (the Rust
/// one or a twin): children with owner references, status and Ready,
/// Events, a spec change, deletion with the finalizer released.
async fn lifecycle(name: &str) {
    let mut c = cluster().await;
    c.apply(&["deploy/crds", "deploy/examples"]).await;
    let plugin = c.plugin(name).await;
    c.start(vec![plugin]).await;
    let apps = demoapps(&c.client);
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");

    // Created: a Deployment and a Service owned by the DemoApp, and a status.
    eventually("children", || async {
        deployments.get_opt("hello").await.unwrap().is_some()
            && services.get_opt("hello").await.unwrap().is_some()
    })
    .await;
    let app = apps.get("hello").await.unwrap();
    for owners in [
        deployments
            .get("hello")
            .await
            .unwrap()
            .metadata
            .owner_references,
        services
            .get("hello")
            .await
            .unwrap()
            .metadata
            .owner_references,
    ] {
        let owner = &owners.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DemoApp", "hello", Some(true))
        );
        assert_eq!(Some(&owner.uid), app.metadata.uid.as_ref());
    }
    eventually("status observed", || async {
        let app = apps.get("hello").await.unwrap();
        app.data["status"]["observedGeneration"].as_i64() == app.metadata.generation
            && ready(&app).as_deref() == Some("False")
    })
    .await;
    let app = apps.get("hello").await.unwrap();
    assert!(
        app.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"demo.reconcile.dev/cleanup".to_owned())
    );
    assert_eq!(
        deployments.get("hello").await.unwrap().spec.replicas,
        Some(2)
    );

    // The first reconciles (and those their own writes trigger) are over.
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("the first reconciles are over", || {
        let activity = activity.clone();
        async move { activity.idle_for(Duration::from_millis(300)) }
    })
    .await;
    // The Deployment becomes ready (no kubelet here: its status is written
    // as a deployment controller would): an owned object changed.
    deployments
        .patch_status(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 2}})),
        )
        .await
        .unwrap();
    eventually("Ready", || async {
        ready(&apps.get("hello").await.unwrap()).as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        apps.get("hello").await.unwrap().data["status"]["readyReplicas"],
        2
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let recorded = events.list(&Default::default()).await.unwrap().items;
    assert!(
        recorded
            .iter()
            .any(|e| e.reason.as_deref() == Some("Available")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hello")),
        "{recorded:?}"
    );
    assert!(
        recorded
            .iter()
            .any(|e| e.reason.as_deref() == Some("Progressing"))
    );
    let reasons: HashSet<String> = c
        .roots("hello")
        .iter()
        .filter_map(|r| attr(r, "reconcile.reason"))
        .collect();
    assert!(
        reasons.contains("object_changed") && reasons.contains("owned_object_changed"),
        "{reasons:?}"
    );

    // A spec change bumps the generation and reaches the Deployment.
    let changed = apps
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    eventually("Deployment updated", || async {
        deployments.get("hello").await.unwrap().spec.replicas == Some(3)
    })
    .await;
    eventually("generation 2 observed", || async {
        apps.get("hello").await.unwrap().data["status"]["observedGeneration"] == 2
    })
    .await;

    // Deleting runs the deleting reconcile, releases the finalizer, and the
    // garbage collector removes the children.
    apps.delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    eventually("DemoApp gone", || async {
        apps.get_opt("hello").await.unwrap().is_none()
    })
    .await;
    assert!(deployments.get_opt("hello").await.unwrap().is_none());
    assert!(services.get_opt("hello").await.unwrap().is_none());
    let deleting: Vec<SpanData> = c
        .roots("hello")
        .into_iter()
        .filter(|r| attr(r, "reconcile.reason").as_deref() == Some("deleting"))
        .collect();
    assert_eq!(deleting.len(), 1);
    assert_eq!(
        attr(&deleting[0], "reconcile.result").as_deref(),
        Some("done")
    );
    let release: Vec<SpanData> = c
        .children(&deleting[0])
        .into_iter()
        .filter(|s| s.name == "k8s.patch")
        .collect();
    assert_eq!(
        release.len(),
        1,
        "the finalizer is removed inside the deleting reconcile"
    );
    c.stop().await;
    assert!(c.operator.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_tree_of_a_reconcile() {
    span_tree("demoapp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_tree_of_a_python_reconcile() {
    span_tree("demoapp-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_tree_of_a_javascript_reconcile() {
    span_tree("demoapp-js").await;
}

/// The spans of the example DemoApp's reconciles by the plugin `name`: the
/// same tree for the Rust plugin and its twins.
async fn span_tree(name: &str) {
    let mut c = cluster().await;
    c.apply(&["deploy/crds", "deploy/examples"]).await;
    let plugin = c.plugin(name).await;
    c.start(vec![plugin]).await;
    let apps = demoapps(&c.client);
    eventually("status observed", || async {
        apps.get("hello").await.unwrap().data["status"]["observedGeneration"] == 1
    })
    .await;
    c.stop().await;

    let spans = c.h.finished();
    // Only our spans: no HTTP spans of the kube client leak into exports.
    for s in &spans {
        assert!(
            s.name == "reconcile" || s.name == "render" || s.name.starts_with("k8s."),
            "unexpected span {}",
            s.name
        );
    }
    // Events are not watched: recording one reads it from the server.
    assert!(
        !spans.iter().any(|s| s.name == "k8s.get"
            && attr(s, "k8s.resource").as_deref() != Some("events.k8s.io/v1/Event")),
        "reads of owned types come from the cache"
    );
    let roots = c.roots("hello");
    assert!(!roots.is_empty());
    let full: Vec<&SpanData> = roots
        .iter()
        .filter(|r| c.children(r).iter().any(|s| s.name == "k8s.patch_status"))
        .collect();
    assert!(!full.is_empty());
    for root in &full {
        assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_eq!(
            attr(root, "k8s.cache_reads").as_deref(),
            Some("2"),
            "the Deployment reads before and after its apply are cache reads"
        );
        let children = c.children(root);
        let applies: Vec<&SpanData> = children.iter().filter(|s| s.name == "k8s.apply").collect();
        let resources: HashSet<String> = applies
            .iter()
            .filter_map(|s| attr(s, "k8s.resource"))
            .collect();
        assert_eq!(
            resources,
            HashSet::from([
                "apps/v1/Deployment".to_owned(),
                "core/v1/Service".to_owned()
            ])
        );
        for span in applies
            .iter()
            .copied()
            .chain(children.iter().filter(|s| s.name == "k8s.patch_status"))
        {
            assert_eq!(span.span_kind, SpanKind::Client);
            assert_eq!(span.span_context.trace_id(), root.span_context.trace_id());
            assert_eq!(attr(span, "k8s.namespace").as_deref(), Some("default"));
            assert_eq!(attr(span, "k8s.name").as_deref(), Some("hello"));
            let code = attr(span, "http.response.status_code").unwrap();
            assert!(code == "200" || code == "201", "{code}");
            assert_eq!(attr(span, "error.type"), None);
        }
        let status = children
            .iter()
            .find(|s| s.name == "k8s.patch_status")
            .unwrap();
        assert_eq!(
            attr(status, "k8s.resource").as_deref(),
            Some("demo.reconcile.dev/v1alpha1/DemoApp")
        );
        assert_eq!(attr(status, "k8s.verb").as_deref(), Some("patch"));
        assert_eq!(attr(applies[0], "k8s.verb").as_deref(), Some("apply"));
        // No object bodies in attributes.
        for span in &children {
            for kv in &span.attributes {
                assert!(
                    kv.value.as_str().len() < 200,
                    "{}: {}",
                    kv.key,
                    kv.value.as_str()
                );
            }
        }
    }
    // The first reconcile added the finalizer, inside the same root.
    let first = roots
        .iter()
        .find(|r| attr(r, "reconcile.reason").as_deref() == Some("object_changed"))
        .unwrap();
    assert!(c.children(first).iter().any(|s| s.name == "k8s.patch"));

    // Every request of an apply carried the span's W3C traceparent.
    let apply = spans
        .iter()
        .find(|s| {
            s.name == "k8s.apply"
                && attr(s, "k8s.resource").as_deref() == Some("apps/v1/Deployment")
        })
        .unwrap();
    let requests = c
        .server
        .faults()
        .requests_matching(&Match::any().verb("patch").resource("deployments"));
    let expected = format!(
        "00-{}-{}-01",
        apply.span_context.trace_id(),
        apply.span_context.span_id()
    );
    assert!(
        requests
            .iter()
            .any(|r| r.traceparent.as_deref() == Some(&expected)),
        "{expected} not in {requests:?}"
    );

    // Log lines carry the root's trace id.
    let trace_ids: HashSet<String> = roots
        .iter()
        .map(|r| r.span_context.trace_id().to_string())
        .collect();
    let lines = c.h.logs.lines();
    let reconciled: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "reconciled DemoApp")
        .collect();
    assert!(!reconciled.is_empty());
    for line in reconciled {
        assert!(
            trace_ids.contains(line["trace_id"].as_str().unwrap()),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_outside_the_grant_is_refused_without_a_request() {
    let mut c = cluster().await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("cfg".into());
    maps.create(&PostParams::default(), &cm).await.unwrap();
    let plugin = c.plugin("secret-reader").await;
    c.start(vec![plugin]).await;
    eventually("a reconcile", || async { !c.roots("cfg").is_empty() }).await;
    c.stop().await;
    let root = &c.roots("cfg")[0];
    assert_eq!(attr(root, "reconcile.result").as_deref(), Some("done"));
    let denied = root
        .events
        .iter()
        .find(|e| e.name == "access.denied")
        .expect("access.denied event");
    let get = |k: &str| {
        denied
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.as_str().into_owned())
    };
    assert_eq!(get("k8s.resource").as_deref(), Some("core/v1/Secret"));
    assert_eq!(get("k8s.verb").as_deref(), Some("get"));
    assert_eq!(get("k8s.name").as_deref(), Some("db-password"));
    assert!(
        c.server
            .faults()
            .requests_matching(&Match::any().resource("secrets"))
            .is_empty(),
        "nothing was sent"
    );
    let lines = c.h.logs.lines();
    let refused = lines
        .iter()
        .find(|l| l["message"] == "reading the secret was refused")
        .unwrap();
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("forbidden (403 Forbidden)"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_plugin_asking_beyond_its_grant_does_not_load() {
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    let grant = r#"
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
    "#;
    std::fs::write(dir.path().join("demoapp.toml"), grant).unwrap();
    let err = operator::load_plugin(
        &h.engine,
        &guest("demoapp"),
        &GrantPolicy::Files(Some(dir.path().to_owned())),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("plugin demoapp asks for more than its grant"),
        "{err}"
    );
    assert!(err.contains("create on events.k8s.io/Event"), "{err}");
    assert!(err.contains("demoapp.toml"), "{err}");
    // With the missing permission added, it loads, with the grant's limits.
    std::fs::write(
        dir.path().join("demoapp.toml"),
        format!("{grant}\n[[resources]]\ngroup = \"events.k8s.io\"\nkind = \"Event\"\nverbs = [\"get\", \"create\", \"patch\", \"delete\"]\n[limits]\ndeadline_ms = 1500\n"),
    )
    .unwrap();
    let plugin = operator::load_plugin(
        &h.engine,
        &guest("demoapp"),
        &GrantPolicy::Files(Some(dir.path().to_owned())),
    )
    .await
    .unwrap();
    assert_eq!(plugin.limits().deadline, Duration::from_millis(1500));
    // No grant at all.
    let empty = tempfile::tempdir().unwrap();
    let err = operator::load_plugin(
        &h.engine,
        &guest("demoapp"),
        &GrantPolicy::Files(Some(empty.path().to_owned())),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("plugin demoapp has no grant"), "{err}");
}

fn annotated(cm: &Option<ConfigMap>) -> bool {
    cm.as_ref()
        .and_then(|c| c.metadata.annotations.as_ref())
        .is_some_and(|a| a.get("writer.reconcile.dev/seen").map(String::as_str) == Some("yes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_reach_the_plugin_typed_and_are_retried() {
    let mut c = cluster().await;
    let plugin = c.plugin("configmap-writer").await;
    let plugin = plugin
        .with_limits(Limits {
            deadline: Duration::from_millis(600),
            ..plugin.limits()
        })
        .unwrap();
    c.start(vec![plugin]).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let create = |name: &'static str| {
        let maps = maps.clone();
        async move {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            maps.create(&PostParams::default(), &cm).await.unwrap();
        }
    };
    let failures_of = |name: &str, kind: &str| {
        c.h.logs
            .lines()
            .into_iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("write failed"))
                    && l["name"] == name
                    && l["kind"] == kind
            })
            .count()
    };

    // A 409 reaches the plugin as `conflict`; the retry succeeds.
    c.server
        .faults()
        .fail(Match::any().verb("patch").resource("configmaps"), 1, 409);
    create("c409").await;
    eventually("c409 annotated", || async {
        annotated(&maps.get_opt("c409").await.unwrap())
    })
    .await;
    assert_eq!(failures_of("c409", "conflict"), 1);
    let roots = c.roots("c409");
    assert!(
        roots
            .iter()
            .any(|r| attr(r, "reconcile.result").as_deref() == Some("error")
                && attr(r, "error.type").as_deref() == Some("k8s"))
    );
    // The retry wrote the annotation before its root span ended: the span
    // follows.
    eventually("the retry's root span", || async {
        c.roots("c409").iter().any(|r| {
            attr(r, "reconcile.reason").as_deref() == Some("retry")
                && attr(r, "reconcile.attempt").as_deref() == Some("2")
                && attr(r, "reconcile.result").as_deref() == Some("done")
        })
    })
    .await;

    // 500s are retried by the host within the deadline, then reach the
    // plugin as `unavailable`; backoff retries until the server recovers.
    // (Once c409's own follow-up reconcile is over: its patch would take
    // some of the faults.)
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("c409's reconciles are over", || {
        let activity = activity.clone();
        async move { activity.idle_for(Duration::from_millis(300)) }
    })
    .await;
    c.server
        .faults()
        .fail(Match::any().verb("patch").resource("configmaps"), 7, 500);
    create("c500").await;
    eventually("c500 annotated", || async {
        annotated(&maps.get_opt("c500").await.unwrap())
    })
    .await;
    assert!(failures_of("c500", "unavailable") >= 1);
    let patches = c
        .server
        .faults()
        .requests_matching(&Match::any().verb("patch").resource("configmaps"))
        .into_iter()
        .filter(|r| r.name.as_deref() == Some("c500"))
        .count();
    // Seven refused, then accepted; the annotation's own change triggers one
    // more reconcile, whose (no-op) patch is a request too.
    assert!(patches >= 8, "{patches} patch requests for c500");
    let retried: Vec<SpanData> =
        c.h.finished()
            .into_iter()
            .filter(|s| {
                s.name == "k8s.patch"
                    && attr(s, "k8s.name").as_deref() == Some("c500")
                    && attr(s, "http.request.resend_count").is_some()
            })
            .collect();
    assert!(
        !retried.is_empty(),
        "the host retried inside a k8s.patch span"
    );
    let failed = retried
        .iter()
        .find(|s| attr(s, "error.type").as_deref() == Some("unavailable"))
        .expect("a span that ran out of time");
    assert_eq!(
        attr(failed, "http.response.status_code").as_deref(),
        Some("500")
    );
    assert!(failed.events.iter().any(|e| e.name == "retry"));

    // The host kept running: a new object is reconciled at once.
    create("calm").await;
    eventually("calm annotated", || async {
        annotated(&maps.get_opt("calm").await.unwrap())
    })
    .await;
    c.stop().await;
}

#[test]
fn dev_applies_reconciles_prints_spans_and_exits_when_idle() {
    let root = xtask::project_root();
    let plugins = guest("demoapp").parent().unwrap().to_owned();
    let kubeconfig = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        // Metrics on a free port: hosts of tests that run at once.
        .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
        .current_dir(&root)
        .args([
            "--log-format",
            "json",
            "dev",
            "--apply",
            "deploy/crds",
            "--apply",
            "deploy/examples",
            "--exit-when-idle",
            // The address deploy/examples/uptimecheck.yaml checks.
            "--example-http",
            "127.0.0.1:18080",
            "--plugins",
        ])
        .arg(&plugins)
        .arg("--kubeconfig")
        .arg(kubeconfig.path().join("kubeconfig"))
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stderr}",
        output.status
    );
    // One block per trace: the root line, its children indented under it,
    // the plugin's log line inside the block.
    let blocks: Vec<&str> = stdout
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert!(!blocks.is_empty(), "{stdout}");
    // uptime's check of the example server: reconcile → http.client.
    let uptime = blocks
        .iter()
        .find(|b| b.starts_with("reconcile  uptime  UptimeCheck  default/example"))
        .unwrap_or_else(|| panic!("an uptime block: {stdout}"));
    assert!(
        uptime
            .lines()
            .any(|l| l.starts_with("  http.client  GET  127.0.0.1  200")),
        "{uptime}"
    );
    let first = blocks
        .iter()
        .find(|b| b.starts_with("reconcile  demoapp") && b.contains("k8s.patch_status"))
        .unwrap_or_else(|| panic!("a block with a status write: {stdout}"));
    let lines: Vec<&str> = first.lines().collect();
    assert!(
        lines[0].starts_with("reconcile  demoapp  DemoApp  default/hello  (object_changed)"),
        "{first}"
    );
    assert!(
        lines[0].contains("ok") && lines[0].contains("trace_id="),
        "{first}"
    );
    for child in [
        "k8s.apply  apps/v1/Deployment  default/hello  20",
        "k8s.apply  core/v1/Service  default/hello  20",
        "k8s.patch_status  demo.reconcile.dev/v1alpha1/DemoApp  default/hello  200",
        "render  ",
    ] {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.starts_with(&format!("  {child}"))),
            "{child} indented under the root:\n{first}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  INFO reconciled DemoApp")),
        "the plugin's log line is in its block:\n{first}"
    );
    // Every block is one trace: a single root line, at the left margin.
    for block in &blocks {
        let roots = block.lines().filter(|l| !l.starts_with(' ')).count();
        assert_eq!(roots, 1, "{block}");
    }
    // The log line went to the block, not to stderr.
    assert!(!stderr.contains("reconciled DemoApp"), "{stderr}");
    assert!(kubeconfig.path().join("kubeconfig").exists());
}

#[test]
fn dev_writes_its_kubeconfig_to_the_cache_and_says_where() {
    let root = xtask::project_root();
    let plugins = guest("demoapp").parent().unwrap().to_owned();
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        // Metrics on a free port: hosts of tests that run at once.
        .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
        .current_dir(cwd.path())
        .args(["--log-format", "json", "--cache-dir"])
        .arg(cache.path())
        .args(["dev", "--exit-when-idle", "--apply"])
        .arg(root.join("deploy/crds"))
        .arg("--apply")
        .arg(root.join("deploy/examples"))
        .arg("--plugins")
        .arg(&plugins)
        .env("OTEL_TRACES_EXPORTER", "none")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let kubeconfig = cache.path().join("dev.kubeconfig");
    assert!(kubeconfig.exists(), "{stderr}");
    assert!(
        stderr.contains(&format!("kubectl --kubeconfig {}", kubeconfig.display())),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing written where dev was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_uses_the_kubeconfig_cluster_and_grant_files() {
    let c = cluster().await;
    c.apply(&["deploy/crds", "deploy/examples"]).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.server.kubeconfig()).unwrap();
    let grants = dir.path().join("grants");
    std::fs::create_dir(&grants).unwrap();
    std::fs::write(
        grants.join("demoapp.toml"),
        r#"
        [[resources]]
        group = "demo.reconcile.dev"
        kind = "DemoApp"
        verbs = ["get", "list", "watch", "patch"]
        namespaces = ["default"]
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
        "#,
    )
    .unwrap();
    std::fs::write(
        grants.join("uptime.grants.toml"),
        r#"
        [[resources]]
        group = "demo.reconcile.dev"
        kind = "UptimeCheck"
        verbs = ["get", "list", "watch", "patch"]
        [[resources]]
        group = "events.k8s.io"
        kind = "Event"
        verbs = ["get", "create", "patch", "delete"]
        [[http]]
        url = "http://*:*"
        [[http]]
        url = "https://*:*"
        "#,
    )
    .unwrap();
    let plugins = guest("demoapp").parent().unwrap().to_owned();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
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
        .arg("--grants")
        .arg(&grants)
        .env("KUBECONFIG", &kubeconfig)
        .env("OTEL_TRACES_EXPORTER", "none")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    assert!(
        deployments.get_opt("hello").await.unwrap().is_some(),
        "run reconciled the example"
    );
    assert_eq!(
        ready(&demoapps(&c.client).get("hello").await.unwrap()).as_deref(),
        Some("False")
    );

    // Without its grant file, run refuses the plugin and names the file.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        // Metrics on a free port: hosts of tests that run at once.
        .env("RECONCILE_HOST_METRICS_BIND_ADDRESS", "127.0.0.1:0")
        .env("RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS", "127.0.0.1:0")
        .args(["run", "--exit-when-idle", "--plugins"])
        .arg(&plugins)
        .env("KUBECONFIG", &kubeconfig)
        .env("OTEL_TRACES_EXPORTER", "none")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("plugin demoapp has no grant: write")
            && stderr.contains("demoapp.grants.toml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_object_that_is_deleted_is_forgotten() {
    let mut c = cluster().await;
    let plugin = c.plugin("configmap-writer").await;
    let plugin = plugin
        .with_limits(Limits {
            deadline: Duration::from_millis(200),
            ..plugin.limits()
        })
        .unwrap();
    c.start(vec![plugin]).await;
    c.server.faults().fail(
        Match::any().verb("patch").resource("configmaps"),
        100_000,
        500,
    );
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("doomed".into());
    maps.create(&PostParams::default(), &cm).await.unwrap();
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("a failure", || async { !activity.failures().is_empty() }).await;
    assert!(!activity.idle_for(Duration::ZERO), "a retry is pending");
    maps.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    // The next retry finds it gone: nothing failing, nothing pending.
    eventually("idle", || async {
        activity.idle_for(Duration::from_millis(100))
    })
    .await;
    assert!(activity.failures().is_empty(), "{:?}", activity.failures());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_of_a_deleted_object_is_forgotten() {
    let mut c = cluster().await;
    let plugin = c.plugin("configmap-writer").await;
    c.start(vec![plugin]).await;
    let maps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("invalid".into());
    cm.data = Some([("fail".to_owned(), "permanent".to_owned())].into());
    maps.create(&PostParams::default(), &cm).await.unwrap();
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("a failure", || async { !activity.failures().is_empty() }).await;
    // Not retried: the controller is idle with the failure on record.
    eventually("idle", || async {
        activity.idle_for(Duration::from_millis(100))
    })
    .await;
    let failures = activity.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "configmap-writer: default/invalid");
    assert!(failures[0].1.contains("asks to fail"), "{failures:?}");
    // Deleting it triggers no reconcile; the failure goes all the same.
    maps.delete("invalid", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the failure forgotten", || async {
        activity.failures().is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_the_api_server_serves_differently_is_refused() {
    let c = cluster().await;
    let tracer = c.h.provider_tracer();
    let backend =
        reconcile_host::operator::backend::KubeBackend::new(c.client.clone(), "t", tracer, vec![]);
    let mut configmaps = reconcile_host::caps::k8s::ResourceType {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        namespaced: true,
    };
    backend.check_type(&configmaps).await.unwrap();
    // A plural that is not the kind's would send the call elsewhere.
    configmaps.plural = "secrets".into();
    let e = backend.check_type(&configmaps).await.unwrap_err();
    assert_eq!(e.code, 400, "{e}");
    assert!(
        e.message.contains("serves core/v1/ConfigMap as configmaps"),
        "{e}"
    );
    // So would a wrong scope.
    configmaps.plural = "configmaps".into();
    configmaps.namespaced = false;
    let e = backend.check_type(&configmaps).await.unwrap_err();
    assert_eq!(e.code, 400, "{e}");
    assert!(e.message.contains("cluster-scoped"), "{e}");
    // A type that is not served at all.
    let missing = reconcile_host::caps::k8s::ResourceType {
        group: "nothing.reconcile.dev".into(),
        version: "v1".into(),
        kind: "Nothing".into(),
        plural: "nothings".into(),
        namespaced: true,
    };
    let e = backend.check_type(&missing).await.unwrap_err();
    assert_eq!(e.code, 404, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_waits_for_its_crd_and_is_not_idle_meanwhile() {
    let mut c = cluster().await;
    let plugin = c.plugin("demoapp").await;
    c.start(vec![plugin]).await;
    let activity = c.operator.as_ref().unwrap().activity().clone();
    eventually("the missing type reported", || async {
        activity.failures().iter().any(|(what, why)| {
            what == "demoapp: controller"
                && why.contains("demo.reconcile.dev/v1alpha1/DemoApp")
                && why.contains("CustomResourceDefinition")
        })
    })
    .await;
    // Still starting: `--exit-when-idle` must not stop here.
    assert!(!activity.idle_for(Duration::ZERO));
    c.apply(&["deploy/crds", "deploy/examples"]).await;
    let apps = demoapps(&c.client);
    eventually("the example reconciled", || async {
        let app = apps.get("hello").await.unwrap();
        app.data["status"]["observedGeneration"].as_i64() == app.metadata.generation
    })
    .await;
    assert!(
        !activity
            .failures()
            .iter()
            .any(|(what, _)| what == "demoapp: controller"),
        "{:?}",
        activity.failures()
    );
    c.stop().await;
}
