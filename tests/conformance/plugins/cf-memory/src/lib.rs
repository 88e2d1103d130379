//! Grows its memory past any small cap on the first attempt, then returns
//! done.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Memory;

impl Reconciler for Memory {
    fn metadata() -> Metadata {
        Metadata::new("cf-memory", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.attempt() == 1 {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1024 {
                blocks.push(vec![1u8; 1024 * 1024]);
            }
            std::hint::black_box(&blocks);
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Memory);
