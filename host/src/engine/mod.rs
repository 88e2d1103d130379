//! The WebAssembly engine: compile a plugin once (with an on-disk cache),
//! check that it targets the `reconciler` world, pre-instantiate it, and run
//! every reconcile in a fresh `Store` and instance inside a `reconcile` span.
//!
//! A plugin can never crash the host: traps, deadlines, memory exhaustion and
//! oversized answers all become a failed [`Outcome`].

#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings;
mod cache;
pub mod limits;
mod state;
mod versions;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry_sdk::trace::SdkTracer;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

pub use limits::Limits;
use state::CallSetup;
pub use state::HostState;

use crate::caps::http::HttpPolicy;
use crate::caps::k8s::{
    CallContext, K8sBackend, K8sCall, K8sError, K8sErrorKind, K8sResponse, NoCluster, SharedBackend,
};
use crate::caps::log::GuestLog;
use crate::caps::trace::GuestTrace;
use crate::grants::Grant;
use crate::metadata::{MetadataError, PluginMetadata};
use crate::reconcile::{
    CallStats, Failure, FailureKind, Outcome, ReconcileRequest, Reconciled, RootSpan,
};
use crate::telemetry::logs::Logger;
use bindings::{ReconcilerPre, types as wit};
use limits::{DeadlineExceeded, classify};

/// The WIT package plugins are built against.
pub const WIT_PACKAGE: &str = "reconcile:plugin";
/// The version of [`WIT_PACKAGE`] this host implements.
pub const WIT_VERSION: &str = "0.1.0";
/// The interface a plugin exports.
const PLUGIN_EXPORT: &str = "reconcile:plugin/plugin";
/// Longest error message a plugin may return, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 64 * 1024;

/// Turns off backtraces for library errors unless `RUST_LIB_BACKTRACE`
/// asks for them; panics keep following `RUST_BACKTRACE`.
///
/// wasmtime makes an error value while disposing of each store's async
/// fiber; with `RUST_BACKTRACE=1` (common in container images) every such
/// error captures a backtrace, about 6 µs per reconcile.
///
/// # Safety
///
/// It sets an environment variable: call it before any other thread exists
/// (first thing in `main`).
#[allow(unsafe_code)]
pub unsafe fn disable_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the caller guarantees no other thread runs.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0");
        }
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Default per-call limits of plugins.
    pub limits: Limits,
    /// Where compiled plugins are cached; `None` compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once (the pooling allocator's size).
    pub max_instances: u32,
    /// The largest memory limit any plugin may be given.
    pub max_memory: usize,
    /// How often the deadline clock ticks; deadlines are this precise.
    pub epoch_tick: Duration,
    /// Bytes at the start of each instance's memory kept mapped between
    /// calls, where the kernel supports `PAGEMAP_SCAN` (Linux 6.7+): a reset
    /// then rewrites only the pages the call dirtied, and the next call takes
    /// no page faults on them. Elsewhere memory is released with `madvise`.
    pub keep_resident: usize,
    /// Where the engine and its plugins count what they do.
    pub metrics: crate::metrics::Metrics,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            cache_dir: None,
            max_instances: 256,
            max_memory: 1024 * 1024 * 1024,
            epoch_tick: Duration::from_millis(10),
            // A Rust guest's stack is its first MiB; its data and heap follow.
            keep_resident: 2 * 1024 * 1024,
            metrics: crate::metrics::Metrics::disabled(),
        }
    }
}

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Config(String),
    /// The default limits exceed `max_memory`.
    #[error(
        "the memory limit {limit} is over the engine's maximum {max}: raise max_memory or lower the limit"
    )]
    MemoryLimit {
        /// The limit asked for.
        limit: usize,
        /// The engine maximum.
        max: usize,
    },
}

