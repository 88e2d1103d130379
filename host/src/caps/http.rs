//! `wasi:http/outgoing-handler` for `reconcile:plugin@0.2.0` plugins.
//!
//! For now every request is refused with `HTTP-request-denied` before any
//! connection is made: the allow-list from the plugin's grant, the
//! `http.client` span with `traceparent`, and the limits come next. A 0.2.0
//! plugin therefore loads and runs, and learns that HTTP is not granted.

use std::future::Future;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

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
