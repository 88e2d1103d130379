//! Each reconcile sleeps 300 ms, then returns done: reconciles that
//! overlap in time ran at once.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Sleep;

impl Reconciler for Sleep {
    fn metadata() -> Metadata {
        Metadata::new("cf-sleep", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(_request: Request) -> Result<Action> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        info!("slept");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Sleep);
