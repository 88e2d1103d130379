//! On its first attempt returns an error whose message is 1 MiB, over any
//! bound a host keeps; on the next, done.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Oversized;

impl Reconciler for Oversized {
    fn metadata() -> Metadata {
        Metadata::new("cf-oversized", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.attempt() == 1 {
            return Err(Error::new("x".repeat(1 << 20)));
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Oversized);
