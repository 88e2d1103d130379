//! Outbound HTTP: a small blocking client over `wasi:http`.
//!
//! The host checks every request against the plugin's grant, traces it as
//! an `http.client` span under the current span (with `traceparent` set
//! for the server), and bounds it by the reconcile's deadline and the
//! grant's limits. Ask for the endpoints in
//! [`Metadata::http_host`](crate::Metadata::http_host).
//!
//! ```no_run
//! use reconcile_sdk::http;
//! # fn main() -> Result<(), http::Error> {
//! let health = http::get("https://api.example.com/healthz")?;
//! if health.status() == 200 {
//!     let version: serde_json::Value = http::get("https://api.example.com/version")?.json()?;
//! }
//! let created = http::Request::post("https://api.example.com/items")
//!     .header("authorization", "Bearer t0ken")
//!     .json(&serde_json::json!({"name": "web"}))?
//!     .send()?
//!     .error_for_status()?;
//! println!("{}", created.text()?);
//! # Ok(())
//! # }
//! ```
//!
//! Redirects are not followed: a `3xx` is returned as it is, and following
//! its `location` is another request, checked again. Errors convert to the
//! plugin's [`Error`](crate::Error) with `?`, as kind
//! [`Http`](crate::ErrorKind::Http).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types as wasi;
use crate::bindings::wasi::io::streams::StreamError;

/// Largest body the client reads into memory, in bytes (the host's cap,
/// 16 MiB by default, may be lower).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What went wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The grant does not allow the endpoint (or the address it resolves to).
    Denied,
    /// No connection, no answer or no body in time.
    Timeout,
    /// The connection was refused or failed.
    Connect,
    /// DNS could not resolve the name.
    Dns,
    /// TLS failed (certificate or handshake).
    Tls,
    /// The response body is over the cap.
    BodyTooLarge,
    /// Too many requests in this reconcile, or in flight at once.
    Limit,
    /// The URL or the request is invalid.
    Invalid,
    /// The server answered 4xx or 5xx ([`Response::error_for_status`]).
    Status,
    /// The body is not what was expected (JSON, UTF-8).
    Decode,
    /// Anything else.
    Other,
}

