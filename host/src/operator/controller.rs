//! One kube-runtime `Controller` per plugin.
//!
//! The controller watches the plugin's primary type and, through reflectors
//! of its own, every owned type (their stores serve the plugin's reads).
//! Each reconcile runs the plugin in a fresh instance inside the
//! `reconcile` root span, with the host-managed finalizer added before it
//! and removed after a successful `deleting` reconcile. Errors are retried
//! with capped exponential backoff; `reconcile.reason` and
//! `reconcile.attempt` come from per-object bookkeeping.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use futures::{FutureExt as _, StreamExt};
use kube::ResourceExt as _;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::ObjectRef as KubeRef;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use serde_json::{Value, json};

use super::backend::{Cache, KubeBackend, Ready, api_resource};
use super::watch::{Namespaces, watch_in};
use crate::caps::k8s::{CallContext, K8sBackend, K8sCall, K8sErrorKind, K8sOp, ResourceType};
use crate::engine::Plugin;
use crate::reconcile::{
    Failure, FailureKind, ObjectRef, Outcome, Previous, Reason, ReconcileRequest, Reconciled,
};

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// Reconciles of one plugin at once, unless its grant says otherwise.
    pub concurrency: u16,
    /// First retry delay after an error; it doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long shutdown waits for running reconciles before cutting them.
    pub shutdown_grace: Duration,
    /// After a plugin is swapped for a new version, how many of its objects
    /// per second are requeued (`plugin_reloaded`).
    pub reload_rate: f64,
    /// Which objects this process may reconcile now (leader election,
    /// sharding); everything by default.
    pub ownership: crate::lease::Ownership,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            concurrency: 4,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(25),
            reload_rate: 100.0,
            ownership: crate::lease::Ownership::everything(),
        }
    }
}

impl ControllerSettings {
    /// The wait before the retry after `failures` consecutive failures:
    /// the base, doubled per failure after the first, capped at the max.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

type Key = (String, String, String);

/// What the controllers are doing, for `--exit-when-idle` and for tests.
#[derive(Debug, Default)]
pub struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Debug)]
struct ActivityState {
    /// Controllers whose caches have not synced yet.
    starting: usize,
    /// Running reconciles, per plugin.
    running: HashMap<String, usize>,
    /// Reconciles cut by a shutdown.
    cut: u64,
    retrying: HashSet<Key>,
    failed: HashMap<Key, String>,
    /// Plugin files that did not load, with the reason.
    loads: HashMap<String, String>,
    reconciles: u64,
    last_change: Instant,
    /// Controllers running whose caches have not synced yet.
    syncing: std::collections::BTreeSet<String>,
    /// Running reconciles: plugin, start, and how long it may take.
    runs: HashMap<u64, (String, Instant, Duration)>,
    next_run: u64,
}

