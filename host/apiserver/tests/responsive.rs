//! The embedded API server keeps answering while hostile bodies parse.
//! Alone in its binary: the 100 ms bound holds with the machine's cores
//! shared by this test's own clients only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reconcile_apiserver::ApiServerConfig;
use support::{BLOBS, raw, start};

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
