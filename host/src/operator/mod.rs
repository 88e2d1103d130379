//! The operator: each loaded plugin becomes a controller against a
//! Kubernetes API server (the embedded one in `dev`, a cluster in `run`).
//!
//! [`Operator::upsert`] makes a plugin version current: it starts a
//! controller, swaps the version into the running one (same types,
//! finalizer, selector, field manager, concurrency, watched namespaces), or
//! drains the old controller and starts a new one; [`Operator::remove`]
//! drains and stops one. [`crate::reload`] drives both from the plugin
//! directory.

pub mod backend;
pub mod controller;
pub mod manifests;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use controller::{Activity, ControllerSettings};

use crate::caps::k8s::ResourceType;
use crate::engine::{Engine, Limits, LoadError, Plugin};
use crate::grants::{Grant, GrantError};

/// How plugins get their grants.
#[derive(Clone, Debug)]
pub enum GrantPolicy {
    /// Grant what each plugin asks for (`dev`), and these HTTP endpoints
    /// besides (`dev`'s example server).
    AsRequested {
        /// HTTP endpoints granted to every plugin.
        http: Vec<crate::grants::HttpGrant>,
    },
    /// Read grant files: next to each `.wasm`, or in this directory.
    Files(Option<PathBuf>),
}

/// A plugin could not be loaded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The plugin directory could not be read.
    #[error("cannot read the plugin directory {path}: {error}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// No plugin was found.
    #[error(
        "no plugins (*.wasm) in {0}: build them with `cargo xtask plugins` or point --plugins elsewhere"
    )]
    NoPlugins(PathBuf),
    /// A plugin did not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A grant is missing, invalid or too small.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// Two plugins have the same name.
    #[error("two plugins are named {name}: {first} and {second}; plugin names must be unique")]
    Duplicate {
        /// The name.
        name: String,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// The host's ServiceAccount lacks permissions the grant needs.
    #[error(
        "the host may not do what the grant of {plugin} allows: it lacks {}; apply what `reconcile-host rbac` prints for the plugins, then restart the host or touch the plugin",
        missing.join(", ")
    )]
    Access {
        /// The plugin.
        plugin: String,
        /// The permissions missing, one per entry.
        missing: Vec<String>,
    },
    /// A limit in a grant is over the engine's maximum.
    #[error("the limits granted to {plugin} are not possible: {message}")]
    Limits {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// The host's client. kube's own retry layer is off: the k8s backend
/// retries plugin calls itself (only what is safe to resend, within the
/// reconcile's deadline, each retry an event on the call's span), and the
/// watches have kube-runtime's backoff. Every request is counted in
/// `rest_client_requests_total`.
pub fn host_client(
    mut config: kube::Config,
    metrics: &crate::metrics::Metrics,
) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    let host = config
        .cluster_url
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(match metrics.rest() {
        Some(rest) => builder.with_layer(&rest.layer(&host)).build(),
        None => builder.build(),
    })
}

/// Loads a plugin and applies its grant (limits included).
pub async fn load_plugin(
    engine: &Engine,
    path: &Path,
    policy: &GrantPolicy,
) -> Result<Plugin, OperatorError> {
    let plugin = engine.load_file(path).await?;
    apply_grant(plugin, path, policy)
}

/// Loads a plugin from the bytes read from `path`, and applies its grant.
pub async fn load_plugin_bytes(
    engine: &Engine,
    bytes: &[u8],
    path: &Path,
    policy: &GrantPolicy,
) -> Result<Plugin, OperatorError> {
    let plugin = engine
        .load_bytes(bytes, &path.display().to_string())
        .await?;
    apply_grant(plugin, path, policy)
}