impl Default for ActivityState {
    fn default() -> Self {
        ActivityState {
            starting: 0,
            running: HashMap::new(),
            cut: 0,
            retrying: HashSet::new(),
            failed: HashMap::new(),
            loads: HashMap::new(),
            reconciles: 0,
            last_change: Instant::now(),
            syncing: std::collections::BTreeSet::new(),
            runs: HashMap::new(),
            next_run: 0,
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A controller is starting: not idle until it has synced.
    pub(crate) fn starting(&self) {
        let mut s = self.lock();
        s.starting += 1;
        s.last_change = Instant::now();
    }

    /// A controller has synced its caches, or given up.
    fn started(&self) {
        let mut s = self.lock();
        s.starting = s.starting.saturating_sub(1);
        s.last_change = Instant::now();
    }

    /// A problem of a whole controller (not of one object).
    fn controller_failed(&self, plugin: &str, message: String) {
        let mut s = self.lock();
        s.failed
            .insert((plugin.to_owned(), String::new(), String::new()), message);
        s.last_change = Instant::now();
    }

    /// A plugin file did not load (`None`: it loaded, or is gone).
    pub fn load_result(&self, file: &str, failure: Option<String>) {
        let mut s = self.lock();
        match failure {
            Some(message) => s.loads.insert(file.to_owned(), message),
            None => s.loads.remove(file),
        };
        s.last_change = Instant::now();
    }

    /// Forgets everything about a plugin that stopped.
    pub(crate) fn forget_plugin(&self, plugin: &str) {
        let mut s = self.lock();
        s.failed.retain(|(p, _, _), _| p != plugin);
        s.retrying.retain(|(p, _, _)| p != plugin);
        s.running.remove(plugin);
        s.syncing.remove(plugin);
        s.runs.retain(|_, (p, _, _)| p != plugin);
        s.last_change = Instant::now();
    }

    /// The keys of `plugin`'s objects that failed or wait for a retry.
    fn keys_of(&self, plugin: &str) -> Vec<Key> {
        let s = self.lock();
        s.failed
            .keys()
            .chain(s.retrying.iter())
            .filter(|(p, ns, n)| p == plugin && !(ns.is_empty() && n.is_empty()))
            .cloned()
            .collect()
    }

    /// A running controller lists its caches; `false` when done (or stopped).
    pub(crate) fn syncing(&self, plugin: &str, syncing: bool) {
        let mut s = self.lock();
        if syncing {
            s.syncing.insert(plugin.to_owned());
        } else {
            s.syncing.remove(plugin);
        }
    }

    /// The controllers whose caches have not synced yet.
    pub fn unsynced(&self) -> Vec<String> {
        self.lock().syncing.iter().cloned().collect()
    }

    /// A reconcile of `plugin` starts; it should end within `allowed`.
    fn begin(&self, plugin: &str, allowed: Duration) -> u64 {
        let mut s = self.lock();
        *s.running.entry(plugin.to_owned()).or_default() += 1;
        s.last_change = Instant::now();
        s.next_run += 1;
        let id = s.next_run;
        s.runs
            .insert(id, (plugin.to_owned(), Instant::now(), allowed));
        id
    }

    /// Reconciles running longer than they may (their deadline interrupts
    /// the plugin and bounds its calls): a worker is stuck.
    pub fn stuck(&self) -> Vec<String> {
        self.stuck_at(Instant::now())
    }

    fn stuck_at(&self, now: Instant) -> Vec<String> {
        let s = self.lock();
        let mut stuck: Vec<String> = s
            .runs
            .values()
            .filter(|(_, start, allowed)| now.saturating_duration_since(*start) > *allowed)
            .map(|(plugin, start, _)| {
                format!(
                    "a reconcile of {plugin} has run for {}s",
                    now.saturating_duration_since(*start).as_secs()
                )
            })
            .collect();
        stuck.sort();
        stuck
    }

    fn end(&self, run: u64, key: Key, failure: Option<&Failure>) {
        let mut s = self.lock();
        s.runs.remove(&run);
        if let Some(running) = s.running.get_mut(&key.0) {
            *running = running.saturating_sub(1);
        }
        s.reconciles += 1;
        s.last_change = Instant::now();
        match failure {
            Some(f) => {
                s.failed.insert(key.clone(), f.to_string());
                if f.retry {
                    s.retrying.insert(key);
                } else {
                    s.retrying.remove(&key);
                }
            }
            None => {
                s.failed.remove(&key);
                s.retrying.remove(&key);
            }
        }
    }

    fn forget(&self, key: &Key) {
        let mut s = self.lock();
        s.retrying.remove(key);
        s.failed.remove(key);
        s.last_change = Instant::now();
    }

    /// Nothing running or waiting for a retry, for at least `quiet`.
    pub fn idle_for(&self, quiet: Duration) -> bool {
        let s = self.lock();
        s.starting == 0
            && s.running.values().all(|r| *r == 0)
            && s.retrying.is_empty()
            && s.last_change.elapsed() >= quiet
    }

    /// Objects whose latest reconcile failed, with the failure.
    pub fn failures(&self) -> Vec<(String, String)> {
        let s = self.lock();
        let mut out: Vec<(String, String)> = s
            .failed
            .iter()
            .map(|((p, ns, n), f)| {
                let what = match (ns.is_empty(), n.is_empty()) {
                    (true, true) => format!("{p}: controller"),
                    (true, false) => format!("{p}: {n}"),
                    _ => format!("{p}: {ns}/{n}"),
                };
                (what, f.clone())
            })
            .chain(
                s.loads
                    .iter()
                    .map(|(file, f)| (format!("{file}: load"), f.clone())),
            )
            .collect();
        out.sort();
        out
    }

    /// `plugin`'s reconciles still running, now cut by a shutdown: how many.
    fn cut_running(&self, plugin: &str) -> usize {
        let mut s = self.lock();
        let cut = s.running.remove(plugin).unwrap_or_default();
        s.runs.retain(|_, (p, _, _)| p != plugin);
        s.cut += cut as u64;
        cut
    }

    /// Reconciles cut by a shutdown past its grace.
    pub fn cut(&self) -> u64 {
        self.lock().cut
    }

    /// Reconciles running now.
    pub fn running(&self) -> usize {
        self.lock().running.values().sum()
    }

    /// Reconciles finished so far.
    pub fn reconciles(&self) -> u64 {
        self.lock().reconciles
    }
}

#[derive(Debug, Default, Clone)]
struct ObjectState {
    last_version: Option<String>,
    failures: u32,
    /// Whether the latest failure is one the host retries.
    retrying: bool,
    requeued: bool,
    /// The plugin version (see [`Objects`]) that last reconciled it.
    generation: u64,
    /// The plugin version of the reconcile that started last (it may be
    /// running).
    started_generation: u64,
    /// The root span of its latest reconcile, linked from the next one,
    /// and the UID of the object it reconciled (an object deleted and
    /// made again under the same name has a history of its own).
    previous: Option<(Option<String>, Previous)>,
}

/// What a controller knows of its objects, handed to the controller that
/// replaces it: the objects the old version reconciled are reconciled by
/// the new one with `plugin_reloaded`.
#[derive(Debug, Default)]
pub struct Objects {
    states: HashMap<(String, String), ObjectState>,
    /// The version of the plugin that ran last; every swap adds one.
    generation: u64,
}

impl Objects {
    /// A new version takes over: what the old one reconciled counts as
    /// reconciled by an older version.
    pub(crate) fn next_version(&mut self) {
        self.generation += 1;
    }
}

/// The current version of a controller's plugin.
struct Version {
    plugin: Plugin,
    generation: u64,
}

/// A failed reconcile, as the controller's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileFailed(Failure);

struct Context {
    name: String,
    /// Swapped by a reload; a running reconcile keeps the one it loaded.
    current: ArcSwap<Version>,
    backend: Arc<dyn K8sBackend>,
    primary: ResourceType,
    finalizer: Option<String>,
    settings: ControllerSettings,
    objects: Mutex<HashMap<(String, String), ObjectState>>,
    activity: Arc<Activity>,
    store: reflector::Store<DynamicObject>,
    metrics: crate::metrics::ControllerMetrics,
}

fn key_of(obj: &DynamicObject) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Context {
    fn state(&self, key: &(String, String)) -> ObjectState {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, key: (String, String), f: impl FnOnce(&mut ObjectState)) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        f(objects.entry(key).or_default());
    }

    /// Forgets an object that no longer exists.
    fn forget(&self, namespace: &str, name: &str) {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
        self.activity
            .forget(&(self.name.clone(), namespace.to_owned(), name.to_owned()));
    }

    /// Forgets the failures of objects gone from the store (a failure that
    /// is not retried would otherwise outlive its object).
    fn sweep(&self) {
        let present: HashSet<(String, String)> =
            self.store.state().iter().map(|o| key_of(o)).collect();
        // What it knew of them too (their previous reconcile, say).
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| present.contains(key));
        for (_, namespace, name) in self.activity.keys_of(&self.name) {
            if !present.contains(&(namespace.clone(), name.clone())) {
                self.forget(&namespace, &name);
            }
        }
    }

