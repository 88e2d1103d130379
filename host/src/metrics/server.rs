//! The `/metrics` endpoint (`--metrics-bind-address`).
//!
//! A scraper that accepts `application/openmetrics-text` (Prometheus does)
//! gets OpenMetrics 1.0 with exemplars; any other gets Prometheus text
//! 0.0.4, which has no exemplars.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where metrics are served: `0` turns them off, `:8080` is every
/// interface (as controller-runtime writes it), else `host:port`.
pub fn parse_bind_address(value: &str) -> Result<Option<SocketAddr>, String> {
    let value = value.trim();
    if value == "0" {
        return Ok(None);
    }
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_owned(),
    };
    full.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("{value:?} is not an address: write :8080, 127.0.0.1:8080, [::1]:8080, or 0 to turn metrics off")
    })
}

/// The running endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsServer {
    /// Serves `metrics` on `addr`.
    pub async fn start(addr: SocketAddr, metrics: Metrics) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = crate::serve::spawn(listener, move |request| {
            let response = answer(&request, &metrics);
            async move { response }
        });
        Ok(MetricsServer { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the endpoint (a wildcard address shown as loopback).
    pub fn url(&self) -> String {
        format!("{}/metrics", crate::serve::base_url(self.addr))
    }
}

fn answer<B>(request: &http::Request<B>, metrics: &Metrics) -> http::Response<Full<Bytes>> {
    let respond = |code: u16, content_type: &str, body: String| {
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        if let Ok(status) = http::StatusCode::from_u16(code) {
            *response.status_mut() = status;
        }
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return respond(404, "text/plain", "not found: try /metrics\n".into());
    }
    let openmetrics = request
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match metrics.encode(openmetrics) {
        Some(Ok(text)) if openmetrics => respond(200, OPENMETRICS, text),
        Some(Ok(text)) => respond(
            200,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            text,
        ),
        Some(Err(e)) => respond(
            500,
            "text/plain",
            format!("cannot encode the metrics: {e}\n"),
        ),
        None => respond(404, "text/plain", "metrics are off\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address("0"), Ok(None));
        assert_eq!(
            parse_bind_address(":8080"),
            Ok(Some("0.0.0.0:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:9090"),
            Ok(Some("127.0.0.1:9090".parse().unwrap()))
        );
        assert!(parse_bind_address("localhost").is_err());
        assert!(parse_bind_address(":http").is_err());
    }
}
