//! Spins forever.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Spin;

impl Reconciler for Spin {
    fn metadata() -> Metadata {
        Metadata::new("fault-loop", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(request: Request) -> Result<Action> {
        let mut n: u64 = request.attempt().into();
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
            if n == 0 {
                return Ok(Action::Done);
            }
        }
    }
}

reconcile_sdk::plugin!(Spin);