    /// Drops the state of objects gone from the store, once the map has
    /// grown well past the store (deleted objects are not reconciled again).
    fn prune(&self) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if objects.len() <= self.store.len().saturating_mul(2) + 64 {
            return;
        }
        let present: HashSet<(String, String)> =
            self.store.state().iter().map(|o| key_of(o)).collect();
        objects.retain(|key, _| present.contains(key));
    }

    fn backoff(&self, failures: u32) -> Duration {
        self.settings.backoff(failures)
    }

    /// Why this reconcile happens, and which attempt it is.
    fn reason(
        &self,
        obj: &DynamicObject,
        state: &ObjectState,
        deleting: bool,
        generation: u64,
    ) -> (Reason, u32) {
        let attempt = state.failures + 1;
        if deleting {
            return (Reason::Deleting, attempt);
        }
        let changed = state.last_version != obj.resource_version();
        // Why it runs now, even for an object waiting for a retry.
        if state.last_version.is_some() && state.generation != generation {
            return (Reason::PluginReloaded, attempt);
        }
        if state.failures > 0 && state.retrying && !changed {
            return (Reason::Retry, attempt);
        }
        if changed {
            return (Reason::ObjectChanged, attempt);
        }
        if state.requeued {
            return (Reason::Requeue, attempt);
        }
        (Reason::OwnedObjectChanged, attempt)
    }

    /// A JSON patch on the primary object, made by the host; the object as
    /// the API server returned it.
    async fn patch_finalizers(
        &self,
        plugin: &Plugin,
        obj: &DynamicObject,
        patch: Value,
        root: &opentelemetry::Context,
    ) -> Result<Option<String>, Failure> {
        let call = K8sCall {
            resource: self.primary.clone(),
            namespace: obj.namespace(),
            name: Some(obj.name_any()),
            status: false,
            op: K8sOp::JsonPatch {
                body: patch.to_string(),
            },
        };
        let deadline = Instant::now() + plugin.limits().deadline;
        let cx = CallContext {
            otel: root.clone(),
            deadline,
        };
        self.backend
            .call(call, &cx)
            .await
            .map(|r| r.body)
            .map_err(|e| Failure {
                kind: FailureKind::K8s,
                message: format!("cannot update the finalizers of {}: {e}", obj.name_any()),
                retry: true,
            })
    }
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileFailed> {
    // Not this replica's (a standby, another shard): the holder reconciles
    // it, and if this replica takes it over it is requeued then.
    let (namespace, name) = key_of(&obj);
    let Some(_held) = ctx.settings.ownership.begin(&namespace, &name) else {
        return Ok(Action::await_change());
    };
    let step = reconcile_step(obj, &ctx).await;
    match step.failure {
        Some(failure) => Err(ReconcileFailed(failure)),
        None => Ok(match step.next {
            Next::AwaitChange => Action::await_change(),
            Next::After(after) => Action::requeue(after),
        }),
    }
}

/// What the controller does with an object after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing until it (or an object it owns) changes.
    AwaitChange,
    /// Reconcile it again after this long (a requeue, or a retry's backoff).
    After(Duration),
}

/// One reconcile of one object, as the controller ran it.
#[derive(Clone, Debug)]
pub struct Step {
    /// The plugin's call; `None` when the host had nothing for it to do
    /// (an object being deleted without the plugin's finalizer).
    pub reconciled: Option<Reconciled>,
    /// The failure, if the reconcile failed.
    pub failure: Option<Failure>,
    /// What comes next.
    pub next: Next,
}

/// One plugin's reconciles driven by a caller instead of a kube-runtime
/// controller: the plugin test harness steps them one at a time on its own
/// clock. Reasons, attempts, the finalizer and the backoff are the
/// controller's own.
pub struct Driver {
    ctx: Arc<Context>,
}

