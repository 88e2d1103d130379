//! Returns a 4 MiB error message.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Oversized;

impl Reconciler for Oversized {
    fn metadata() -> Metadata {
        Metadata::new("fault-oversized", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(_request: Request) -> Result<Action> {
        Err(Error::new("x".repeat(4 << 20)))
    }
}

reconcile_sdk::plugin!(Oversized);
