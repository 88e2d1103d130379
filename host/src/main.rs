//! The `reconcile-host` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};
use reconcile_host::engine::{Engine, EngineConfig, Limits, Plugin};
use reconcile_host::metrics::server::MetricsServer;
use reconcile_host::metrics::{Metrics, MetricsConfig};
use reconcile_host::reconcile::{ObjectRef, Outcome, Reason, ReconcileRequest};
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use reconcile_host::telemetry::{Telemetry, TelemetryConfig, TracesExporter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// mimalloc: reconciles allocate on one worker thread and free on another
/// (a task moves between them, a span ends on the exporter's thread);
/// glibc's arenas serialise those frees on a lock, mimalloc's thread-local
/// heaps do not (see BENCHMARKS.md, "Tracing, retention and metrics").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Kubernetes operator host that runs reconcile logic shipped as
/// WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "reconcile-host", version, about)]
struct Cli {
    /// Log line format (default: text on a terminal, json otherwise).
    #[arg(long, global = true, env = "RECONCILE_HOST_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,

    /// Lowest level logged, for the host and plugins (RUST_LOG refines the host's).
    #[arg(long, global = true, env = "RECONCILE_HOST_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: Level,

    /// Directory of compiled plugins (default: ~/.cache/reconcile-host).
    #[arg(long, global = true, env = "RECONCILE_HOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile plugins on every load, without the cache.
    #[arg(long, global = true)]
    no_cache: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a plugin's metadata, digest and WIT version; fail with one line if it cannot load.
    Inspect {
        /// The plugin (`.wasm`, or `.wasm.gz` compressed with gzip).
        plugin: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run the plugins as controllers against the embedded Kubernetes API
    /// server, after applying manifests; each plugin is granted what it asks.
    /// Spans go to the console unless OTEL_TRACES_EXPORTER says otherwise.
    Dev {
        /// Manifests to apply first: files or directories (CRDs go first).
        #[arg(long)]
        apply: Vec<PathBuf>,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Address of the embedded API server.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Where to write the kubeconfig for kubectl (default:
        /// dev.kubeconfig in the cache directory; the path is printed).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Start a small HTTP server on this loopback address for the
        /// example plugins (`/healthz`, `/status/N`, `/slow`) and grant it
        /// to every plugin.
        #[arg(long)]
        example_http: Option<std::net::SocketAddr>,
    },
    /// Run the plugins as controllers against the cluster of the kubeconfig
    /// (or the in-cluster configuration), with their grant files.
    Run {
        #[command(flatten)]
        operator: OperatorArgs,
        /// Directory of grant files (<plugin-name>.grants.toml); by
        /// default each plugin's grant is next to its .wasm.
        #[arg(long)]
        grants: Option<PathBuf>,
        /// The kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or
        /// the in-cluster configuration).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context to use (default: its current context).
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        coordination: CoordinationArgs,
    },
    /// Print the RBAC (YAML) the plugins' grants need, and the host's own:
    /// a ClusterRole and binding for what is granted in every namespace,
    /// Roles and bindings where grants name namespaces, and the Lease
    /// verbs of leader election or sharding.
    Rbac {
        /// Directory of plugins (*.wasm, *.wasm.gz).
        #[arg(long, default_value = "target/plugins")]
        plugins: PathBuf,
        /// Directory of grant files (default: next to each .wasm).
        #[arg(long)]
        grants: Option<PathBuf>,
        /// The namespace of the host's ServiceAccount and Leases.
        #[arg(long, default_value = "reconcile-host")]
        namespace: String,
        /// The host's ServiceAccount.
        #[arg(long, default_value = "reconcile-host")]
        service_account: String,
        /// The name of the roles and bindings.
        #[arg(long, default_value = "reconcile-host")]
        name: String,
        /// Lease verbs for `run --shards` (besides leader election's).
        #[arg(long)]
        shards: bool,
        /// No Lease rules: one replica, without leader election.
        #[arg(long, conflicts_with = "shards")]
        no_leases: bool,
    },
    /// Serve the embedded Kubernetes API server on loopback until Ctrl-C or
    /// SIGTERM, with a kubeconfig for kubectl.
    Cluster {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// Where to write the kubeconfig (default: cluster.kubeconfig in
        /// the cache directory; the path is printed).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Run case folders in the conformance suite's format against one
    /// plugin (each case's `plugin` is replaced by it) and print the report;
    /// exit non-zero if a case failed. See tests/conformance/README.md.
    Test {
        /// The plugin (`.wasm`, or `.wasm.gz` compressed with gzip).
        plugin: PathBuf,
        /// Case folders (with a case.yaml), or folders of them.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// Cases run at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Run one reconcile of a plugin on an object read from a YAML or JSON file,
    /// without a cluster (Kubernetes calls fail as unavailable). Spans go
    /// to the console unless OTEL_TRACES_EXPORTER says otherwise.
    Call {
        /// The plugin (`.wasm`, or `.wasm.gz` compressed with gzip).
        plugin: PathBuf,
        /// The object to reconcile, as YAML or JSON.
        #[arg(long)]
        object: PathBuf,
        /// The trigger reason.
        #[arg(long, default_value = "object_changed", value_parser = |s: &str| s.parse::<Reason>())]
        reason: Reason,
        /// The attempt number.
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Wall-clock deadline of the call, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        deadline_ms: u64,
        /// Memory limit of the instance, in MiB.
        #[arg(long, default_value_t = 64)]
        memory_mib: usize,
    },
}

/// Options shared by `dev` and `run`.
#[derive(clap::Args, Debug)]
struct OperatorArgs {
    /// Directory of plugins (*.wasm, *.wasm.gz).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Reconciles of one plugin at once (a grant may set its own).
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Longest retry delay after errors, in seconds.
    #[arg(long, default_value_t = 300)]
    max_backoff_s: u64,
    /// Stop once no reconcile is running or waiting for a retry for one
    /// second; exit non-zero if any object's latest reconcile failed.
    /// A controller whose caches cannot sync stops counting as busy after
    /// 60 s (and counts as failed).
    #[arg(long)]
    exit_when_idle: bool,
    /// On SIGTERM or Ctrl-C, how long running reconciles may finish before
    /// they are cut, in seconds (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25.0)]
    shutdown_grace: f64,
    /// Do not watch the plugin directory: the plugins loaded at start run
    /// until the host stops.
    #[arg(long)]
    no_watch: bool,
    /// After a plugin is reloaded, how many of its objects are requeued per
    /// second (each once, with reason plugin_reloaded).
    #[arg(long, default_value_t = 100.0)]
    reload_rate: f64,
    /// How often the plugin directory is scanned besides its change events,
    /// in seconds.
    #[arg(long, default_value_t = 10.0)]
    rescan_s: f64,
    /// Where to serve Prometheus metrics (/metrics): `:8080` is every
    /// interface, `127.0.0.1:8080` one, `0` turns them off [default: `:8080`;
    /// for `dev`, 127.0.0.1:8080, or a free port if it is taken].
    #[arg(long, env = "RECONCILE_HOST_METRICS_BIND_ADDRESS")]
    metrics_bind_address: Option<String>,
    /// Also serve rest_client_request_duration_seconds{verb,host}, which
    /// controller-runtime no longer registers by default.
    #[arg(long)]
    rest_client_latency_metrics: bool,
    /// Where to serve /healthz and /readyz: `:8081` is every interface, `0`
    /// turns them off [default: `:8081`; for `dev`, 127.0.0.1:8081, or a
    /// free port if it is taken].
    #[arg(long, env = "RECONCILE_HOST_HEALTH_PROBE_BIND_ADDRESS")]
    health_probe_bind_address: Option<String>,
}

/// How replicas of `run` share the work (controller-runtime's flag names).
#[derive(clap::Args, Debug)]
struct CoordinationArgs {
    /// Elect a leader through a Lease: only the leader reconciles; the
    /// other replicas keep their caches warm and take over when it stops.
    #[arg(long, env = "RECONCILE_HOST_LEADER_ELECT", conflicts_with = "shards")]
    leader_elect: bool,
    /// Split each plugin's objects into N shards (a Lease each) held by the
    /// replicas, each reconciling about N / replicas of them.
    #[arg(long, env = "RECONCILE_HOST_SHARDS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    shards: Option<u32>,
    /// The Lease's name (with --shards, the prefix of the Leases).
    #[arg(long, default_value = "reconcile-host")]
    leader_election_id: String,
    /// The Leases' namespace [default: POD_NAMESPACE, the ServiceAccount's
    /// namespace in a pod, else default].
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// How long standbys wait, from the last renewal they saw, before
    /// taking the lease of a leader that stopped renewing, in seconds.
    #[arg(long, default_value_t = 15.0)]
    leader_elect_lease_duration: f64,
    /// How long a leader keeps reconciling without a successful renewal, in
    /// seconds; then it stops at once and exits.
    #[arg(long, default_value_t = 10.0)]
    leader_elect_renew_deadline: f64,
    /// How often leases are renewed and tried, in seconds.
    #[arg(long, default_value_t = 2.0)]
    leader_elect_retry_period: f64,
}

impl CoordinationArgs {
    fn config(
        &self,
        identity: &str,
    ) -> anyhow::Result<Option<reconcile_host::lease::CoordinationConfig>> {
        use reconcile_host::lease::{CoordinationConfig, Mode, Timings};
        let mode = match (self.leader_elect, self.shards) {
            (_, Some(n)) => Mode::Shards(n),
            (true, None) => Mode::Leader,
            (false, None) => return Ok(None),
        };
        let seconds = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{flag} takes a number of seconds, more than 0"))
        };
        let timings = Timings {
            lease_duration: seconds(
                "leader-elect-lease-duration",
                self.leader_elect_lease_duration,
            )?,
            renew_deadline: seconds(
                "leader-elect-renew-deadline",
                self.leader_elect_renew_deadline,
            )?,
            retry_period: seconds("leader-elect-retry-period", self.leader_elect_retry_period)?,
        };
        timings
            .check()
            .map_err(|e| anyhow::anyhow!("leader election timings: {e}"))?;
        Ok(Some(CoordinationConfig {
            mode,
            namespace: self
                .leader_election_namespace
                .clone()
                .unwrap_or_else(reconcile_host::lease::default_namespace),
            id: self.leader_election_id.clone(),
            identity: identity.to_owned(),
            timings,
        }))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

fn main() -> ExitCode {
    // SAFETY: no other thread has started yet.
    #[allow(unsafe_code)]
    unsafe {
        reconcile_host::engine::disable_library_backtraces();
    }
    let cli = Cli::parse();
    reconcile_host::telemetry::install_crypto_provider();
    let format = cli
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        });
    // `inspect` reports a failing metadata() in its one error line (panic
    // message included); the plugin's own output shows only when debugging.
    let plugin_level = match cli.command {
        Command::Inspect { .. } if cli.log_level > Level::Debug => Level::Error,
        _ => cli.log_level,
    };
    let logger = Logger::stderr(format, plugin_level);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level_directive(cli.log_level)));
    tracing_subscriber::registry()
        .with(logger.layer().with_filter(filter))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, logger)) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed and what to do.
            let message = format!("{e:#}").replace('\n', "; ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn level_directive(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// `--cache-dir`, else `$XDG_CACHE_HOME/reconcile-host` or
/// `~/.cache/reconcile-host`.
fn host_cache_dir(cli: &Cli) -> Option<PathBuf> {
    cli.cache_dir.clone().or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("reconcile-host"))
    })
}