impl Driver {
    /// `plugin` (its grant set) calling through `backend`; `store` is the
    /// cache of its primary type, which the caller keeps filled.
    pub fn new(
        plugin: &Plugin,
        backend: Arc<dyn K8sBackend>,
        store: reflector::Store<DynamicObject>,
        settings: ControllerSettings,
    ) -> Self {
        let metadata = plugin.metadata();
        Driver {
            ctx: Arc::new(Context {
                name: metadata.name.clone(),
                current: ArcSwap::from_pointee(Version {
                    plugin: plugin.with_backend(backend.clone()),
                    generation: 0,
                }),
                backend,
                primary: metadata.primary.clone(),
                finalizer: metadata.finalizer.clone(),
                settings,
                objects: Mutex::default(),
                activity: Arc::default(),
                store,
                metrics: plugin.metrics().controller(&metadata.name),
            }),
        }
    }

    /// Reconciles `obj` once.
    pub async fn reconcile(&self, obj: Arc<DynamicObject>) -> Step {
        reconcile_step(obj, &self.ctx).await
    }

    /// Forgets an object that is gone (its failures and versions).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.ctx.forget(namespace, name);
    }
}

/// The reconcile of `obj` (reason, attempt, finalizer, the plugin's call,
/// its bookkeeping) and what the controller does next.
async fn reconcile_step(obj: Arc<DynamicObject>, ctx: &Context) -> Step {
    let key = key_of(&obj);
    let activity_key = (ctx.name.clone(), key.0.clone(), key.1.clone());
    let deleting = obj.metadata.deletion_timestamp.is_some();
    let finalized = ctx
        .finalizer
        .as_ref()
        .is_some_and(|f| obj.finalizers().contains(f));
    // Being deleted without our finalizer: nothing left for the plugin.
    if deleting && (ctx.finalizer.is_none() || !finalized) {
        ctx.forget(&key.0, &key.1);
        return Step {
            reconciled: None,
            failure: None,
            next: Next::AwaitChange,
        };
    }
    // The version current now runs this reconcile to its end, even if
    // another is swapped in meanwhile.
    let version = ctx.current.load_full();
    let plugin = &version.plugin;
    // The deadline interrupts the plugin and bounds its calls; a minute past
    // it, the worker is stuck (liveness fails).
    let run = ctx
        .activity
        .begin(&ctx.name, plugin.limits().deadline + STUCK_AFTER_DEADLINE);
    let metrics = &ctx.metrics;
    let work = metrics.reconcile_started();
    let started = Instant::now();
    let state = ctx.state(&key);
    let (reason, attempt) = ctx.reason(&obj, &state, deleting, version.generation);
    ctx.update(key.clone(), |s| s.started_generation = version.generation);
    let primary = &ctx.primary;
    let mut request = ReconcileRequest {
        object: ObjectRef {
            group: primary.group.clone(),
            version: primary.version.clone(),
            kind: primary.kind.clone(),
            namespace: obj.namespace(),
            name: obj.name_any(),
        },
        body: serde_json::to_string(&*obj).ok(),
        reason,
        attempt,
        generation: obj.metadata.generation,
        parent: None,
        previous: state
            .previous
            .clone()
            .filter(|(uid, _)| *uid == obj.metadata.uid)
            .map(|(_, previous)| previous),
    };
    let root = plugin.start_span(&request);
    let root_cx = root.context().clone();

    // The finalizer goes on before the plugin first runs.
    let mut outcome = None;
    if let Some(finalizer) = &ctx.finalizer
        && !deleting
        && !finalized
    {
        let patch = match &obj.metadata.finalizers {
            None => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}
            ]),
            Some(current) => json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
            ]),
        };
        match ctx.patch_finalizers(plugin, &obj, patch, &root_cx).await {
            // The plugin is given the object with the finalizer on it.
            Ok(Some(body)) => request.body = Some(body),
            Ok(None) => {}
            Err(failure) => outcome = Some((Outcome::Failed(failure), Default::default())),
        }
    }
    let (mut outcome, stats) = match outcome {
        Some(o) => o,
        None => plugin.run(&request, &root).await,
    };
    // A finished `deleting` reconcile releases the object.
    if deleting
        && outcome == Outcome::Done
        && let Some(finalizer) = &ctx.finalizer
    {
        let current = obj.finalizers().to_vec();
        let remaining: Vec<&String> = current.iter().filter(|f| *f != finalizer).collect();
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining}
        ]);
        if let Err(failure) = ctx.patch_finalizers(plugin, &obj, patch, &root_cx).await {
            outcome = Outcome::Failed(failure);
        }
    }
    let reconciled = plugin.finish(&request, root, outcome, stats, started);
    let step = |failure: Option<Failure>, next| Step {
        reconciled: Some(reconciled.clone()),
        failure,
        next,
    };
    let failure = reconciled.outcome.failure().cloned();
    ctx.activity.end(run, activity_key, failure.as_ref());
    let retried = failure.as_ref().is_some_and(|f| f.retry);
    metrics.reconcile_finished(work, &reconciled, retried);
    if retried || matches!(reconciled.outcome, Outcome::RequeueAfter(_)) {
        metrics.queue_add();
    }
    let previous = Some((
        obj.metadata.uid.clone(),
        Previous {
            span: reconciled.span.clone(),
            result: reconciled.outcome.result(),
            error_type: failure.as_ref().map(|f| f.kind.as_str()),
        },
    ));
    let generation = version.generation;
    let version = obj.resource_version();
    ctx.prune();
    match &reconciled.outcome {
        Outcome::Done => {
            ctx.update(key, |s| {
                *s = ObjectState {
                    last_version: version,
                    failures: 0,
                    retrying: false,
                    requeued: false,
                    generation,
                    started_generation: generation,
                    previous,
                }
            });
            step(None, Next::AwaitChange)
        }
        Outcome::RequeueAfter(after) => {
            ctx.update(key, |s| {
                *s = ObjectState {
                    last_version: version,
                    failures: 0,
                    retrying: false,
                    requeued: true,
                    generation,
                    started_generation: generation,
                    previous,
                }
            });
            step(None, Next::After(*after))
        }
        Outcome::Failed(failure) => {
            let retrying = failure.retry;
            ctx.update(key.clone(), |s| {
                s.failures += 1;
                s.retrying = retrying;
                s.last_version = version;
                s.generation = generation;
                s.previous = previous;
            });
            step(
                Some(failure.clone()),
                next_after_failure(ctx, &key, failure),
            )
        }
    }
}

