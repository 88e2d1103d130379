//! Applies `<name>-child`, owned by its ConfigMap (a controller owner
//! reference), so that changes of the child wake it.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Owner;

impl Reconciler for Owner {
    fn metadata() -> Metadata {
        Metadata::new("cf-owner", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
            .owns::<ConfigMap>()
            .access::<ConfigMap>(&[Verb::Patch])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        let namespace = request.namespace().unwrap_or("default").to_owned();
        let child: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": format!("{}-child", request.name()),
                "namespace": namespace,
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": request.name(),
                    "uid": cm.metadata.uid.clone().unwrap_or_default(),
                    "controller": true,
                }],
            },
            "data": {"from": request.name()},
        }))?;
        Api::<ConfigMap>::namespaced(&namespace).apply(&child)?;
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Owner);
