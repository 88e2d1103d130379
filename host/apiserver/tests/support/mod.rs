//! Raw HTTP/1.1 requests for the API server's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reconcile_apiserver::{ApiServer, ApiServerConfig};

/// A GET with a plain HTTP/1.1 client, returning the status-200 body.
pub async fn raw_get(url: &str) -> String {
    let (status, body) = raw("GET", url, "", b"").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A minimal HTTP/1.1 request over a TcpStream (Connection: close).
pub async fn raw(method: &str, url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = raw_with_head(method, url, content_type, body).await;
    (status, body)
}

/// Like `raw`, with the response head too.
pub async fn raw_with_head(
    method: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        head.to_owned(),
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A CRD whose objects keep any fields: room for deep and big bodies.
pub const BLOB_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "blobs.hostile.reconcile.dev"},
  "spec": {"group": "hostile.reconcile.dev", "scope": "Namespaced",
    "names": {"plural": "blobs", "singular": "blob", "kind": "Blob", "listKind": "BlobList"},
    "versions": [{"name": "v1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
}"#;

pub const BLOBS: &str = "/apis/hostile.reconcile.dev/v1/namespaces/default/blobs";

pub async fn start(config: ApiServerConfig) -> ApiServer {
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

pub fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}