/// A failure the host retries comes back after the backoff.
fn next_after_failure(ctx: &Context, key: &(String, String), failure: &Failure) -> Next {
    if failure.retry {
        Next::After(ctx.backoff(ctx.state(key).failures))
    } else {
        Next::AwaitChange
    }
}

fn error_policy(obj: Arc<DynamicObject>, error: &ReconcileFailed, ctx: Arc<Context>) -> Action {
    match next_after_failure(&ctx, &key_of(&obj), &error.0) {
        Next::AwaitChange => Action::await_change(),
        Next::After(after) => Action::requeue(after),
    }
}

/// A reflector of one type in `namespaces`: its store and the stream of
/// the objects it sees change.
fn reflect(
    client: &kube::Client,
    resource: &ApiResource,
    namespaces: &Namespaces,
    selector: Option<&str>,
) -> (
    Cache,
    impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + 'static,
) {
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let (synced, ready) = Ready::new();
    let stream = reflector::reflector(writer, watch_in(client, resource, namespaces, selector))
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                synced.send_replace(true);
            }
        });
    (
        Cache {
            resource: resource.clone(),
            store,
            namespaces: namespaces.clone(),
            ready,
            selector: selector.map(str::to_owned),
        },
        stream,
    )
}

/// Where the host watches `resource` for `plugin`: where its grant allows
/// `list` and `watch` (everywhere for a plugin without a grant).
fn watch_namespaces(plugin: &Plugin, resource: &ResourceType) -> Option<Namespaces> {
    match plugin.grant() {
        Some(grant) => grant.watch_namespaces(resource),
        None => Some(Namespaces::All),
    }
}

/// How long a controller may take to sync its caches before the host
/// reports it (it keeps trying).
const SYNC_WARNING: Duration = Duration::from_secs(10);

/// How long a controller whose caches have not synced counts as starting:
/// past it, `--exit-when-idle` no longer waits for it (it keeps trying).
const SYNC_GIVE_UP: Duration = Duration::from_secs(60);

/// How often a controller forgets the failures of deleted objects.
/// How long past its deadline a running reconcile counts as stuck.
const STUCK_AFTER_DEADLINE: Duration = Duration::from_secs(60);

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often a controller whose types the API server lacks looks again.
const TYPE_RETRY: Duration = Duration::from_secs(2);

/// Waits until the API server serves every type of the plugin as the plugin
/// names it. A type that is missing (its CRD not installed yet) or that
/// discovery cannot answer is looked up again until `shutdown`; a type that
/// is served differently (plural, scope) cannot work: that is an error.
async fn check_types(
    backend: &KubeBackend,
    plugin: &str,
    types: &[ResourceType],
    activity: &Activity,
) -> Result<(), String> {
    let mut reported = HashSet::new();
    loop {
        let mut missing = None;
        for resource in types {
            match backend.check_type(resource).await {
                Ok(()) => {}
                Err(e) if e.kind == K8sErrorKind::Invalid => {
                    return Err(format!("cannot watch {}: {}", resource.gvk(), e.message));
                }
                Err(e) => {
                    missing = Some((resource.gvk(), e.message));
                    break;
                }
            }
        }
        let Some((gvk, message)) = missing else {
            return Ok(());
        };
        let report = format!(
            "waiting for the API server to serve {gvk} ({message}): install its CustomResourceDefinition, or check that the host can reach the API server"
        );
        if reported.insert(gvk) {
            tracing::error!(plugin, "{report}");
            activity.controller_failed(plugin, report);
        }
        tokio::time::sleep(TYPE_RETRY).await;
    }
}

