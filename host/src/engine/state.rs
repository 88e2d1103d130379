//! The data of one call's `Store`: WASI, limits, and the capabilities'
//! per-call state.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::caps::k8s::SharedBackend;
use crate::caps::log::{GuestLog, GuestOutput, StderrTail, Stream};
use crate::caps::trace::GuestTrace;
use crate::engine::limits::CallLimiter;
use crate::grants::Grant;

/// Store data of one plugin call.
pub struct HostState {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: crate::caps::http::Hooks,
    table: ResourceTable,
    pub(crate) limiter: CallLimiter,
    pub(crate) k8s: SharedBackend,
    pub(crate) trace: GuestTrace,
    pub(crate) log: GuestLog,
    pub(crate) stderr_tail: StderrTail,
    pub(crate) grant: Option<Arc<Grant>>,
    pub(crate) deadline: Instant,
    pub(crate) cache_reads: u32,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl HostState {
    pub(crate) fn new(call: CallSetup, trace: GuestTrace, log: GuestLog) -> Self {
        let CallSetup {
            memory,
            deadline,
            backend: k8s,
            grant,
            http,
            metrics,
        } = call;
        let meter = crate::caps::http::Meter {
            metrics: metrics.clone(),
            plugin: log.plugin.clone(),
        };
        let http = http.zip(trace.tracer().cloned()).map(|(policy, tracer)| {
            crate::caps::http::CallHttp::new(
                policy,
                tracer,
                trace.current_span().clone(),
                deadline,
                meter,
            )
        });
        let written = Arc::new(Mutex::new(0));
        let current = trace.current_span().clone();
        let stderr_tail = StderrTail::default();
        // No filesystem, environment, arguments or network: the builder's
        // defaults grant none of them. Stdout and stderr become log lines.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::new(
                Stream::Stdout,
                log.clone(),
                current.clone(),
                None,
                written.clone(),
            ))
            .stderr(GuestOutput::new(
                Stream::Stderr,
                log.clone(),
                current,
                Some(stderr_tail.clone()),
                written,
            ))
            .build();
        HostState {
            wasi,
            http: crate::caps::http::context(),
            http_hooks: crate::caps::http::Hooks::new(http),
            table: crate::caps::http::table(),
            limiter: CallLimiter::new(memory),
            k8s,
            trace,
            log,
            stderr_tail,
            grant,
            deadline,
            cache_reads: 0,
            metrics,
        }
    }
}

/// What one call is allowed and given.
pub(crate) struct CallSetup {
    /// Linear memory cap.
    pub(crate) memory: usize,
    /// When the call's deadline passes.
    pub(crate) deadline: Instant,
    /// Serves Kubernetes calls.
    pub(crate) backend: SharedBackend,
    /// Checked before every Kubernetes call, when set.
    pub(crate) grant: Option<Arc<Grant>>,
    /// What `wasi:http` requests may reach; none refuses them all.
    pub(crate) http: Option<Arc<crate::caps::http::HttpPolicy>>,
    /// Counts the plugin's calls.
    pub(crate) metrics: crate::metrics::Metrics,
}

impl HostState {
    /// HTTP requests the plugin made in this call.
    pub(crate) fn http_requests(&self) -> u32 {
        self.http_hooks.requests()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}
