// The plugin named `reload`, shared by its versions: each crate sets
// VERSION and the Primary type, then includes this file.
//
// It reconciles the objects labelled `reload-test=yes`. An object with the
// annotation `wait: URL` first GETs that URL (the tests hold the answer to
// keep a reconcile running across a swap). Then it applies the ConfigMap
// `<name>-out` with the version that ran and the reason it was given.
use reconcile_sdk::http;
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Reload;

impl Reconciler for Reload {
    fn metadata() -> Metadata {
        Metadata::new("reload", VERSION)
            .reconciles::<Primary>()
            .selector("reload-test=yes")
            .access::<ConfigMap>(&[Verb::Get, Verb::Patch])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(object) = request.object::<Primary>()? else {
            return Ok(Action::Done);
        };
        if let Some(url) = object.annotations().get("wait") {
            http::get(url)?;
        }
        let name = object.name_any();
        let namespace = request.namespace().unwrap_or("default").to_owned();
        let out: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-out"), "namespace": namespace},
            "data": {
                "version": VERSION,
                "reason": format!("{:?}", request.reason()),
                "generation": object.meta().resource_version.clone().unwrap_or_default(),
            },
        }))?;
        Api::<ConfigMap>::namespaced(&namespace).apply(&out)?;
        info!(version = VERSION, name = name; "reconciled");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Reload);
