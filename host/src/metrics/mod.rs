//! Prometheus metrics with controller-runtime's names, labels and buckets,
//! so that dashboards and alerts built for controller-runtime operators
//! work unchanged; the `controller` label is the plugin's name.
//!
//! [`Metrics`] is cheap to clone and does nothing when
//! [disabled](Metrics::disabled). [`server`] serves it (`/metrics`), as
//! OpenMetrics text (with exemplars) to a scraper that asks for it and as
//! Prometheus text 0.0.4 (without) to any other. [`rest`] counts the
//! host's API server requests.
//!
//! # What kube-runtime hides
//!
//! kube-runtime's scheduler is private: the host sees what enters it (watch
//! events, requeues, retries) and what it starts, but not what waits in it.
//! So `workqueue_depth` and `workqueue_queue_duration_seconds` are not
//! exported (a made-up value would mislead an alert), and
//! `workqueue_adds_total` counts triggers handed to the scheduler before
//! its deduplication (client-go counts an add to an item already queued
//! once, the host once per trigger).
//!
//! Labels are bounded: plugin names, verbs, outcomes, codes and error
//! types; never object names, namespaces or UIDs.

pub mod rest;
pub mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::{FailureKind, Outcome, Reconciled};
use crate::telemetry::Telemetry;

/// controller-runtime's `controller_runtime_reconcile_time_seconds` buckets.
pub const RECONCILE_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

/// client-go's `rest_client_request_duration_seconds` buckets.
pub const REST_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
];

/// client-go's workqueue duration buckets: 10 ns to 1000 s.
fn workqueue_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(10e-9, 10.0, 12)
}

/// Linear-memory peaks of one call: 64 KiB to 1 GiB.
fn memory_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(65536.0, 2.0, 15)
}

/// Settings of the metrics.
#[derive(Clone, Debug, Default)]
pub struct MetricsConfig {
    /// Register `rest_client_request_duration_seconds{verb,host}`, which
    /// controller-runtime no longer registers by default.
    pub rest_latency: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: String,
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
struct TraceLabel {
    trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    plugin: String,
    version: String,
    digest: String,
    contract: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    kind: &'static str,
    verb: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: String,
    error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;
type ExemplarHistogramFamily<S> =
    Family<S, HistogramWithExemplars<TraceLabel>, fn() -> HistogramWithExemplars<TraceLabel>>;

/// What a plugin call to the outside ended as: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// It succeeded.
    Ok,
    /// It failed (an error status, a network error, a timeout).
    Error,
    /// Refused: the grant has no room for it (nothing was sent), the
    /// destination is one the plugin may not reach, or the API server
    /// answered 403.
    AccessDenied,
}

impl CallOutcome {
    fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::AccessDenied => "access_denied",
        }
    }
}

/// The host's metrics. Cheap to clone; [`Metrics::disabled`] records nothing.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

struct Inner {
    registry: Registry,
    telemetry: Option<Telemetry>,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabel, CounterWithExemplar<TraceLabel>>,
    terminal_errors: Family<ControllerLabel, Counter>,
    panics: Family<ControllerLabel, Counter>,
    reconcile_time: ExemplarHistogramFamily<ControllerLabel>,
    max_concurrent: Family<ControllerLabel, Gauge>,
    active_workers: Family<ControllerLabel, Gauge>,
    adds: Family<QueueLabels, Counter>,
    retries: Family<QueueLabels, Counter>,
    work_duration: HistogramFamily<QueueLabels>,
    running: Arc<Running>,
    controllers: Mutex<HashMap<String, ControllerMetrics>>,
    plugins: Mutex<HashMap<String, PluginMetrics>>,
    rest: rest::RestMetrics,
    plugin_info: Family<InfoLabels, Gauge>,
    current_info: Mutex<HashMap<String, InfoLabels>>,
    plugin_calls: Family<CallLabels, Counter>,
    memory_peak: HistogramFamily<PluginLabel>,
    plugin_duration: HistogramFamily<PluginLabel>,
    failures: Family<FailureLabels, Counter>,
    loads: Family<ResultLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
}

/// When each running reconcile of one controller started, by id.
type Starts = Arc<Mutex<HashMap<u64, Instant>>>;

/// Reconciles running now, per controller, for the workqueue gauges.
#[derive(Debug, Default)]
struct Running {
    next: AtomicU64,
    started: Mutex<HashMap<String, Starts>>,
}