/// A plugin could not be loaded. Each variant names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {source_name}: {error}")]
    Read {
        /// The file.
        source_name: String,
        /// Why.
        error: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error(
        "{source_name} is not a WebAssembly file (no \\0asm header): build the plugin with `cargo build --release --target wasm32-wasip2`"
    )]
    NotWasm {
        /// The file.
        source_name: String,
    },
    /// A core module rather than a component.
    #[error(
        "{source_name} is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target"
    )]
    CoreModule {
        /// The file.
        source_name: String,
    },
    /// wasmtime could not compile it.
    #[error("{source_name} is not a valid component: {message}")]
    Compile {
        /// The file.
        source_name: String,
        /// The compiler's message.
        message: String,
    },
    /// The component does not export the plugin interface.
    #[error(
        "{source_name} does not target the reconcile:plugin/reconciler world: it exports {found}; build it with reconcile-sdk (WIT package {WIT_PACKAGE}@{WIT_VERSION})"
    )]
    WrongWorld {
        /// The file.
        source_name: String,
        /// What it exports instead.
        found: String,
    },
    /// Built against an incompatible version of the contract.
    #[error(
        "{source_name} was built against {WIT_PACKAGE}@{version}, which this host cannot run: it serves {WIT_PACKAGE} {}; rebuild the plugin with a reconcile-sdk for one of them",
        versions::served()
    )]
    Version {
        /// The file.
        source_name: String,
        /// The plugin's version of the contract.
        version: String,
    },
    /// It needs imports the host does not provide.
    #[error("{source_name} needs an import this host does not provide: {message}")]
    Imports {
        /// The file.
        source_name: String,
        /// wasmtime's message.
        message: String,
    },
    /// `metadata()` failed.
    #[error("{source_name}: metadata() failed ({kind}): {message}")]
    Metadata {
        /// The file.
        source_name: String,
        /// `trap`, `timeout` or `memory`.
        kind: &'static str,
        /// What happened.
        message: String,
    },
    /// `metadata()` returned something the host refuses.
    #[error("{source_name}: {error}")]
    InvalidMetadata {
        /// The file.
        source_name: String,
        /// What is wrong.
        error: MetadataError,
    },
}

