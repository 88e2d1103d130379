//! HTTPS from a plugin: the host verifies servers against the system's
//! root certificates (here a test CA in `SSL_CERT_FILE`, the standard way
//! to point a process at its roots), negotiates HTTP/2 by ALPN when the
//! server offers it, and fails a certificate it cannot verify with
//! `tls_error`, opening no plaintext fallback.
//!
//! One test in its own binary: `SSL_CERT_FILE` is set before any thread
//! starts, and the roots are read once per process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reconcile_host::grants::Grant;
use reconcile_host::reconcile::Outcome;
use support::{Harness, attr, configmap_with_data};

type Seen = Arc<Mutex<Vec<(http::Version, Option<String>)>>>;

/// An HTTPS server on 127.0.0.1 with `cert`, offering h2 and http/1.1;
/// records each request's version and `traceparent`.
async fn tls_server(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> (SocketAddr, Seen) {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = recorded.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let seen = seen.clone();
                    async move {
                        let traceparent = request
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock().unwrap().push((request.version(), traceparent));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"secure"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[test]
fn https_checks_the_system_roots_and_speaks_http2_when_offered() {
    let trusted = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let untrusted = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, trusted.cert.pem()).unwrap();
    // SAFETY: the test's first step, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SSL_CERT_FILE", &roots);
        std::env::remove_var("SSL_CERT_DIR");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (good, good_seen) = tls_server(&trusted).await;
        let (bad, bad_seen) = tls_server(&untrusted).await;
        let h = Harness::new();
        let grant = Grant::from_toml(
            "[[http]]\nurl = \"https://127.0.0.1:*\"\n",
            Path::new("http-probe.grants.toml"),
        )
        .unwrap();
        let plugin = h.load("http-probe").await.with_grant(Arc::new(grant));

        let url = format!("https://{good}/ok");
        let r = plugin
            .reconcile(configmap_with_data("probe", &[("url", &url)]))
            .await;
        assert!(matches!(r.outcome, Outcome::Done), "{:?}", r.outcome);
        let seen = good_seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, http::Version::HTTP_2, "ALPN chose h2");
        let spans = h.finished();
        let client = spans
            .iter()
            .find(|s| s.name == "http.client" && s.span_context.trace_id() == r.trace_id)
            .unwrap();
        assert_eq!(attr(client, "url.scheme").as_deref(), Some("https"));
        assert_eq!(
            attr(client, "http.response.status_code").as_deref(),
            Some("200")
        );
        let traceparent = seen[0].1.clone().unwrap();
        assert!(
            traceparent.contains(&client.span_context.span_id().to_string()),
            "{traceparent}"
        );

        // A certificate the roots do not vouch for.
        let url = format!("https://{bad}/ok");
        let r = plugin
            .reconcile(configmap_with_data("probe", &[("url", &url)]))
            .await;
        assert!(matches!(r.outcome, Outcome::Failed(_)), "{:?}", r.outcome);
        let spans = h.finished();
        let client = spans
            .iter()
            .find(|s| s.name == "http.client" && s.span_context.trace_id() == r.trace_id)
            .unwrap();
        assert_eq!(attr(client, "error.type").as_deref(), Some("tls_error"));
        assert!(bad_seen.lock().unwrap().is_empty());
    });
}