fn cache_dir(cli: &Cli) -> Option<PathBuf> {
    if cli.no_cache {
        return None;
    }
    host_cache_dir(cli)
}

/// Where `dev` and `cluster` write their kubeconfig unless told: the cache
/// directory, else the system's temporary directory.
fn default_kubeconfig(cli: &Cli, file: &str) -> PathBuf {
    host_cache_dir(cli)
        .unwrap_or_else(|| std::env::temp_dir().join("reconcile-host"))
        .join(file)
}

async fn run(cli: Cli, logger: Logger) -> anyhow::Result<ExitCode> {
    let cache_dir = cache_dir(&cli);
    let dev_kubeconfig = default_kubeconfig(&cli, "dev.kubeconfig");
    let cluster_kubeconfig = default_kubeconfig(&cli, "cluster.kubeconfig");
    match cli.command {
        Command::Inspect { plugin, output } => {
            let (engine, _telemetry) = loading_engine(cache_dir, logger)?;
            let plugin = engine.load_file(&plugin).await?;
            match output {
                Output::Text => print!("{}", describe(&plugin, &plugin_path_display(&plugin))),
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&inspect_json(&plugin))?)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rbac {
            plugins,
            grants,
            namespace,
            service_account,
            name,
            shards,
            no_leases,
        } => {
            let (engine, _telemetry) = loading_engine(cache_dir, logger)?;
            let policy = reconcile_host::operator::GrantPolicy::Files(grants);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&plugins)
                .with_context(|| format!("cannot read the plugin directory {}", plugins.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        reconcile_host::files::is_plugin_name(&n.to_string_lossy())
                    })
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(reconcile_host::operator::OperatorError::NoPlugins(plugins).into());
            }
            let mut needs = reconcile_host::rbac::Needs::default();
            let mut names = Vec::new();
            for file in &files {
                let plugin = reconcile_host::operator::load_plugin(&engine, file, &policy).await?;
                if let Some(grant) = plugin.grant() {
                    needs.plugin(plugin.metadata(), grant);
                }
                names.push(plugin.metadata().name.clone());
            }
            if !no_leases {
                needs.leases(&namespace, shards);
            }
            for unused in &needs.unused {
                tracing::warn!("left out: {unused}");
            }
            let manifests =
                reconcile_host::rbac::manifests(&needs, &name, &namespace, &service_account);
            print!(
                "# RBAC for reconcile-host with {} in {namespace}, from `reconcile-host rbac`{}\n{}",
                names.join(", "),
                if shards {
                    " --shards"
                } else if no_leases {
                    " --no-leases"
                } else {
                    ""
                },
                reconcile_host::rbac::to_yaml(&manifests).map_err(anyhow::Error::msg)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster { listen, kubeconfig } => {
            cluster(listen, &kubeconfig.unwrap_or(cluster_kubeconfig)).await
        }
        Command::Dev {
            apply,
            operator,
            listen,
            kubeconfig,
            example_http,
        } => {
            let config = human_view(&logger);
            operate(
                &config,
                cache_dir,
                logger,
                operator,
                Target::Dev {
                    apply,
                    listen,
                    kubeconfig: kubeconfig.unwrap_or(dev_kubeconfig),
                    example_http,
                },
            )
            .await
        }
        Command::Run {
            operator,
            grants,
            kubeconfig,
            context,
            coordination,
        } => {
            let config = TelemetryConfig::from_env();
            operate(
                &config,
                cache_dir,
                logger,
                operator,
                Target::Cluster {
                    grants,
                    kubeconfig,
                    context,
                    coordination,
                },
            )
            .await
        }
        Command::Test {
            plugin,
            cases,
            jobs,
        } => {
            let cases =
                reconcile_host::plugin_test::load_cases(&cases).map_err(anyhow::Error::msg)?;
            let host = std::env::current_exe().context("cannot find this executable")?;
            let (report, passed) = reconcile_host::plugin_test::run(&plugin, cases, jobs, &host)
                .await
                .map_err(anyhow::Error::msg)?;
            print!("{report}");
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Call {
            plugin,
            object,
            reason,
            attempt,
            deadline_ms,
            memory_mib,
        } => {
            let config = human_view(&logger);
            let telemetry = Telemetry::init(&config)?;
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let limits = Limits {
                deadline: Duration::from_millis(deadline_ms),
                memory: memory_mib * 1024 * 1024,
            };
            let engine = Engine::new(
                EngineConfig {
                    cache_dir,
                    limits,
                    ..EngineConfig::default()
                },
                telemetry.tracer(),
                logger,
            )?;
            let result = call(&engine, &plugin, &object, reason, attempt).await;
            flush(&telemetry, config.shutdown_timeout);
            result
        }
    }
}

/// An engine for loading plugins only (`inspect`, `rbac`): loading runs
/// metadata(), which makes no spans, so nothing is exported.
fn loading_engine(
    cache_dir: Option<PathBuf>,
    logger: Logger,
) -> anyhow::Result<(Engine, Telemetry)> {
    let telemetry =
        Telemetry::init(&TelemetryConfig::from_env().default_exporter(TracesExporter::None))?;
    let engine = Engine::new(
        EngineConfig {
            cache_dir,
            ..EngineConfig::default()
        },
        telemetry.tracer(),
        logger,
    )?;
    Ok((engine, telemetry))
}

/// The telemetry of `dev` and `call`: unless `OTEL_TRACES_EXPORTER` says
/// otherwise, each trace is printed as a tree on standard output with the
/// log lines of its reconcile.
fn human_view(logger: &Logger) -> TelemetryConfig {
    let tree = reconcile_host::telemetry::tree::TreeView::stdout();
    let config = TelemetryConfig::from_env().default_exporter(TracesExporter::Tree(tree.clone()));
    if config.exporter == TracesExporter::Tree(tree.clone()) {
        logger.attach_tree(tree);
    }
    config
}

/// Where `dev` and `run` reconcile.
enum Target {
    Dev {
        apply: Vec<PathBuf>,
        listen: std::net::SocketAddr,
        kubeconfig: PathBuf,
        example_http: Option<std::net::SocketAddr>,
    },
    Cluster {
        grants: Option<PathBuf>,
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        coordination: CoordinationArgs,
    },
}

/// The client of `run`: the kubeconfig file and context asked for, else
/// `KUBECONFIG`, `~/.kube/config` or the in-cluster configuration.
async fn cluster_client(
    kubeconfig: Option<&Path>,
    context: Option<String>,
    metrics: &Metrics,
    identity: &str,
) -> anyhow::Result<kube::Client> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match (kubeconfig, &options.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("cannot use the kubeconfig context {context}"))?,
        (None, None) => Config::infer().await.context(
            "cannot reach a cluster: pass --kubeconfig, set KUBECONFIG, or run inside a pod",
        )?,
    };
    // The API server's audit log says which replica wrote what.
    let mut config = config;
    if let Ok(agent) = http::HeaderValue::from_str(&format!(
        "reconcile-host/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    reconcile_host::operator::host_client(config, metrics)
        .context("cannot create a Kubernetes client")
}

/// Binds a host endpoint: the address `value` says (or `default`); for
/// `dev` with no address given, a free port when the default is taken.
async fn bind_endpoint<T, F, Fut>(
    flag: &str,
    value: Option<&str>,
    default: &str,
    dev: bool,
    start: F,
) -> anyhow::Result<Option<T>>
where
    F: Fn(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let addr = reconcile_host::metrics::server::parse_bind_address(value.unwrap_or(default))
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    let Some(addr) = addr else {
        return Ok(None);
    };
    match start(addr).await {
        Ok(server) => Ok(Some(server)),
        Err(e) if dev && value.is_none() => {
            let mut free = addr;
            free.set_port(0);
            let server = start(free)
                .await
                .with_context(|| format!("cannot listen on {free} for --{flag}"))?;
            tracing::warn!("cannot listen on {addr} for --{flag} ({e}): using a free port instead");
            Ok(Some(server))
        }
        Err(e) => bail!(
            "cannot listen on {addr} for --{flag}: {e}; pass --{flag} with a free address, or 0 to turn it off"
        ),
    }
}

/// Starts the metrics endpoint `args` asks for: none, or the one serving
/// `metrics`. `dev` serves on loopback, on a free port if 8080 is taken.
async fn metrics_server(
    args: &OperatorArgs,
    dev: bool,
    telemetry: &Telemetry,
) -> anyhow::Result<(Metrics, Option<MetricsServer>)> {
    let default = if dev { "127.0.0.1:8080" } else { ":8080" };
    let value = args.metrics_bind_address.as_deref();
    if reconcile_host::metrics::server::parse_bind_address(value.unwrap_or(default))
        .map_err(|e| anyhow::anyhow!("--metrics-bind-address: {e}"))?
        .is_none()
    {
        return Ok((Metrics::disabled(), None));
    }
    let metrics = Metrics::new(
        &MetricsConfig {
            rest_latency: args.rest_client_latency_metrics,
        },
        Some(telemetry.clone()),
    );
    let server = bind_endpoint("metrics-bind-address", value, default, dev, |addr| {
        MetricsServer::start(addr, metrics.clone())
    })
    .await?;
    if let Some(server) = &server {
        tracing::info!(url = %server.url(), "serving metrics at {}", server.url());
    }
    Ok((metrics, server))
}

async fn operate(
    config: &TelemetryConfig,
    cache_dir: Option<PathBuf>,
    logger: Logger,
    args: OperatorArgs,
    target: Target,
) -> anyhow::Result<ExitCode> {
    use reconcile_host::operator::{self, ControllerSettings, GrantPolicy, Operator};
    use reconcile_host::reload::{ReloadConfig, Reloader};
    // Telemetry first: it never waits for the collector.
    let telemetry = Telemetry::init(config)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let result = async {
        let dev = matches!(target, Target::Dev { .. });
        let (metrics, metrics_server) = metrics_server(&args, dev, &telemetry).await?;
        let identity = reconcile_host::lease::identity();
        let mut example_server = None;
        let (server, client, policy, coordination) = match target {
            Target::Dev { apply, listen, kubeconfig, example_http } => {
                let mut http = Vec::new();
                if let Some(addr) = example_http {
                    match reconcile_host::example_http::ExampleHttp::start(addr).await {
                        Ok(started) => {
                            let url = format!("http://{}", started.addr());
                            tracing::info!(%url, "example HTTP server running (/healthz, /status/N, /slow); granted to every plugin");
                            http.push(reconcile_host::grants::HttpGrant { url, private: false });
                            example_server = Some(started);
                        }
                        Err(e) => tracing::warn!("cannot start the example HTTP server on {addr}: {e}; the examples that call it will report it unreachable"),
                    }
                }
                let server = reconcile_apiserver::ApiServer::start(reconcile_apiserver::ApiServerConfig { listen, ..Default::default() }).await?;
                if let Some(dir) = kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                std::fs::write(&kubeconfig, server.kubeconfig()).with_context(|| format!("cannot write {}", kubeconfig.display()))?;
                let client = reconcile_host::operator::host_client(server.client_config()?, &metrics).context("cannot create a Kubernetes client")?;
                let manifests = operator::manifests::read(&apply)?;
                for applied in operator::manifests::apply(&client, &manifests).await? {
                    tracing::info!(object = %applied, "applied");
                }
                tracing::info!(url = %server.url(), kubeconfig = %kubeconfig.display(), "embedded API server running: kubectl --kubeconfig {}", kubeconfig.display());
                (Some(server), client, GrantPolicy::AsRequested { http }, None)
            }
            Target::Cluster { grants, kubeconfig, context, coordination } => {
                let coordination = coordination.config(&identity)?;
                let client = cluster_client(kubeconfig.as_deref(), context, &metrics, &identity).await?;
                (None, client, GrantPolicy::Files(grants), coordination)
            }
        };
        // The Lease verbs first: without them there is no coordination.
        if let Some(config) = &coordination {
            let mut needs = reconcile_host::rbac::Needs::default();
            needs.leases(&config.namespace, matches!(config.mode, reconcile_host::lease::Mode::Shards(_)));
            match reconcile_host::rbac::missing(&client, &needs).await {
                Ok(missing) if !missing.is_empty() => bail!(
                    "the host may not use its Leases: it lacks {}; apply what `reconcile-host rbac{}` prints",
                    missing.join(", "),
                    if matches!(config.mode, reconcile_host::lease::Mode::Shards(_)) { " --shards" } else { "" }
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot check the host's access to its Leases ({e})"),
            }
        }
        // Leases first: a standby is one from the start, its caches warm.
        let mut coordination = coordination.map(|config| {
            match config.mode {
                reconcile_host::lease::Mode::Leader => tracing::info!(lease = %format!("{}/{}", config.namespace, config.id), identity = %config.identity, "leader election: only the holder of the lease reconciles"),
                reconcile_host::lease::Mode::Shards(n) => tracing::info!(leases = %format!("{}/{}-shard-0..{}", config.namespace, config.id, n.saturating_sub(1)), identity = %config.identity, "sharding: objects split into {n} shards"),
            }
            reconcile_host::lease::Coordination::start(client.clone(), config)
        });
        let engine = Engine::new(EngineConfig { cache_dir, metrics, ..EngineConfig::default() }, telemetry.tracer(), logger)?;
        if !(0.001..=1_000_000.0).contains(&args.reload_rate) {
            bail!("--reload-rate takes a number of objects per second, from 0.001 to 1000000");
        }
        let rescan = Duration::try_from_secs_f64(args.rescan_s)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--rescan-s takes a number of seconds, more than 0")?;
        let settings = ControllerSettings {
            concurrency: args.concurrency.max(1),
            backoff_max: Duration::from_secs(args.max_backoff_s.max(1)),
            shutdown_grace: Duration::try_from_secs_f64(args.shutdown_grace)
                .context("--shutdown-grace takes a number of seconds, 0 or more")?,
            reload_rate: args.reload_rate,
            ownership: coordination.as_ref().map(|c| c.ownership()).unwrap_or_default(),
            ..ControllerSettings::default()
        };
        let operator = std::sync::Arc::new(Operator::new(client, settings, telemetry.tracer()));
        let health = reconcile_host::probes::Health::new(operator.activity().clone());
        let _heartbeat = AbortOnDrop(health.heartbeat());
        if let Some(c) = &coordination {
            health.coordinated(c.readiness());
        }
        let probes = bind_endpoint(
            "health-probe-bind-address",
            args.health_probe_bind_address.as_deref(),
            if dev { "127.0.0.1:8081" } else { ":8081" },
            dev,
            |addr| {
                let health = health.clone();
                async move { reconcile_host::probes::ProbeServer::start(addr, health) }
            },
        )
        .await?;
        if let Some(probes) = &probes {
            tracing::info!(url = %probes.url(), "serving /healthz and /readyz at {}", probes.url());
        }
        let mut reload = ReloadConfig::new(args.plugins.clone(), policy);
        reload.rescan = rescan;
        // `dev` is the embedded server's admin; `run` checks its identity.
        reload.check_access = !dev;
        let mut reloader = Reloader::new(engine, operator.clone(), telemetry.tracer(), reload);
        // A plugin that does not load does not keep the others from running.
        let report = reloader.scan().await?;
        if !report.failed.is_empty() {
            let n = report.failed.len();
            let files: Vec<String> = report.failed.iter().map(|(f, _)| f.display().to_string()).collect();
            tracing::error!("{n} plugin{} did not load (the others run): {}", if n == 1 { "" } else { "s" }, files.join(", "));
        }
        if report.started.is_empty() {
            if args.exit_when_idle && report.failed.is_empty() {
                return Err(operator::OperatorError::NoPlugins(args.plugins.clone()).into());
            }
            tracing::warn!(dir = %args.plugins.display(), "no plugin runs: build them with `cargo xtask plugins` or copy a .wasm into {}", args.plugins.display());
        }
        health.loaded();
        let (stop_watching, watching) = tokio::sync::watch::channel(false);
        let watcher = (!args.no_watch).then(|| {
            tracing::info!(dir = %args.plugins.display(), "watching for plugin changes");
            let mut watching = watching;
            tokio::spawn(reloader.watch(async move {
                let _ = watching.wait_for(|s| *s).await;
            }))
        });
        let lost = async {
            match coordination.as_mut() {
                Some(c) => c.lost().await,
                None => std::future::pending().await,
            }
        };
        let idle_wait = async {
            if !args.exit_when_idle {
                return std::future::pending().await;
            }
            let activity = operator.activity().clone();
            while !activity.idle_for(Duration::from_secs(1)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let idle = tokio::select! {
            () = idle_wait => true,
            () = shutdown_signal() => false,
            lost = lost => {
                // Nothing starts and nothing is written any more (the
                // ownership's deadline has passed); exit without waiting
                // for running reconciles, as controller-runtime does.
                health.stopping();
                tracing::error!("{lost}: exiting so that no reconcile runs without the lease; restarted, this replica is a standby");
                return Ok(ExitCode::FAILURE);
            }
        };
        health.stopping();
        if !idle {
            tracing::info!("stopping: running reconciles may finish within {}s", args.shutdown_grace);
        }
        let failures = operator.activity().failures();
        let reconciles = operator.activity().reconciles();
        let activity = operator.activity().clone();
        // Together: a reload draining a controller stops with the rest,
        // within one grace.
        let _ = stop_watching.send(true);
        let watched = async {
            if let Some(watcher) = watcher {
                let _ = watcher.await;
            }
        };
        tokio::join!(watched, operator.stop());
        // Reconciles have stopped: the leases go, a standby takes over now.
        if let Some(coordination) = coordination {
            coordination.stop().await;
        }
        drop(probes);
        if let Some(server) = server {
            server.shutdown().await;
        }
        drop(example_server);
        drop(metrics_server);
        for (object, failure) in &failures {
            tracing::error!(object = %object, "latest reconcile failed: {failure}");
        }
        tracing::info!(reconciles, failed = failures.len(), cut = activity.cut(), "stopped");
        // A stop by signal is a clean exit; idle with failures is not.
        Ok::<_, anyhow::Error>(if idle && !failures.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }
    .await;
    flush(&telemetry, config.shutdown_timeout);
    result
}

async fn cluster(listen: std::net::SocketAddr, kubeconfig: &Path) -> anyhow::Result<ExitCode> {
    let config = reconcile_apiserver::ApiServerConfig {
        listen,
        ..Default::default()
    };
    let server = reconcile_apiserver::ApiServer::start(config).await?;
    if let Some(dir) = kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(kubeconfig, server.kubeconfig())
        .with_context(|| format!("cannot write {}", kubeconfig.display()))?;
    println!("serving the Kubernetes API at {}", server.url());
    println!(
        "kubeconfig: {0}  (try: kubectl --kubeconfig {0} get namespaces)",
        kubeconfig.display()
    );
    tracing::info!(url = %server.url(), kubeconfig = %kubeconfig.display(), "embedded API server running");
    shutdown_signal().await;
    tracing::info!("stopping the embedded API server");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Flushes spans, and says how many never reached the collector.
fn flush(telemetry: &Telemetry, timeout: Duration) {
    if let Err(e) = telemetry.shutdown(timeout) {
        tracing::warn!("spans may be lost: {e}");
    }
    let dropped = telemetry.dropped_spans();
    if dropped > 0 {
        tracing::warn!(dropped, "{dropped} spans could not be exported in all");
    }
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

async fn call(
    engine: &Engine,
    plugin: &Path,
    object: &Path,
    reason: Reason,
    attempt: u32,
) -> anyhow::Result<ExitCode> {
    let plugin = engine.load_file(plugin).await?;
    let text = reconcile_host::files::read_text(object, reconcile_host::files::MAX_TEXT_BYTES)
        .with_context(|| format!("cannot read {}", object.display()))?;
    let value = reconcile_host::operator::manifests::first_object(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a YAML or JSON object: {e}", object.display()))?;
    if value.more {
        tracing::warn!(
            file = %object.display(),
            "the file holds more than one object: reconciling the first"
        );
    }
    let value = value.object;
    let object_ref = object_ref(&value)
        .with_context(|| format!("{} is not a Kubernetes object", object.display()))?;
    let mut request = ReconcileRequest::new(object_ref, Some(value.to_string()));
    request.reason = reason;
    request.attempt = attempt;
    let reconciled = plugin.reconcile(request).await;
    // Log under the finished reconcile's span, so the line has its ids.
    let span = SpanContext::new(
        reconciled.trace_id,
        reconciled.span_id,
        TraceFlags::default(),
        false,
        TraceState::default(),
    );
    let _guard = opentelemetry::Context::new()
        .with_remote_span_context(span)
        .attach();
    match &reconciled.outcome {
        Outcome::Done => tracing::info!(result = "done", "reconcile finished"),
        Outcome::RequeueAfter(after) => {
            tracing::info!(
                result = "requeue",
                after_ms = after.as_millis() as u64,
                "reconcile finished"
            )
        }
        Outcome::Failed(failure) => {
            tracing::error!(result = "error", error.type = failure.kind.as_str(), "reconcile failed: {}", failure.message);
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn object_ref(value: &serde_json::Value) -> anyhow::Result<ObjectRef> {
    let api_version = value["apiVersion"]
        .as_str()
        .context("apiVersion is missing")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = value["kind"].as_str().context("kind is missing")?;
    let name = value["metadata"]["name"]
        .as_str()
        .context("metadata.name is missing")?;
    if name.is_empty() {
        bail!("metadata.name is empty");
    }
    Ok(ObjectRef {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        namespace: value["metadata"]["namespace"].as_str().map(str::to_owned),
        name: name.to_owned(),
    })
}

fn plugin_path_display(plugin: &Plugin) -> String {
    format!("{plugin:?}")
}

fn resource_line(r: &reconcile_host::caps::k8s::ResourceType) -> String {
    let api_version = if r.group.is_empty() {
        r.version.clone()
    } else {
        format!("{}/{}", r.group, r.version)
    };
    let scope = if r.namespaced {
        "namespaced"
    } else {
        "cluster"
    };
    format!("{api_version} {} ({}, {scope})", r.kind, r.plural)
}

fn describe(plugin: &Plugin, _debug: &str) -> String {
    use std::fmt::Write as _;
    let m = plugin.metadata();
    let mut out = String::new();
    let _ = writeln!(out, "plugin:      {} {}", m.name, m.version);
    let _ = writeln!(out, "digest:      {}", plugin.digest());
    let _ = writeln!(
        out,
        "wit:         reconcile:plugin@{}",
        plugin.wit_version()
    );
    let _ = writeln!(out, "reconciles:  {}", resource_line(&m.primary));
    if m.owns.is_empty() {
        let _ = writeln!(out, "owns:        (nothing)");
    }
    for (i, owned) in m.owns.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{}",
            if i == 0 {
                "owns:        "
            } else {
                "             "
            },
            resource_line(owned)
        );
    }
    if m.access.resources.is_empty() {
        let _ = writeln!(out, "access:      (nothing)");
    }
    for (i, access) in m.access.resources.iter().enumerate() {
        let verbs: Vec<String> = access.verbs.iter().map(ToString::to_string).collect();
        let r = &access.resource;
        let api_version = if r.group.is_empty() {
            r.version.clone()
        } else {
            format!("{}/{}", r.group, r.version)
        };
        let _ = writeln!(
            out,
            "{}{api_version} {}: {}",
            if i == 0 {
                "access:      "
            } else {
                "             "
            },
            r.kind,
            verbs.join(", ")
        );
    }
    let hosts = if m.access.http_hosts.is_empty() {
        "(none)".to_owned()
    } else {
        m.access.http_hosts.join(", ")
    };
    let _ = writeln!(out, "http hosts:  {hosts}");
    let _ = writeln!(
        out,
        "finalizer:   {}",
        m.finalizer.as_deref().unwrap_or("(none)")
    );
    if let Some(selector) = &m.primary_selector {
        let _ = writeln!(out, "selects:     {selector}");
    }
    if let Some(manager) = &m.field_manager {
        let _ = writeln!(out, "writes as:   {manager}");
    }
    out
}

fn inspect_json(plugin: &Plugin) -> serde_json::Value {
    serde_json::json!({
        "metadata": plugin.metadata(),
        "digest": plugin.digest(),
        "wit": format!("reconcile:plugin@{}", plugin.wit_version()),
    })
}
