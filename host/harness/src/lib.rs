//! `reconcile-test`: tests for reconcile-host plugins.
//!
//! A [`Harness`] loads a plugin's `.wasm` (or builds the crate under test
//! for `wasm32-wasip2` first) into the real engine, with the host's own
//! reconcile logic (reasons, attempts, finalizer, backoff), its traced
//! Kubernetes backend and cache reads, against the embedded API server on
//! loopback, and an in-memory span exporter. Nothing runs by itself: the
//! test applies objects, then steps the plugin one reconcile at a time
//! ([`Harness::reconcile`]) or runs what is queued ([`Harness::settle`],
//! [`Harness::run_until_idle`], [`Harness::advance`]) on a virtual clock,
//! so that a requeue after an hour takes no time. Then it asserts objects
//! ([`Harness::get`]), the calls the plugin made ([`Harness::calls`]), the
//! spans of the last reconcile as a tree ([`Harness::spans`]), log lines
//! and Events.
//!
//! ```ignore
//! let mut h = Harness::build(reconcile_test::this_crate!()).crd::<DemoApp>().start().await?;
//! h.apply(&app).await?;
//! assert_eq!(h.reconcile(&app).await?, Outcome::Done);
//! h.spans().root().child("k8s.apply").assert_attr("k8s.resource", "apps/v1/Deployment");
//! ```
//!
//! # Where to start
//!
//! [`Harness::build`] and [`Builder`]; then the methods of [`Harness`].
//!
//! # Layout
//!
//! - this file: the harness, its queue and clock, objects, faults.
//! - [`spans`]: the spans of one reconcile as a tree, with assertions.
//! - [`calls`]: the requests a plugin sent, as the API server got them.
//! - [`http`]: an HTTP server on loopback for plugins that make requests,
//!   with faults.
//!
//! How it differs from the host:
//! - triggers come from listing the plugin's types after each step (what
//!   changed since the last step is what a watch would have delivered,
//!   coalesced), not from watches; so a cut watch cannot be injected here
//!   (the conformance suite pins the host's watches);
//! - reconciles run one at a time, the earliest due first (ties by
//!   namespace and name); the grant's `concurrency` does not apply;
//! - the clock is virtual for the queue only: the plugin's own clock
//!   (`wasi:clocks`) is the real one, so a plugin comparing timestamps
//!   sees seconds pass where the queue jumped an hour;
//! - an explicit [`Harness::reconcile`] of an object nothing changed runs
//!   with the reason the host would compute (`owned_object_changed`, as
//!   for any trigger without a change of its own).

pub mod calls;
pub mod http;
pub mod spans;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};
use reconcile_apiserver::{ApiServer, ApiServerConfig, Match};
use reconcile_host::engine::{Engine, EngineConfig, Plugin};
use reconcile_host::grants::Grant;
use reconcile_host::operator::backend::{Cache, KubeBackend, Ready, api_resource};
use reconcile_host::operator::controller::{ControllerSettings, Driver, Next};
use reconcile_host::operator::watch::Namespaces;
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use calls::Call;
pub use http::TestHttp;
pub use reconcile_host::reconcile::{Failure, FailureKind, Outcome};
pub use spans::{SpanNode, SpanTree};

/// Reconciles [`Harness::run_until_idle`] runs before it gives up.
pub const MAX_RECONCILES: usize = 200;

/// The user agent of the harness's own requests.
const USER_AGENT: &str = "reconcile-test";

