//! uptime's checks with the plugin test harness and a local HTTP server:
//! the first check, the wake-up of its own status write (no second GET),
//! checks every interval on the virtual clock, and a failing endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reconcile_test::{Harness, Outcome, TestHttp};
use uptime::{UptimeCheck, UptimeCheckSpec};

fn condition(check: &UptimeCheck) -> (String, String) {
    let c = &check.status.as_ref().unwrap().conditions[0];
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_every_interval_and_reports_a_failing_endpoint() {
    let web = TestHttp::start().await.unwrap();
    let mut h = Harness::build(reconcile_test::this_crate!())
        .crd::<UptimeCheck>()
        .allow_http(web.url())
        .start()
        .await
        .unwrap();
    let mut check = UptimeCheck::new(
        "web",
        UptimeCheckSpec {
            url: format!("{}/healthz", web.url()),
            interval_seconds: Some(60),
            timeout_seconds: None,
        },
    );
    check.metadata.namespace = Some("default".into());
    h.apply(&check).await.unwrap();

    // The first check: one GET, under the root, carrying its traceparent.
    let outcome = h.reconcile(&check).await.unwrap();
    assert_eq!(outcome, Outcome::RequeueAfter(Duration::from_secs(60)));
    let spans = h.spans();
    let get = spans.root().child("http.client");
    get.assert_attr("server.address", "127.0.0.1")
        .assert_attr("http.response.status_code", 200);
    let received = web.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/healthz");
    let traceparent = received[0].traceparent.clone().unwrap();
    let ids = get.data().span_context.clone();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", ids.trace_id(), ids.span_id())
    );
    let found = h.must_get::<UptimeCheck>("default", "web").await;
    assert_eq!(found.status.as_ref().unwrap().last_status_code, Some(200));
    assert_eq!(condition(&found), ("True".into(), "Up".into()));
    assert_eq!(
        h.calls()
            .iter()
            .map(|c| c.verb.as_str())
            .collect::<Vec<_>>(),
        ["patch", "get", "create"],
        "{:?}",
        h.calls()
    );

    // Its own status write wakes it: it waits out the interval, no GET.
    let woken = h.settle().await.unwrap();
    assert!(
        woken
            .iter()
            .all(|o| matches!(o, Outcome::RequeueAfter(d) if *d <= Duration::from_secs(60))),
        "{woken:?}"
    );
    assert_eq!(web.received().len(), 1);

    // The endpoint fails: the next check (an interval later on the
    // virtual clock) reports it, with a Warning Event.
    web.fail_next(503);
    let started = std::time::Instant::now();
    h.advance(Duration::from_secs(60)).await.unwrap();
    assert_eq!(web.received().len(), 2);
    let found = h.must_get::<UptimeCheck>("default", "web").await;
    assert_eq!(found.status.as_ref().unwrap().last_status_code, Some(503));
    assert_eq!(condition(&found).0, "False");
    let traces = h.all_spans();
    let checked = (0..traces.len())
        .rev()
        .find(|&i| !traces[i].named("http.client").is_empty())
        .unwrap();
    // The requeued check wrote its status and, availability having
    // changed, an Event (read first, then created).
    let verbs: Vec<String> = h.calls_per_reconcile()[checked]
        .iter()
        .map(|c| format!("{} {}", c.verb, c.group_resource()))
        .collect();
    assert_eq!(
        verbs,
        [
            "patch demo.reconcile.dev/uptimechecks",
            "get events.k8s.io/events",
            "create events.k8s.io/events"
        ]
    );
    let failed = &traces[checked];
    failed
        .root()
        .assert_attr("reconcile.reason", "requeue")
        .child("http.client")
        .assert_attr("http.response.status_code", 503);
    let events = h.events().await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.type_.as_deref(), Some("Warning"), "{events:?}");

    // And recovers at the check after.
    h.advance(Duration::from_secs(60)).await.unwrap();
    assert_eq!(web.received().len(), 3);
    let found = h.must_get::<UptimeCheck>("default", "web").await;
    assert_eq!(condition(&found), ("True".into(), "Up".into()));
    assert!(h.now() >= Duration::from_secs(120));
    // Two intervals on the virtual clock, in far less real time.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