/// A reconcile counted as running until [`ControllerMetrics::finished`]
/// (or until dropped, if it is cut).
#[derive(Debug)]
pub struct Work {
    running: Option<(Starts, u64)>,
    active: Option<Gauge>,
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some((running, id)) = self.running.take() {
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        if let Some(active) = self.active.take() {
            active.dec();
        }
    }
}

/// The series of one controller, resolved once: a reconcile only touches
/// atomics and its histograms' locks. Cheap to clone; from
/// [`Metrics::controller`].
#[derive(Clone, Debug, Default)]
pub struct ControllerMetrics {
    inner: Option<Arc<ControllerInner>>,
}

#[derive(Debug)]
struct ControllerInner {
    name: String,
    metrics: Metrics,
    success: Counter,
    error: Counter,
    requeue_after: Counter,
    errors: CounterWithExemplar<TraceLabel>,
    terminal: Counter,
    panics: Counter,
    time: HistogramWithExemplars<TraceLabel>,
    max_concurrent: Gauge,
    active: Gauge,
    adds: Counter,
    retries: Counter,
    work_duration: Histogram,
    running: Starts,
    next: Arc<Running>,
}

impl ControllerMetrics {
    /// The controller runs with `concurrency` workers.
    pub fn started(&self, concurrency: u16) {
        if let Some(c) = &self.inner {
            c.max_concurrent.set(i64::from(concurrency));
        }
    }

    /// A trigger was handed to the controller's scheduler.
    pub fn queue_add(&self) {
        if let Some(c) = &self.inner {
            c.adds.inc();
        }
    }

    /// A reconcile starts.
    pub fn reconcile_started(&self) -> Work {
        let Some(c) = &self.inner else {
            return Work {
                running: None,
                active: None,
            };
        };
        c.active.inc();
        let id = c.next.next.fetch_add(1, Ordering::Relaxed);
        c.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
        Work {
            running: Some((c.running.clone(), id)),
            active: Some(c.active.clone()),
        }
    }

    /// A reconcile finished as `reconciled`; `retried` when the host
    /// retries it with backoff.
    pub fn reconcile_finished(&self, work: Work, reconciled: &Reconciled, retried: bool) {
        drop(work);
        let Some(c) = &self.inner else { return };
        let exemplar = c.metrics.exemplar(reconciled);
        let seconds = reconciled.duration.as_secs_f64();
        c.time.observe(seconds, exemplar.clone(), None);
        c.work_duration.observe(seconds);
        match &reconciled.outcome {
            Outcome::Done => c.success.inc(),
            Outcome::RequeueAfter(_) => c.requeue_after.inc(),
            Outcome::Failed(_) => c.error.inc(),
        };
        if let Outcome::Failed(failure) = &reconciled.outcome {
            // An exemplar-less increment would clear the last exemplar.
            match exemplar {
                Some(_) => {
                    c.errors.inc_by(1, exemplar, None);
                }
                None => {
                    prometheus_client::metrics::counter::Atomic::<u64>::inc(&*c.errors.inner());
                }
            }
            if !failure.retry {
                c.terminal.inc();
            }
            if failure.kind == FailureKind::Trap {
                c.panics.inc();
            }
            if let Some(inner) = &c.metrics.inner {
                inner
                    .failures
                    .get_or_create(&FailureLabels {
                        controller: c.name.clone(),
                        error_type: failure.kind.as_str(),
                    })
                    .inc();
            }
        }
        if retried {
            c.retries.inc();
        }
    }
}

impl Metrics {
    /// Metrics that record nothing.
    pub fn disabled() -> Self {
        Metrics { inner: None }
    }

