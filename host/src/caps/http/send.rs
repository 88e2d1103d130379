//! Sending one admitted request: resolve, filter addresses, connect, TLS,
//! HTTP/1.1 or HTTP/2, with every wait bounded, and the response body
//! counted against the cap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::allow::{Host, Scheme, is_public};
use super::{ClientSpan, HttpPolicy, Target};

/// Time kept back from the reconcile's deadline, so that a request that
/// runs out of time fails in the guest (which can still return an error)
/// rather than with the whole call.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// How long a connection may outlive the request's deadline (its driver
/// must not end before the request's own timeouts report).
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// The bounds of one request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
    deadline: Instant,
    max_body: u64,
}

impl Bounds {
    /// The policy's bounds, tightened by the guest's options (never
    /// loosened), all ending by the reconcile's `deadline`.
    pub(crate) fn new(
        policy: &HttpPolicy,
        options: Option<RequestOptions>,
        deadline: std::time::Instant,
    ) -> Self {
        let pick = |guest: Option<Duration>, host: Duration| match guest {
            Some(guest) if guest < host => guest,
            _ => host,
        };
        let options = options.unwrap_or_default();
        let deadline = Instant::from_std(deadline)
            .checked_sub(DEADLINE_MARGIN)
            .unwrap_or_else(Instant::now);
        Bounds {
            connect: pick(options.connect_timeout, policy.connect_timeout),
            first_byte: pick(options.first_byte_timeout, policy.first_byte_timeout),
            between_bytes: pick(options.between_bytes_timeout, policy.first_byte_timeout),
            deadline,
            max_body: policy.max_body_bytes,
        }
    }

    /// The earlier of `now + wait` and the deadline.
    fn until(&self, wait: Duration) -> Instant {
        Instant::now()
            .checked_add(wait)
            .map_or(self.deadline, |at| at.min(self.deadline))
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The TLS client configuration: the system's roots, ring, ALPN h2 and
/// http/1.1. Built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!("reading the system's TLS roots: {error}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system TLS roots were found: HTTPS requests from plugins will fail certificate checks (install the ca-certificates package, or set SSL_CERT_FILE)"
                );
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| Error::InternalError(Some(format!("TLS configuration: {e}"))))
}

/// Sends `request` to `target`; the response's body ends `span`.
pub(crate) async fn send(
    request: http::Request<WasiBody>,
    target: Target,
    bounds: Bounds,
    mut span: ClientSpan,
    parent: Context,
) -> Result<http::Response<WasiBody>, Error> {
    match exchange(request, &target, bounds, &parent).await {
        Ok(response) => {
            span.set_status_code(response.status());
            Ok(response.map(|incoming| {
                Capped {
                    incoming,
                    read: 0,
                    bounds,
                    idle: Box::pin(tokio::time::sleep_until(bounds.until(bounds.between_bytes))),
                    span,
                }
                .boxed_unsync()
            }))
        }
        Err(error) => {
            span.fail(&error);
            Err(error)
        }
    }
}

