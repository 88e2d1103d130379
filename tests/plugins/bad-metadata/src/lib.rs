//! Panics in metadata().
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct BadMetadata;

impl Reconciler for BadMetadata {
    fn metadata() -> Metadata {
        let parts: Vec<&str> = "no-version".split('@').collect();
        Metadata::new(parts[0], parts[1]).reconciles::<ConfigMap>()
    }

    fn reconcile(_request: Request) -> Result<Action> {
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(BadMetadata);