/// The shared engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    /// Imports of a 0.1.0 plugin.
    linker: Linker<HostState>,
    /// Imports of a 0.2.0 plugin (wasi:http included).
    linker_v0_2: Linker<HostState>,
    config: EngineConfig,
    cache: Option<cache::ArtifactCache>,
    tracer: SdkTracer,
    logger: Logger,
    ticker: EpochTicker,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Advances the engine's epoch every tick, on its own thread.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| {
                EngineError::Config(format!("cannot start the deadline clock thread: {e}"))
            })?;
        Ok(EpochTicker { stop })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn wasmtime_config(config: &EngineConfig, pooling: bool) -> wasmtime::Config {
    let mut wasm = wasmtime::Config::new();
    wasm.wasm_component_model(true);
    wasm.epoch_interruption(true);
    if pooling {
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(config.max_memory);
        // Without PAGEMAP_SCAN, keeping memory resident means a memset of the
        // whole kept region on every reset: slower than madvise.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(config.keep_resident)
                .table_keep_resident(64 * 1024);
        }
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

impl Engine {
    /// An engine whose reconcile spans go to `tracer` and whose plugin log
    /// lines go to `logger`.
    pub fn new(
        config: EngineConfig,
        tracer: SdkTracer,
        logger: Logger,
    ) -> Result<Self, EngineError> {
        if config.limits.memory > config.max_memory {
            return Err(EngineError::MemoryLimit {
                limit: config.limits.memory,
                max: config.max_memory,
            });
        }
        // The pooling allocator reserves address space up front; where that
        // is refused (a tight RLIMIT_AS), fall back to allocating on demand.
        let wasmtime = match wasmtime::Engine::new(&wasmtime_config(&config, true)) {
            Ok(engine) => engine,
            Err(pool_error) => {
                tracing::warn!(error = %pool_error, "the pooling allocator is unavailable; instances are allocated on demand");
                wasmtime::Engine::new(&wasmtime_config(&config, false))
                    .map_err(|e| EngineError::Config(e.to_string()))?
            }
        };
        // One linker per contract version: a 0.1.0 plugin gets exactly the
        // 0.1.0 imports (no wasi:http), a 0.2.0 plugin the 0.2.0 ones.
        let link = |e: wasmtime::Error| EngineError::Config(e.to_string());
        type Own = wasmtime::component::HasSelf<HostState>;
        let mut linker = Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        bindings::Reconciler::add_to_linker::<HostState, Own>(&mut linker, |s| s).map_err(link)?;
        let mut linker_v0_2 = Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker_v0_2).map_err(link)?;
        {
            use bindings::v0_2::reconcile::plugin as v2;
            let l = &mut linker_v0_2;
            v2::types::add_to_linker::<HostState, Own>(l, |s| s).map_err(link)?;
            v2::k8s::add_to_linker::<HostState, Own>(l, |s| s).map_err(link)?;
            v2::log::add_to_linker::<HostState, Own>(l, |s| s).map_err(link)?;
            v2::trace::add_to_linker::<HostState, Own>(l, |s| s).map_err(link)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(l).map_err(link)?;
        }
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| cache::ArtifactCache::new(dir, &wasmtime));
        let ticker = EpochTicker::start(wasmtime.clone(), config.epoch_tick)?;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                linker,
                linker_v0_2,
                config,
                cache,
                tracer,
                logger,
                ticker,
            }),
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The logger plugin lines go to.
    pub fn logger(&self) -> &Logger {
        &self.inner.logger
    }

    /// Where the engine counts what it does.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.config.metrics
    }

    /// Load a plugin from a file.
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        let source_name = path.display().to_string();
        let owned = path.to_owned();
        let read = tokio::task::spawn_blocking(move || crate::files::read_plugin(&owned))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let bytes = read.map_err(|error| LoadError::Read {
            source_name: source_name.clone(),
            error,
        })?;
        self.load_bytes(&bytes, &source_name).await
    }

    /// Load a plugin from its bytes; `source_name` names it in errors.
    pub async fn load_bytes(&self, bytes: &[u8], source_name: &str) -> Result<Plugin, LoadError> {
        let source_name = source_name.to_owned();
        check_header(bytes, &source_name)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, load) = self
            .compile(bytes.to_vec(), digest.clone(), source_name.clone())
            .await?;
        let wit_version = plugin_wit_version(&component, &self.inner.wasmtime, &source_name)?;
        let v0_2 = semver_compatible(&wit_version, versions::SERVED[1]);
        let linker = if v0_2 {
            &self.inner.linker_v0_2
        } else {
            &self.inner.linker
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports {
                source_name: source_name.clone(),
                message: format!("{e:#}"),
            })?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            source_name: source_name.clone(),
            found: format!("{e:#}"),
        };
        let pre = if v0_2 {
            Pre::V0_2(bindings::v0_2::ReconcilerPre::new(pre).map_err(wrong_world)?)
        } else {
            Pre::V0_1(ReconcilerPre::new(pre).map_err(wrong_world)?)
        };
        let metadata = self.call_metadata(&pre, &source_name).await?;
        metadata
            .validate()
            .map_err(|error| LoadError::InvalidMetadata {
                source_name: source_name.clone(),
                error,
            })?;
        let name: Arc<str> = Arc::from(metadata.name.as_str());
        let digest = format!("sha256:{digest}");
        let attributes = RootSpan::plugin_attributes(&metadata.name, &metadata.version, &digest);
        // Without a grant, HTTP reaches what the plugin asks for.
        let http = Arc::new(Grant::from_request(&metadata).http_policy());
        let meter = self.inner.config.metrics.plugin(&metadata.name);
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                engine: self.clone(),
                pre,
                metadata,
                digest,
                wit_version,
                source_name,
                name,
                attributes,
                limits: self.inner.config.limits,
                backend: Arc::new(NoCluster),
                grant: None,
                http,
                load,
                meter,
            }),
        })
    }

    async fn compile(
        &self,
        bytes: Vec<u8>,
        digest: String,
        source_name: String,
    ) -> Result<(Component, LoadStats), LoadError> {
        let engine = self.inner.wasmtime.clone();
        let cache = self.inner.cache.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            if let Some(component) = cache.as_ref().and_then(|c| c.load(&engine, &digest)) {
                let stats = LoadStats {
                    cached: true,
                    compile: started.elapsed(),
                };
                return Ok((component, stats));
            }
            let component =
                Component::from_binary(&engine, &bytes).map_err(|e| format!("{e:#}"))?;
            let stats = LoadStats {
                cached: false,
                compile: started.elapsed(),
            };
            if let Some(cache) = &cache {
                cache.store(&digest, &component);
            }
            Ok((component, stats))
        })
        .await;
        match compiled {
            Ok(Ok(compiled)) => {
                self.inner.config.metrics.compiled(compiled.1.cached);
                Ok(compiled)
            }
            Ok(Err(message)) => Err(LoadError::Compile {
                source_name,
                message,
            }),
            Err(join) => Err(LoadError::Compile {
                source_name,
                message: format!("the compiler task failed: {join}"),
            }),
        }
    }

    async fn call_metadata(
        &self,
        pre: &Pre,
        source_name: &str,
    ) -> Result<PluginMetadata, LoadError> {
        let log = GuestLog {
            logger: self.inner.logger.clone(),
            plugin: Arc::from(source_name),
        };
        let limits = self.inner.config.limits;
        let mut store = self.store(
            limits,
            Arc::new(DenyDuringMetadata),
            None,
            None,
            GuestTrace::disabled(),
            log,
        );
        let result = tokio::time::timeout(limits.deadline, async {
            match pre {
                Pre::V0_1(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let m = instance
                        .reconcile_plugin_plugin()
                        .call_metadata(&mut store)
                        .await?;
                    Ok(PluginMetadata::from_wit(m))
                }
                Pre::V0_2(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let m = instance
                        .reconcile_plugin_plugin()
                        .call_metadata(&mut store)
                        .await?;
                    Ok::<_, wasmtime::Error>(versions::metadata(m))
                }
            }
        })
        .await;
        let failure = |kind: FailureKind, message: String| LoadError::Metadata {
            source_name: source_name.to_owned(),
            kind: kind.as_str(),
            message,
        };
        match result {
            Ok(Ok(metadata)) => Ok(metadata),
            Ok(Err(error)) => {
                let (kind, message) = classify(
                    &error,
                    store.data().limiter.memory_exceeded,
                    store.data().stderr_tail.panic_message(),
                );
                Err(failure(kind, message))
            }
            Err(_) => Err(failure(
                FailureKind::Timeout,
                format!("no answer within {:?}", limits.deadline),
            )),
        }
    }

    fn store(
        &self,
        limits: Limits,
        backend: SharedBackend,
        grant: Option<Arc<Grant>>,
        http: Option<Arc<HttpPolicy>>,
        trace: GuestTrace,
        log: GuestLog,
    ) -> Store<HostState> {
        let deadline = limits.deadline;
        let until = Instant::now() + deadline;
        let setup = CallSetup {
            memory: limits.memory,
            deadline: until,
            backend,
            grant,
            http,
            metrics: self.inner.config.metrics.clone(),
        };
        let mut store = Store::new(&self.inner.wasmtime, HostState::new(setup, trace, log));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        // Yield to the executor at every tick, so that a busy plugin shares
        // its thread, and trap once the wall-clock deadline has passed.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= until {
                Err(wasmtime::Error::new(DeadlineExceeded(deadline)))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

fn check_header(bytes: &[u8], source_name: &str) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            source_name: source_name.to_owned(),
        });
    }
    // Core modules have version 1 and layer 0; components have layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule {
            source_name: source_name.to_owned(),
        });
    }
    Ok(())
}

