//! Hostile but fair clients: bodies nested past the real server's depth
//! limit, bodies that take long to parse, slow-drip connections, a
//! shutdown with requests half sent, a watcher that stops reading. (The
//! server staying responsive meanwhile is `responsive.rs`, alone in its
//! binary so that no other test shares the cores.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reconcile_apiserver::ApiServerConfig;
use support::{BLOBS, nested, raw, start};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        // And it can be changed like any other.
        let (status, text) = raw(
            "PATCH",
            &format!("{url}/{name}"),
            "application/merge-patch+json",
            br#"{"metadata": {"labels": {"patched": "yes"}}}"#,
        )
        .await;
        assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
        assert!(text.contains(&nested(9_000)) && text.contains("patched"));
        let (status, text) = raw(
            "PUT",
            &format!("{url}/{name}"),
            "application/json",
            blob.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    }
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

#[tokio::test]
async fn a_watch_whose_client_stops_reading_is_ended() {
    let config = ApiServerConfig {
        watch_buffer_bytes: 256 * 1024,
        ..ApiServerConfig::default()
    };
    let server = start(config).await;
    let client = server.client().unwrap();
    // A client with a tiny receive buffer that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.addr()).await.unwrap();
    stalled
        .write_all(b"GET /api/v1/namespaces/default/configmaps?watch=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    let writes = 60;
    for i in 0..writes {
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("big-{i}")}, "data": {"d": "x".repeat(200_000)}});
        api.create(&Default::default(), &serde_json::from_value(cm).unwrap())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    // A live event waits 5 s for room before the watch is ended: still not
    // reading then, the client is cut off. Reading now: the events queued
    // before the cut, then the end.
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut response))
        .await
        .expect("the watch ends")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let events = text.matches("\"type\":\"ADDED\"").count();
    assert!(
        events < writes,
        "{events} of {writes} events: the lagging watch was not ended"
    );
}
