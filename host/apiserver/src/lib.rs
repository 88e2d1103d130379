//! An embedded Kubernetes API server: a real HTTP server on loopback that
//! the real `kube::Client`, kube-runtime watchers and controllers, and
//! `kubectl` talk to as they would to a cluster. In-memory, no wasmtime, no
//! cluster needed.
//!
//! # Where to start
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = reconcile_apiserver::ApiServer::start(Default::default()).await?;
//! let client = server.client()?;
//! std::fs::write("kubeconfig", server.kubeconfig())?;
//! // ... use `client` or kubectl --kubeconfig kubeconfig ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`registry`]: the served types (built-ins and CRDs) and their list semantics.
//! - [`store`]: storage and write semantics, history for watches.
//! - [`apply`]: server-side apply and `managedFields`.
//! - [`patch`]: merge, JSON and strategic merge patches; [`protobuf`]: protobuf bodies of simple kinds.
//! - [`selectors`]: label and field selectors.
//! - [`typed`]: built-ins decoded against their k8s-openapi types (400s).
//! - [`validation`]: names, metadata, data keys and sizes, required fields (422s).
//! - [`discovery`], [`table`]: what kubectl needs besides objects.
//! - [`faults`]: fault injection and the request log.
//! - [`authz`]: RBAC from the stored roles for impersonated requests (403
//!   when not allowed) and `SelfSubjectAccessReview`; a request that
//!   impersonates no one is the admin's.
//! - [`status`]: `Status` errors.

pub mod apply;
pub mod authz;
pub mod convert;
pub mod discovery;
pub mod faults;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selectors;
mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod typed;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use faults::{Faults, Match, RequestRecord};
pub use server::{MAX_BODY_BYTES, MAX_DEPTH, parse_body};
pub use store::Store;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// Address to listen on; port 0 picks a free one. Loopback by default.
    pub listen: SocketAddr,
    /// Events kept for watches to resume from.
    pub history: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Longest a watch stays open without `timeoutSeconds`.
    pub max_watch: Duration,
    /// Bytes of object history kept for watches, besides the count.
    pub history_bytes: usize,
    /// Longest a client may take to send a request's headers (the real
    /// server closes such connections after about 32 s).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body: 504 after it.
    pub body_timeout: Duration,
    /// Bytes a watch may have queued for a client that does not read
    /// before the server ends it (the client lists again).
    pub watch_buffer_bytes: usize,
    /// How long a shutdown waits for requests in flight before closing
    /// their connections.
    pub shutdown_grace: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 10_000,
            bookmark_interval: Duration::from_secs(30),
            max_watch: Duration::from_secs(1800),
            history_bytes: 64 * 1024 * 1024,
            header_timeout: Duration::from_secs(32),
            body_timeout: Duration::from_secs(60),
            watch_buffer_bytes: 16 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Errors starting the server or making a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}; pick another port or 127.0.0.1:0")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The kube client could not be built.
    #[error("cannot build a Kubernetes client for {url}: {error}")]
    Client {
        /// The server URL.
        url: String,
        /// Why.
        error: String,
    },
}

/// A running server. Dropping it stops the listener; [`shutdown`](Self::shutdown)
/// also waits for it.
pub struct ApiServer {
    addr: SocketAddr,
    store: Arc<Store>,
    faults: Arc<Faults>,
    stop: tokio::sync::watch::Sender<bool>,
    finished: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts the server in this Tokio runtime. It serves at once.
    pub async fn start(config: ApiServerConfig) -> Result<Self, ApiServerError> {
        let listen_error = |error| ApiServerError::Listen {
            addr: config.listen,
            error,
        };
        // Bound here, so the port accepts connections as soon as this returns.
        let listener = std::net::TcpListener::bind(config.listen).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let store = Arc::new(Store::with_limits(config.history, config.history_bytes));
        let faults = Arc::new(Faults::default());
        let shared = Arc::new(server::Shared {
            store: store.clone(),
            faults: faults.clone(),
            bookmark_interval: config.bookmark_interval,
            max_watch: config.max_watch,
            body_timeout: config.body_timeout,
            watch_buffer_bytes: config.watch_buffer_bytes,
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let cut = faults.clone();
        let timeouts = (config.header_timeout, config.shutdown_grace);
        // The server runs on a thread of its own with a single-threaded
        // runtime: the store is behind one lock anyway, and this avoids the
        // wake-ups of a work-stealing scheduler on every request (and any
        // dependence on the caller's runtime). Bodies are parsed on the
        // runtime's blocking threads, so one hostile body holds no one
        // else up. Deep (but allowed) nesting recurses: the stacks are big.
        std::thread::Builder::new()
            .name("kube-apiserver".into())
            .stack_size(server::STACK_BYTES)
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_stack_size(server::STACK_BYTES)
                    // Bounded: each request in flight may hold a big body.
                    .max_blocking_threads(server::BLOCKING_THREADS)
                    .build()
                {
                    Ok(rt) => rt,
                    Err(error) => {
                        tracing::error!(%error, "cannot start the embedded API server's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(error) => {
                            tracing::error!(%error, "the embedded API server cannot listen");
                            return;
                        }
                    };
                    let app = axum::Router::new()
                        .fallback(server::handle)
                        .layer(axum::extract::DefaultBodyLimit::disable())
                        .with_state(shared);
                    serve(listener, app, stopped, timeouts, cut).await;
                });
                // Dropping the runtime drops every connection still open.
                drop(runtime);
                let _ = done.send(());
            })
            .map_err(listen_error)?;
        Ok(ApiServer {
            addr,
            store,
            faults,
            stop,
            finished: Some(finished),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (default namespace `default`).
    pub fn client(&self) -> Result<kube::Client, ApiServerError> {
        let config = self.client_config()?;
        kube::Client::try_from(config).map_err(|e| ApiServerError::Client {
            url: self.url(),
            error: e.to_string(),
        })
    }

    /// The configuration [`client`](Self::client) uses, to change before
    /// making a client of one's own (headers, retries).
    pub fn client_config(&self) -> Result<kube::Config, ApiServerError> {
        let url = self.url();
        let cluster_url =
            url.parse()
                .map_err(|e: axum::http::uri::InvalidUri| ApiServerError::Client {
                    url: url.clone(),
                    error: e.to_string(),
                })?;
        let mut config = kube::Config::new(cluster_url);
        config.default_namespace = "default".into();
        config.read_timeout = None;
        Ok(config)
    }

    /// A kubeconfig for kubectl, with this server as the current context.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Fault injection and the request log.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The store behind the server.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Accepts connections until `stopped`, then lets requests in flight
/// finish for up to the grace.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    (header_timeout, grace): (Duration, Duration),
    cut: Arc<Faults>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(%error, "the embedded API server cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Answers are small and latency matters: no Nagle delays.
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    // Open watches would hold a graceful shutdown forever.
    cut.cut_watches();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("the embedded API server closed connections still in flight");
    }
}

/// A kubeconfig pointing at `url`, context `reconcile-host`, namespace `default`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: reconcile-host\n  cluster:\n    server: {url}\nusers:\n- name: reconcile-host\n  user: {{}}\ncontexts:\n- name: reconcile-host\n  context:\n    cluster: reconcile-host\n    user: reconcile-host\n    namespace: default\ncurrent-context: reconcile-host\npreferences: {{}}\n"
    )
}
