//! An HTTP server on 127.0.0.1 for plugins that make HTTP requests: it
//! answers 200 `ok` to any path, records each request, and can be told to
//! fail the next ones.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The path.
    pub path: String,
    /// Its `traceparent` header.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    failures: VecDeque<u16>,
}

/// The test's HTTP server; stops when dropped.
pub struct TestHttp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHttp")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for TestHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestHttp {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<TestHttp> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let state = shared.clone();
            async move {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.received.push(Received {
                    path: request.uri().path().to_owned(),
                    traceparent: request
                        .headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                });
                let status = state.failures.pop_front().unwrap_or(200);
                let status = axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                (status, if status.is_success() { "ok" } else { "failed" })
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TestHttp { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request gets `status`.
    pub fn fail_next(&self, status: u16) {
        self.lock().failures.push_back(status);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
