//! A tiny HTTP server on loopback for the example plugins, started by
//! `dev --example-http ADDR` and granted to every plugin there, so that
//! `uptime`'s example has something to check and a newcomer sees
//! `reconcile → http.client` spans without a network.
//!
//! `/healthz` answers 200 `ok`; `/status/N` answers N; `/slow` answers
//! after 10 s (longer than a check's default timeout). Each request is
//! logged with its `traceparent`, which is the plugin's `http.client` span.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct ExampleHttp {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ExampleHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExampleHttp {
    /// Listens on `addr` (a loopback address: anything else is refused).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{addr} is not a loopback address: the example server listens on loopback only"
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = crate::serve::spawn(listener, |request| async move { answer(&request).await });
        Ok(ExampleHttp { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn answer<B>(request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let path = request.uri().path();
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    tracing::info!(target: "example_http", method = %request.method(), path, traceparent, "example server request");
    let (code, text) = if path == "/healthz" {
        (200, "ok\n")
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(10)).await;
        (200, "slow\n")
    } else if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c))
    {
        (code, "status\n")
    } else {
        (404, "not found: try /healthz, /status/503 or /slow\n")
    };
    let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    if let Ok(status) = http::StatusCode::from_u16(code) {
        *response.status_mut() = status;
    }
    response
}
