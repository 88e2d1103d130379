//! Names a finalizer (the host adds and removes it) and logs its
//! `deleting` reconcile. It reconciles every ConfigMap: a finalizer and a
//! primary selector cannot go together.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Finalizer;

impl Reconciler for Finalizer {
    fn metadata() -> Metadata {
        Metadata::new("cf-finalizer", "0.1.0")
            .reconciles::<ConfigMap>()
            .finalizer("conformance.reconcile.dev/cleanup")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.reason() == Reason::Deleting {
            info!("cleaned up");
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Finalizer);
