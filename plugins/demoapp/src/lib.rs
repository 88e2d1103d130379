//! `demoapp`: reconciles a `DemoApp` (group `demo.reconcile.dev`) into a
//! Deployment and a Service.
//!
//! This version validates the spec and renders the desired Deployment and
//! Service inside a `render` span; applying them arrives with the host's
//! Kubernetes API.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::CustomResource;
use reconcile_sdk::prelude::*;
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
}

/// The reconciler.
pub struct DemoAppReconciler;

impl Reconciler for DemoAppReconciler {
    fn metadata() -> Metadata {
        Metadata::new("demoapp", env!("CARGO_PKG_VERSION"))
            .reconciles::<DemoApp>()
            .owns::<Deployment>()
            .owns::<Service>()
            .access::<DemoApp>(&[Verb::Patch])
            .access::<Deployment>(&[Verb::Patch])
            .access::<Service>(&[Verb::Patch])
            .finalizer("demo.reconcile.dev/cleanup")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(app) = request.object::<DemoApp>()? else {
            debug!(name = request.name(); "DemoApp is gone");
            return Ok(Action::Done);
        };
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
        event(
            "rendered",
            &[
                (
                    "deployment",
                    deployment.metadata.name.clone().unwrap_or_default().into(),
                ),
                (
                    "service",
                    service.metadata.name.clone().unwrap_or_default().into(),
                ),
            ],
        );
        info!(image = app.spec.image, replicas = app.spec.replicas; "rendered Deployment and Service");
        Ok(Action::Done)
    }
}

/// The Deployment and Service a DemoApp wants.
pub fn render(app: &DemoApp) -> (Deployment, Service) {
    let name = app.name_any();
    let labels = serde_json::json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "demoapp" });
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": app.namespace(), "labels": labels },
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
        "metadata": { "name": name, "namespace": app.namespace(), "labels": labels },
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
