//! The host conformance suite's runner: cases as data, run against any
//! host of the `reconcile:plugin` contract through an adapter.
//!
//! # Where to start
//!
//! [`run_case`] runs one [`Case`](case::Case): an embedded API server and
//! an OTLP receiver on 127.0.0.1, a plugin directory with the case's
//! plugin and grant, the host under test started through the adapter (an
//! executable given the kubeconfig, the plugin directory and the `OTEL_*`
//! variables), the case's steps, the host's stop (which flushes its
//! spans), then the expectations. [`run_suite`] runs many, in parallel.
//!
//! # Layout
//!
//! - [`case`]: the case format (`case.yaml`).
//! - [`otlp`]: the OTLP receiver (HTTP/protobuf and gRPC).
//! - [`check`]: the expectations: objects, API traffic, spans, logs.
//! - [`junit`]: the JUnit XML report.
//!
//! The runner does not link the host: it knows it only as a process.

pub mod case;
pub mod check;
pub mod junit;
pub mod otlp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use reconcile_apiserver::{ApiServer, ApiServerConfig, Match};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

use case::{Case, ObjectKey, RequestMatch, Step};

/// How cases are run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The adapter: an executable that starts the host under test.
    pub adapter: PathBuf,
    /// The directory of built case plugins (`<plugin>.wasm`).
    pub plugins: PathBuf,
    /// `http/protobuf` or `grpc`.
    pub protocol: String,
    /// Extra environment for every host (after the case's own).
    pub env: BTreeMap<String, String>,
    /// A directory the adapter may use for compiled plugins, shared by
    /// the cases of a run.
    pub cache_dir: Option<PathBuf>,
    /// How long the host may take to start watching.
    pub start_timeout: Duration,
    /// The longest any `wait_spans` or `wait_logs` step waits, whatever
    /// its case says (for runs where cases are expected to fail).
    pub wait_cap: Option<Duration>,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// `None` if it passed; else the first broken expectation.
    pub failure: Option<String>,
    /// How long it took.
    pub took: Duration,
}

/// The host's standard error, as lines, and whether it was closed (the
/// host exited).
#[derive(Clone, Debug, Default)]
struct Lines(Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicBool>);

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once the host has closed its standard error: a wait for
    /// more from it is over.
    fn closed(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A request the case's HTTP server received: its path and `traceparent`.
type HttpSeen = (String, Option<String>);

/// The case's HTTP server on 127.0.0.1: 200 `ok` to any path; it keeps
/// each request's path and `traceparent`.
struct HttpServer {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<HttpSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<HttpSeen>>> = Arc::default();
        let kept = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let kept = kept.clone();
            async move {
                let traceparent = request
                    .headers()
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                kept.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((request.uri().path().to_owned(), traceparent));
                "ok"
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HttpServer { addr, seen, task })
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The host under test, started by the adapter.
struct Host {
    child: tokio::process::Child,
    lines: Lines,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Host {
    fn start(
        options: &Options,
        case: &Case,
        kubeconfig: &Path,
        plugins: &Path,
        otlp: &otlp::Receiver,
    ) -> Result<Self, String> {
        let endpoint = if options.protocol == "grpc" {
            format!("http://{}", otlp.grpc)
        } else {
            format!("http://{}", otlp.http)
        };
        let mut command = tokio::process::Command::new(&options.adapter);
        command
            .env("CONFORMANCE_KUBECONFIG", kubeconfig)
            .env("CONFORMANCE_PLUGINS", plugins)
            .env("OTEL_TRACES_EXPORTER", "otlp")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", &options.protocol)
            .env("OTEL_SERVICE_NAME", "conformance")
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_TRACES_SAMPLER_ARG")
            .env_remove("OTEL_SDK_DISABLED")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: the stop reaches the host even if
            // the adapter did not exec it.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &options.cache_dir {
            command.env("CONFORMANCE_CACHE_DIR", dir);
        }
        for (k, v) in case.env.iter().chain(&options.env) {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot start the adapter {}: {e}",
                options.adapter.display()
            )
        })?;
        let lines = Lines::default();
        let mut reader = None;
        if let Some(stderr) = child.stderr.take() {
            let kept = lines.clone();
            reader = Some(tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    kept.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
                kept.1.store(true, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        Ok(Host {
            child,
            lines,
            reader,
        })
    }

    /// SIGTERM, then (after 30 s) SIGKILL; the exit status's text, once
    /// its last log lines are read.
    async fn stop(&mut self) -> String {
        let status = self.terminate().await;
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    async fn terminate(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("it had exited already ({status})");
        }
        if let Some(pid) = self.child.id() {
            // The whole group (the adapter and what it started).
            if let Some(group) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = self.child.kill().await;
                "killed after 30 s".to_owned()
            }
        }
    }
}

/// The API of an object, by discovery (the runner and the plugin test
/// harness share it).
pub async fn api_of(client: &kube::Client, key: &ObjectKey) -> Result<Api<DynamicObject>, String> {
    let (group, version) = key
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &key.api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &key.kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{} {}: not served ({e})", key.api_version, key.kind))?;
    Ok(match caps.scope {
        kube::discovery::Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            key.namespace.as_deref().unwrap_or("default"),
            &resource,
        ),
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    })
}

fn key_of(object: &Value) -> Result<ObjectKey, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "namespace": object["metadata"]["namespace"],
        "name": object["metadata"]["name"],
    }))
    .map_err(|e| format!("an object without apiVersion, kind or metadata.name: {e}"))
}

