//! Each `reconcile` root links to the previous root of the same object, so
//! that a trace backend can walk an object's history; objects of other
//! names never link to it. The links are made by the controller's own
//! step, which the harness drives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opentelemetry::trace::SpanContext;
use reconcile_test::{Harness, Outcome, PluginSource, Verb};

fn demoapp(name: &str) -> String {
    format!(
        "apiVersion: demo.reconcile.dev/v1alpha1\nkind: DemoApp\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  image: ghcr.io/reconcile-host/hello:1.0.0\n  replicas: 1\n"
    )
}

fn link_attr(link: &opentelemetry::trace::Link, key: &str) -> Option<String> {
    link.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_objects_reconciles_are_linked_in_a_chain_and_other_objects_never_link() {
    let mut h = Harness::build(PluginSource::Crate(
        xtask::project_root().join("plugins/demoapp"),
    ))
    .manifest_file(xtask::project_root().join("deploy/crds/demoapp.yaml"))
    .unwrap()
    .start()
    .await
    .unwrap();
    h.apply_yaml(&demoapp("hello")).await.unwrap();
    h.apply_yaml(&demoapp("other")).await.unwrap();

    // Three reconciles of hello, the second failing, with one of other's
    // between them.
    assert_eq!(
        h.reconcile_named("default", "hello").await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        h.reconcile_named("default", "other").await.unwrap(),
        Outcome::Done
    );
    h.fail_next(Verb::Apply, "deployments", 422);
    assert!(matches!(
        h.reconcile_named("default", "hello").await.unwrap(),
        Outcome::Failed(_)
    ));
    assert_eq!(
        h.reconcile_named("default", "hello").await.unwrap(),
        Outcome::Done
    );
    assert_eq!(
        h.reconcile_named("default", "other").await.unwrap(),
        Outcome::Done
    );
    // Deleted (its `deleting` reconcile is the fourth of the chain) and
    // made again: the new hello starts a history of its own.
    let resource = kube::api::ApiResource {
        group: "demo.reconcile.dev".into(),
        version: "v1alpha1".into(),
        api_version: "demo.reconcile.dev/v1alpha1".into(),
        kind: "DemoApp".into(),
        plural: "demoapps".into(),
    };
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(h.client(), "default", &resource);
    api.delete("hello", &Default::default()).await.unwrap();
    h.settle().await.unwrap();
    assert!(
        api.get_opt("hello").await.unwrap().is_none(),
        "the finalizer was released"
    );
    h.apply_yaml(&demoapp("hello")).await.unwrap();
    assert_eq!(
        h.reconcile_named("default", "hello").await.unwrap(),
        Outcome::Done
    );

    let roots: Vec<(String, SpanContext, Vec<opentelemetry::trace::Link>)> = h
        .all_spans()
        .iter()
        .map(|tree| {
            let root = tree.root();
            let data = root.data();
            (
                root.attr("k8s.name"),
                data.span_context.clone(),
                data.links.links.clone(),
            )
        })
        .collect();
    let of = |name: &str| -> Vec<&(String, SpanContext, Vec<opentelemetry::trace::Link>)> {
        roots.iter().filter(|(n, _, _)| n == name).collect()
    };
    let all_hello = of("hello");
    assert_eq!(
        all_hello.len(),
        5,
        "four reconciles of hello, one of the new hello"
    );
    let (hello, new_hello) = all_hello.split_at(4);
    assert!(
        new_hello[0].2.is_empty(),
        "the new hello does not link to the deleted one's reconciles"
    );

    // The first has nothing before it; each next links to the one before.
    assert!(hello[0].2.is_empty(), "the first reconcile links nowhere");
    for pair in hello.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert_eq!(after.2.len(), 1, "one link, to the previous reconcile");
        let link = &after.2[0];
        assert_eq!(link.span_context.trace_id(), before.1.trace_id());
        assert_eq!(link.span_context.span_id(), before.1.span_id());
        assert_eq!(
            link_attr(link, "link.reason").as_deref(),
            Some("previous_reconcile")
        );
        // Each reconcile is a trace of its own: the link joins them.
        assert_ne!(after.1.trace_id(), before.1.trace_id());
    }
    // The link says how the previous one ended, and why this one runs.
    let third = &hello[2].2[0];
    assert_eq!(
        link_attr(third, "reconcile.previous.result").as_deref(),
        Some("error")
    );
    assert_eq!(
        link_attr(third, "reconcile.previous.error.type").as_deref(),
        Some("k8s")
    );
    assert_eq!(
        link_attr(&hello[1].2[0], "reconcile.previous.result").as_deref(),
        Some("done")
    );
    assert_eq!(
        link_attr(&hello[3].2[0], "reconcile.reason").as_deref(),
        Some("deleting")
    );

    // other's reconciles link only to other's.
    let other = of("other");
    assert_eq!(other.len(), 2);
    assert!(other[0].2.is_empty());
    assert_eq!(other[1].2[0].span_context.span_id(), other[0].1.span_id());
    let hello_spans: Vec<_> = hello.iter().map(|(_, sc, _)| sc.span_id()).collect();
    for (_, _, links) in &other {
        for link in links {
            assert!(!hello_spans.contains(&link.span_context.span_id()));
        }
    }
    h.shutdown().await;
}