/// The version of the contract the component exports, checked for
/// compatibility with this host.
fn plugin_wit_version(
    component: &Component,
    engine: &wasmtime::Engine,
    source_name: &str,
) -> Result<String, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let Some(version) = exports.iter().find_map(|name| {
        name.strip_prefix(PLUGIN_EXPORT)
            .and_then(|rest| rest.strip_prefix('@'))
    }) else {
        let found = if exports.is_empty() {
            "nothing".to_owned()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::WrongWorld {
            source_name: source_name.to_owned(),
            found,
        });
    };
    if !versions::SERVED
        .iter()
        .any(|served| semver_compatible(version, served))
    {
        return Err(LoadError::Version {
            source_name: source_name.to_owned(),
            version: version.to_owned(),
        });
    }
    Ok(version.to_owned())
}

/// Cargo's rule: same major, and for 0.x the same minor.
fn semver_compatible(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        // Pre-releases never match: wasmtime links them by exact name only.
        if v.contains('-') {
            return None;
        }
        let core = v.split('+').next()?;
        let mut it = core.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(a), parts(b)) {
        (Some((a_major, a_minor)), Some((b_major, b_minor))) => {
            a_major == b_major && (a_major > 0 || a_minor == b_minor)
        }
        _ => false,
    }
}

/// `metadata()` may not reach Kubernetes: it runs before any grant applies.
struct DenyDuringMetadata;

