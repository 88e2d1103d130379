//! Asks for more than a reconcile may have: 1000 guest spans, 1000
//! events and 1000 attributes on the root, and 2 MB of standard output
//! (20,000 lines of 100 digits). The host keeps each within its bounds;
//! the reconcile itself succeeds.
use std::io::Write;

use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;
use reconcile_sdk::trace;

struct Flood;

impl Reconciler for Flood {
    fn metadata() -> Metadata {
        Metadata::new("cf-flood", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(_request: Request) -> Result<Action> {
        for _ in 0..1000 {
            let _span = trace::start_span("flood");
        }
        for i in 0..1000 {
            trace::event("flood.event", &[]);
            trace::set_attribute(&format!("flood.{i}"), i64::from(i));
        }
        let mut out = std::io::stdout().lock();
        for i in 0..20_000u32 {
            // Nothing to do when the host drops the rest.
            let _ = writeln!(out, "{i:0100}");
        }
        drop(out);
        info!("flooded");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Flood);
