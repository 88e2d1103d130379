// cf-noop, shared by its versions: each crate sets VERSION and includes
// this file. Reconciles ConfigMaps labelled `cf=case`: one log line, done.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Noop;

impl Reconciler for Noop {
    fn metadata() -> Metadata {
        Metadata::new("cf-noop", VERSION)
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        info!(name = request.name(); "reconciled");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Noop);
