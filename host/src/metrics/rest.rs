//! `rest_client_requests_total{code,method,host}` (and, behind a flag,
//! `rest_client_request_duration_seconds{verb,host}`): every request of
//! the host's Kubernetes client, plugin calls, the host's own writes and
//! watches alike, counted by a tower layer around the client's service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    code: String,
    method: String,
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: String,
    host: String,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// The client's request metrics.
#[derive(Clone, Debug)]
pub struct RestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Option<DurationFamily>,
}

impl RestMetrics {
    pub(super) fn new(registry: &mut Registry, latency: bool) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host",
            requests.clone(),
        );
        let duration = latency.then(|| {
            let family: DurationFamily = Family::new_with_constructor(|| {
                Histogram::new(super::REST_BUCKETS.iter().copied())
            });
            registry.register(
                "rest_client_request_duration_seconds",
                "Request latency in seconds, by verb and host",
                family.clone(),
            );
            family
        });
        RestMetrics { requests, duration }
    }

    /// The layer for a client of the API server at `host` (`host:port`).
    pub fn layer(&self, host: &str) -> RestLayer {
        RestLayer {
            metrics: self.clone(),
            host: host.to_owned(),
        }
    }

    fn record(&self, method: &http::Method, host: &str, code: Option<u16>, started: Instant) {
        let code = code.map_or_else(|| "<error>".to_owned(), |c| c.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                code,
                method: method.as_str().to_owned(),
                host: host.to_owned(),
            })
            .inc();
        if let Some(duration) = &self.duration {
            duration
                .get_or_create(&DurationLabels {
                    verb: method.as_str().to_owned(),
                    host: host.to_owned(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

/// Counts the requests of the service it wraps.
#[derive(Clone, Debug)]
pub struct RestLayer {
    metrics: RestMetrics,
    host: String,
}

impl<S> tower::Layer<S> for RestLayer {
    type Service = RestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RestService {
            inner,
            metrics: self.metrics.clone(),
            host: self.host.clone(),
        }
    }
}

/// See [`RestLayer`].
#[derive(Clone, Debug)]
pub struct RestService<S> {
    inner: S,
    metrics: RestMetrics,
    host: String,
}

impl<S, B, R> tower::Service<http::Request<B>> for RestService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method().clone();
        let metrics = self.metrics.clone();
        let host = self.host.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = response.as_ref().ok().map(|r| r.status().as_u16());
            metrics.record(&method, &host, code, started);
            response
        })
    }
}
