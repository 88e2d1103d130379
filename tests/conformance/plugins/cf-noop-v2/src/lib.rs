//! cf-noop 2.0.0: the same plugin name as cf-noop, another version and
//! digest, for the reload cases.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Noop;

impl Reconciler for Noop {
    fn metadata() -> Metadata {
        Metadata::new("cf-noop", "2.0.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        info!(name = request.name(); "reconciled");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Noop);