#[async_trait::async_trait]
impl K8sBackend for DenyDuringMetadata {
    async fn call(&self, call: K8sCall, _cx: &CallContext) -> Result<K8sResponse, K8sError> {
        Err(K8sError::new(
            K8sErrorKind::Forbidden,
            403,
            "Forbidden",
            format!(
                "{} refused: metadata() may not call the Kubernetes API",
                call.span_name()
            ),
        ))
    }
}

/// A loaded, checked, pre-instantiated plugin version. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

/// A pre-instantiated plugin, per contract version.
#[derive(Clone)]
enum Pre {
    V0_1(ReconcilerPre<HostState>),
    V0_2(bindings::v0_2::ReconcilerPre<HostState>),
}

#[derive(Clone)]
struct PluginInner {
    engine: Engine,
    pre: Pre,
    metadata: PluginMetadata,
    digest: String,
    wit_version: String,
    source_name: String,
    name: Arc<str>,
    attributes: Vec<KeyValue>,
    limits: Limits,
    backend: SharedBackend,
    grant: Option<Arc<Grant>>,
    http: Arc<HttpPolicy>,
    load: LoadStats,
    meter: crate::metrics::PluginMetrics,
}

/// How a plugin's compiled code was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadStats {
    /// From the compile cache (no compile).
    pub cached: bool,
    /// Time to compile, or to read the cached artifact.
    pub compile: Duration,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.metadata.name)
            .field("version", &self.inner.metadata.version)
            .field("digest", &self.inner.digest)
            .field("source", &self.inner.source_name)
            .finish()
    }
}

