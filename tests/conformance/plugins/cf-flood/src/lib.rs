//! On its first attempt, asks for more than a reconcile may have: 1000
//! guest spans, 1000 events and 1000 attributes on the root, 200 calls
//! outside its grant (each an `access.denied` event), and 2 MB of standard
//! output (20,000 lines of 100 digits); then it fails, so that the host
//! must still put its own error attributes and `exception` event on the
//! root. The retry is done.
use std::io::Write;

use reconcile_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use reconcile_sdk::prelude::*;
use reconcile_sdk::trace;

struct Flood;

impl Reconciler for Flood {
    fn metadata() -> Metadata {
        Metadata::new("cf-flood", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.attempt() > 1 {
            return Ok(Action::Done);
        }
        for _ in 0..1000 {
            let _span = trace::start_span("flood");
        }
        for i in 0..1000 {
            trace::event("flood.event", &[]);
            trace::set_attribute(&format!("flood.{i}"), i64::from(i));
        }
        let secrets = Api::<Secret>::namespaced("default");
        for _ in 0..200 {
            // Refused: the grant has no Secrets.
            let _ = secrets.get("s");
        }
        let mut out = std::io::stdout().lock();
        for i in 0..20_000u32 {
            // Nothing to do when the host drops the rest.
            let _ = writeln!(out, "{i:0100}");
        }
        drop(out);
        info!("flooded");
        Err(Error::new("flooded"))
    }
}

reconcile_sdk::plugin!(Flood);
