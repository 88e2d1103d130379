//! Outbound HTTP from plugins through `wasi:http`: real plugins built from
//! source (`http-probe` uses the SDK's client and raw `wasi:http`), a real
//! HTTP server on `127.0.0.1`, the spans exported by the engine.
//!
//! - propagation: the server receives a `traceparent` with the trace and
//!   span ids of the exported `http.client` span, whose parent is the guest
//!   span around the call (or the root); a guest-set one is replaced;
//! - the allow-list: an endpoint not granted, an IP literal, `localhost`
//!   when only `127.0.0.1:PORT` is granted, a granted name resolving to
//!   loopback, a redirect to an ungranted port: the error code, an
//!   `access.denied` event, and no connection to the target;
//! - limits: a server that never answers, a 100 MiB body, the per-reconcile
//!   and in-flight caps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use reconcile_host::engine::{Limits, Plugin};
use reconcile_host::grants::Grant;
use reconcile_host::reconcile::{Outcome, ReconcileRequest, Reconciled};
use support::server::TestServer;
use support::{Harness, attr};

fn grant(toml: &str) -> Arc<Grant> {
    Arc::new(Grant::from_toml(toml, Path::new("http-probe.grants.toml")).unwrap())
}

/// A ConfigMap whose data tells `http-probe` what to do.
fn probe(data: &[(&str, &str)]) -> ReconcileRequest {
    support::configmap_with_data("probe", data)
}

struct Run {
    reconciled: Reconciled,
    spans: Vec<SpanData>,
    lines: Vec<serde_json::Value>,
}

impl Run {
    fn root(&self) -> &SpanData {
        self.spans
            .iter()
            .find(|s| s.span_context.span_id() == self.reconciled.span_id)
            .expect("the root span")
    }

    fn clients(&self) -> Vec<&SpanData> {
        self.spans
            .iter()
            .filter(|s| s.name == "http.client")
            .collect()
    }

    fn client(&self) -> &SpanData {
        let clients = self.clients();
        assert_eq!(clients.len(), 1, "{clients:#?}");
        clients[0]
    }

    /// The `request` log lines' `error` fields (`None` for a response).
    fn outcomes(&self) -> Vec<Option<String>> {
        self.lines
            .iter()
            .filter(|l| l["message"] == "request")
            .map(|l| l["error"].as_str().map(str::to_owned))
            .collect()
    }

    fn denied_events(&self, span: &SpanData) -> usize {
        span.events
            .iter()
            .filter(|e| e.name == "access.denied")
            .count()
    }
}

async fn run(h: &Harness, plugin: &Plugin, data: &[(&str, &str)]) -> Run {
    let before = h.logs.lines().len();
    let reconciled = plugin.reconcile(probe(data)).await;
    let trace = reconciled.trace_id;
    let spans = h
        .finished()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect();
    let lines = h.logs.lines().split_off(before);
    Run {
        reconciled,
        spans,
        lines,
    }
}

async fn probe_plugin(h: &Harness, grant_toml: &str) -> Plugin {
    h.load("http-probe").await.with_grant(grant(grant_toml))
}

