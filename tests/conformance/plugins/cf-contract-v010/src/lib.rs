//! A plugin of `reconcile:plugin@0.1.0` as released: raw `wit-bindgen`
//! bindings of the frozen `wit/*.wit`, no SDK, so that nothing later can
//! change what it imports or exports. It reads its own ConfigMap (a cache
//! read), writes a child ConfigMap by server-side apply (a `k8s.apply`
//! span), traces a span of its own and logs a line with a field.

wit_bindgen::generate!({
    world: "reconciler",
    path: "../../../../wit",
});

use exports::reconcile::plugin::plugin::Guest;
use reconcile::plugin::types::{
    AccessRequest, Action, PluginMetadata, ReconcileError, ReconcileRequest, ResourceAccess,
    ResourceType, Verb,
};
use reconcile::plugin::{k8s, log, trace};

fn configmaps() -> ResourceType {
    ResourceType {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        namespaced: true,
    }
}

struct Plugin;

impl Guest for Plugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "cf-contract-v010".into(),
            version: "0.1.0".into(),
            primary: configmaps(),
            owns: Vec::new(),
            access: AccessRequest {
                resources: vec![ResourceAccess {
                    resource: configmaps(),
                    verbs: vec![Verb::Get, Verb::List, Verb::Watch, Verb::Patch],
                }],
                http_hosts: Vec::new(),
            },
            finalizer: None,
        }
    }

    fn reconcile(request: ReconcileRequest) -> Result<Action, ReconcileError> {
        let object = &request.object;
        // 0.1.0 has no primary selector: skip the child it writes.
        if object.name.ends_with("-child") {
            return Ok(Action::Done);
        }
        let span = trace::start_span("read");
        let read = k8s::get(&configmaps(), object.namespace.as_deref(), &object.name);
        trace::end_span(span, None);
        let child = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{}-child","namespace":"{}"}},"data":{{"from":"{}"}}}}"#,
            object.name,
            object.namespace.as_deref().unwrap_or("default"),
            object.name
        );
        let applied = k8s::apply(
            &configmaps(),
            object.namespace.as_deref(),
            &format!("{}-child", object.name),
            &child,
            true,
        );
        let ok = |b: bool| if b { "ok" } else { "failed" };
        log::log(
            log::Level::Info,
            "reconciled with the 0.1.0 contract",
            &[
                ("read".into(), ok(read.is_ok()).into()),
                ("apply".into(), ok(applied.is_ok()).into()),
            ],
        );
        Ok(Action::Done)
    }
}

export!(Plugin);
