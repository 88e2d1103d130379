//! `/healthz` and `/readyz` (`--health-probe-bind-address`, `:8081` by
//! default, as controller-runtime's).
//!
//! - **Ready**: the plugin directory has been read, every running
//!   controller's caches have synced, the host is not stopping, and, with
//!   leader election or sharding, the last round with the Lease API went
//!   through within the lease duration (leading or a healthy standby). The
//!   trace exporter plays no part: a collector that is down changes nothing.
//! - **Live**: fails only when the host is wedged: the async runtime has
//!   not run its heartbeat for 30 s, or a reconcile has run a minute past
//!   its deadline (the deadline interrupts the plugin and bounds its
//!   calls, so a worker that outlives it is stuck).
//!
//! The endpoints are served from a thread of their own, so that they can
//! say the runtime is wedged when it is.
//!
//! A probe answers 200 `ok` or 503 with one `[-]` line per failed check
//! (`?verbose` lists the passed ones too, as `[+]` lines).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::operator::Activity;

/// How stale the runtime's heartbeat may be before liveness fails.
pub const HEARTBEAT_STALL: Duration = Duration::from_secs(30);

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the probes look at.
pub struct Health {
    activity: Arc<Activity>,
    loaded: AtomicBool,
    stopping: AtomicBool,
    coordination: Mutex<Option<Check>>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the runtime's last heartbeat.
    beat: AtomicU64,
}

impl Health {
    /// Health of the host whose controllers report to `activity`.
    pub fn new(activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(Health {
            activity,
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            coordination: Mutex::new(None),
            epoch: Instant::now(),
            beat: AtomicU64::new(0),
        })
    }

    /// The plugin directory has been read and its controllers started.
    pub fn loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// The host is stopping: not ready any more.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Leader election or sharding: ready only while `check` is `Ok`.
    pub fn coordinated(&self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        *self.coordination.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(check));
    }

    fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beat.store(ms, Ordering::SeqCst);
    }

    /// Beats once a second on the current runtime until dropped with it.
    pub fn heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                health.beat();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// The readiness checks: name and outcome.
    pub fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let unsynced = self.activity.unsynced();
        let coordination = match &*self.coordination.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(check) => check(),
            None => Ok(()),
        };
        vec![
            (
                "plugins",
                if self.loaded.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("the plugin directory has not been read yet".to_owned())
                },
            ),
            (
                "caches",
                if unsynced.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not synced yet: {}", unsynced.join(", ")))
                },
            ),
            ("leases", coordination),
            (
                "shutdown",
                if self.stopping.load(Ordering::SeqCst) {
                    Err("stopping".to_owned())
                } else {
                    Ok(())
                },
            ),
        ]
    }

    /// The liveness checks.
    pub fn liveness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let last = Duration::from_millis(self.beat.load(Ordering::SeqCst));
        let age = self.epoch.elapsed().saturating_sub(last);
        let stuck = self.activity.stuck();
        vec![
            (
                "runtime",
                if age <= HEARTBEAT_STALL {
                    Ok(())
                } else {
                    Err(format!(
                        "the async runtime has not run for {}s",
                        age.as_secs()
                    ))
                },
            ),
            (
                "workers",
                if stuck.is_empty() {
                    Ok(())
                } else {
                    Err(stuck.join("; "))
                },
            ),
        ]
    }
}

/// The running endpoints; they stop when this is dropped.
pub struct ProbeServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl ProbeServer {
    /// Serves the probes of `health` on `addr`, from a thread of its own.
    pub fn start(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("probes".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let task = crate::serve::spawn(listener, move |request| {
                        let response = answer(&request, &health);
                        async move { response }
                    });
                    let _ = stopped.await;
                    task.abort();
                });
            })?;
        Ok(ProbeServer {
            addr,
            stop: Some(stop),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (a wildcard address shown as loopback).
    pub fn url(&self) -> String {
        crate::serve::base_url(self.addr)
    }
}

fn answer<B>(request: &http::Request<B>, health: &Health) -> http::Response<Full<Bytes>> {
    let checks = match request.uri().path() {
        "/readyz" => Some(health.readiness()),
        "/healthz" | "/livez" => Some(health.liveness()),
        _ => None,
    };
    let verbose = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let (code, body) = match checks {
        None => (404, "not found: try /healthz or /readyz\n".to_owned()),
        Some(checks) => {
            let failed = checks.iter().any(|(_, r)| r.is_err());
            let mut body = String::new();
            for (name, result) in &checks {
                match result {
                    Err(why) => body.push_str(&format!("[-]{name} failed: {why}\n")),
                    Ok(()) if verbose => body.push_str(&format!("[+]{name} ok\n")),
                    Ok(()) => {}
                }
            }
            if failed {
                (503, body)
            } else {
                body.push_str("ok\n");
                (200, body)
            }
        }
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    if let Ok(status) = http::StatusCode::from_u16(code) {
        *response.status_mut() = status;
    }
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn get(health: &Health, path: &str) -> (u16, String) {
        let request = http::Request::get(path).body(()).unwrap();
        let response = answer(&request, health);
        let code = response.status().as_u16();
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .unwrap()
                .to_bytes();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn ready_once_loaded_and_healthy_coordination_and_not_while_stopping() {
        let health = Health::new(Arc::default());
        health.beat();
        let (code, body) = get(&health, "/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("[-]plugins failed"), "{body}");
        health.loaded();
        assert_eq!(get(&health, "/readyz").0, 200);
        let (code, body) = get(&health, "/readyz?verbose");
        assert_eq!(code, 200);
        assert!(body.contains("[+]caches ok"), "{body}");
        health.coordinated(|| Err("leases: unreachable".into()));
        let (code, body) = get(&health, "/readyz");
        assert_eq!(code, 503);
        assert!(
            body.contains("[-]leases failed: leases: unreachable"),
            "{body}"
        );
        health.coordinated(|| Ok(()));
        assert_eq!(get(&health, "/readyz").0, 200);
        health.stopping();
        assert_eq!(get(&health, "/readyz").0, 503);
        // Liveness is not readiness.
        assert_eq!(get(&health, "/healthz").0, 200);
        assert_eq!(get(&health, "/other").0, 404);
    }

    #[test]
    fn liveness_fails_when_the_heartbeat_stalls() {
        let health = Health::new(Arc::default());
        health.beat();
        assert_eq!(get(&health, "/healthz").0, 200);
        // A beat 31 s before now.
        let health = Health {
            epoch: Instant::now() - Duration::from_secs(31),
            ..Arc::into_inner(Health::new(Arc::default())).unwrap()
        };
        let (code, body) = get(&health, "/healthz");
        assert_eq!(code, 503);
        assert!(body.contains("[-]runtime failed"), "{body}");
    }
}