fn granted(server: &TestServer) -> String {
    format!("[[http]]\nurl = \"http://127.0.0.1:{}\"\n", server.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_gets_the_traceparent_of_the_client_span_under_the_guest_span() {
    let server = TestServer::start().await;
    let h = Harness::new();
    let plugin = probe_plugin(&h, &granted(&server)).await;
    let url = server.url("/ok");
    let guest_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = run(
        &h,
        &plugin,
        &[("url", &url), ("span", "fetch"), ("traceparent", guest_tp)],
    )
    .await;
    assert!(
        matches!(r.reconciled.outcome, Outcome::Done),
        "{:?}",
        r.reconciled.outcome
    );
    let client = r.client();
    let fetch = r.spans.iter().find(|s| s.name == "fetch").unwrap();
    assert_eq!(client.span_kind, SpanKind::Client);
    assert_eq!(client.parent_span_id, fetch.span_context.span_id());
    assert_eq!(fetch.parent_span_id, r.reconciled.span_id);
    assert_eq!(attr(client, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(client, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(client, "server.port"), Some(server.port().to_string()));
    assert_eq!(attr(client, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(client, "error.type"), None);
    // Never the path or the query.
    for kv in &client.attributes {
        assert!(!kv.value.as_str().contains("/ok"), "{kv:?}");
    }
    // What the server received: the client span's ids, not the guest's.
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let tp = seen[0].headers["traceparent"].to_str().unwrap();
    let expected = format!(
        "00-{}-{}-01",
        client.span_context.trace_id(),
        client.span_context.span_id()
    );
    assert_eq!(tp, expected);
    assert_ne!(tp, guest_tp);
    assert!(
        seen[0].headers.get("tracestate").is_none(),
        "{:?}",
        seen[0].headers
    );
    assert_eq!(attr(r.root(), "http.requests").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_guest_span_the_client_span_is_a_child_of_the_root() {
    let server = TestServer::start().await;
    let h = Harness::new();
    let plugin = probe_plugin(&h, &granted(&server)).await;
    let url = server.url("/status/503");
    let r = run(&h, &plugin, &[("url", &url)]).await;
    let client = r.client();
    assert_eq!(client.parent_span_id, r.reconciled.span_id);
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attr(client, "error.type").as_deref(), Some("5xx"));
    assert!(matches!(client.status, Status::Error { .. }));
    let tp = server.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        tp.contains(&client.span_context.span_id().to_string()),
        "{tp}"
    );
}

/// Checks one denied request: the error code the guest saw, one
/// `access.denied` event on `parent`, a failed `http.client` span.
fn assert_denied(r: &Run, code: &str) {
    assert_eq!(
        r.outcomes(),
        vec![Some("Denied".to_owned())],
        "{:#?}",
        r.lines
    );
    let detail = r.lines.iter().find(|l| l["message"] == "request").unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains(code), "{detail}");
    let client = r.client();
    assert_eq!(attr(client, "error.type").as_deref(), Some("denied"));
    assert_eq!(
        r.denied_events(r.root()),
        1,
        "access.denied on the root: {:?}",
        r.root().events
    );
    match &r.reconciled.outcome {
        Outcome::Failed(f) => {
            assert_eq!(f.kind.as_str(), "http", "{f:?}");
            assert!(!f.retry, "a denied endpoint is not retried: {f:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_grant_are_refused_before_any_connection() {
    let server = TestServer::start().await;
    let forbidden = TestServer::start().await;
    let h = Harness::new();

    // A name the grant does not list.
    let plugin = probe_plugin(&h, &granted(&server)).await;
    let r = run(&h, &plugin, &[("url", "http://not-granted.example/ok")]).await;
    assert_denied(&r, "HttpRequestDenied");
    // A POST too: its body is refused with it, and the guest learns why.
    let r = run(
        &h,
        &plugin,
        &[("url", "http://not-granted.example/ok"), ("post", "{}")],
    )
    .await;
    assert_denied(&r, "HttpRequestDenied");

    // An address written as a name is an address, and `*` never matches one.
    let plugin = probe_plugin(
        &h,
        &format!(
            "[[http]]\nurl = \"http://*:{}\"\nprivate = true\n",
            forbidden.port()
        ),
    )
    .await;
    let dotted = format!("http://127.0.0.1.:{}/ok", forbidden.port());
    let r = run(&h, &plugin, &[("url", &dotted)]).await;
    assert_denied(&r, "HttpRequestDenied");

    // An IP literal: names (even `*`) never match one.
    let plugin = probe_plugin(
        &h,
        &format!(
            "[[http]]\nurl = \"http://*:{}\"\nprivate = true\n",
            forbidden.port()
        ),
    )
    .await;
    let r = run(&h, &plugin, &[("url", &forbidden.url("/ok"))]).await;
    assert_denied(&r, "HttpRequestDenied");

    // `localhost` when only `127.0.0.1:PORT` is granted.
    let plugin = probe_plugin(&h, &granted(&forbidden)).await;
    let localhost = format!("http://localhost:{}/ok", forbidden.port());
    let r = run(&h, &plugin, &[("url", &localhost)]).await;
    assert_denied(&r, "HttpRequestDenied");

    // A granted name that resolves to loopback, without `private = true`.
    let plugin = probe_plugin(
        &h,
        &format!(
            "[[http]]\nurl = \"http://localhost:{}\"\n",
            forbidden.port()
        ),
    )
    .await;
    let r = run(&h, &plugin, &[("url", &localhost)]).await;
    assert_denied(&r, "DestinationIpProhibited");

    // A redirect to an ungranted endpoint: the first hop is answered, the
    // hop the guest follows is refused.
    let plugin = probe_plugin(&h, &granted(&server)).await;
    let redirect = server.url(&format!("/redirect/{}", forbidden.port()));
    let r = run(&h, &plugin, &[("url", &redirect), ("follow", "1")]).await;
    assert_eq!(
        r.outcomes(),
        vec![None, Some("Denied".to_owned())],
        "{:#?}",
        r.lines
    );
    let clients = r.clients();
    assert_eq!(clients.len(), 2);
    assert_eq!(
        attr(clients[0], "http.response.status_code").as_deref(),
        Some("302")
    );
    assert_eq!(attr(clients[1], "error.type").as_deref(), Some("denied"));
    assert_eq!(r.denied_events(r.root()), 1);

    assert_eq!(
        forbidden.connections(),
        0,
        "the forbidden target was reached"
    );
    assert_eq!(server.seen().len(), 1);

    // With `private = true` the same name is allowed.
    let plugin = probe_plugin(
        &h,
        &format!(
            "[[http]]\nurl = \"http://localhost:{}\"\nprivate = true\n",
            forbidden.port()
        ),
    )
    .await;
    let r = run(&h, &plugin, &[("url", &localhost)]).await;
    assert_eq!(r.outcomes(), vec![None], "{:#?}", r.lines);
    assert_eq!(forbidden.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_within_the_deadline() {
    let server = TestServer::start().await;
    let h = Harness::new();
    let deadline = Duration::from_secs(2);
    let plugin = probe_plugin(&h, &granted(&server))
        .await
        .with_limits(Limits {
            deadline,
            ..Limits::default()
        })
        .unwrap();
    let started = Instant::now();
    let r = run(&h, &plugin, &[("url", &server.url("/slow"))]).await;
    let took = started.elapsed();
    assert!(took < deadline + Duration::from_millis(500), "{took:?}");
    assert_eq!(attr(r.client(), "error.type").as_deref(), Some("timeout"));
    // The guest saw the timeout and returned its own error.
    assert_eq!(
        r.outcomes(),
        vec![Some("Timeout".to_owned())],
        "{:#?}",
        r.lines
    );
    match &r.reconciled.outcome {
        Outcome::Failed(f) => assert_eq!(f.kind.as_str(), "http", "{f:?}"),
        other => panic!("{other:?}"),
    }
    // The host serves the next reconcile.
    let r = run(&h, &plugin, &[("url", &server.url("/ok"))]).await;
    assert!(matches!(r.reconciled.outcome, Outcome::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_body_is_cut_at_the_cap() {
    let server = TestServer::start().await;
    let h = Harness::new();
    let plugin = probe_plugin(&h, &granted(&server)).await;
    let r = run(&h, &plugin, &[("url", &server.url("/big"))]).await;
    assert_eq!(
        attr(r.client(), "error.type").as_deref(),
        Some("body_too_large")
    );
    assert_eq!(
        r.outcomes(),
        vec![Some("BodyTooLarge".to_owned())],
        "{:#?}",
        r.lines
    );
    let size = |r: &Run| -> u64 {
        let detail = r.lines[0]["detail"].as_str().unwrap().to_owned();
        detail
            .rsplit(": ")
            .next()
            .and_then(|n| n.strip_suffix(" bytes"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{detail}"))
    };
    let mib = 1024 * 1024;
    assert!((16 * mib..18 * mib).contains(&size(&r)), "{}", size(&r));
    // The cap is the grant's to set.
    let plugin = probe_plugin(
        &h,
        &format!("{}[limits]\nhttp_body_mib = 1\n", granted(&server)),
    )
    .await;
    let r = run(&h, &plugin, &[("url", &server.url("/big"))]).await;
    assert_eq!(
        r.outcomes(),
        vec![Some("BodyTooLarge".to_owned())],
        "{:#?}",
        r.lines
    );
    assert!((mib..3 * mib).contains(&size(&r)), "{}", size(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_reconcile_and_in_flight_caps_hold() {
    let server = TestServer::start().await;
    let h = Harness::new();
    let plugin = probe_plugin(
        &h,
        &format!(
            "{}[limits]\nhttp_requests = 3\nhttp_in_flight = 2\n",
            granted(&server)
        ),
    )
    .await;
    let r = run(&h, &plugin, &[("url", &server.url("/ok")), ("repeat", "5")]).await;
    let limit = Some("Limit".to_owned());
    assert_eq!(
        r.outcomes(),
        vec![None, None, None, limit.clone(), limit],
        "{:#?}",
        r.lines
    );
    assert_eq!(server.seen().len(), 3);
    assert_eq!(attr(r.root(), "http.requests").as_deref(), Some("5"));
    let limited = r
        .clients()
        .iter()
        .filter(|s| attr(s, "error.type").as_deref() == Some("limit_reached"))
        .count();
    assert_eq!(limited, 2);

    // Four at once, two may be in flight.
    let r = run(
        &h,
        &plugin,
        &[("url", &server.url("/wait")), ("parallel", "4")],
    )
    .await;
    let parallel = r.lines.iter().find(|l| l["message"] == "parallel").unwrap();
    assert_eq!(parallel["ok"], 2, "{:#?}", r.lines);
    assert_eq!(parallel["refused"], 2, "{:#?}", r.lines);
    assert_eq!(server.seen().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_asking_for_hosts_beyond_its_grant_does_not_load() {
    let h = Harness::new();
    // `traced` asks for https://example.com.
    let plugin = h.load("traced").await;
    let grant = Grant::from_toml(
        "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\", \"list\", \"watch\", \"patch\"]\n[[http]]\nurl = \"https://other.example.com\"\n",
        Path::new("traced.grants.toml"),
    )
    .unwrap();
    let message = grant.check(plugin.metadata()).unwrap_err().to_string();
    assert!(message.contains("HTTP to example.com"), "{message}");
    // A wildcard covers it.
    let grant = Grant::from_toml(
        "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\", \"list\", \"watch\", \"patch\"]\n[[http]]\nurl = \"https://*\"\n",
        Path::new("traced.grants.toml"),
    )
    .unwrap();
    grant.check(plugin.metadata()).unwrap();
    // A grant entry that is not an endpoint is refused when read.
    let bad = Grant::from_toml(
        "[[http]]\nurl = \"https://example.com/path\"\n",
        Path::new("bad.grants.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("no path"), "{bad}");
}
