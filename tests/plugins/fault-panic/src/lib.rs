//! Panics in reconcile.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Panics;

impl Reconciler for Panics {
    fn metadata() -> Metadata {
        Metadata::new("fault-panic", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(request: Request) -> Result<Action> {
        let items: Vec<u32> = Vec::new();
        // Index out of bounds: a panic, which is a trap in wasm.
        let first = items[request.attempt() as usize];
        Ok(Action::RequeueAfter(std::time::Duration::from_millis(
            first.into(),
        )))
    }
}

reconcile_sdk::plugin!(Panics);