fn apply_grant(plugin: Plugin, path: &Path, policy: &GrantPolicy) -> Result<Plugin, OperatorError> {
    let metadata = plugin.metadata();
    let grant = match policy {
        GrantPolicy::AsRequested { http } => {
            let mut grant = Grant::from_request(metadata);
            grant.http.extend(http.iter().cloned());
            grant
        }
        GrantPolicy::Files(dir) => {
            let grant = Grant::find(path, &metadata.name, dir.as_deref())?;
            grant.check(metadata)?;
            grant
        }
    };
    with_grant(plugin, grant)
}

/// `plugin` with `grant` (checked already) and the limits it sets.
pub fn with_grant(plugin: Plugin, grant: Grant) -> Result<Plugin, OperatorError> {
    let metadata = plugin.metadata();
    let mut limits = plugin.limits();
    if let Some(ms) = grant.limits.deadline_ms {
        limits = Limits {
            deadline: Duration::from_millis(ms),
            ..limits
        };
    }
    if let Some(mib) = grant.limits.memory_mib {
        limits = Limits {
            memory: mib.saturating_mul(1024 * 1024),
            ..limits
        };
    }
    let plugin = plugin
        .with_limits(limits)
        .map_err(|e| OperatorError::Limits {
            plugin: metadata.name.clone(),
            message: e.to_string(),
        })?;
    Ok(plugin.with_grant(Arc::new(grant)))
}

/// What [`Operator::upsert`] did with a plugin version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No controller of that name ran: one started.
    Started,
    /// It became the current version of the running controller.
    Swapped,
    /// Its types, finalizer, selector, field manager, concurrency or
    /// watched namespaces differ: the old controller was drained and
    /// stopped, and a new one started.
    Replaced,
    /// The same digest and grant were already current.
    Unchanged,
}

/// What a controller is built from: a version that differs in any of these
/// needs a new controller; one that does not is swapped into the old.
#[derive(Debug, PartialEq)]
struct Shape {
    primary: ResourceType,
    owns: Vec<ResourceType>,
    finalizer: Option<String>,
    selector: Option<String>,
    field_manager: Option<String>,
    concurrency: Option<u16>,
    watched: Vec<Option<watch::Namespaces>>,
}

impl Shape {
    fn of(plugin: &Plugin) -> Self {
        let m = plugin.metadata();
        let watched = std::iter::once(&m.primary)
            .chain(&m.owns)
            .map(|r| match plugin.grant() {
                Some(grant) => grant.watch_namespaces(r),
                None => Some(watch::Namespaces::All),
            })
            .collect();
        Shape {
            primary: m.primary.clone(),
            owns: m.owns.clone(),
            finalizer: m.finalizer.clone(),
            selector: m.primary_selector.clone(),
            field_manager: m.field_manager.clone(),
            concurrency: plugin.grant().and_then(|g| g.limits.concurrency),
            watched,
        }
    }
}

/// One running controller.
struct Running {
    shape: Shape,
    versions: tokio::sync::watch::Sender<Plugin>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<controller::Objects>,
}