    /// A registry of every metric of the host. `telemetry` (when given)
    /// supplies the span counts and tells which traces were retained.
    pub fn new(config: &MetricsConfig, telemetry: Option<Telemetry>) -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        let reconcile_errors =
            Family::<ControllerLabel, CounterWithExemplar<TraceLabel>>::default();
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        let terminal_errors = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "controller_runtime_terminal_reconcile_errors",
            "Total number of terminal reconciliation errors per controller",
            terminal_errors.clone(),
        );
        let panics = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller (plugin traps)",
            panics.clone(),
        );
        let reconcile_time: ExemplarHistogramFamily<ControllerLabel> =
            Family::new_with_constructor(|| {
                HistogramWithExemplars::new(RECONCILE_BUCKETS.iter().copied())
            });
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        let max_concurrent = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            max_concurrent.clone(),
        );
        let active_workers = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        let adds = Family::<QueueLabels, Counter>::default();
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue (triggers handed to kube-runtime's scheduler)",
            adds.clone(),
        );
        let retries = Family::<QueueLabels, Counter>::default();
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            retries.clone(),
        );
        let work_duration: HistogramFamily<QueueLabels> =
            Family::new_with_constructor(|| Histogram::new(workqueue_buckets()));
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            work_duration.clone(),
        );
        let running = Arc::new(Running::default());
        registry.register_collector(Box::new(RunningCollector(running.clone())));
        let rest = rest::RestMetrics::new(&mut registry, config.rest_latency);

        let host = registry.sub_registry_with_prefix("reconcile_host");
        let plugin_info = Family::<InfoLabels, Gauge>::default();
        host.register(
            "plugin_info",
            "The plugin versions loaded: 1 per version, labelled with its name, version, digest and contract",
            plugin_info.clone(),
        );
        let plugin_calls = Family::<CallLabels, Counter>::default();
        host.register(
            "plugin_calls",
            "Calls plugins made to the host API, by kind (k8s, http), verb and outcome (ok, error, access_denied)",
            plugin_calls.clone(),
        );
        let memory_peak: HistogramFamily<PluginLabel> =
            Family::new_with_constructor(|| Histogram::new(memory_buckets()));
        host.register(
            "plugin_memory_peak_bytes",
            "Largest linear memory of one plugin call",
            memory_peak.clone(),
        );
        let plugin_duration: HistogramFamily<PluginLabel> =
            Family::new_with_constructor(|| Histogram::new(RECONCILE_BUCKETS.iter().copied()));
        host.register(
            "plugin_duration_seconds",
            "Time of one plugin call: a fresh instance and its reconcile",
            plugin_duration.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        host.register(
            "reconcile_failures",
            "Failed reconciles by error type (trap, timeout, memory, plugin, k8s, http)",
            failures.clone(),
        );
        let loads = Family::<ResultLabel, Counter>::default();
        host.register(
            "plugin_loads",
            "Plugin files loaded, by result (success, failure)",
            loads.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        host.register(
            "plugin_reloads",
            "New versions of running plugins, by result (swapped, replaced, failure)",
            reloads.clone(),
        );
        let cache_hits = Counter::default();
        host.register(
            "compile_cache_hits",
            "Plugins loaded from the compile cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        host.register(
            "compile_cache_misses",
            "Plugins compiled (not in the compile cache)",
            cache_misses.clone(),
        );
        if let Some(telemetry) = &telemetry {
            host.register_collector(Box::new(SpanCollector(telemetry.clone())));
        }
        Metrics {
            inner: Some(Arc::new(Inner {
                registry,
                telemetry,
                reconcile_total,
                reconcile_errors,
                terminal_errors,
                panics,
                reconcile_time,
                max_concurrent,
                active_workers,
                adds,
                retries,
                work_duration,
                running,
                controllers: Mutex::default(),
                plugins: Mutex::default(),
                rest,
                plugin_info,
                current_info: Mutex::default(),
                plugin_calls,
                memory_peak,
                plugin_duration,
                failures,
                loads,
                reloads,
                cache_hits,
                cache_misses,
            })),
        }
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The text of a scrape: OpenMetrics (with exemplars) or Prometheus
    /// text 0.0.4 (without); `None` when disabled.
    pub fn encode(&self, openmetrics: bool) -> Option<Result<String, std::fmt::Error>> {
        let inner = self.inner.as_ref()?;
        let mut out = String::new();
        let result = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &inner.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &inner.registry)
        };
        Some(result.map(|()| out))
    }

    /// The request counters of the host's Kubernetes client.
    pub fn rest(&self) -> Option<rest::RestMetrics> {
        self.inner.as_ref().map(|i| i.rest.clone())
    }

    /// The series of `controller`, created (at zero, as controller-runtime's
    /// are) on first use.
    pub fn controller(&self, controller: &str) -> ControllerMetrics {
        let Some(inner) = &self.inner else {
            return ControllerMetrics::default();
        };
        let mut cache = inner.controllers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(controller) {
            return found.clone();
        }
        let label = ControllerLabel {
            controller: controller.to_owned(),
        };
        let result = |result| {
            inner
                .reconcile_total
                .get_or_create(&ResultLabels {
                    controller: controller.to_owned(),
                    result,
                })
                .clone()
        };
        let _ = result("requeue");
        let queue = queue_labels(controller);
        let running = inner
            .running
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(controller.to_owned())
            .or_default()
            .clone();
        let metrics = ControllerMetrics {
            inner: Some(Arc::new(ControllerInner {
                name: controller.to_owned(),
                metrics: self.clone(),
                success: result("success"),
                error: result("error"),
                requeue_after: result("requeue_after"),
                errors: inner.reconcile_errors.get_or_create(&label).clone(),
                terminal: inner.terminal_errors.get_or_create(&label).clone(),
                panics: inner.panics.get_or_create(&label).clone(),
                time: inner.reconcile_time.get_or_create(&label).clone(),
                max_concurrent: inner.max_concurrent.get_or_create(&label).clone(),
                active: inner.active_workers.get_or_create(&label).clone(),
                adds: inner.adds.get_or_create(&queue).clone(),
                retries: inner.retries.get_or_create(&queue).clone(),
                work_duration: inner.work_duration.get_or_create(&queue).clone(),
                running,
                next: inner.running.clone(),
            })),
        };
        cache.insert(controller.to_owned(), metrics.clone());
        metrics
    }

    /// The exemplar of a reconcile: its trace id, when the trace is
    /// exported (head-sampled, or retained).
    fn exemplar(&self, reconciled: &Reconciled) -> Option<TraceLabel> {
        let inner = self.inner.as_ref()?;
        let exported = match &inner.telemetry {
            Some(t) => {
                t.exports()
                    && (reconciled.sampled || t.retention().retained(reconciled.trace_id).is_some())
            }
            None => reconciled.sampled,
        };
        exported.then(|| TraceLabel {
            trace_id: reconciled.trace_id.to_string(),
        })
    }

    /// The call histograms of `plugin`, resolved once.
    pub fn plugin(&self, plugin: &str) -> PluginMetrics {
        let Some(inner) = &self.inner else {
            return PluginMetrics::default();
        };
        let mut cache = inner.plugins.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(plugin.to_owned())
            .or_insert_with(|| {
                let label = PluginLabel {
                    plugin: plugin.to_owned(),
                };
                PluginMetrics {
                    inner: Some((
                        inner.memory_peak.get_or_create(&label).clone(),
                        inner.plugin_duration.get_or_create(&label).clone(),
                    )),
                }
            })
            .clone()
    }

    /// A call the plugin made to the host API.
    pub fn host_call(
        &self,
        plugin: &str,
        kind: &'static str,
        verb: &'static str,
        outcome: CallOutcome,
    ) {
        if let Some(inner) = &self.inner {
            inner
                .plugin_calls
                .get_or_create(&CallLabels {
                    plugin: plugin.to_owned(),
                    kind,
                    verb,
                    outcome: outcome.as_str(),
                })
                .inc();
        }
    }

    /// A plugin was compiled (`false`) or read from the compile cache.
    pub fn compiled(&self, cached: bool) {
        if let Some(inner) = &self.inner {
            if cached {
                inner.cache_hits.inc();
            } else {
                inner.cache_misses.inc();
            }
        }
    }

    /// A plugin file was loaded, or failed to.
    pub fn plugin_load(&self, success: bool) {
        if let Some(inner) = &self.inner {
            let result = if success { "success" } else { "failure" };
            inner.loads.get_or_create(&ResultLabel { result }).inc();
        }
    }

    /// A new version of a running plugin: `swapped`, `replaced` or `failure`.
    pub fn plugin_reload(&self, result: &'static str) {
        if let Some(inner) = &self.inner {
            inner.reloads.get_or_create(&ResultLabel { result }).inc();
        }
    }

    /// `plugin` is the version of its name that runs now (`None`: `name`
    /// runs no more): `reconcile_host_plugin_info` has one series per
    /// running version.
    pub fn plugin_current(&self, name: &str, plugin: Option<&crate::engine::Plugin>) {
        let Some(inner) = &self.inner else { return };
        let mut current = inner.current_info.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.remove(name) {
            inner.plugin_info.remove(&old);
        }
        if let Some(plugin) = plugin {
            let m = plugin.metadata();
            let labels = InfoLabels {
                plugin: m.name.clone(),
                version: m.version.clone(),
                digest: plugin.digest().to_owned(),
                contract: format!("reconcile:plugin@{}", plugin.wit_version()),
            };
            inner.plugin_info.get_or_create(&labels).set(1);
            current.insert(name.to_owned(), labels);
        }
    }

    /// A controller stopped: its gauges go.
    pub fn controller_stopped(&self, controller: &str) {
        if let Some(inner) = &self.inner {
            let label = ControllerLabel {
                controller: controller.to_owned(),
            };
            inner.max_concurrent.remove(&label);
            inner.active_workers.remove(&label);
            inner
                .controllers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(controller);
            inner
                .running
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(controller);
        }
    }
}

