//! Makes the calls its ConfigMap's data names, and logs what each got
//! back as `<call>: <result>` (`ok`, `not_found`, `conflict`, `forbidden`,
//! `invalid`, `unavailable`, `other`); the reconcile itself succeeds.
//! - `get_secret: NAME`: reads that Secret (not a cached type);
//! - `create_secret: NAME`: creates that Secret;
//! - `apply_child: "yes"`: applies `<name>-child`;
//! - `namespace: NS`: makes the calls in NS instead of its own namespace.
use reconcile_sdk::k8s::Error as K8sError;
use reconcile_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use reconcile_sdk::prelude::*;

struct Calls;

fn result<T>(r: std::result::Result<T, K8sError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(K8sError::NotFound(_)) => "not_found",
        Err(K8sError::Conflict(_)) => "conflict",
        Err(K8sError::Forbidden(_)) => "forbidden",
        Err(K8sError::Invalid(_)) => "invalid",
        Err(K8sError::Unavailable(_)) => "unavailable",
        Err(_) => "other",
    }
}

impl Reconciler for Calls {
    fn metadata() -> Metadata {
        Metadata::new("cf-calls", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
            .access::<ConfigMap>(&[Verb::Patch])
            .access::<Secret>(&[Verb::Get, Verb::Create])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        let data = cm.data.clone().unwrap_or_default();
        let namespace = data
            .get("namespace")
            .map(String::as_str)
            .or(request.namespace())
            .unwrap_or("default")
            .to_owned();
        if let Some(secret) = data.get("get_secret") {
            let got = result(Api::<Secret>::namespaced(&namespace).get(secret));
            info!("get_secret: {got}");
        }
        if let Some(secret) = data.get("create_secret") {
            let object: Secret = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret, "namespace": namespace},
            }))?;
            let got = result(Api::<Secret>::namespaced(&namespace).create(&object));
            info!("create_secret: {got}");
        }
        if data.get("apply_child").map(String::as_str) == Some("yes") {
            let child: ConfigMap = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": format!("{}-child", request.name()), "namespace": namespace},
                "data": {"from": request.name()},
            }))?;
            let got = result(Api::<ConfigMap>::namespaced(&namespace).apply(&child));
            info!("apply_child: {got}");
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Calls);