/// The crate this is expanded in (its `Cargo.toml` directory), to build
/// for `wasm32-wasip2` and test: `Harness::build(this_crate!())`.
#[macro_export]
macro_rules! this_crate {
    () => {
        $crate::PluginSource::Crate(::std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
    };
}

/// Where the plugin under test comes from.
#[derive(Clone, Debug)]
pub enum PluginSource {
    /// A built component.
    Wasm(PathBuf),
    /// A crate to build with `cargo build --release --target wasm32-wasip2`.
    Crate(PathBuf),
}

impl From<PathBuf> for PluginSource {
    fn from(path: PathBuf) -> Self {
        PluginSource::Wasm(path)
    }
}

impl From<&Path> for PluginSource {
    fn from(path: &Path) -> Self {
        PluginSource::Wasm(path.to_path_buf())
    }
}

/// What went wrong, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin could not be built.
    #[error("cannot build the plugin: {0}")]
    Build(String),
    /// The plugin or its grant could not be loaded.
    #[error("cannot load the plugin: {0}")]
    Load(String),
    /// The harness could not start.
    #[error("cannot start the harness: {0}")]
    Start(String),
    /// A call to the API server failed.
    #[error("{0}")]
    Api(String),
    /// No such primary object to reconcile.
    #[error("no {kind} {key} to reconcile: apply it first{also}")]
    NotFound {
        /// The primary kind.
        kind: String,
        /// namespace/name.
        key: String,
        /// A hint.
        also: String,
    },
    /// The host had nothing for the plugin to do with the object (it is
    /// being deleted and carries no finalizer of the plugin).
    #[error(
        "{0} is being deleted without the plugin's finalizer: the host does not call the plugin"
    )]
    NothingToDo(String),
    /// The queue did not empty.
    #[error(
        "still busy after {MAX_RECONCILES} reconciles (virtual clock at {now:?}); queued: {queued}; a plugin that always requeues is never idle: step it with advance()"
    )]
    StillBusy {
        /// The virtual clock.
        now: Duration,
        /// What is queued.
        queued: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn api_error(what: impl std::fmt::Display) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Api(format!("{what}: {e}"))
}

/// The plugin's requests (the host's too, as its finalizer patch) of
/// `verb` on `resource`; never the test's own (listing, applying, `get`).
fn fault_match(verb: Verb, resource: &str) -> Match {
    let matcher = Match::any()
        .verb(verb.api())
        .resource(resource)
        .not_user_agent(USER_AGENT);
    match verb {
        Verb::Apply => matcher.content_type("application/apply-patch"),
        _ => matcher,
    }
}

/// A namespaced Kubernetes type with static type information (a
/// k8s-openapi type, or one from kube's `CustomResource` derive).
pub trait Namespaced:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// A Kubernetes verb to fail or delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Get.
    Get,
    /// List.
    List,
    /// Create.
    Create,
    /// Update (replace).
    Update,
    /// Patch of any type: merge, JSON (the host's finalizer patch), apply.
    Patch,
    /// Server-side apply only (a patch of type `application/apply-patch`).
    Apply,
    /// Delete.
    Delete,
}

impl Verb {
    fn api(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch | Verb::Apply => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// A plugin log line (or a host line about the plugin).
#[derive(Clone, Debug)]
pub struct LogLine {
    /// `info`, `warn`, ...
    pub level: String,
    /// The message.
    pub message: String,
    /// The trace id (hex), if it was written in a reconcile.
    pub trace_id: Option<String>,
    /// Every field of the JSON line.
    pub fields: serde_json::Map<String, Value>,
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up a [`Harness`].
#[derive(Debug)]
pub struct Builder {
    source: PluginSource,
    grant: Option<String>,
    http: Vec<String>,
    manifests: Vec<Value>,
    settings: ControllerSettings,
    problems: Vec<String>,
}

impl Builder {
    /// Also allow HTTP to `url` (`scheme://host:port`), private addresses
    /// included: a [`TestHttp`] server's URL, say.
    pub fn allow_http(mut self, url: impl Into<String>) -> Self {
        self.http.push(url.into());
        self
    }

    /// Grant this TOML (as in a `.grants.toml` file) instead of what the
    /// plugin asks for; limits included.
    pub fn grant(mut self, toml: &str) -> Self {
        self.grant = Some(toml.to_owned());
        self
    }

    /// Install the CRD of `K` (from kube's `CustomResource` derive).
    pub fn crd<K: kube::CustomResourceExt>(mut self) -> Self {
        match serde_json::to_value(K::crd()) {
            Ok(crd) => self.manifests.push(crd),
            Err(e) => self.problems.push(format!(
                "cannot serialize the CRD of {}: {e}",
                K::crd_name()
            )),
        }
        self
    }

    /// Apply the objects of a YAML or JSON file (CRDs first) at start.
    pub fn manifest_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Start(format!("cannot read {}: {e}", path.display())))?;
        self.manifests.extend(
            parse_objects(&text).map_err(|e| Error::Start(format!("{}: {e}", path.display())))?,
        );
        Ok(self)
    }

    /// The host's retry backoff (default: 200 ms doubling, at most 300 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max;
        self
    }

