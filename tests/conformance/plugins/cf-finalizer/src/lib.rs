//! Names a finalizer (the host adds and removes it) and logs its
//! `deleting` reconcile, and before it whether its object carries the
//! finalizer. It reconciles every ConfigMap: a finalizer and a
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
        } else {
            // The host adds the finalizer before the first reconcile: the
            // object the plugin is given already carries it.
            let has = request
                .object::<ConfigMap>()?
                .and_then(|cm| cm.metadata.finalizers)
                .is_some_and(|f| f.iter().any(|f| f == "conformance.reconcile.dev/cleanup"));
            info!("finalizer present: {has}");
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Finalizer);