/// `plugin_memory_peak_bytes` and `plugin_duration_seconds` of one plugin.
#[derive(Clone, Debug, Default)]
pub struct PluginMetrics {
    inner: Option<(Histogram, Histogram)>,
}

impl PluginMetrics {
    /// One call: `peak` bytes of linear memory, `took` in all.
    pub fn call(&self, peak: usize, took: Duration) {
        if let Some((memory, duration)) = &self.inner {
            memory.observe(peak as f64);
            duration.observe(took.as_secs_f64());
        }
    }
}

fn queue_labels(controller: &str) -> QueueLabels {
    QueueLabels {
        name: controller.to_owned(),
        controller: controller.to_owned(),
    }
}

/// `workqueue_unfinished_work_seconds` and
/// `workqueue_longest_running_processor_seconds`, from the reconciles
/// running at the scrape.
#[derive(Debug)]
struct RunningCollector(Arc<Running>);

impl Collector for RunningCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let figures: Vec<(String, f64, f64)> = {
            let started = self.0.started.lock().unwrap_or_else(|e| e.into_inner());
            let mut figures: Vec<(String, f64, f64)> = started
                .iter()
                .map(|(controller, ids)| {
                    let ids = ids.lock().unwrap_or_else(|e| e.into_inner());
                    let ages = ids.values().map(|at| now.duration_since(*at).as_secs_f64());
                    let (sum, max) = ages.fold((0.0, 0.0f64), |(s, m), a| (s + a, m.max(a)));
                    (controller.clone(), sum, max)
                })
                .collect();
            figures.sort_by(|a, b| a.0.cmp(&b.0));
            figures
        };
        let mut unfinished = encoder.encode_descriptor(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by work_duration",
            None,
            MetricType::Gauge,
        )?;
        for (controller, sum, _) in &figures {
            ConstGauge::new(*sum).encode(unfinished.encode_family(&queue_labels(controller))?)?;
        }
        let mut longest = encoder.encode_descriptor(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            None,
            MetricType::Gauge,
        )?;
        for (controller, _, max) in &figures {
            ConstGauge::new(*max).encode(longest.encode_family(&queue_labels(controller))?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The span counts of the telemetry, read at the scrape.
struct SpanCollector(Telemetry);

impl std::fmt::Debug for SpanCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanCollector")
    }
}

