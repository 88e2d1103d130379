//! The contract versions the host serves, and the translation of 0.2.0's
//! plugin-facing types to the 0.1.0 ones the engine works with.

use super::bindings::{types as v1, v0_2::types as v2};
use crate::metadata::PluginMetadata;

/// Every version of `reconcile:plugin` this host runs, oldest first.
pub const SERVED: [&str; 2] = ["0.1.0", "0.2.0"];

/// The served versions, for messages: "0.1.0, 0.2.0".
pub fn served() -> String {
    SERVED.join(", ")
}

fn resource(r: v2::ResourceType) -> v1::ResourceType {
    v1::ResourceType {
        group: r.group,
        version: r.version,
        kind: r.kind,
        plural: r.plural,
        namespaced: r.namespaced,
    }
}

fn verb(v: v2::Verb) -> v1::Verb {
    match v {
        v2::Verb::Get => v1::Verb::Get,
        v2::Verb::List => v1::Verb::List,
        v2::Verb::Watch => v1::Verb::Watch,
        v2::Verb::Create => v1::Verb::Create,
        v2::Verb::Update => v1::Verb::Update,
        v2::Verb::Patch => v1::Verb::Patch,
        v2::Verb::Delete => v1::Verb::Delete,
    }
}

/// A 0.2.0 plugin's metadata.
pub(crate) fn metadata(m: v2::PluginMetadata) -> PluginMetadata {
    let primary_selector = m.primary_selector.filter(|s| !s.trim().is_empty());
    let field_manager = m.field_manager.filter(|s| !s.trim().is_empty());
    let v1 = v1::PluginMetadata {
        name: m.name,
        version: m.version,
        primary: resource(m.primary),
        owns: m.owns.into_iter().map(resource).collect(),
        access: v1::AccessRequest {
            resources: m
                .access
                .resources
                .into_iter()
                .map(|a| v1::ResourceAccess {
                    resource: resource(a.resource),
                    verbs: a.verbs.into_iter().map(verb).collect(),
                })
                .collect(),
            http_hosts: m.access.http_hosts,
        },
        finalizer: m.finalizer,
    };
    PluginMetadata {
        primary_selector,
        field_manager,
        ..PluginMetadata::from_wit(v1)
    }
}

/// The 0.2.0 form of a request, with the object's generation.
pub(crate) fn request(r: v1::ReconcileRequest, generation: Option<i64>) -> v2::ReconcileRequest {
    v2::ReconcileRequest {
        object: v2::ObjectRef {
            group: r.object.group,
            version: r.object.version,
            kind: r.object.kind,
            namespace: r.object.namespace,
            name: r.object.name,
        },
        body: r.body,
        reason: match r.reason {
            v1::Reason::ObjectChanged => v2::Reason::ObjectChanged,
            v1::Reason::OwnedObjectChanged => v2::Reason::OwnedObjectChanged,
            v1::Reason::Requeue => v2::Reason::Requeue,
            v1::Reason::Retry => v2::Reason::Retry,
            v1::Reason::PluginReloaded => v2::Reason::PluginReloaded,
            v1::Reason::Deleting => v2::Reason::Deleting,
            v1::Reason::Other => v2::Reason::Other,
        },
        attempt: r.attempt,
        generation,
    }
}

/// A 0.2.0 reconcile result, as 0.1.0's.
pub(crate) fn result(
    r: Result<v2::Action, v2::ReconcileError>,
) -> Result<v1::Action, v1::ReconcileError> {
    match r {
        Ok(v2::Action::Done) => Ok(v1::Action::Done),
        Ok(v2::Action::RequeueAfter(ms)) => Ok(v1::Action::RequeueAfter(ms)),
        Err(e) => Err(v1::ReconcileError {
            message: e.message,
            retry: e.retry,
            kind: match e.kind {
                v2::ErrorKind::Plugin => v1::ErrorKind::Plugin,
                v2::ErrorKind::K8s => v1::ErrorKind::K8s,
                v2::ErrorKind::Http => v1::ErrorKind::Http,
            },
        }),
    }
}
