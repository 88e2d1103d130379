//! A real HTTP/1.1 server on `127.0.0.1` for the `wasi:http` tests: it
//! counts connections and records every request's path and headers.
//!
//! Paths: `/ok` answers 200 `hello`; `/slow` never answers; `/big` streams
//! 100 MiB; `/wait` answers after 300 ms; `/status/N` answers N;
//! `/redirect/PORT` answers 302 to `http://127.0.0.1:PORT/ok`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, text: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}

async fn answer(path: String) -> http::Response<Body> {
    if path == "/ok" || path == "/" {
        full(200, "hello")
    } else if path == "/slow" {
        std::future::pending::<()>().await;
        unreachable!()
    } else if path == "/wait" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        full(200, "waited")
    } else if path == "/big" {
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        let frames = futures::stream::iter(
            (0..100).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        http::Response::new(StreamBody::new(frames).boxed())
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut response = full(200, "status");
        *response.status_mut() = http::StatusCode::from_u16(code.parse().unwrap()).unwrap();
        response
    } else if let Some(port) = path.strip_prefix("/redirect/") {
        let mut response = full(302, "");
        response.headers_mut().insert(
            "location",
            format!("http://127.0.0.1:{port}/ok").parse().unwrap(),
        );
        response
    } else {
        full(404, "not found")
    }
}

impl TestServer {
    /// Starts a server on an ephemeral port of `127.0.0.1`.
    pub async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let seen = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let seen = seen.clone();
                        async move {
                            let path = request.uri().path().to_owned();
                            seen.lock().unwrap().push(Seen {
                                path: path.clone(),
                                headers: request.headers().clone(),
                            });
                            Ok::<_, Infallible>(answer(path).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            connections,
            seen,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}
