//! The operator: each loaded plugin becomes a controller against a
//! Kubernetes API server (the embedded one in `dev`, a cluster in `run`).

pub mod backend;
pub mod controller;
pub mod manifests;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use controller::{Activity, ControllerSettings};

use crate::engine::{Engine, Limits, LoadError, Plugin};
use crate::grants::{Grant, GrantError};

fn list(errors: &[OperatorError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

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
    /// Several plugins failed: every one is named.
    #[error("{} plugins did not load:\n{}", .0.len(), list(.0))]
    Several(Vec<OperatorError>),
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
    /// A limit in a grant is over the engine's maximum.
    #[error("the limits granted to {plugin} are not possible: {message}")]
    Limits {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// Loads a plugin and applies its grant (limits included).
pub async fn load_plugin(
    engine: &Engine,
    path: &Path,
    policy: &GrantPolicy,
) -> Result<Plugin, OperatorError> {
    let plugin = engine.load_file(path).await?;
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

/// Loads every `*.wasm` in `dir`, in name order.
pub async fn load_plugins(
    engine: &Engine,
    dir: &Path,
    policy: &GrantPolicy,
) -> Result<Vec<Plugin>, OperatorError> {
    let read = |error| OperatorError::ReadDir {
        path: dir.to_owned(),
        error,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(OperatorError::NoPlugins(dir.to_owned()));
    }
    // Every file is tried, so that one start reports every bad one.
    let mut plugins: Vec<(Plugin, PathBuf)> = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let plugin = match load_plugin(engine, &path, policy).await {
            Ok(plugin) => plugin,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if let Some((_, first)) = plugins
            .iter()
            .find(|(p, _)| p.metadata().name == plugin.metadata().name)
        {
            errors.push(OperatorError::Duplicate {
                name: plugin.metadata().name.clone(),
                first: first.display().to_string(),
                second: path.display().to_string(),
            });
            continue;
        }
        plugins.push((plugin, path));
    }
    match errors.len() {
        0 => Ok(plugins.into_iter().map(|(p, _)| p).collect()),
        1 => Err(errors.remove(0)),
        _ => Err(OperatorError::Several(errors)),
    }
}

/// Running controllers, one per plugin.
pub struct Operator {
    activity: Arc<Activity>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("controllers", &self.tasks.len())
            .finish()
    }
}

impl Operator {
    /// Starts a controller per plugin.
    pub fn start(
        client: kube::Client,
        plugins: Vec<Plugin>,
        settings: ControllerSettings,
        tracer: opentelemetry_sdk::trace::SdkTracer,
    ) -> Self {
        let activity = Arc::new(Activity::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = plugins
            .into_iter()
            .map(|plugin| {
                activity.starting();
                let mut stopped = stopped.clone();
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                tokio::spawn(controller::run(
                    client.clone(),
                    plugin,
                    settings.clone(),
                    activity.clone(),
                    tracer.clone(),
                    shutdown,
                ))
            })
            .collect();
        Operator {
            activity,
            stop,
            tasks,
        }
    }

    /// What the controllers are doing.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Stops every controller, letting running reconciles finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
