//! Asks to be called again after 200 ms when its object changed, and
//! returns done when it is called for that requeue.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Requeue;

impl Reconciler for Requeue {
    fn metadata() -> Metadata {
        Metadata::new("cf-requeue", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        match request.reason() {
            Reason::Requeue => Ok(Action::Done),
            _ => Ok(Action::RequeueAfter(std::time::Duration::from_millis(200))),
        }
    }
}

reconcile_sdk::plugin!(Requeue);
