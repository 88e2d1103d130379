//! reconcile-host: a Kubernetes operator host that runs reconcile logic
//! shipped as WebAssembly components.
//!
//! # Where to start
//!
//! [`Engine`](engine::Engine) loads a plugin (`.wasm` built with the guest
//! SDK) into a [`Plugin`](engine::Plugin); [`Plugin::reconcile`](engine::Plugin::reconcile)
//! runs one reconcile in a fresh instance inside a `reconcile` span.
//! [`telemetry`] builds the tracer provider from the `OTEL_*` variables and
//! the log format that carries trace ids.
//!
//! # Layout
//!
//! - [`engine`]: wasmtime setup, compile cache, limits, the traced call;
//!   the contract versions served (0.1.0 and 0.2.0) and their bindings.
//! - [`caps`]: one module per WIT interface the plugin imports (`k8s`, `log`,
//!   `trace`, `http` for `wasi:http`), and the 0.2.0 imports translated to them.
//! - [`example_http`]: the loopback HTTP server `dev --example-http` starts
//!   for the example plugins.
//! - [`files`]: bounded reads of regular files only (plugins, grants, manifests).
//! - [`lease`]: leader election and sharding through Leases, and the
//!   ownership the controllers check before each reconcile.
//! - [`metadata`]: what a plugin says about itself, and its checks.
//! - [`grants`]: what the operator allows a plugin, from grant files.
//! - [`metrics`]: Prometheus metrics with controller-runtime's names, the
//!   `/metrics` endpoint, the API client's request counts.
//! - [`operator`]: one kube-runtime controller per plugin, the traced k8s
//!   backend, watches limited to the granted namespaces, manifests for `dev`.
//! - [`reload`]: the plugin directory watched; each change validated as at
//!   start-up, then swapped in, or its controller replaced or stopped.
//! - [`plugin_test`]: `reconcile-host test`, the conformance case format
//!   run against one plugin.
//! - [`probes`]: `/healthz` and `/readyz`.
//! - [`rbac`]: the RBAC the grants need (`reconcile-host rbac`), and the
//!   start-up check of the ServiceAccount's access.
//! - [`reconcile`]: request, outcome and root-span vocabulary.
//! - `serve`: the accept loop of the host's small HTTP endpoints.
//! - [`telemetry`]: tracer provider, structured logs, the tree view of
//!   `dev` and `call`, the retention of failed and slow traces.

pub mod caps;
pub mod engine;
pub mod example_http;
pub mod files;
pub mod grants;
pub mod lease;
pub mod metadata;
pub mod metrics;
pub mod operator;
pub mod plugin_test;
pub mod probes;
pub mod rbac;
pub mod reconcile;
pub mod reload;
mod serve;
pub mod telemetry;