/// Runs the controller of the plugin `versions` holds until `shutdown`
/// resolves, and returns what it knew of its objects.
///
/// A new value in `versions` (same types, finalizer, concurrency: the
/// operator checks) becomes current at once: reconciles running keep the
/// version they started with, and every object the old version reconciled
/// is requeued once, `settings.reload_rate` per second, with
/// `plugin_reloaded`. `objects` is what a replaced controller knew.
///
/// Its Kubernetes calls go through a [`KubeBackend`] writing as the plugin
/// (field manager = plugin name), reading the controller's stores. The
/// caller has counted the controller as starting in `activity`; it counts
/// as started once its caches have synced (or it gave up).
pub async fn run(
    client: kube::Client,
    mut versions: tokio::sync::watch::Receiver<Plugin>,
    objects: Objects,
    settings: ControllerSettings,
    activity: Arc<Activity>,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Objects {
    let shutdown = shutdown.boxed().shared();
    let mut starting = Starting(Some(activity.clone()));
    let plugin = versions.borrow_and_update().clone();
    let metadata = plugin.metadata().clone();
    let name = metadata.name.clone();
    // Marked syncing by the operator; whichever way this returns (a type
    // not served, a grant that watches nothing, a stop), it is not any more.
    let _synced = Unsync(activity.clone(), name.clone());
    let types: Vec<ResourceType> = std::iter::once(metadata.primary.clone())
        .chain(metadata.owns.iter().cloned())
        .collect();
    let checker = KubeBackend::new(client.clone(), &name, tracer.clone(), Vec::new());
    let checked = tokio::select! {
        checked = check_types(&checker, &name, &types, &activity) => checked,
        () = shutdown.clone() => return objects,
    };
    if let Err(message) = checked {
        tracing::error!(plugin = %name, "{message}; the controller does not run: rebuild the plugin with the type the API server serves");
        activity.controller_failed(&name, message);
        return objects;
    }
    activity.forget(&(name.clone(), String::new(), String::new()));

    // Only the namespaces the grant lets the plugin watch: it is never
    // woken for an object it may not touch.
    let Some(namespaces) = watch_namespaces(&plugin, &metadata.primary) else {
        let message = format!(
            "the grant does not allow list and watch on {} in any namespace: the controller does not run",
            metadata.primary.gvk()
        );
        tracing::error!(plugin = %name, "{message}");
        activity.controller_failed(&name, message);
        return objects;
    };
    let primary = api_resource(&metadata.primary);
    let selector = metadata.primary_selector.as_deref();
    let (primary_cache, primary_stream) = reflect(&client, &primary, &namespaces, selector);
    match selector {
        Some(labels) => {
            tracing::info!(plugin = %name, "watching {} in {namespaces}, labels {labels}", metadata.primary.gvk())
        }
        None => {
            tracing::info!(plugin = %name, "watching {} in {namespaces}", metadata.primary.gvk())
        }
    }
    // Objects requeued after a reload come through here.
    let (requeue, requeued) = tokio::sync::mpsc::channel::<KubeRef<DynamicObject>>(16);
    let metrics = plugin.metrics().controller(&name);
    let counted = |stream: futures::stream::BoxStream<'static, _>| {
        let metrics = metrics.clone();
        stream.inspect(move |event: &Result<DynamicObject, watcher::Error>| {
            if event.is_ok() {
                metrics.queue_add();
            }
        })
    };
    let mut controller = Controller::for_stream_with(
        counted(primary_stream.applied_objects().boxed()),
        primary_cache.store.clone(),
        primary.clone(),
    )
    .reconcile_on(futures::stream::unfold(requeued, |mut rx| async move {
        rx.recv().await.map(|obj| (obj, rx))
    }));
    let mut caches = vec![primary_cache];
    for owned in &metadata.owns {
        // A namespaced owner owns objects of its own namespace only.
        let owned_namespaces = match watch_namespaces(&plugin, owned) {
            Some(n) if owned.namespaced => n.intersect(&namespaces),
            other => other,
        };
        let Some(owned_namespaces) = owned_namespaces else {
            tracing::warn!(
                plugin = %name,
                "the grant allows list and watch on {} in none of the namespaces the plugin reconciles in: its changes will not wake the plugin",
                owned.gvk()
            );
            continue;
        };
        let resource = api_resource(owned);
        let (cache, stream) = reflect(&client, &resource, &owned_namespaces, None);
        caches.push(cache);
        controller =
            controller.owns_stream_with(counted(stream.touched_objects().boxed()), resource);
    }
    let store = controller.store();
    let stores: Vec<(String, Ready)> = caches
        .iter()
        .map(|c| (c.resource.kind.clone(), c.ready.clone()))
        .collect();
    let primary_ready = caches[0].ready.clone();
    // Writes go out as the plugin's field manager (its name by default).
    let manager = metadata
        .field_manager
        .clone()
        .unwrap_or_else(|| name.clone());
    let backend: Arc<dyn K8sBackend> = Arc::new(
        KubeBackend::new(client, &manager, tracer, caches).fenced(settings.ownership.clone()),
    );
    // A concurrency of 0 would mean "unbounded" to kube-runtime.
    let concurrency = plugin
        .grant()
        .and_then(|g| g.limits.concurrency)
        .unwrap_or(settings.concurrency)
        .max(1);
    let grace = settings.shutdown_grace;
    metrics.started(concurrency);
    // A version swapped in while the controller was starting is the one
    // that runs first.
    let plugin = versions.borrow_and_update().with_backend(backend.clone());
    let generation = objects.generation;
    let ctx = Arc::new(Context {
        name: name.clone(),
        current: ArcSwap::from_pointee(Version { plugin, generation }),
        backend,
        primary: metadata.primary.clone(),
        finalizer: metadata.finalizer.clone(),
        settings,
        objects: Mutex::new(objects.states),
        activity: activity.clone(),
        store,
        metrics,
    });
    let gains = tokio::spawn(requeue_gained(
        ctx.clone(),
        requeue.clone(),
        primary.clone(),
    ));
    let swaps = tokio::spawn(swap_versions(
        ctx.clone(),
        versions,
        requeue,
        primary.clone(),
    ));

    // Startup: the controller counts as started once every store has
    // listed (or after SYNC_GIVE_UP, still trying); then it forgets, every
    // second, the failures of deleted objects.
    let background = {
        let ctx = ctx.clone();
        let name = name.clone();
        async move {
            let all_synced = || async {
                for (_, ready) in &stores {
                    ready.wait().await;
                }
            };
            if tokio::time::timeout(SYNC_WARNING, all_synced())
                .await
                .is_err()
            {
                let unsynced: Vec<&str> = stores
                    .iter()
                    .filter(|(_, r)| !r.is_ready())
                    .map(|(kind, _)| kind.as_str())
                    .collect();
                let message = format!(
                    "the caches of {} have not synced after {}s: can the host list and watch them? (it keeps trying)",
                    unsynced.join(", "),
                    SYNC_WARNING.as_secs()
                );
                tracing::error!(plugin = %name, "{message}");
                ctx.activity.controller_failed(&name, message);
                if tokio::time::timeout(SYNC_GIVE_UP - SYNC_WARNING, all_synced())
                    .await
                    .is_err()
                {
                    tracing::error!(
                        plugin = %name,
                        "the caches have not synced after {}s: the controller counts as failed (it keeps trying)",
                        SYNC_GIVE_UP.as_secs()
                    );
                    starting.done();
                }
                all_synced().await;
                ctx.activity
                    .forget(&(name.clone(), String::new(), String::new()));
            }
            tracing::info!(plugin = %name, "caches synced");
            ctx.activity.syncing(&name, false);
            starting.done();
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                ctx.sweep();
            }
        }
    };
    let background = tokio::spawn(background);

    // kube-runtime's graceful shutdown waits for running reconciles, and
    // forever if the primary store never listed (its runner holds every
    // task until then). Cut it: at once when nothing can be running, after
    // the grace otherwise; a cut reconcile is dropped at its next yield.
    let forceful = {
        let shutdown = shutdown.clone();
        let activity = activity.clone();
        let name = name.clone();
        async move {
            shutdown.await;
            if !primary_ready.is_ready() {
                return;
            }
            tokio::time::sleep(grace).await;
            let cut = activity.cut_running(&name);
            tracing::warn!(
                plugin = %name,
                "cut {cut} running reconcile(s) after the shutdown grace of {}s; they run again when the host restarts",
                grace.as_secs_f64()
            );
        }
    };
    let results = ctx.clone();
    controller
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .take_until(forceful)
        .for_each(move |result| {
            let ctx = results.clone();
            async move {
                match result {
                    // A retry found the object gone: forget it, or it would
                    // count as failing (and pending) forever.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        ctx.forget(
                            object.namespace.as_deref().unwrap_or_default(),
                            &object.name,
                        );
                    }
                    // Plugin failures are logged with their trace by the engine.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) | Ok(_) => {}
                    // Watch errors: kube-runtime backs off and tries again.
                    Err(error) => {
                        tracing::warn!(plugin = %ctx.name, %error, "controller");
                    }
                }
            }
        })
        .await;
    background.abort();
    swaps.abort();
    gains.abort();
    ctx.current
        .load()
        .plugin
        .metrics()
        .controller_stopped(&name);
    let states = std::mem::take(&mut *ctx.objects.lock().unwrap_or_else(|e| e.into_inner()));
    Objects {
        states,
        generation: ctx.current.load().generation,
    }
}

