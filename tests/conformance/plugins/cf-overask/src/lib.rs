//! Asks to read and list Secrets besides reconciling ConfigMaps; its case
//! grants only the ConfigMaps, so the host must refuse to run it.
use reconcile_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use reconcile_sdk::prelude::*;

struct OverAsk;

impl Reconciler for OverAsk {
    fn metadata() -> Metadata {
        Metadata::new("cf-overask", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
            .access::<Secret>(&[Verb::Get, Verb::List])
    }

    fn reconcile(_request: Request) -> Result<Action> {
        info!("reconciled");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(OverAsk);