/// A failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    status: Option<u16>,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The response status, for [`ErrorKind::Status`].
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    fn from_code(code: &wasi::ErrorCode) -> Self {
        use wasi::ErrorCode as C;
        let kind = match code {
            C::HttpRequestDenied | C::DestinationIpProhibited => ErrorKind::Denied,
            C::ConnectionTimeout
            | C::ConnectionReadTimeout
            | C::ConnectionWriteTimeout
            | C::HttpResponseTimeout
            | C::DnsTimeout => ErrorKind::Timeout,
            C::ConnectionRefused
            | C::ConnectionTerminated
            | C::DestinationUnavailable
            | C::DestinationIpUnroutable => ErrorKind::Connect,
            C::DnsError(_) | C::DestinationNotFound => ErrorKind::Dns,
            C::TlsProtocolError | C::TlsCertificateError | C::TlsAlertReceived(_) => ErrorKind::Tls,
            C::HttpResponseBodySize(_) => ErrorKind::BodyTooLarge,
            C::ConnectionLimitReached => ErrorKind::Limit,
            C::HttpRequestUriInvalid | C::HttpRequestMethodInvalid => ErrorKind::Invalid,
            _ => ErrorKind::Other,
        };
        Error::new(kind, format!("{code:?}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP: {}", self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::Error {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        // A denied endpoint or an invalid request does not heal by retrying
        // until the grant or the object changes; the rest may.
        let permanent = matches!(error.kind, ErrorKind::Denied | ErrorKind::Invalid);
        let e = if permanent {
            crate::Error::permanent(message)
        } else {
            crate::Error::new(message)
        };
        e.with_kind(crate::ErrorKind::Http)
    }
}

/// GET `url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// An HTTP request: a builder, sent with [`send`](Request::send).
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// GET `url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// POST to `url`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// PUT to `url`.
    pub fn put(url: &str) -> Self {
        Self::new("PUT", url)
    }

    /// PATCH `url`.
    pub fn patch(url: &str) -> Self {
        Self::new("PATCH", url)
    }

    /// DELETE `url`.
    pub fn delete(url: &str) -> Self {
        Self::new("DELETE", url)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Send `body` as it is.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Send `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("encoding JSON: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Wait at most `timeout` for the connection, for the first byte of
    /// the response and between two chunks of its body (the host's limits
    /// and the reconcile's deadline apply too; the shortest wins).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Send the request and read the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let url = Url::parse(&self.url)?;
        let headers = wasi::Fields::from_list(&self.headers)
            .map_err(|e| Error::new(ErrorKind::Invalid, format!("invalid header: {e:?}")))?;
        let request = wasi::OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => wasi::Method::Get,
            "HEAD" => wasi::Method::Head,
            "POST" => wasi::Method::Post,
            "PUT" => wasi::Method::Put,
            "DELETE" => wasi::Method::Delete,
            "PATCH" => wasi::Method::Patch,
            "OPTIONS" => wasi::Method::Options,
            other => wasi::Method::Other(other.to_owned()),
        };
        let invalid = |what: &str| Error::new(ErrorKind::Invalid, format!("invalid {what}"));
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(url.authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(url.path))
            .map_err(|()| invalid("path"))?;
        let options = self.timeout.map(|timeout| {
            let options = wasi::RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        // A request without a body takes none: the host then sends it
        // without `transfer-encoding: chunked` and an empty last chunk.
        let outgoing = match &self.body {
            Some(_) => Some(request.body().map_err(|()| invalid("body"))?),
            None => None,
        };
        let future =
            outgoing_handler::handle(request, options).map_err(|code| Error::from_code(&code))?;
        let wait = || loop {
            if let Some(result) = future.get() {
                break result
                    .map_err(|()| Error::new(ErrorKind::Other, "the response was taken twice"))?
                    .map_err(|code| Error::from_code(&code));
            }
            future.subscribe().block();
        };
        if let Some(outgoing) = outgoing {
            let sent =
                write_body(&outgoing, self.body.as_deref().unwrap_or_default()).and_then(|()| {
                    wasi::OutgoingBody::finish(outgoing, None).map_err(|c| Error::from_code(&c))
                });
            // A refused request closes its body: the reason is the
            // response's error (denied, limit reached), not the write's.
            if let Err(write) = sent {
                return Err(wait().err().unwrap_or(write));
            }
        }
        let response = wait()?;
        let status = response.status();
        let headers = response.headers().entries();
        let body = read_body(response)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn write_body(body: &wasi::OutgoingBody, bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    let stream = body
        .write()
        .map_err(|()| Error::new(ErrorKind::Other, "the request body was taken twice"))?;
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| match e {
                StreamError::LastOperationFailed(e) => {
                    Error::new(ErrorKind::Connect, e.to_debug_string())
                }
                StreamError::Closed => {
                    Error::new(ErrorKind::Connect, "the request body was closed")
                }
            })?;
    }
    Ok(())
}

fn read_body(response: wasi::IncomingResponse) -> Result<Vec<u8>, Error> {
    let body = response
        .consume()
        .map_err(|()| Error::new(ErrorKind::Other, "the response body was taken twice"))?;
    let stream = body
        .stream()
        .map_err(|()| Error::new(ErrorKind::Other, "the response body was taken twice"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(Error::new(
                        ErrorKind::BodyTooLarge,
                        format!("the response body is over {MAX_BODY_BYTES} bytes"),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasi::http_error_code(&e) {
                    Some(code) => Error::from_code(&code),
                    None => body_error(&e.to_debug_string()),
                });
            }
        }
    }
    drop(stream);
    drop(wasi::IncomingBody::finish(body));
    Ok(bytes)
}

/// An error while reading a response body. wasmtime-wasi-http 48 hands
/// those to the guest as text only (`http-error-code` finds no code), so
/// the kind is read from the host's message; the first line is kept.
fn body_error(text: &str) -> Error {
    let line = text.lines().next().unwrap_or_default();
    let lower = line.to_ascii_lowercase();
    let kind = if lower.contains("body size exceeds") {
        ErrorKind::BodyTooLarge
    } else if lower.contains("timeout") || lower.contains("timed out") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    Error::new(kind, format!("reading the response body: {line}"))
}

/// A response, its body read.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, as the server sent them.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body)
            .map_err(|e| Error::new(ErrorKind::Decode, format!("the body is not UTF-8: {e}")))
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!("the body is not the JSON expected: {e}"),
            )
        })
    }

    /// This response, or an [`ErrorKind::Status`] error for 4xx and 5xx.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.status >= 400 {
            let mut e = Error::new(ErrorKind::Status, format!("status {}", self.status));
            e.status = Some(self.status);
            Err(e)
        } else {
            Ok(self)
        }
    }
}

/// The parts of an `http(s)://authority/path?query` URL.
struct Url<'a> {
    scheme: wasi::Scheme,
    authority: &'a str,
    path: &'a str,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, Error> {
        let invalid = || Error::new(ErrorKind::Invalid, format!("{url:?} is not an http(s) URL"));
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => wasi::Scheme::Http,
            "https" => wasi::Scheme::Https,
            _ => return Err(invalid()),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid());
        }
        let path = if path.is_empty() { "/" } else { path };
        Ok(Url {
            scheme,
            authority,
            path,
        })
    }
}