/// Server-side applies `object` (a full manifest) as the runner, with force.
pub async fn apply(client: &kube::Client, object: &Value) -> Result<(), String> {
    apply_as(client, object, "conformance").await
}

/// Server-side applies `object` with field manager `manager`, with force.
pub async fn apply_as(client: &kube::Client, object: &Value, manager: &str) -> Result<(), String> {
    let key = key_of(object)?;
    api_of(client, &key)
        .await?
        .patch(
            &key.name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(object),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot apply {} {}: {e}", key.kind, key.name))
}

fn matcher(m: &RequestMatch) -> Match {
    Match {
        verb: m.verb.clone(),
        resource: m.resource.clone(),
        subresource: m.subresource.clone(),
        name: m.name.clone(),
        ..Match::default()
    }
}

/// The host's log lines, each parsed (`Null` for one that is not JSON).
fn parsed(lines: &Lines) -> Vec<Value> {
    lines
        .all()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

/// Requests other than watches and discovery (what a busy host sends).
fn activity(server: &ApiServer) -> usize {
    server
        .faults()
        .requests()
        .iter()
        .filter(|r| r.verb != "watch" && r.verb != "discovery" && !check::by_runner(r))
        .count()
}

/// `${NAME}` in `text`, replaced by `vars[NAME]`.
fn substitute_text(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// `${NAME}` in every string of `value`, replaced by `vars[NAME]`.
fn substitute(value: &Value, vars: &BTreeMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(substitute_text(s, vars)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What a case's steps act on.
struct World<'a> {
    server: &'a ApiServer,
    client: &'a kube::Client,
    otlp: &'a otlp::Receiver,
    vars: BTreeMap<String, String>,
    /// The case plugin's file in the host's plugin directory.
    plugin_file: PathBuf,
    /// The built case plugins.
    built: &'a Path,
    /// The host's standard error.
    lines: &'a Lines,
    /// The marks reached.
    marks: Mutex<check::Marks>,
    /// See [`Options::wait_cap`].
    wait_cap: Option<Duration>,
}

impl World<'_> {
    fn wait_limit(&self, ms: u64) -> Duration {
        let asked = Duration::from_millis(ms);
        self.wait_cap.map_or(asked, |cap| asked.min(cap))
    }

    /// Polls `found` until it reaches `count`; fails when the host has
    /// exited or after `timeout_ms` (capped by [`Options::wait_cap`]).
    async fn wait_count(
        &self,
        what: &str,
        count: usize,
        timeout_ms: u64,
        found: impl Fn() -> Result<usize, String>,
    ) -> Result<(), String> {
        let limit = self.wait_limit(timeout_ms);
        let deadline = Instant::now() + limit;
        loop {
            // Closed before counting: the last lines are in by then.
            let closed = self.lines.closed();
            let n = found()?;
            if n >= count {
                return Ok(());
            }
            if closed {
                return Err(format!("{what}: {n} of {count} when the host exited"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: {n} of {count} after {} ms",
                    limit.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn step(step: &Step, world: &World<'_>) -> Result<(), String> {
    let (server, client, otlp) = (world.server, world.client, world.otlp);
    match step {
        Step::Apply(object) => apply(client, &substitute(object, &world.vars)).await,
        Step::Patch {
            object,
            merge,
            status,
        } => {
            let api = api_of(client, object).await?;
            let patch = Patch::Merge(substitute(merge, &world.vars));
            let params = PatchParams::default();
            let patched = if *status {
                api.patch_status(&object.name, &params, &patch).await
            } else {
                api.patch(&object.name, &params, &patch).await
            };
            patched
                .map(|_| ())
                .map_err(|e| format!("cannot patch {} {}: {e}", object.kind, object.name))
        }
        Step::Delete(object) => api_of(client, object)
            .await?
            .delete(&object.name, &Default::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot delete {} {}: {e}", object.kind, object.name)),
        Step::WaitSpans {
            name,
            count,
            filter,
            timeout_ms,
        } => {
            let what = format!("step wait_spans: {name} spans");
            world
                .wait_count(&what, *count, *timeout_ms, || {
                    Ok(otlp
                        .spans
                        .all()
                        .iter()
                        .filter(|s| {
                            &s.name == name
                                && filter.iter().all(|(k, v)| s.attributes.get(k) == Some(v))
                        })
                        .count())
                })
                .await
        }
        Step::Idle { quiet_ms } => {
            let quiet = Duration::from_millis(*quiet_ms);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut last = (otlp.spans.len(), activity(server));
            let mut since = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let now = (otlp.spans.len(), activity(server));
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= quiet {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("step idle: still busy after 30 s".to_owned());
                }
            }
        }
        Step::WaitLogs {
            message,
            count,
            timeout_ms,
        } => {
            let what = format!("step wait_logs: log lines {message:?}");
            world
                .wait_count(&what, *count, *timeout_ms, || {
                    let mut n = 0;
                    for line in parsed(world.lines) {
                        if let Some(m) = line["message"].as_str()
                            && check::matches(message, m)?
                        {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .await
        }
        Step::Mark(name) => {
            let mark = check::Mark {
                at: std::time::SystemTime::now(),
                log_lines: world.lines.all().len(),
            };
            world
                .marks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), mark);
            Ok(())
        }
        Step::Fail {
            matcher: m,
            status,
            times,
            retry_after_s,
        } => {
            server
                .faults()
                .fail_with(matcher(m), *times, *status, *retry_after_s);
            Ok(())
        }
        Step::Delay { matcher: m, ms } => {
            server
                .faults()
                .delay(matcher(m), Duration::from_millis(*ms));
            Ok(())
        }
        Step::CutWatches => {
            server.faults().cut_watches();
            Ok(())
        }
        Step::ReplacePlugin(name) => {
            let from = world.built.join(format!("{name}.wasm"));
            let tmp = world.plugin_file.with_file_name(".replacing.tmp");
            std::fs::copy(&from, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &world.plugin_file))
                .map_err(|e| format!("cannot put {} in place: {e}", from.display()))
        }
        Step::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Ok(())
        }
    }
}

/// Runs one case against the host the adapter starts.
pub async fn run_case(case: &Case, options: &Options) -> Outcome {
    let started = Instant::now();
    let failure = run(case, options).await.err();
    Outcome {
        name: case.name.clone(),
        failure,
        took: started.elapsed(),
    }
}

async fn run(case: &Case, options: &Options) -> Result<(), String> {
    let wasm = options.plugins.join(format!("{}.wasm", case.plugin));
    if !wasm.is_file() {
        return Err(format!(
            "the case plugin {} is not built ({} is missing)",
            case.plugin,
            wasm.display()
        ));
    }
    let work = tempfile::tempdir().map_err(|e| format!("cannot make a directory: {e}"))?;
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).map_err(|e| e.to_string())?;
    std::fs::copy(&wasm, plugins.join(format!("{}.wasm", case.plugin)))
        .map_err(|e| format!("cannot copy {}: {e}", wasm.display()))?;

    let server = ApiServer::start(ApiServerConfig {
        listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot start the API server: {e}"))?;
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).map_err(|e| e.to_string())?;
    let client = runner_client(&server)?;
    let web = HttpServer::start()
        .await
        .map_err(|e| format!("cannot start the case's HTTP server: {e}"))?;
    let vars: BTreeMap<String, String> = [
        ("API_SERVER".to_owned(), server.addr().to_string()),
        ("HTTP".to_owned(), format!("http://{}", web.addr)),
        ("HTTP_PORT".to_owned(), web.addr.port().to_string()),
    ]
    .into();
    let mut vars = vars;
    vars.extend(digests(&options.plugins));
    let grant = substitute_text(&case.grant, &vars);
    // Span expectations may name a built plugin's digest.
    let span_expects: Vec<case::SpanExpect> = case
        .expect
        .spans
        .iter()
        .cloned()
        .map(|mut e| {
            for v in e.attributes.values_mut().chain(e.filter.values_mut()) {
                *v = substitute_text(v, &vars);
            }
            e
        })
        .collect();
    std::fs::write(plugins.join(format!("{}.grants.toml", case.plugin)), grant)
        .map_err(|e| e.to_string())?;
    for object in &case.objects {
        apply(&client, &substitute(object, &vars)).await?;
    }
    let otlp = otlp::Receiver::start()
        .await
        .map_err(|e| format!("cannot start the OTLP receiver: {e}"))?;
    let mut host = Host::start(options, case, &kubeconfig, &plugins, &otlp)?;

    let result = async {
        // The host is up once it watches.
        let deadline = Instant::now() + options.start_timeout;
        while case.host_watches && !server.faults().requests().iter().any(|r| r.verb == "watch") {
            if Instant::now() > deadline {
                return Err(format!(
                    "the host did not start watching within {} s",
                    options.start_timeout.as_secs_f64()
                ));
            }
            if let Ok(Some(status)) = host.child.try_wait() {
                return Err(format!("the host exited at start ({status})"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let world = World {
            server: &server,
            client: &client,
            otlp: &otlp,
            vars: vars.clone(),
            plugin_file: plugins.join(format!("{}.wasm", case.plugin)),
            built: &options.plugins,
            lines: &host.lines,
            marks: Mutex::default(),
            wait_cap: options.wait_cap,
        };
        for (i, s) in case.steps.iter().enumerate() {
            step(s, &world)
                .await
                .map_err(|e| format!("step {}: {e}", i + 1))?;
        }
        Ok(world.marks.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
    .await;
    let status = host.stop().await;
    let outcome = match result {
        Err(e) => Err(e),
        Ok(marks) => {
            let spans = otlp.spans.all();
            let requests = server.faults().requests();
            let lines = parsed(&host.lines);
            async {
                check::objects(&case.expect.objects, &client).await?;
                check::requests(&case.expect.requests, &requests, &spans, &marks)?;
                check::spans(&span_expects, &spans, &marks)?;
                check::timing(&case.expect.timing, &spans)?;
                check::logs(&case.expect.logs, &lines, &spans, &marks)?;
                check::http_requests(&case.expect.http_requests, &web.seen(), &spans)
            }
            .await
        }
    };
    server.shutdown().await;
    // What the host said last about problems helps to read a failure.
    outcome.map_err(|e| {
        let problems: Vec<String> = host
            .lines
            .all()
            .into_iter()
            .filter(|l| l.contains("\"level\":\"error\"") || l.contains("\"level\":\"warn\""))
            .rev()
            .take(3)
            .collect();
        if problems.is_empty() {
            format!("{e} (host exit: {status})")
        } else {
            format!(
                "{e} (host exit: {status}; its last problems: {})",
                problems.join(" | ")
            )
        }
    })
}

/// `DIGEST:<plugin>` for each built plugin: `sha256:<hex>` of its file.
fn digests(built: &Path) -> BTreeMap<String, String> {
    use sha2::Digest as _;
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(built) else {
        return out;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_some_and(|e| e == "wasm")
            && let (Some(stem), Ok(bytes)) = (path.file_stem(), std::fs::read(&path))
        {
            out.insert(
                format!("DIGEST:{}", stem.to_string_lossy()),
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
            );
        }
    }
    out
}

/// The runner's client of the case's API server: its requests carry
/// [`check::USER_AGENT`], so that expectations see only the host's.
fn runner_client(server: &ApiServer) -> Result<kube::Client, String> {
    let mut config = server
        .client_config()
        .map_err(|e| format!("cannot make a client: {e}"))?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(check::USER_AGENT),
    ));
    kube::Client::try_from(config).map_err(|e| format!("cannot make a client: {e}"))
}

/// Runs `cases`, `jobs` at a time; outcomes in the cases' order.
pub async fn run_suite(cases: &[Case], options: &Options, jobs: usize) -> Vec<Outcome> {
    use futures::StreamExt as _;
    futures::stream::iter(cases.iter().map(|c| run_case(c, options)))
        .buffered(jobs.max(1))
        .collect()
        .await
}

/// The cases that apply to one of the contract versions `served` (all if
/// `served` is empty), and the names of those left out.
pub fn for_contracts(cases: Vec<Case>, served: &[String]) -> (Vec<Case>, Vec<String>) {
    if served.is_empty() {
        return (cases, Vec::new());
    }
    let (kept, left): (Vec<Case>, Vec<Case>) = cases
        .into_iter()
        .partition(|c| c.contract.iter().any(|v| served.contains(v)));
    (kept, left.into_iter().map(|c| c.name).collect())
}

/// The cases whose name contains one of `filters` (all if none).
pub fn select(cases: Vec<Case>, filters: &[String]) -> Vec<Case> {
    if filters.is_empty() {
        return cases;
    }
    cases
        .into_iter()
        .filter(|c| filters.iter().any(|f| c.name.contains(f.as_str())))
        .collect()
}

/// One line per case, and the closing count.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        match &o.failure {
            None => out.push_str(&format!(
                "ok    {} ({:.1} s)\n",
                o.name,
                o.took.as_secs_f64()
            )),
            Some(f) => out.push_str(&format!("FAIL  {}: {f}\n", o.name)),
        }
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        outcomes.len() - failed
    ));
    out
}

/// The project's suite: `tests/conformance/cases`.
pub fn cases_dir() -> PathBuf {
    xtask::project_root().join("tests/conformance/cases")
}

/// The adapter this project ships, for `reconcile-host run`.
pub fn reconcile_host_adapter() -> PathBuf {
    xtask::project_root().join("tests/conformance/adapters/reconcile-host")
}

/// Builds the case plugins; returns their directory.
pub fn build_plugins() -> Result<PathBuf, String> {
    let root = xtask::project_root();
    xtask::build(&root, xtask::CONFORMANCE_PLUGINS)?;
    Ok(root.join(xtask::CONFORMANCE_PLUGINS.out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_substituted_in_every_string() {
        let vars: BTreeMap<String, String> =
            [("API_SERVER".to_owned(), "127.0.0.1:6443".to_owned())].into();
        let value = serde_json::json!({"data": {"connect": "${API_SERVER}", "n": 1}, "l": ["x${API_SERVER}"]});
        assert_eq!(
            substitute(&value, &vars),
            serde_json::json!({"data": {"connect": "127.0.0.1:6443", "n": 1}, "l": ["x127.0.0.1:6443"]})
        );
    }
}