    /// Starts the API server, loads the plugin and applies the manifests.
    pub async fn start(self) -> Result<Harness> {
        Harness::start(self).await
    }
}

/// Every object in a YAML (multi-document) or JSON text.
fn parse_objects(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.is_null())
        .flat_map(|d| match d.get("items").and_then(Value::as_array) {
            Some(items) if d["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
            _ => vec![d],
        })
        .collect())
}

/// A type the plugin reconciles or owns, kept in a cache the host's
/// backend reads.
struct Feed {
    resource: ApiResource,
    writer: reflector::store::Writer<DynamicObject>,
    namespaces: Namespaces,
    selector: Option<String>,
    primary: bool,
}

/// What the harness last saw of an object: its version and owners.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    version: Option<String>,
    owners: Vec<String>,
}

/// A plugin under test: see the crate docs.
pub struct Harness {
    server: ApiServer,
    client: kube::Client,
    plugin: Plugin,
    driver: Driver,
    feeds: Vec<Feed>,
    spans: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    logs: Captured,
    now: Duration,
    /// Primary objects (namespace, name) and when they are due.
    queue: BTreeMap<(String, String), Duration>,
    seen: HashMap<(usize, String, String), Seen>,
    /// The trace id (hex) of each reconcile, in order.
    traces: Vec<String>,
    outcomes: Vec<Outcome>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &self.plugin.metadata().name)
            .field("now", &self.now)
            .field("queue", &self.queue)
            .finish()
    }
}

impl Harness {
    /// A harness for the plugin at `source` (a `.wasm`, or a crate to
    /// build: [`this_crate!`]).
    pub fn build(source: impl Into<PluginSource>) -> Builder {
        Builder {
            source: source.into(),
            grant: None,
            http: Vec::new(),
            manifests: Vec::new(),
            settings: ControllerSettings::default(),
            problems: Vec::new(),
        }
    }

