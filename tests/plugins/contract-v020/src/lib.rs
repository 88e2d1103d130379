//! A plugin written against `reconcile:plugin@0.2.0` with raw `wit-bindgen`
//! bindings of `wit/0.2.0`: it reads its ConfigMap, logs typed fields and
//! the request's `generation`, and sends one HTTP request through
//! `wasi:http/outgoing-handler` to the address in its ConfigMap's
//! `data.authority`, logging how it ended; then it server-side applies an
//! annotation to the ConfigMap under its own field manager.

wit_bindgen::generate!({
    world: "reconciler",
    path: "../../../wit/0.2.0",
    generate_all,
});

use exports::reconcile::plugin::plugin::Guest;
use reconcile::plugin::types::{
    AccessRequest, Action, PluginMetadata, ReconcileError, ReconcileRequest, ResourceAccess,
    ResourceType, Value, Verb,
};
use reconcile::plugin::{k8s, log};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};

fn configmaps() -> ResourceType {
    ResourceType {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
        namespaced: true,
    }
}

/// How one GET to `authority` ended: a status code, or the error code.
fn get(authority: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/"));
    let response = match outgoing_handler::handle(request, None) {
        Ok(response) => response,
        Err(code) => return format!("refused: {code:?}"),
    };
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => format!("failed: {code:?}"),
        Some(Err(())) | None => "no response".into(),
    }
}

struct Plugin;

impl Guest for Plugin {
    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "contract-v020".into(),
            version: "0.2.0".into(),
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
            primary_selector: Some("contract=v020".into()),
            field_manager: Some("contract-v020-manager".into()),
        }
    }

    fn reconcile(request: ReconcileRequest) -> Result<Action, ReconcileError> {
        let object = &request.object;
        let read = k8s::get(&configmaps(), object.namespace.as_deref(), &object.name);
        let authority = read
            .ok()
            .and_then(|body| {
                let at = body.find("\"authority\":\"")? + "\"authority\":\"".len();
                let rest = &body[at..];
                Some(rest[..rest.find('"')?].to_owned())
            })
            .unwrap_or_else(|| "127.0.0.1:9".into());
        let http = get(&authority);
        // A write, under the plugin's own field manager.
        let namespace = object.namespace.clone().unwrap_or_default();
        let annotation = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{}\",\"namespace\":\"{namespace}\",\"annotations\":{{\"contract.reconcile.dev/seen\":\"yes\"}}}}}}",
            object.name
        );
        if let Err(e) = k8s::apply(
            &configmaps(),
            object.namespace.as_deref(),
            &object.name,
            &annotation,
            true,
        ) {
            return Err(ReconcileError {
                message: format!("apply failed: {e:?}"),
                retry: true,
                kind: reconcile::plugin::types::ErrorKind::K8s,
            });
        }
        log::log(
            log::Level::Info,
            "reconciled with the 0.2.0 contract",
            &[
                (
                    "generation".into(),
                    Value::Int(request.generation.unwrap_or(-1)),
                ),
                ("attempt".into(), Value::Int(request.attempt.into())),
                ("ratio".into(), Value::Float(0.5)),
                ("first".into(), Value::Boolean(request.attempt == 1)),
                ("http".into(), Value::String(http)),
            ],
        );
        Ok(Action::Done)
    }
}

export!(Plugin);
