//! `wasi:http/outgoing-handler` for `reconcile:plugin@0.2.0` plugins.
//!
//! For now every request is refused with `HTTP-request-denied` before any
//! connection is made: the allow-list from the plugin's grant, the
//! `http.client` span with `traceparent`, and the limits come next. A 0.2.0
//! plugin therefore loads and runs, and learns that HTTP is not granted.

use std::future::Future;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Most resources (fields, requests, bodies, streams, pollables) one
/// instance may hold: wasmtime's default is a million, none of them counted
/// against the plugin's memory limit.
pub(crate) const MAX_RESOURCES: usize = 4096;

/// Largest headers of one `fields` resource, in bytes.
pub(crate) const MAX_FIELDS_BYTES: usize = 16 * 1024;

/// Largest write to an outgoing body, in bytes (host memory per write).
pub(crate) const MAX_BODY_CHUNK_BYTES: usize = 64 * 1024;

/// The resource table of one instance, bounded.
pub(crate) fn table() -> wasmtime::component::ResourceTable {
    let mut table = wasmtime::component::ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// The `wasi:http` context of one instance, its headers bounded.
pub(crate) fn context() -> wasmtime_wasi_http::WasiHttpCtx {
    let mut ctx = wasmtime_wasi_http::WasiHttpCtx::new();
    ctx.set_field_size_limit(MAX_FIELDS_BYTES);
    ctx
}

/// The hooks of one call's `wasi:http` context.
#[derive(Debug, Default)]
pub(crate) struct Hooks;

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for Hooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        MAX_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop((request, options, fut));
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