    async fn start(b: Builder) -> Result<Harness> {
        if let Some(problem) = b.problems.first() {
            return Err(Error::Start(problem.clone()));
        }
        reconcile_host::telemetry::install_crypto_provider();
        let wasm = match &b.source {
            PluginSource::Wasm(path) => path.clone(),
            PluginSource::Crate(dir) => build_crate(dir)?,
        };
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_sampler(Sampler::AlwaysOn)
            .build();
        let telemetry = reconcile_host::telemetry::Telemetry::from_provider(provider.clone());
        let logs = Captured::default();
        let logger = Logger::to_writer(LogFormat::Json, Level::Debug, logs.clone());
        let cache_dir = cache_dir(&wasm);
        let config = EngineConfig {
            max_instances: 16,
            cache_dir,
            ..EngineConfig::default()
        };
        let engine = Engine::new(config, telemetry.tracer(), logger)
            .map_err(|e| Error::Start(e.to_string()))?;
        let plugin = engine
            .load_file(&wasm)
            .await
            .map_err(|e| Error::Load(e.to_string()))?;
        let metadata = plugin.metadata().clone();
        let grant = match &b.grant {
            Some(text) => {
                let grant = Grant::from_toml(text, Path::new("the harness's grant"))
                    .map_err(|e| Error::Load(e.to_string()))?;
                grant
                    .check(&metadata)
                    .map_err(|e| Error::Load(e.to_string()))?;
                grant
            }
            None => Grant::from_request(&metadata),
        };
        let mut grant = grant;
        grant
            .http
            .extend(b.http.iter().map(|url| reconcile_host::grants::HttpGrant {
                url: url.clone(),
                private: true,
            }));
        let plugin = reconcile_host::operator::with_grant(plugin, grant)
            .map_err(|e| Error::Load(e.to_string()))?;

        let server = ApiServer::start(ApiServerConfig::default())
            .await
            .map_err(|e| Error::Start(e.to_string()))?;
        let test_client = client(&server, Some(USER_AGENT))?;
        for manifest in crds_first(b.manifests) {
            reconcile_conformance::apply_as(&test_client, &manifest, USER_AGENT)
                .await
                .map_err(Error::Start)?;
        }

        let mut feeds = Vec::new();
        let types = std::iter::once((metadata.primary.clone(), true))
            .chain(metadata.owns.iter().map(|t| (t.clone(), false)));
        // Watched where the host would watch: where the grant allows list
        // and watch; owned types only in the primary's namespaces.
        let mut primary_namespaces = None;
        for (resource_type, primary) in types {
            let granted = match plugin.grant() {
                Some(g) => g.watch_namespaces(&resource_type),
                None => Some(Namespaces::All),
            };
            let namespaces = match (granted, &primary_namespaces) {
                (None, _) if primary => {
                    return Err(Error::Load(format!(
                        "the grant does not allow list and watch on {} in any namespace: the host would not run the plugin",
                        resource_type.gvk()
                    )));
                }
                // The host does not watch it: its changes wake nobody.
                (None, _) => continue,
                (Some(n), Some(p)) if resource_type.namespaced => match n.intersect(p) {
                    Some(both) => both,
                    None => continue,
                },
                (Some(n), _) => n,
            };
            if primary {
                primary_namespaces = Some(namespaces.clone());
            }
            let resource = api_resource(&resource_type);
            let writer = reflector::store::Writer::new(resource.clone());
            feeds.push(Feed {
                resource,
                writer,
                namespaces,
                selector: if primary {
                    metadata.primary_selector.clone()
                } else {
                    None
                },
                primary,
            });
        }
        let caches: Vec<Cache> = feeds
            .iter()
            .map(|f| Cache {
                resource: f.resource.clone(),
                store: f.writer.as_reader(),
                namespaces: f.namespaces.clone(),
                ready: ready(),
                selector: f.selector.clone(),
            })
            .collect();
        let manager = metadata
            .field_manager
            .clone()
            .unwrap_or_else(|| metadata.name.clone());
        let backend = Arc::new(KubeBackend::new(
            client(&server, None)?,
            &manager,
            telemetry.tracer(),
            caches,
        ));
        // As the host: a type served under another plural or scope stops
        // the plugin (one not served yet may come with a CRD applied later).
        let types = std::iter::once(&metadata.primary).chain(metadata.owns.iter());
        for resource_type in types {
            if let Err(e) = backend.check_type(resource_type).await
                && e.kind == reconcile_host::caps::k8s::K8sErrorKind::Invalid
            {
                return Err(Error::Load(e.message));
            }
        }
        let store = feeds[0].writer.as_reader();
        let driver = Driver::new(&plugin, backend, store, b.settings);
        let mut harness = Harness {
            server,
            client: test_client,
            plugin,
            driver,
            feeds,
            spans,
            _provider: provider,
            logs,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seen: HashMap::new(),
            traces: Vec::new(),
            outcomes: Vec::new(),
        };
        harness.sync().await?;
        Ok(harness)
    }

    /// The plugin under test.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// A client of the API server (the test's own requests are not
    /// counted as the plugin's calls).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The API server, for what the harness does not wrap.
    pub fn server(&self) -> &ApiServer {
        &self.server
    }

    /// The virtual clock: how far requeues and backoff have moved it.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Server-side applies `object` as the test (field manager
    /// `reconcile-test`, forced); what it changes is queued for the plugin
    /// (run it with [`reconcile`](Self::reconcile) or
    /// [`settle`](Self::settle)).
    pub async fn apply<K: Serialize>(&mut self, object: &K) -> Result<()> {
        let value = serde_json::to_value(object)
            .map_err(|e| Error::Api(format!("cannot serialize the object: {e}")))?;
        self.apply_value(&value).await
    }

