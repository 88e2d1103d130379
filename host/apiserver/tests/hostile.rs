//! Hostile but fair clients: bodies nested past the real server's depth
//! limit, bodies that take long to parse, slow-drip connections, a
//! shutdown with requests half sent. The server answers everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reconcile_apiserver::{ApiServer, ApiServerConfig};
use support::raw;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A CRD whose objects keep any fields: room for deep and big bodies.
pub const BLOB_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "blobs.hostile.reconcile.dev"},
  "spec": {"group": "hostile.reconcile.dev", "scope": "Namespaced",
    "names": {"plural": "blobs", "singular": "blob", "kind": "Blob", "listKind": "BlobList"},
    "versions": [{"name": "v1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
}"#;

const BLOBS: &str = "/apis/hostile.reconcile.dev/v1/namespaces/default/blobs";

async fn start(config: ApiServerConfig) -> ApiServer {
    let server = ApiServer::start(config).await.unwrap();
    let (status, body) = raw(
        "POST",
        &format!(
            "{}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            server.url()
        ),
        "application/json",
        BLOB_CRD.as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    server
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn bodies_nested_past_the_real_limit_get_400_and_deep_ones_below_it_work() {
    let server = start(ApiServerConfig::default()).await;
    let configmaps = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    for (content_type, body) in [
        ("application/json", nested(10_001)),
        ("application/yaml", nested(100_000)),
        ("application/yaml", format!("a: {}", nested(50_000))),
    ] {
        let (status, text) = raw("POST", &configmaps, content_type, body.as_bytes()).await;
        assert_eq!(status, 400, "{content_type}: {text}");
        assert!(text.contains("exceeded max depth of 10000"), "{text}");
    }
    let web = format!("{configmaps}/web");
    let (status, text) = raw(
        "PATCH",
        &format!("{web}?fieldManager=hostile"),
        "application/apply-patch+yaml",
        format!("{{\"a\": {}}}", nested(100_000)).as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("exceeded max depth of 10000"), "{text}");

    // 9,000 levels (allowed, as in the real server) are stored and served,
    // in JSON and in YAML.
    for (name, content_type) in [
        ("deep-json", "application/json"),
        ("deep-yaml", "application/yaml"),
    ] {
        let blob = format!(
            "{{\"apiVersion\": \"hostile.reconcile.dev/v1\", \"kind\": \"Blob\", \"metadata\": {{\"name\": \"{name}\"}}, \"spec\": {}}}",
            nested(9_000)
        );
        let url = format!("{}{BLOBS}", server.url());
        let (status, text) = raw("POST", &url, content_type, blob.as_bytes()).await;
        assert_eq!(status, 201, "{name}: {}", &text[..text.len().min(300)]);
        let (status, text) = raw("GET", &format!("{url}/{name}"), "", b"").await;
        assert_eq!(status, 200);
        assert!(text.contains(&nested(9_000)), "{name} comes back as stored");
    }
}

/// A YAML body of legal depth that takes a while to parse: many small
/// flow mappings, about 3 MB.
fn slow_yaml() -> String {
    let mut body = String::from(
        "apiVersion: hostile.reconcile.dev/v1\nkind: Blob\nmetadata:\n  generateName: slow-\nspec:\n  items: [",
    );
    let mut i = 0;
    while body.len() < 3_000_000 {
        body.push_str(&format!("{{a: {i}, b: [x, y, {{c: d}}]}}, "));
        i += 1;
    }
    body.push_str("{}]\n");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_are_answered_within_100ms_while_hostile_bodies_parse() {
    let server = start(ApiServerConfig::default()).await;
    let url = format!("{}{BLOBS}", server.url());
    let body = slow_yaml();
    let hostile: Vec<_> = (0..2)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, text) = raw("POST", &url, "application/yaml", body.as_bytes()).await;
                (status, text, started.elapsed())
            })
        })
        .collect();
    let version = format!("{}/version", server.url());
    let mut answered = Vec::new();
    while hostile.iter().any(|h| !h.is_finished()) {
        let started = Instant::now();
        let (status, _) = raw("GET", &version, "", b"").await;
        assert_eq!(status, 200);
        answered.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut slowest_hostile = Duration::ZERO;
    for h in hostile {
        let (status, text, took) = h.await.unwrap();
        assert_eq!(status, 201, "{}", &text[..text.len().min(400)]);
        slowest_hostile = slowest_hostile.max(took);
    }
    assert!(
        answered.len() >= 3,
        "the hostile bodies took {slowest_hostile:?}: too quick to overlap ({answered:?})"
    );
    let slowest = answered.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(100),
        "while two bodies parsed for {slowest_hostile:?}, /version took up to {slowest:?}"
    );
}

#[tokio::test]
async fn slow_headers_are_cut_and_slow_bodies_get_504() {
    let config = ApiServerConfig {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..ApiServerConfig::default()
    };
    let server = start(config).await;
    let addr = server.addr();

    // Headers that never end: the connection is closed.
    let mut drip = tokio::net::TcpStream::connect(addr).await.unwrap();
    drip.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), drip.read_to_end(&mut response)).await;
    assert!(
        read.is_ok(),
        "the server keeps a slow-header connection open"
    );

    // A body that never comes: 504 with a Status naming it.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{\"apiVersion\"",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut response))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("\"reason\":\"Timeout\""), "{text}");

    // Everyone else is served.
    let (status, _) = raw("GET", &format!("{}/version", server.url()), "", b"").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_closes_connections_holding_half_sent_requests() {
    let server = start(ApiServerConfig::default()).await;
    let addr = server.addr();
    let mut held = Vec::new();
    for request in [
        &b"GET /version HTTP/1.1\r\nHost: x\r\n"[..],
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        held.push(stream);
    }
    // And an open watch.
    let mut watch = tokio::net::TcpStream::connect(addr).await.unwrap();
    watch
        .write_all(b"GET /api/v1/configmaps?watch=true HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown returns");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for mut stream in held {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a held connection is closed by the shutdown");
    }
}
