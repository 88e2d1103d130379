//! `uptime`: reconciles an `UptimeCheck` (group `demo.reconcile.dev`) by
//! GETting `spec.url` every `spec.intervalSeconds`.
//!
//! Each check writes `status.lastStatusCode` (absent when there was no
//! answer), `status.latencyMs`, `status.lastCheckTime` and an `Available`
//! condition (`True` for an answer below 400), records an Event when
//! availability changes, and requeues itself after the interval. The GET
//! goes through the host's `wasi:http`: it is an `http.client` span under
//! the `reconcile` span, carries `traceparent`, and reaches only what the
//! plugin's grant allows (the plugin asks for any name over http and https;
//! an IP address or a private network must be granted by the operator).
//!
//! The plugin's own status write wakes it again; it tells that from a spec
//! change by the object's generation, and then waits for the rest of the
//! interval instead of checking again.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::CustomResource;
use reconcile_sdk::events::{EventType, record};
use reconcile_sdk::http;
use reconcile_sdk::k8s::Patch;
use reconcile_sdk::prelude::*;
use reconcile_sdk::status::{condition, generation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What to check.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "demo.reconcile.dev",
    version = "v1alpha1",
    kind = "UptimeCheck",
    plural = "uptimechecks",
    namespaced,
    status = "UptimeCheckStatus",
    shortname = "uptime"
)]
#[serde(rename_all = "camelCase")]
pub struct UptimeCheckSpec {
    /// The http(s) URL to GET.
    pub url: String,
    /// Seconds between two checks (default 60).
    pub interval_seconds: Option<u64>,
    /// Seconds to wait for an answer (default 5).
    pub timeout_seconds: Option<u64>,
}

/// What the last check found.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UptimeCheckStatus {
    /// The generation last checked.
    pub observed_generation: Option<i64>,
    /// The status code of the last answer; `None` when there was none.
    pub last_status_code: Option<u16>,
    /// Milliseconds the last check took.
    pub latency_ms: Option<u64>,
    /// When the last check ran.
    pub last_check_time: Option<Time>,
    /// `Available`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

const NAME: &str = "uptime";
const DEFAULT_INTERVAL: u64 = 60;
const DEFAULT_TIMEOUT: u64 = 5;

/// The reconciler.
pub struct Uptime;

/// What one GET found.
struct Check {
    code: Option<u16>,
    latency: Duration,
    available: bool,
    reason: &'static str,
    message: String,
}

fn check(url: &str, timeout: Duration) -> Check {
    let started = Instant::now();
    let result = http::Request::get(url).timeout(timeout).send();
    let latency = started.elapsed();
    match result {
        Ok(response) => {
            let code = response.status();
            let available = code < 400;
            Check {
                code: Some(code),
                latency,
                available,
                reason: if available { "Up" } else { "Down" },
                message: format!("GET answered {code} in {} ms", latency.as_millis()),
            }
        }
        Err(e) => Check {
            code: None,
            latency,
            available: false,
            reason: match e.kind() {
                http::ErrorKind::Denied => "Denied",
                http::ErrorKind::Timeout => "Timeout",
                _ => "Unreachable",
            },
            message: if e.kind() == http::ErrorKind::Denied {
                format!("{e}: the plugin's grant does not allow this URL")
            } else {
                e.to_string()
            },
        },
    }
}

/// Time left of the interval since the last check, when the object is
/// unchanged since (the wake-up of the plugin's own status write).
fn rest_of_interval(
    request: &Request,
    status: Option<&UptimeCheckStatus>,
    interval: Duration,
) -> Option<Duration> {
    if matches!(request.reason(), Reason::Requeue | Reason::Retry) {
        return None;
    }
    let status = status?;
    if status.observed_generation.is_none() || status.observed_generation != request.generation() {
        return None;
    }
    let last = status.last_check_time.as_ref()?;
    let elapsed = Timestamp::now().duration_since(last.0);
    let elapsed = Duration::try_from(elapsed).unwrap_or_default();
    interval.checked_sub(elapsed).filter(|d| !d.is_zero())
}

impl Reconciler for Uptime {
    fn metadata() -> Metadata {
        Metadata::new(NAME, env!("CARGO_PKG_VERSION"))
            .reconciles::<UptimeCheck>()
            .access::<UptimeCheck>(&[Verb::Patch])
            .records_events()
            .http_host("http://*:*")
            .http_host("https://*:*")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(uptime) = request.object::<UptimeCheck>()? else {
            return Ok(Action::Done);
        };
        let interval = Duration::from_secs(
            uptime
                .spec
                .interval_seconds
                .unwrap_or(DEFAULT_INTERVAL)
                .clamp(1, 86_400),
        );
        if let Some(rest) = rest_of_interval(&request, uptime.status.as_ref(), interval) {
            debug!(wait_ms = rest.as_millis() as u64; "checked less than an interval ago");
            return Ok(Action::RequeueAfter(rest));
        }
        let url = uptime.spec.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::permanent(format!(
                "spec.url {url:?} is not an http or https URL"
            )));
        }
        let timeout = Duration::from_secs(
            uptime
                .spec
                .timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT)
                .clamp(1, 60),
        );
        let found = check(url, timeout);
        set_attribute("uptime.available", found.available);
        let mut conditions = uptime
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let changed = conditions.set(condition(
            "Available",
            found.available,
            found.reason,
            &found.message,
            generation(&uptime),
        ));
        let status = UptimeCheckStatus {
            observed_generation: generation(&uptime),
            last_status_code: found.code,
            latency_ms: Some(u64::try_from(found.latency.as_millis()).unwrap_or(u64::MAX)),
            last_check_time: Some(reconcile_sdk::status::now()),
            conditions,
        };
        let namespace = uptime.namespace().unwrap_or_else(|| "default".into());
        Api::<UptimeCheck>::namespaced(&namespace).patch_status(
            &uptime.name_any(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )?;
        if changed {
            let type_ = if found.available {
                EventType::Normal
            } else {
                EventType::Warning
            };
            record(&uptime, NAME, type_, found.reason, "Check", &found.message)?;
        }
        info!(url = url, code = found.code.map_or(0, i64::from), available = found.available; "checked");
        Ok(Action::RequeueAfter(interval))
    }
}

reconcile_sdk::plugin!(Uptime);
