//! `demoapp`: reconciles a `DemoApp` (group `demo.reconcile.dev`) into a
//! Deployment and a Service it owns, and reports readiness in its status.
//!
//! Each reconcile server-side applies both children (owner references
//! included), reads the Deployment back from the host's cache, and writes
//! `status.observedGeneration`, `status.readyReplicas` and a `Ready`
//! condition. An Event is recorded about the DemoApp when readiness
//! changes, and about the Deployment when an apply changed it. The host manages
//! the `demo.reconcile.dev/cleanup` finalizer: on deletion the plugin is
//! called with reason `deleting`, and garbage collection removes the
//! children through their owner references.
//!
//! To see how the host handles a failing plugin (its metrics, its retained
//! traces, its backoff), annotate a DemoApp with
//! `demo.reconcile.dev/simulate`: `error` fails each reconcile (retried
//! with backoff), `panic` traps the instance, `requeue` asks to be
//! reconciled again in 30 s after its usual work.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use reconcile_sdk::events::{EventType, record};
use reconcile_sdk::k8s::Patch;
use reconcile_sdk::prelude::*;
use reconcile_sdk::status::{condition, generation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired state of a demo application.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "demo.reconcile.dev",
    version = "v1alpha1",
    kind = "DemoApp",
    plural = "demoapps",
    namespaced,
    status = "DemoAppStatus",
    shortname = "demo"
)]
pub struct DemoAppSpec {
    /// Container image to run.
    pub image: String,
    /// Number of replicas.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Port the container listens on and the Service exposes.
    #[serde(default = "default_port")]
    pub port: i32,
}

fn default_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    8080
}

/// What the plugin observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DemoAppStatus {
    /// The generation last reconciled.
    pub observed_generation: Option<i64>,
    /// Ready replicas of the Deployment.
    pub ready_replicas: Option<i32>,
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

const NAME: &str = "demoapp";

/// The annotation that makes a reconcile fail, trap or requeue on purpose.
pub const SIMULATE: &str = "demo.reconcile.dev/simulate";

/// The reconciler.
pub struct DemoAppReconciler;

impl Reconciler for DemoAppReconciler {
    fn metadata() -> Metadata {
        Metadata::new(NAME, env!("CARGO_PKG_VERSION"))
            .reconciles::<DemoApp>()
            .owns::<Deployment>()
            .owns::<Service>()
            .access::<DemoApp>(&[Verb::Patch])
            .access::<Deployment>(&[Verb::Patch])
            .access::<Service>(&[Verb::Patch])
            .records_events()
            .finalizer("demo.reconcile.dev/cleanup")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(app) = request.object::<DemoApp>()? else {
            debug!(name = request.name(); "DemoApp is gone");
            return Ok(Action::Done);
        };
        let namespace = app.namespace().unwrap_or_else(|| "default".into());
        if request.reason() == Reason::Deleting {
            // The Deployment and Service go with their owner (garbage
            // collection); nothing else to clean up.
            info!("DemoApp deleted; its Deployment and Service follow through owner references");
            return Ok(Action::Done);
        }
        let simulate = app.annotations().get(SIMULATE).cloned();
        match simulate.as_deref() {
            Some("error") => {
                return Err(Error::new(format!(
                    "simulated failure ({SIMULATE}=error): remove the annotation to stop it"
                )));
            }
            #[allow(clippy::panic, reason = "the annotation asks for a trap")]
            Some("panic") => panic!("simulated panic ({SIMULATE}=panic)"),
            _ => {}
        }
        if app.spec.image.trim().is_empty() {
            return Err(Error::permanent(
                "spec.image is empty: set the container image",
            ));
        }
        if !(0..=1000).contains(&app.spec.replicas) {
            return Err(Error::permanent(format!(
                "spec.replicas is {}: it must be between 0 and 1000",
                app.spec.replicas
            )));
        }
        set_attribute("demoapp.replicas", app.spec.replicas);
        let (deployment, service) = span("render", || render(&app));
        let deployments = Api::<Deployment>::namespaced(&namespace);
        // Owned objects are read from the host's cache: no API request.
        let before = deployments
            .get_opt(&app.name_any())?
            .and_then(|d| d.metadata.generation);
        let applied = deployments.apply(&deployment)?;
        Api::<Service>::namespaced(&namespace).apply(&service)?;
        if applied.metadata.generation != before {
            let note = format!(
                "applied {} replicas of {}",
                app.spec.replicas, app.spec.image
            );
            record(&applied, NAME, EventType::Normal, "Applied", "Apply", &note)?;
        }

        let ready = deployments
            .get_opt(&app.name_any())?
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let is_ready = ready >= app.spec.replicas;
        let mut conditions = app
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (reason, message) = if is_ready {
            (
                "Available",
                format!("{ready}/{} replicas are ready", app.spec.replicas),
            )
        } else {
            (
                "Progressing",
                format!("{ready}/{} replicas are ready", app.spec.replicas),
            )
        };
        let changed = conditions.set(condition(
            "Ready",
            is_ready,
            reason,
            &message,
            generation(&app),
        ));
        let status = DemoAppStatus {
            observed_generation: generation(&app),
            ready_replicas: Some(ready),
            conditions,
        };
        Api::<DemoApp>::namespaced(&namespace).patch_status(
            &app.name_any(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )?;
        if changed {
            let type_ = if is_ready {
                EventType::Normal
            } else {
                EventType::Warning
            };
            record(&app, NAME, type_, reason, "Reconcile", &message)?;
            event("ready changed", &[("ready", is_ready.into())]);
        }
        info!(image = app.spec.image, replicas = app.spec.replicas, ready = ready; "reconciled DemoApp");
        if simulate.as_deref() == Some("requeue") {
            return Ok(Action::RequeueAfter(std::time::Duration::from_secs(30)));
        }
        Ok(Action::Done)
    }
}

/// The Deployment and Service a DemoApp wants, owned by it.
pub fn render(app: &DemoApp) -> (Deployment, Service) {
    let name = app.name_any();
    let owner = app.controller_owner_ref(&()).map(|o| vec![o]);
    let labels =
        serde_json::json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": NAME });
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": app.namespace(), "labels": labels, "ownerReferences": owner },
        "spec": {
            "replicas": app.spec.replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [{
                    "name": "app",
                    "image": app.spec.image,
                    "ports": [{ "containerPort": app.spec.port }]
                }]}
            }
        }
    });
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": app.namespace(), "labels": labels, "ownerReferences": owner },
        "spec": {
            "selector": labels,
            "ports": [{ "port": app.spec.port, "targetPort": app.spec.port }]
        }
    });
    // Both documents are built from typed fields above, so they always decode.
    (
        serde_json::from_value(deployment).unwrap_or_default(),
        serde_json::from_value(service).unwrap_or_default(),
    )
}

reconcile_sdk::plugin!(DemoAppReconciler);