impl Plugin {
    /// What the plugin said about itself.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.inner.metadata
    }

    /// `sha256:<hex>` of the `.wasm`.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Whether the compiled code came from the cache, and how long it took.
    pub fn load_stats(&self) -> LoadStats {
        self.inner.load
    }

    /// The file (or name) the plugin was loaded from.
    pub fn source_name(&self) -> &str {
        &self.inner.source_name
    }

    /// The version of the WIT contract the plugin was built against.
    pub fn wit_version(&self) -> &str {
        &self.inner.wit_version
    }

    /// The per-call limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// This plugin with other per-call limits.
    pub fn with_limits(&self, limits: Limits) -> Result<Self, EngineError> {
        let max = self.inner.engine.inner.config.max_memory;
        if limits.memory > max {
            return Err(EngineError::MemoryLimit {
                limit: limits.memory,
                max,
            });
        }
        let mut inner = (*self.inner).clone();
        inner.limits = limits;
        Ok(Plugin {
            inner: Arc::new(inner),
        })
    }

    /// This plugin with its Kubernetes calls served by `backend`.
    pub fn with_backend(&self, backend: Arc<dyn K8sBackend>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.backend = backend;
        Plugin {
            inner: Arc::new(inner),
        }
    }

    /// This plugin with its Kubernetes calls checked against `grant`, and
    /// its HTTP requests against the grant's allow-list and bounds.
    pub fn with_grant(&self, grant: Arc<Grant>) -> Self {
        let mut inner = (*self.inner).clone();
        inner.http = Arc::new(grant.http_policy());
        inner.grant = Some(grant);
        Plugin {
            inner: Arc::new(inner),
        }
    }

    /// Where this plugin's reconciles are counted.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        self.inner.engine.metrics()
    }

    /// The grant, if one is enforced.
    pub fn grant(&self) -> Option<&Arc<Grant>> {
        self.inner.grant.as_ref()
    }

    /// Run one reconcile in a fresh instance, inside a `reconcile` span.
    pub async fn reconcile(&self, request: ReconcileRequest) -> Reconciled {
        let started = Instant::now();
        let root = self.start_span(&request);
        let (outcome, stats) = self.run(&request, &root).await;
        self.finish(&request, root, outcome, stats, started)
    }

    /// Starts the `reconcile` root span of `request`. With [`run`](Self::run)
    /// and [`finish`](Self::finish), a caller can do its own work (a
    /// finalizer, say) inside the same span.
    pub fn start_span(&self, request: &ReconcileRequest) -> RootSpan {
        RootSpan::start(
            &self.inner.engine.inner.tracer,
            &self.inner.attributes,
            request,
        )
    }

    /// Runs the plugin in a fresh instance under `root`.
    pub async fn run(&self, request: &ReconcileRequest, root: &RootSpan) -> (Outcome, CallStats) {
        let cx = root.context().clone();
        self.call(request, cx.clone()).with_context(cx).await
    }

    /// Logs the outcome under the root span, and ends it.
    pub fn finish(
        &self,
        request: &ReconcileRequest,
        root: RootSpan,
        outcome: Outcome,
        stats: CallStats,
        started: Instant,
    ) -> Reconciled {
        {
            let _guard = root.context().clone().attach();
            match &outcome {
                Outcome::Failed(failure) => tracing::warn!(
                    plugin = &*self.inner.name,
                    object = %request.object,
                    error.type = failure.kind.as_str(),
                    retry = failure.retry,
                    "reconcile failed: {}",
                    failure.message
                ),
                Outcome::Done | Outcome::RequeueAfter(_) => {
                    tracing::debug!(plugin = &*self.inner.name, object = %request.object, result = outcome.result(), "reconciled")
                }
            }
        }
        let span = root.finish(&outcome, &stats);
        Reconciled {
            outcome,
            trace_id: span.trace_id(),
            span_id: span.span_id(),
            sampled: span.is_sampled(),
            span,
            duration: started.elapsed(),
        }
    }

    /// Instantiates and calls the plugin; returns the outcome and the count
    /// of guest telemetry dropped over the limits.
    async fn call(&self, request: &ReconcileRequest, cx: Context) -> (Outcome, CallStats) {
        let engine = &self.inner.engine;
        let limits = self.inner.limits;
        let log = GuestLog {
            logger: engine.inner.logger.clone(),
            plugin: self.inner.name.clone(),
        };
        let trace = GuestTrace::new(engine.inner.tracer.clone(), cx);
        let mut store = engine.store(
            limits,
            self.inner.backend.clone(),
            self.inner.grant.clone(),
            Some(self.inner.http.clone()),
            trace,
            log,
        );
        let wit_request = request.to_wit();
        let started = Instant::now();
        let result = tokio::time::timeout(limits.deadline, async {
            match &self.inner.pre {
                Pre::V0_1(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .reconcile_plugin_plugin()
                        .call_reconcile(&mut store, &wit_request)
                        .await
                }
                Pre::V0_2(pre) => {
                    let request = versions::request(wit_request, request.generation);
                    let instance = pre.instantiate_async(&mut store).await?;
                    let result = instance
                        .reconcile_plugin_plugin()
                        .call_reconcile(&mut store, &request)
                        .await?;
                    Ok(versions::result(result))
                }
            }
        })
        .await;
        store.data_mut().trace.finish();
        self.inner
            .meter
            .call(store.data().limiter.peak, started.elapsed());
        let stats = CallStats {
            telemetry_dropped: store.data().trace.dropped(),
            cache_reads: store.data().cache_reads,
            http_requests: store.data().http_requests(),
        };
        let failed = |kind, message| {
            Outcome::Failed(Failure {
                kind,
                message,
                retry: true,
            })
        };
        let outcome = match result {
            Err(_) => failed(
                FailureKind::Timeout,
                DeadlineExceeded(limits.deadline).to_string(),
            ),
            Ok(Err(error)) => {
                let (kind, message) = classify(
                    &error,
                    store.data().limiter.memory_exceeded,
                    store.data().stderr_tail.panic_message(),
                );
                failed(kind, message)
            }
            Ok(Ok(Ok(wit::Action::Done))) => Outcome::Done,
            Ok(Ok(Ok(wit::Action::RequeueAfter(ms)))) => {
                Outcome::RequeueAfter(Duration::from_millis(ms))
            }
            Ok(Ok(Err(error))) => plugin_error(error),
        };
        (outcome, stats)
    }
}

