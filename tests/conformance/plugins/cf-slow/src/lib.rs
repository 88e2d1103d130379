//! Spins until its deadline cuts it on the first attempt, then returns
//! done.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Slow;

impl Reconciler for Slow {
    fn metadata() -> Metadata {
        Metadata::new("cf-slow", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.attempt() == 1 {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Slow);
