//! GETs `data.url` (its grant allows it) and `data.denied` (its grant does
//! not), and logs `url: <status>` and `denied: <kind of error>`.
use reconcile_sdk::http;
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Http;

impl Reconciler for Http {
    fn metadata() -> Metadata {
        Metadata::new("cf-http", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let data = request
            .object::<ConfigMap>()?
            .and_then(|cm| cm.data)
            .unwrap_or_default();
        if let Some(url) = data.get("url") {
            match http::get(url) {
                Ok(response) => info!("url: {}", response.status()),
                Err(e) => info!("url: {:?}", e.kind()),
            }
        }
        if let Some(url) = data.get("denied") {
            match http::get(url) {
                Ok(response) => info!("denied: reached {}", response.status()),
                Err(e) => info!("denied: {:?}", e.kind()),
            }
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Http);