/// Makes each new version current, then requeues the objects an older
/// version reconciled: `reload_rate` per second, each once (an object
/// reconciled by the new version meanwhile is skipped). A newer swap
/// restarts the pass.
async fn swap_versions(
    ctx: Arc<Context>,
    mut versions: tokio::sync::watch::Receiver<Plugin>,
    requeue: tokio::sync::mpsc::Sender<KubeRef<DynamicObject>>,
    primary: ApiResource,
) {
    // Aborted when replaced, and when this task is (the controller stops).
    let mut pass: Option<AbortOnDrop> = None;
    while versions.changed().await.is_ok() {
        let plugin = versions
            .borrow_and_update()
            .with_backend(ctx.backend.clone());
        let generation = ctx.current.load().generation + 1;
        ctx.current.store(Arc::new(Version { plugin, generation }));
        pass = Some(AbortOnDrop(tokio::spawn(requeue_all(
            ctx.clone(),
            requeue.clone(),
            primary.clone(),
            generation,
        ))));
    }
    drop(pass);
}

/// Requeues the objects of every shard this replica takes (leader
/// election: all of them when it starts leading); a standby's caches are
/// warm, so a take-over lists nothing.
async fn requeue_gained(
    ctx: Arc<Context>,
    requeue: tokio::sync::mpsc::Sender<KubeRef<DynamicObject>>,
    primary: ApiResource,
) {
    let ownership = ctx.settings.ownership.clone();
    if !ownership.is_coordinated() {
        return;
    }
    let mut changes = ownership.subscribe();
    // Gains counted per shard: a shard released and taken again between
    // two wake-ups is a gain too.
    let mut seen = ownership.gains();
    while changes.changed().await.is_ok() {
        let now = ownership.gains();
        let gained: HashSet<u32> = now
            .iter()
            .filter(|(shard, n)| seen.get(shard) != Some(n))
            .map(|(shard, _)| *shard)
            .filter(|shard| ownership.holds_shard(*shard))
            .collect();
        seen = now;
        if gained.is_empty() {
            continue;
        }
        let mut count = 0usize;
        for obj in ctx.store.state() {
            let (namespace, name) = key_of(&obj);
            if !gained.contains(&ownership.shard(&namespace, &name)) {
                continue;
            }
            if !send_requeue(&ctx, &requeue, &obj, &primary).await {
                return;
            }
            count += 1;
        }
        tracing::info!(plugin = %ctx.name, objects = count, shards = ?gained, "requeued the objects this replica took over");
    }
}

