//! Allocates 1 MiB blocks and keeps them until memory runs out.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Bomb;

impl Reconciler for Bomb {
    fn metadata() -> Metadata {
        Metadata::new("fault-memory", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(_request: Request) -> Result<Action> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
            if blocks.len() == usize::MAX {
                return Ok(Action::Done);
            }
        }
    }
}

reconcile_sdk::plugin!(Bomb);
