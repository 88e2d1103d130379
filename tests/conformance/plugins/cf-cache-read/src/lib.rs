//! Reads its own primary object through the API (served from the host's
//! cache) and logs the data it saw. With `also_read: NAME` in its data it
//! reads that ConfigMap too and logs `also_read: ok|not_found|other`.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct CacheRead;

impl Reconciler for CacheRead {
    fn metadata() -> Metadata {
        Metadata::new("cf-cache-read", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let api = Api::<ConfigMap>::namespaced(request.namespace().unwrap_or("default"));
        let cm = api.get(request.name())?;
        let value = cm
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .cloned()
            .unwrap_or_default();
        info!(value = value; "read");
        if let Some(other) = cm.data.as_ref().and_then(|d| d.get("also_read")) {
            let got = match api.get(other) {
                Ok(_) => "ok",
                Err(reconcile_sdk::k8s::Error::NotFound(_)) => "not_found",
                Err(_) => "other",
            };
            info!("also_read: {got}");
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(CacheRead);
