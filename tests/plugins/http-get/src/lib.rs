//! One GET of the URL in its object's `data.url`, through
//! `reconcile_sdk::http`: the HTTP benchmark's plugin, and the measure of
//! what the SDK's client adds to a plugin's size.
use reconcile_sdk::http;
use reconcile_sdk::prelude::*;

struct Get;

impl Reconciler for Get {
    fn metadata() -> Metadata {
        Metadata::new("http-get", "0.1.0").reconciles_type(reconcile_sdk::k8s::ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        })
    }

    fn reconcile(request: Request) -> Result<Action> {
        let body: serde_json::Value = match request.body() {
            Some(body) => serde_json::from_str(body)?,
            None => return Ok(Action::Done),
        };
        let Some(url) = body["data"]["url"].as_str() else {
            return Ok(Action::Done);
        };
        let response = http::get(url)?;
        if response.status() != 200 {
            return Err(Error::new(format!("status {}", response.status())));
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Get);