    /// Applies every object of a YAML or JSON file (CRDs first).
    pub async fn apply_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Api(format!("cannot read {}: {e}", path.display())))?;
        self.apply_yaml(&text).await
    }

    /// Applies every object of a YAML or JSON text.
    pub async fn apply_yaml(&mut self, text: &str) -> Result<()> {
        let objects = parse_objects(text).map_err(Error::Api)?;
        for object in crds_first(objects) {
            self.apply_value(&object).await?;
        }
        Ok(())
    }

    async fn apply_value(&mut self, value: &Value) -> Result<()> {
        reconcile_conformance::apply_as(&self.client, value, USER_AGENT)
            .await
            .map_err(Error::Api)?;
        self.sync().await
    }

    fn api<K: Namespaced>(&self, namespace: &str) -> Api<K> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The object of type `K` named `name` (in `namespace`), as the API
    /// server has it now.
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: Namespaced,
    {
        let api: Api<K> = self.api(namespace);
        api.get_opt(name).await.map_err(api_error(format!(
            "cannot get {} {namespace}/{name}",
            K::kind(&())
        )))
    }

    /// The object of type `K` named `name`; a test fails, naming what is
    /// there, when it does not exist or cannot be read.
    #[track_caller]
    #[allow(clippy::panic)]
    pub fn must_get<K: Namespaced>(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl std::future::Future<Output = K> + '_ {
        let caller = std::panic::Location::caller();
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        async move {
            match self.get::<K>(&namespace, &name).await {
                Ok(Some(object)) => object,
                Ok(None) => {
                    let names: Vec<String> = self
                        .api::<K>(&namespace)
                        .list(&ListParams::default())
                        .await
                        .map(|l| l.items.iter().map(|o| o.name_any()).collect())
                        .unwrap_or_default();
                    panic!(
                        "{caller}: no {} {namespace}/{name}; in {namespace}: {names:?}",
                        K::kind(&())
                    )
                }
                Err(e) => panic!("{caller}: {e}"),
            }
        }
    }

    /// Whether the object of type `K` named `name` exists.
    pub async fn exists<K: Namespaced>(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(self.get::<K>(namespace, name).await?.is_some())
    }

    /// Deletes the object of type `K` (as a user would; a finalizer keeps
    /// it until the plugin's `deleting` reconcile is done).
    pub async fn delete<K>(&mut self, namespace: &str, name: &str) -> Result<()>
    where
        K: Namespaced,
    {
        let api: Api<K> = self.api(namespace);
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(api_error(format!(
                "cannot delete {} {namespace}/{name}",
                K::kind(&())
            )))?;
        self.sync().await
    }

    /// Merge-patches the status of an object as another controller would
    /// (a Deployment controller reporting ready replicas, say).
    pub async fn patch_status<K>(
        &mut self,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<()>
    where
        K: Namespaced,
    {
        let api: Api<K> = self.api(namespace);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map_err(api_error(format!(
            "cannot patch the status of {} {namespace}/{name}",
            K::kind(&())
        )))?;
        self.sync().await
    }

    /// Creates `object` as the test.
    pub async fn create<K>(&mut self, namespace: &str, object: &K) -> Result<()>
    where
        K: Namespaced + Serialize,
    {
        let api: Api<K> = self.api(namespace);
        api.create(&PostParams::default(), object)
            .await
            .map_err(api_error(format!(
                "cannot create {} in {namespace}",
                K::kind(&())
            )))?;
        self.sync().await
    }

    /// The next request of `verb` on `resource` (plural, as in URLs:
    /// `deployments`) fails with `status`.
    pub fn fail_next(&self, verb: Verb, resource: &str, status: u16) {
        self.fail_times(verb, resource, status, 1);
    }

    /// The next `times` such requests fail with `status`.
    pub fn fail_times(&self, verb: Verb, resource: &str, status: u16, times: u32) {
        self.server
            .faults()
            .fail(fault_match(verb, resource), times, status);
    }

    /// Such requests wait `delay` before they are answered (past the
    /// plugin's deadline, a timeout).
    pub fn delay(&self, verb: Verb, resource: &str, delay: Duration) {
        self.server
            .faults()
            .delay(fault_match(verb, resource), delay);
    }

    /// No more faults.
    pub fn clear_faults(&self) {
        self.server.faults().clear();
    }

    /// Exactly one reconcile of `object` (a primary object; in `default`
    /// when it names no namespace), whatever is queued; what it changes is
    /// queued in turn.
    pub async fn reconcile<K: Resource<DynamicType = ()>>(
        &mut self,
        object: &K,
    ) -> Result<Outcome> {
        let (_, kind) = primary_type(&self.plugin);
        if K::kind(&()) != kind {
            return Err(Error::NotFound {
                kind,
                key: format!("(a {} was given)", K::kind(&())),
                also: ": the plugin reconciles only its primary type".to_owned(),
            });
        }
        // As `apply` does: a namespaced object without one is in `default`.
        let namespace = match &object.meta().namespace {
            Some(ns) => ns.clone(),
            None if self.plugin.metadata().primary.namespaced => "default".to_owned(),
            None => String::new(),
        };
        let name = object.meta().name.clone().unwrap_or_default();
        self.reconcile_named(&namespace, &name).await
    }

    /// [`reconcile`](Self::reconcile) by namespace (`""` for a
    /// cluster-scoped type) and name.
    pub async fn reconcile_named(&mut self, namespace: &str, name: &str) -> Result<Outcome> {
        self.sync().await?;
        self.reconcile_key((namespace.to_owned(), name.to_owned()))
            .await
    }

    /// Runs what is due now (and what that causes), without moving the
    /// clock; the outcomes in order.
    pub async fn settle(&mut self) -> Result<Vec<Outcome>> {
        self.run_until(self.now, true).await
    }

    /// Runs everything queued, following requeues and retries on the
    /// virtual clock, until nothing is queued; the outcomes in order.
    pub async fn run_until_idle(&mut self) -> Result<Vec<Outcome>> {
        self.run_until(Duration::MAX, true).await
    }

    /// Moves the clock by `by`, running what falls due on the way.
    pub async fn advance(&mut self, by: Duration) -> Result<Vec<Outcome>> {
        let until = self.now.saturating_add(by);
        // The clock ends the run: no cap on the count.
        let outcomes = self.run_until(until, false).await?;
        self.now = until;
        Ok(outcomes)
    }

    /// When each queued object is due, on the virtual clock.
    pub fn queued(&self) -> Vec<(String, Duration)> {
        self.queue
            .iter()
            .map(|((ns, name), due)| (key_text(ns, name), *due))
            .collect()
    }

    async fn run_until(&mut self, until: Duration, capped: bool) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        loop {
            self.sync().await?;
            let Some((key, due)) = self
                .queue
                .iter()
                .min_by_key(|(_, due)| **due)
                .map(|(k, d)| (k.clone(), *d))
            else {
                return Ok(outcomes);
            };
            if due > until {
                return Ok(outcomes);
            }
            if capped && outcomes.len() >= MAX_RECONCILES {
                return Err(Error::StillBusy {
                    now: self.now,
                    queued: format!("{:?}", self.queued()),
                });
            }
            self.now = self.now.max(due);
            match self.reconcile_key(key).await {
                Ok(outcome) => outcomes.push(outcome),
                // Gone meanwhile (an owned object's owner, say), or nothing
                // for the plugin: as in the host, nothing runs.
                Err(Error::NothingToDo(_) | Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn reconcile_key(&mut self, key: (String, String)) -> Result<Outcome> {
        let feed = &self.feeds[0];
        let mut reference = ObjectRef::new_with(&key.1, feed.resource.clone());
        if !key.0.is_empty() {
            reference = reference.within(&key.0);
        }
        let Some(object) = feed.writer.as_reader().get(&reference) else {
            self.queue.remove(&key);
            let also = match &feed.selector {
                Some(s) => format!(" (the plugin reconciles only objects matching {s})"),
                None => String::new(),
            };
            return Err(Error::NotFound {
                kind: feed.resource.kind.clone(),
                key: key_text(&key.0, &key.1),
                also,
            });
        };
        self.queue.remove(&key);
        let step = self.driver.reconcile(object).await;
        let Some(reconciled) = step.reconciled else {
            return Err(Error::NothingToDo(key_text(&key.0, &key.1)));
        };
        if let Next::After(after) = step.next {
            let due = self.now.saturating_add(after);
            let at = self.queue.entry(key).or_insert(due);
            *at = (*at).min(due);
        }
        self.traces.push(reconciled.trace_id.to_string());
        self.outcomes.push(reconciled.outcome.clone());
        self.sync().await?;
        Ok(reconciled.outcome)
    }

    /// Lists the plugin's types, fills the host's caches, and queues what
    /// changed since the last look: a changed primary object, the owner of
    /// a changed owned object.
    async fn sync(&mut self) -> Result<()> {
        let mut due = Vec::new();
        let mut forget = Vec::new();
        for (i, feed) in self.feeds.iter_mut().enumerate() {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &feed.resource);
            let mut params = ListParams::default();
            if let Some(selector) = &feed.selector {
                params = params.labels(selector);
            }
            let listed = api
                .list(&params)
                .await
                .map_err(api_error(format!("cannot list {}", feed.resource.kind)))?;
            let objects: Vec<DynamicObject> = listed
                .items
                .into_iter()
                .filter(|o| feed.namespaces.covers(o.namespace().as_deref()))
                .collect();
            feed.writer.apply_watcher_event(&watcher::Event::Init);
            for o in &objects {
                feed.writer
                    .apply_watcher_event(&watcher::Event::InitApply(o.clone()));
            }
            feed.writer.apply_watcher_event(&watcher::Event::InitDone);

            let (owner_api_version, owner_kind) = primary_type(&self.plugin);
            let mut present = HashSet::new();
            for o in &objects {
                let key = (i, o.namespace().unwrap_or_default(), o.name_any());
                present.insert(key.clone());
                let seen = Seen {
                    version: o.resource_version(),
                    owners: o
                        .owner_references()
                        .iter()
                        .filter(|r| r.kind == owner_kind && r.api_version == owner_api_version)
                        .map(|r| r.name.clone())
                        .collect(),
                };
                if self.seen.get(&key) == Some(&seen) {
                    continue;
                }
                if feed.primary {
                    due.push((key.1.clone(), key.2.clone()));
                } else {
                    let before = self.seen.get(&key).map(|s| s.owners.clone());
                    for owner in seen.owners.iter().chain(before.iter().flatten()) {
                        due.push((key.1.clone(), owner.clone()));
                    }
                }
                self.seen.insert(key, seen);
            }
            let gone: Vec<(usize, String, String)> = self
                .seen
                .keys()
                .filter(|k| k.0 == i && !present.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(seen) = self.seen.remove(&key) {
                    if feed.primary {
                        forget.push((key.1, key.2));
                    } else {
                        for owner in seen.owners {
                            due.push((key.1.clone(), owner));
                        }
                    }
                }
            }
        }
        for key in forget {
            self.driver.forget(&key.0, &key.1);
            self.queue.remove(&key);
        }
        let now = self.now;
        for key in due {
            let at = self.queue.entry(key).or_insert(now);
            *at = (*at).min(now);
        }
        Ok(())
    }

    /// The outcome of every reconcile so far, in order.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// How many reconciles ran.
    pub fn reconciles(&self) -> usize {
        self.traces.len()
    }

    /// The spans of the last reconcile (a test asking before any
    /// reconcile has run fails, as an assertion would).
    #[track_caller]
    #[allow(clippy::panic)]
    pub fn spans(&self) -> SpanTree {
        match self.traces.last() {
            Some(trace) => self.spans_of(trace),
            None => panic!("no reconcile has run yet"),
        }
    }

    /// The spans of every reconcile so far, in order.
    pub fn all_spans(&self) -> Vec<SpanTree> {
        self.traces.iter().map(|t| self.spans_of(t)).collect()
    }

    fn spans_of(&self, trace: &str) -> SpanTree {
        let spans = self.spans.get_finished_spans().unwrap_or_default();
        SpanTree::new(
            spans
                .into_iter()
                .filter(|s| s.span_context.trace_id().to_string() == trace)
                .collect(),
        )
    }

    /// The requests the last reconcile sent to the API server, in order
    /// (reads answered from the cache sent none).
    pub fn calls(&self) -> Vec<Call> {
        match self.traces.last() {
            Some(trace) => self.calls_in(|t| t == trace),
            None => Vec::new(),
        }
    }

    /// The requests of each reconcile so far, one list per reconcile in
    /// the order they ran (as [`all_spans`](Self::all_spans)).
    pub fn calls_per_reconcile(&self) -> Vec<Vec<Call>> {
        let all = self.all_calls();
        self.traces
            .iter()
            .map(|t| all.iter().filter(|c| &c.trace_id == t).cloned().collect())
            .collect()
    }

    /// The requests every reconcile so far sent, in order.
    pub fn all_calls(&self) -> Vec<Call> {
        self.calls_in(|t| self.traces.iter().any(|x| x == t))
    }

    fn calls_in(&self, keep: impl Fn(&str) -> bool) -> Vec<Call> {
        self.server
            .faults()
            .requests()
            .iter()
            .filter_map(Call::from_record)
            .filter(|c| keep(&c.trace_id))
            .collect()
    }

    /// The plugin's log lines (and the host's lines about its reconciles),
    /// of every reconcile so far.
    pub fn logs(&self) -> Vec<LogLine> {
        let bytes = self
            .logs
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Map<String, Value>>(l).ok())
            .map(|fields| LogLine {
                level: text(&fields, "level"),
                message: text(&fields, "message"),
                trace_id: fields
                    .get("trace_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                fields,
            })
            .collect()
    }

    /// The log lines of the last reconcile.
    pub fn last_logs(&self) -> Vec<LogLine> {
        let last = self.traces.last();
        self.logs()
            .into_iter()
            .filter(|l| l.trace_id.as_ref() == last)
            .collect()
    }

    /// The Events (`events.k8s.io/v1`) recorded so far, oldest first.
    pub async fn events(&self) -> Result<Vec<k8s_openapi::api::events::v1::Event>> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::all(self.client.clone());
        let mut events = api
            .list(&ListParams::default())
            .await
            .map_err(api_error("cannot list Events"))?
            .items;
        // By event time (microseconds), then by the embedded server's
        // resource versions, which count up.
        let version = |e: &k8s_openapi::api::events::v1::Event| {
            e.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
        };
        events.sort_by(|a, b| {
            (a.event_time.as_ref().map(|t| t.0), version(a))
                .cmp(&(b.event_time.as_ref().map(|t| t.0), version(b)))
        });
        Ok(events)
    }

    /// Stops the API server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The primary type's apiVersion and kind, as owner references name it.
fn primary_type(plugin: &Plugin) -> (String, String) {
    let primary = &plugin.metadata().primary;
    let api_version = if primary.group.is_empty() {
        primary.version.clone()
    } else {
        format!("{}/{}", primary.group, primary.version)
    };
    (api_version, primary.kind.clone())
}

fn key_text(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

fn text(fields: &serde_json::Map<String, Value>, key: &str) -> String {
    fields
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A readiness that is ready: the harness fills its caches itself.
fn ready() -> Ready {
    let (tx, ready) = Ready::new();
    tx.send_replace(true);
    ready
}

/// CRDs before the objects that need them.
fn crds_first(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by_key(|o| o["kind"] != "CustomResourceDefinition");
    objects
}

/// A client of `server` (kube's own retries off, as in the host).
fn client(server: &ApiServer, user_agent: Option<&'static str>) -> Result<kube::Client> {
    let mut config = server
        .client_config()
        .map_err(|e| Error::Start(e.to_string()))?;
    config.default_retry = false;
    if let Some(agent) = user_agent {
        config.headers.push((
            ::http::header::USER_AGENT,
            ::http::HeaderValue::from_static(agent),
        ));
    }
    kube::Client::try_from(config).map_err(|e| Error::Start(e.to_string()))
}

/// The compile cache next to the build output, so that repeated test
/// runs compile a plugin once.
fn cache_dir(wasm: &Path) -> Option<PathBuf> {
    let target = wasm.ancestors().find(|p| p.ends_with("target"))?;
    Some(target.join("reconcile-test-cache"))
}

/// Builds the crate in `dir` for `wasm32-wasip2` (release), into
/// `target/wasm` of its workspace; the component's path.
fn build_crate(dir: &Path) -> Result<PathBuf> {
    let target_dir = workspace_target(dir).join("wasm");
    xtask::ensure_target(dir).map_err(Error::Build)?;
    let built = xtask::build_guests(dir, &[], "release", &target_dir).map_err(Error::Build)?;
    let name = crate_name(dir)?;
    built.get(&name).cloned().ok_or_else(|| {
        Error::Build(format!(
            "building {} made no component named {name}",
            dir.display()
        ))
    })
}

/// The package name of the crate in `dir`, by `cargo metadata`.
fn crate_name(dir: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .current_dir(dir)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .map_err(|e| Error::Build(format!("cannot run cargo metadata: {e}")))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "cargo metadata in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let metadata: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Build(format!("cargo metadata said something else: {e}")))?;
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"].as_str().map(|m| {
                Path::new(m)
                    .canonicalize()
                    .unwrap_or_else(|_| PathBuf::from(m))
            }) == Some(manifest.clone())
        })
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::Build(format!("no package in {}", manifest.display())))
}

/// The target directory of the workspace `dir` is in: `CARGO_TARGET_DIR`,
/// else `target/` next to the outermost `Cargo.toml` with `[workspace]`.
fn workspace_target(dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        // Relative to where the test runs, as cargo reads it.
        let dir = PathBuf::from(dir);
        return std::path::absolute(&dir).unwrap_or(dir);
    }
    let root = dir
        .ancestors()
        .filter(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .last()
        .unwrap_or(dir);
    root.join("target")
}
