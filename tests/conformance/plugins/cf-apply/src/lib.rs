//! Applies `<name>-child` (data `from: <name>`) for each ConfigMap
//! labelled `cf=case`.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Apply;

impl Reconciler for Apply {
    fn metadata() -> Metadata {
        Metadata::new("cf-apply", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
            .access::<ConfigMap>(&[Verb::Patch])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let name = request.name().to_owned();
        let namespace = request.namespace().unwrap_or("default").to_owned();
        let child: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-child"), "namespace": namespace},
            "data": {"from": name},
        }))?;
        Api::<ConfigMap>::namespaced(&namespace).apply(&child)?;
        info!(name = name; "applied");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Apply);