/// Hands `obj` to the controller's requeue stream; `false` when the
/// controller is gone.
async fn send_requeue(
    ctx: &Context,
    requeue: &tokio::sync::mpsc::Sender<KubeRef<DynamicObject>>,
    obj: &DynamicObject,
    primary: &ApiResource,
) -> bool {
    if requeue
        .send(KubeRef::from_obj_with(obj, primary.clone()))
        .await
        .is_err()
    {
        return false;
    }
    ctx.metrics.queue_add();
    true
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pause between two requeues at `rate` per second (at least 1 µs,
/// at most an hour).
fn requeue_period(rate: f64) -> Duration {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        ControllerSettings::default().reload_rate
    };
    Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(Duration::from_secs(3600))
        .clamp(Duration::from_micros(1), Duration::from_secs(3600))
}

async fn requeue_all(
    ctx: Arc<Context>,
    requeue: tokio::sync::mpsc::Sender<KubeRef<DynamicObject>>,
    primary: ApiResource,
    generation: u64,
) {
    let mut tick = tokio::time::interval(requeue_period(ctx.settings.reload_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Not reconciled by this version yet, nor being reconciled by it (a
    // reconcile by the old one may be running: the requeue waits for it,
    // then runs this one).
    let stale = |obj: &DynamicObject| {
        let state = ctx.state(&key_of(obj));
        state.generation != generation && state.started_generation != generation
    };
    let mut count = 0usize;
    for obj in ctx.store.state() {
        if !stale(&obj) {
            continue;
        }
        tick.tick().await;
        if !stale(&obj) {
            continue;
        }
        if !send_requeue(&ctx, &requeue, &obj, &primary).await {
            return;
        }
        count += 1;
    }
    if count > 0 {
        tracing::info!(plugin = %ctx.name, objects = count, "requeued after the reload");
    }
}

/// Clears a controller's "syncing" mark when dropped.
struct Unsync(Arc<Activity>, String);

impl Drop for Unsync {
    fn drop(&mut self) {
        self.0.syncing(&self.1, false);
    }
}

/// Counts a controller as started when dropped, unless it already was.
struct Starting(Option<Arc<Activity>>);

impl Starting {
    fn done(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.started();
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_far_past_its_deadline_counts_as_stuck() {
        let activity = Activity::default();
        let run = activity.begin("p", Duration::from_secs(70));
        let now = Instant::now();
        assert!(activity.stuck_at(now + Duration::from_secs(69)).is_empty());
        let stuck = activity.stuck_at(now + Duration::from_secs(71));
        assert_eq!(stuck.len(), 1);
        assert!(stuck[0].contains("reconcile of p"), "{stuck:?}");
        activity.end(run, ("p".into(), "ns".into(), "a".into()), None);
        assert!(activity.stuck_at(now + Duration::from_secs(200)).is_empty());
        activity.syncing("p", true);
        assert_eq!(activity.unsynced(), vec!["p".to_owned()]);
        activity.forget_plugin("p");
        assert!(activity.unsynced().is_empty());
    }

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        let s = ControllerSettings::default();
        let waits: Vec<u64> = (1..=6).map(|n| s.backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400]);
        // 200 ms · 2^10 = 204.8 s; 2^11 would be 409.6 s: capped.
        assert_eq!(s.backoff(11), Duration::from_millis(204_800));
        assert_eq!(s.backoff(12), Duration::from_secs(300));
        assert_eq!(s.backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn the_requeue_period_is_bounded_for_any_rate() {
        assert_eq!(requeue_period(100.0), Duration::from_millis(10));
        assert_eq!(requeue_period(1e12), Duration::from_micros(1));
        assert_eq!(requeue_period(1e-30), Duration::from_secs(3600));
        // Not a rate: the default.
        assert_eq!(requeue_period(0.0), Duration::from_millis(10));
        assert_eq!(requeue_period(f64::NAN), Duration::from_millis(10));
        assert_eq!(requeue_period(-5.0), Duration::from_millis(10));
    }
}
