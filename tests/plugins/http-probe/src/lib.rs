//! Makes the HTTP requests its ConfigMap's `data` describes, so that tests
//! can check the host's allow-list, spans, propagation and limits:
//!
//! - `url`: the URL to GET;
//! - `span`: when set, the request runs inside a guest span of that name;
//! - `traceparent`: a `traceparent` header the guest sets (the host must
//!   replace it);
//! - `follow`: `"1"` follows one redirect (a second request, checked again);
//! - `post`: when set, POST this body instead of a GET;
//! - `repeat`: how many times to GET `url`, one after the other;
//! - `parallel`: how many GETs of `url` to start at once (raw `wasi:http`,
//!   all handed to the host before any response is awaited).
//!
//! Each outcome is a log line `request` with `status` or `error`; the first
//! failure is also the reconcile's error.
use reconcile_sdk::bindings::wasi::http::{outgoing_handler, types as wasi};
use reconcile_sdk::http;
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Probe;

fn get(
    url: &str,
    traceparent: Option<&String>,
    post: Option<&String>,
) -> Result<http::Response, http::Error> {
    let mut request = match post {
        Some(body) => http::Request::post(url).body(body.as_bytes()),
        None => http::Request::get(url),
    };
    if let Some(tp) = traceparent {
        request = request
            .header("traceparent", tp)
            .header("tracestate", "guest=1");
    }
    request.send()
}

fn logged(result: Result<http::Response, http::Error>) -> Result<http::Response, http::Error> {
    match &result {
        Ok(response) => {
            info!(status = response.status(), bytes = response.bytes().len(); "request")
        }
        Err(e) => info!(error = format!("{:?}", e.kind()), detail = e; "request"),
    }
    result
}

/// Starts `n` GETs of `url` at once; returns how many were admitted.
fn parallel(url: &str, n: u32) -> Result<Action> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::permanent("bad url"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let scheme = if scheme == "https" {
        wasi::Scheme::Https
    } else {
        wasi::Scheme::Http
    };
    let mut pending = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let request = wasi::OutgoingRequest::new(wasi::Fields::new());
        let _ = request.set_scheme(Some(&scheme));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
        match outgoing_handler::handle(request, None) {
            Ok(future) => pending.push(future),
            Err(code) => {
                refused += 1;
                info!(error = "Refused", detail = format!("{code:?}"); "request");
            }
        }
    }
    let mut ok = 0;
    for future in pending {
        let result = loop {
            if let Some(result) = future.get() {
                break result;
            }
            future.subscribe().block();
        };
        match result {
            Ok(Ok(response)) => {
                ok += 1;
                info!(status = response.status(); "request");
            }
            Ok(Err(code)) => {
                refused += 1;
                info!(error = "Failed", detail = format!("{code:?}"); "request");
            }
            Err(()) => refused += 1,
        }
    }
    info!(ok = ok, refused = refused; "parallel");
    Ok(Action::Done)
}

impl Reconciler for Probe {
    fn metadata() -> Metadata {
        Metadata::new("http-probe", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        let data = cm.data.unwrap_or_default();
        let Some(url) = data.get("url") else {
            return Ok(Action::Done);
        };
        if let Some(n) = data.get("parallel") {
            return parallel(url, n.parse().unwrap_or(1));
        }
        let traceparent = data.get("traceparent");
        let repeat: u32 = data.get("repeat").and_then(|n| n.parse().ok()).unwrap_or(1);
        let run = || -> Result<Action> {
            let mut first_error = None;
            for _ in 0..repeat {
                match logged(get(url, traceparent, data.get("post"))) {
                    Ok(response) => {
                        let location = response.header("location").map(str::to_owned);
                        if let (Some("1"), Some(location)) =
                            (data.get("follow").map(String::as_str), location)
                        {
                            logged(get(&location, None, None))?;
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e.into()),
                None => Ok(Action::Done),
            }
        };
        match data.get("span") {
            Some(name) => try_span(name, run),
            None => run(),
        }
    }
}

reconcile_sdk::plugin!(Probe);