impl Running {
    /// Stops taking reconciles, lets running ones finish (within the
    /// shutdown grace), and returns what the controller knew.
    async fn drain(self) -> controller::Objects {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Running controllers, one per plugin name, started, swapped, replaced
/// and stopped while the host runs.
pub struct Operator {
    client: kube::Client,
    settings: ControllerSettings,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    activity: Arc<Activity>,
    controllers: tokio::sync::Mutex<BTreeMap<String, Running>>,
    /// Set by [`Operator::stop`]: every controller, even one being
    /// drained, stops at once.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator").finish_non_exhaustive()
    }
}

impl Operator {
    /// An operator with no controllers yet.
    pub fn new(
        client: kube::Client,
        settings: ControllerSettings,
        tracer: opentelemetry_sdk::trace::SdkTracer,
    ) -> Self {
        Operator {
            client,
            settings,
            tracer,
            activity: Arc::new(Activity::default()),
            controllers: tokio::sync::Mutex::new(BTreeMap::new()),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// Starts a controller per plugin.
    pub fn start(
        client: kube::Client,
        plugins: Vec<Plugin>,
        settings: ControllerSettings,
        tracer: opentelemetry_sdk::trace::SdkTracer,
    ) -> Self {
        let mut operator = Self::new(client, settings, tracer);
        let running = plugins
            .into_iter()
            .map(|plugin| {
                let name = plugin.metadata().name.clone();
                (name, operator.spawn(plugin, controller::Objects::default()))
            })
            .collect();
        operator.controllers = tokio::sync::Mutex::new(running);
        operator
    }

    fn spawn(&self, plugin: Plugin, objects: controller::Objects) -> Running {
        self.activity.starting();
        // Not ready until its caches have synced (or it gave up running).
        self.activity.syncing(&plugin.metadata().name, true);
        let shape = Shape::of(&plugin);
        let (versions, versions_rx) = tokio::sync::watch::channel(plugin);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut stopping = self.stopping.subscribe();
        let shutdown = async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        };
        let task = tokio::spawn(controller::run(
            self.client.clone(),
            versions_rx,
            objects,
            self.settings.clone(),
            self.activity.clone(),
            self.tracer.clone(),
            shutdown,
        ));
        Running {
            shape,
            versions,
            stop,
            task,
        }
    }

    /// Makes `plugin` the current version of the controller of its name:
    /// starts one, swaps it into the running one, or replaces that one
    /// when it cannot be reused (see [`Change`]).
    pub async fn upsert(&self, plugin: Plugin) -> Change {
        let name = plugin.metadata().name.clone();
        let mut controllers = self.controllers.lock().await;
        // Stopping: nothing new starts.
        if *self.stopping.borrow() {
            return Change::Unchanged;
        }
        plugin.metrics().plugin_current(&name, Some(&plugin));
        let Some(running) = controllers.remove(&name) else {
            controllers.insert(name, self.spawn(plugin, controller::Objects::default()));
            return Change::Started;
        };
        let shape = Shape::of(&plugin);
        // A controller that gave up (a type served differently, say) is
        // started again rather than handed a version it would not run.
        if shape == running.shape && !running.task.is_finished() {
            let unchanged = {
                let current = running.versions.borrow();
                current.digest() == plugin.digest()
                    && current.grant() == plugin.grant()
                    && current.limits() == plugin.limits()
            };
            if !unchanged {
                running.versions.send_replace(plugin.clone());
            }
            if !running.task.is_finished() {
                controllers.insert(name, running);
                return if unchanged {
                    Change::Unchanged
                } else {
                    Change::Swapped
                };
            }
        }
        // No object may be reconciled by both: the old one stops first.
        let same_objects = shape.primary == running.shape.primary;
        let mut objects = running.drain().await;
        objects.next_version();
        if !same_objects {
            objects = controller::Objects::default();
        }
        self.activity.forget_plugin(&name);
        controllers.insert(name, self.spawn(plugin, objects));
        Change::Replaced
    }

    /// Drains and stops the controller of `name`; `false` if none ran.
    pub async fn remove(&self, name: &str) -> bool {
        // Held while draining: a new version of the name waits for it.
        let mut controllers = self.controllers.lock().await;
        match controllers.remove(name) {
            Some(running) => {
                let metrics = running.versions.borrow().metrics().clone();
                metrics.plugin_current(name, None);
                running.drain().await;
                self.activity.forget_plugin(name);
                true
            }
            None => false,
        }
    }

    /// The current version of every running controller, by name.
    pub async fn plugins(&self) -> Vec<Plugin> {
        self.controllers
            .lock()
            .await
            .values()
            .map(|r| r.versions.borrow().clone())
            .collect()
    }

    /// The client the controllers use.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// What the controllers are doing.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Stops every controller, letting running reconciles finish.
    pub async fn stop(&self) {
        // At once, even for a controller an upsert is draining.
        self.stopping.send_replace(true);
        let running: Vec<Running> = std::mem::take(&mut *self.controllers.lock().await)
            .into_values()
            .collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}