async fn exchange(
    mut request: http::Request<WasiBody>,
    target: &Target,
    bounds: Bounds,
    parent: &Context,
) -> Result<http::Response<hyper::body::Incoming>, Error> {
    let connect_by = bounds.until(bounds.connect);
    let addresses = tokio::time::timeout_at(connect_by, resolve(target))
        .await
        .map_err(|_| Error::DnsTimeout)??;
    if addresses.is_empty() {
        parent.span().add_event(
            "access.denied",
            vec![
                KeyValue::new("server.address", target.host.to_string()),
                KeyValue::new("server.port", i64::from(target.port)),
                KeyValue::new(
                    "reason",
                    "the name resolves only to non-public addresses; set private = true on its [[http]] entry to allow them",
                ),
            ],
        );
        return Err(Error::DestinationIpProhibited);
    }
    let stream = connect(&addresses, connect_by).await?;
    let _ = stream.set_nodelay(true);
    let (io, h2): (Box<dyn Io>, bool) = match target.scheme {
        Scheme::Http => (Box::new(stream), false),
        Scheme::Https => {
            let name = match &target.host {
                Host::Name(name) => rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| Error::HttpRequestUriInvalid)?,
                Host::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
            };
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            let tls = tokio::time::timeout_at(connect_by, connector.connect(name, stream))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(tls_error)?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            (Box::new(tls), h2)
        }
    };
    let io = TokioIo::new(io);
    let first_byte_by = bounds.until(bounds.first_byte);
    let deadline = bounds.deadline + CONNECTION_GRACE;
    let response = if h2 {
        let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
        let (mut sender, conn) = within(connect_by, handshake, Error::ConnectionTimeout).await?;
        tokio::spawn(tokio::time::timeout_at(deadline, conn));
        within(
            first_byte_by,
            sender.send_request(request),
            Error::ConnectionReadTimeout,
        )
        .await?
    } else {
        // HTTP/1.1 wants the origin form: the authority is in `host`.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse::<http::Uri>()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        *request.uri_mut() = path;
        let handshake = hyper::client::conn::http1::handshake(io);
        let (mut sender, conn) = within(connect_by, handshake, Error::ConnectionTimeout).await?;
        tokio::spawn(tokio::time::timeout_at(deadline, conn));
        within(
            first_byte_by,
            sender.send_request(request),
            Error::ConnectionReadTimeout,
        )
        .await?
    };
    Ok(response)
}

/// `step` by `by`, else `late`; hyper's errors as `wasi:http` ones.
async fn within<T>(
    by: Instant,
    step: impl Future<Output = Result<T, hyper::Error>>,
    late: Error,
) -> Result<T, Error> {
    match tokio::time::timeout_at(by, step).await {
        Ok(result) => result.map_err(hyper_error),
        Err(_) => Err(late),
    }
}

/// The addresses `target` may be reached at: an IP literal as given; a
/// name's public addresses, or all of them with `private`.
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, Error> {
    match &target.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, target.port)]),
        Host::Name(name) => {
            let found = tokio::net::lookup_host((name.as_str(), target.port))
                .await
                .map_err(|e| Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                })?;
            let mut addresses = Vec::new();
            for address in found {
                if (target.private || is_public(address.ip())) && !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            Ok(addresses)
        }
    }
}

/// Connects to the first address that answers; each gets an equal share
/// of the time left before `by`, so that one silent address does not use
/// it all.
async fn connect(addresses: &[SocketAddr], by: Instant) -> Result<TcpStream, Error> {
    let mut last = Error::DestinationUnavailable;
    for (i, address) in addresses.iter().enumerate() {
        let left = by.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addresses.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused;
            }
            Ok(Err(_)) => last = Error::DestinationUnavailable,
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    Err(last)
}

fn tls_error(e: std::io::Error) -> Error {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    if certificate {
        Error::TlsCertificateError
    } else {
        Error::Tls(e)
    }
}

/// The `wasi:http` code of a hyper error (hyper's own would be logged by
/// wasmtime-wasi-http and sent as a bare protocol error).
fn hyper_error(e: hyper::Error) -> Error {
    if e.is_timeout() {
        Error::HttpResponseTimeout
    } else if e.is_parse() || e.is_parse_status() || e.is_user() {
        Error::HttpProtocolError
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        Error::HttpResponseIncomplete
    } else {
        Error::ConnectionTerminated
    }
}

/// A response body counted against the cap and the deadline; it ends the
/// request's span when it ends, fails or is dropped.
struct Capped {
    incoming: hyper::body::Incoming,
    read: u64,
    bounds: Bounds,
    idle: Pin<Box<Sleep>>,
    span: ClientSpan,
}

impl Capped {
    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.span.fail(&error);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.span.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(hyper_error(e)),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read = this.read.saturating_add(data.len() as u64);
                    if this.read > this.bounds.max_body {
                        return this.fail(Error::HttpResponseBodySize(Some(this.read)));
                    }
                }
                let next = this.bounds.until(this.bounds.between_bytes);
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                this.fail(Error::ConnectionReadTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
