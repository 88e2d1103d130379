//! A replica's life in a cluster: readiness before and after its caches
//! sync, with the trace collector down and with the Lease API failing
//! (a standby is not ready, the leader exits past its renew deadline);
//! liveness through all of it; and SIGTERM under load: exit 0 within the
//! grace, spans flushed, and every reconcile cut short done again by the
//! replica that takes over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use reconcile_apiserver::Match;
use support::host::get;
use support::otlp::{Receiver, spans};
use support::replicas::{holder, setup};

/// Polls `url` until it answers `code`; the body.
async fn probe_until(url: &str, code: u16, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let (got, body) = get(url).await;
        if got == code {
            return body;
        }
        assert!(
            start.elapsed() < limit,
            "{url} answered {got} for {limit:?}, not {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_the_caches_sync_whatever_the_collector_and_only_with_healthy_leases() {
    let s = setup().await;
    // ConfigMaps cannot be listed yet: the mirror's caches do not sync.
    s.server.faults().fail(
        Match::any().verb("list").resource("configmaps"),
        1_000_000,
        500,
    );
    // A collector that is down: a port nobody listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut host = s.host_with(
        "probed",
        &["--leader-elect"],
        &[
            ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ],
    );
    let url = host.probes().await;
    let body = probe_until(&format!("{url}/readyz"), 503, Duration::from_secs(10)).await;
    host.line("leading").await;
    let body = if body.contains("caches") {
        body
    } else {
        probe_until(&format!("{url}/readyz"), 503, Duration::from_secs(10)).await
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, body_now) = get(&format!("{url}/readyz")).await;
    assert_eq!(code, 503, "{body_now}");
    assert!(
        body_now.contains("[-]caches failed: not synced yet: mirror"),
        "{body} / {body_now}"
    );
    // Not synced is not wedged.
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);

    // The API server lists again: ready, though no span can be exported.
    s.server.faults().clear();
    let body = probe_until(
        &format!("{url}/readyz?verbose"),
        200,
        Duration::from_secs(45),
    )
    .await;
    for check in ["plugins", "caches", "leases", "shutdown"] {
        assert!(body.contains(&format!("[+]{check} ok")), "{body}");
    }
    s.create(5).await;
    s.mirrored(5, "1", Duration::from_secs(20)).await;
    assert_eq!(get(&format!("{url}/readyz")).await.0, 200);
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);

    // A standby, ready once synced.
    let standby = s.host("standby", &["--leader-elect"]);
    let standby_url = standby.probes().await;
    probe_until(
        &format!("{standby_url}/readyz"),
        200,
        Duration::from_secs(20),
    )
    .await;

    // The Lease API fails. The standby is not ready (neither leading nor
    // a healthy standby) but live; the leader stays ready while it may
    // still lead, then, past its renew deadline, exits 1.
    s.server
        .faults()
        .fail(Match::any().resource("leases"), 1_000_000, 500);
    let body = probe_until(
        &format!("{standby_url}/readyz"),
        503,
        Duration::from_secs(10),
    )
    .await;
    assert!(body.contains("[-]leases failed"), "{body}");
    assert_eq!(get(&format!("{standby_url}/healthz")).await.0, 200);
    let status = host.exit_within(Duration::from_secs(15)).await;
    assert!(!status.success(), "{status:?}");
    assert!(
        host.find("the lease reconcile-host was not renewed within the renew deadline")
            .is_some(),
        "{}",
        host.log()
    );
    // The API server is back: the standby is ready, and takes over.
    s.server.faults().clear();
    probe_until(
        &format!("{standby_url}/readyz"),
        200,
        Duration::from_secs(10),
    )
    .await;
    standby.line("leading").await;
    drop(standby);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_in_the_grace_and_the_standby_finishes_the_work() {
    let s = setup().await;
    let (otlp, received) = Receiver::start().await;
    // Every mirror write takes 4 s: the signal comes 5.5 s after the
    // objects, when the first four reconciles have finished (they start
    // within 1.5 s) and the next four have 2.5 s or more left: more than
    // the 1 s grace, on any machine.
    s.server.faults().delay(
        Match::any().verb("patch").resource("configmaps"),
        Duration::from_secs(4),
    );
    let mut leader = s.host_with(
        "leader",
        &["--leader-elect", "--shutdown-grace", "1"],
        &[
            ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            // Batches wait long: only the flush at exit sends the last ones.
            ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
        ],
    );
    leader.line("leading").await;
    let standby = s.host("standby", &["--leader-elect"]);
    standby.line("caches synced").await;
    const N: usize = 16;
    s.create(N).await;
    // Four reconciles at a time, 4 s each: 16 s of work.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let signalled = Instant::now();
    leader.terminate();
    let status = leader.exit_within(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}: {}", leader.log());
    // The grace (1 s), the lease release and the flush.
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    let stopped = leader.line("stopped").await;
    let reconciles = stopped["reconciles"].as_u64().unwrap();
    assert!(reconciles > 0 && reconciles < N as u64, "{stopped}");
    assert!(stopped["cut"].as_u64().unwrap() > 0, "{stopped}");
    // Spans flushed: every reconcile the leader finished was exported.
    let roots: Vec<_> = spans(&received)
        .into_iter()
        .filter(|s| s.name == "reconcile" && s.parent_span_id.is_empty())
        .collect();
    assert!(
        roots.len() as u64 >= reconciles,
        "{} roots for {reconciles} reconciles",
        roots.len()
    );

    // The standby takes over and does everything again that was not
    // finished, the cut reconciles included: every mirror, and an Event
    // recorded for every source (the last step of a reconcile).
    let released = Instant::now();
    while holder(&s.client, "reconcile-host").await.as_deref() != Some("standby") {
        assert!(
            released.elapsed() < Duration::from_secs(3),
            "the standby has not taken the released lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.mirrored(N, "1", Duration::from_secs(30)).await;
    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    let start = Instant::now();
    loop {
        let regarding: BTreeSet<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Mirrored"))
            .filter_map(|e| e.regarding.and_then(|r| r.name))
            .collect();
        if (0..N).all(|i| regarding.contains(&format!("m-{i}"))) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Events for {regarding:?} only"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(standby);
}