impl Collector for SpanCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let telemetry = &self.0;
        let retention = telemetry.retention();
        let exported = encoder.encode_descriptor(
            "spans_exported",
            "Spans the exporter delivered",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(telemetry.exported_spans()).encode(exported)?;
        let mut dropped = encoder.encode_descriptor(
            "spans_dropped",
            "Spans lost: the exporter failed (export), or the retention buffer was full (retention_buffer)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("export", telemetry.dropped_spans()),
            ("retention_buffer", retention.spans_dropped()),
        ] {
            ConstCounter::new(n).encode(dropped.encode_family(&ReasonLabel { reason })?)?;
        }
        let mut retained = encoder.encode_descriptor(
            "traces_retained",
            "Traces the head sampler did not pick, exported whole because their root failed (error) or was slow (slow)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("error", retention.kept_errors()),
            ("slow", retention.kept_slow()),
        ] {
            ConstCounter::new(n).encode(retained.encode_family(&ReasonLabel { reason })?)?;
        }
        let discarded = encoder.encode_descriptor(
            "traces_discarded",
            "Traces recorded for retention and dropped at their root's end (neither failed nor slow)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(retention.discarded()).encode(discarded)?;
        let buffered = encoder.encode_descriptor(
            "retention_buffered_spans",
            "Spans waiting in the retention buffer for their root to end",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(retention.buffered() as i64).encode(buffered)?;
        Ok(())
    }
}
