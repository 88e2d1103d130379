//! Annotates each ConfigMap once; a failed write is logged with its kind
//! and returned, so that tests see what reached the plugin. A ConfigMap
//! with `fail: permanent` in its data fails without a retry.
use reconcile_sdk::k8s::{Error as K8sError, Patch};
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Writer;

fn kind(e: &K8sError) -> &'static str {
    match e {
        K8sError::NotFound(_) => "not_found",
        K8sError::Conflict(_) => "conflict",
        K8sError::Forbidden(_) => "forbidden",
        K8sError::Invalid(_) => "invalid",
        K8sError::Unavailable(_) => "unavailable",
        K8sError::Other(_) => "other",
        K8sError::Encode(_) | K8sError::Decode(_) => "codec",
    }
}

impl Reconciler for Writer {
    fn metadata() -> Metadata {
        Metadata::new("configmap-writer", "0.1.0")
            .reconciles::<ConfigMap>()
            .access::<ConfigMap>(&[Verb::Patch])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        // A ConfigMap can ask for a failure the host does not retry.
        if cm
            .data
            .as_ref()
            .and_then(|d| d.get("fail"))
            .map(String::as_str)
            == Some("permanent")
        {
            return Err(Error::permanent("the ConfigMap asks to fail"));
        }
        let api = Api::<ConfigMap>::namespaced(request.namespace().unwrap_or("default"));
        let patch =
            serde_json::json!({"metadata": {"annotations": {"writer.reconcile.dev/seen": "yes"}}});
        match api.patch(&cm.name_any(), &Patch::Merge(patch)) {
            Ok(_) => {
                info!(name = cm.name_any(); "annotated");
                Ok(Action::Done)
            }
            Err(e) => {
                warn!(kind = kind(&e), name = cm.name_any(); "write failed: {e}");
                Err(e.into())
            }
        }
    }
}

reconcile_sdk::plugin!(Writer);
