//! Panics on the first attempt for a ConfigMap with `trap: "yes"`, and
//! returns done on the next.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Trap;

impl Reconciler for Trap {
    fn metadata() -> Metadata {
        Metadata::new("cf-trap", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let cm = request.object::<ConfigMap>()?;
        let trap = cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("trap").cloned())
            .is_some_and(|t| t == "yes");
        if trap && request.attempt() == 1 {
            panic!("asked to trap");
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Trap);
