//! Returns done at once.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Noop;

impl Reconciler for Noop {
    fn metadata() -> Metadata {
        Metadata::new("noop", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(_request: Request) -> Result<Action> {
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Noop);