fn plugin_error(error: wit::ReconcileError) -> Outcome {
    let size = error.message.len();
    if size > MAX_ERROR_MESSAGE_BYTES {
        let head = crate::caps::trace::truncate(error.message, 120);
        return Outcome::Failed(Failure {
            kind: FailureKind::Plugin,
            message: format!(
                "the plugin returned an error message of {size} bytes, over the limit of {MAX_ERROR_MESSAGE_BYTES}; it starts: {head}"
            ),
            retry: true,
        });
    }
    let kind = match error.kind {
        wit::ErrorKind::Plugin => FailureKind::Plugin,
        wit::ErrorKind::K8s => FailureKind::K8s,
        wit::ErrorKind::Http => FailureKind::Http,
    };
    Outcome::Failed(Failure {
        kind,
        message: error.message,
        retry: error.retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_rules() {
        assert!(semver_compatible("0.1.0", "0.1.0"));
        assert!(semver_compatible("0.1.7", "0.1.0"));
        assert!(!semver_compatible("0.2.0", "0.1.0"));
        assert!(semver_compatible("1.4.0", "1.0.0"));
        assert!(!semver_compatible("2.0.0", "1.0.0"));
        assert!(!semver_compatible("x", "0.1.0"));
        assert!(!semver_compatible("0.2.0-rc.1", "0.2.0"));
    }

    #[test]
    fn wit_version_matches_the_wit_files() {
        let world = include_str!("../../../wit/world.wit");
        assert!(world.contains(&format!("package {WIT_PACKAGE}@{WIT_VERSION};")));
        let next = include_str!("../../../wit/0.2.0/world.wit");
        assert!(next.contains(&format!("package {WIT_PACKAGE}@{};", versions::SERVED[1])));
        assert_eq!(versions::SERVED[0], WIT_VERSION);
    }

    #[test]
    fn headers() {
        assert!(matches!(
            check_header(b"hello world", "f"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0", "f"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0", "f").is_ok());
    }
}
