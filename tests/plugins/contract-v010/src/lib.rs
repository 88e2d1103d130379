//! A plugin written against `reconcile:plugin@0.1.0` exactly as released:
//! raw `wit-bindgen` bindings of the frozen `wit/*.wit`, no SDK, so that a
//! later SDK or contract version cannot change what it imports or exports.
//! It reads its ConfigMap through the host, logs a line with a field,
//! traces a span and asks to be requeued.

wit_bindgen::generate!({
    world: "reconciler",
    path: "../../../wit",
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

fn message(error: &k8s::Error) -> String {
    match error {
        k8s::Error::NotFound(s)
        | k8s::Error::Conflict(s)
        | k8s::Error::Forbidden(s)
        | k8s::Error::Invalid(s)
        | k8s::Error::Unavailable(s)
        | k8s::Error::Other(s) => s.message.clone(),
    }
}

struct Plugin;

impl Guest for Plugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "contract-v010".into(),
            version: "0.1.0".into(),
            primary: configmaps(),
            owns: Vec::new(),
            access: AccessRequest {
                resources: vec![ResourceAccess {
                    resource: configmaps(),
                    verbs: vec![Verb::Get, Verb::List, Verb::Watch],
                }],
                http_hosts: Vec::new(),
            },
            finalizer: None,
        }
    }

    fn reconcile(request: ReconcileRequest) -> Result<Action, ReconcileError> {
        let span = trace::start_span("read");
        let object = &request.object;
        let read = k8s::get(&configmaps(), object.namespace.as_deref(), &object.name);
        trace::end_span(span, read.as_ref().err().map(message).as_deref());
        let found = if read.is_ok() { "yes" } else { "no" };
        log::log(
            log::Level::Info,
            "reconciled with the 0.1.0 contract",
            &[("found".into(), found.into())],
        );
        Ok(Action::RequeueAfter(60_000))
    }
}

export!(Plugin);
