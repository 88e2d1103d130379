//! Deletes the ConfigMap `protected`, which its grant does not allow, and
//! logs the kind of error that came back; the reconcile itself succeeds.
use reconcile_sdk::k8s::Error as K8sError;
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Denied;

impl Reconciler for Denied {
    fn metadata() -> Metadata {
        Metadata::new("cf-denied", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let api = Api::<ConfigMap>::namespaced(request.namespace().unwrap_or("default"));
        let kind = match api.delete("protected") {
            Ok(_) => "none",
            Err(K8sError::Forbidden(_)) => "forbidden",
            Err(_) => "other",
        };
        info!("delete: {kind}");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Denied);
