//! Kubernetes Events (`events.k8s.io/v1`) about the reconciled object.
//!
//! The plugin needs `create` on `events.k8s.io/Event` in its grant:
//! `Metadata::access_type(reconcile_sdk::events::event_type(), &[Verb::Create])`
//! or [`Metadata::records_events`](crate::Metadata::records_events).
//!
//! ```no_run
//! # use reconcile_sdk::prelude::*;
//! # use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
//! # fn f(cm: &ConfigMap) -> Result<()> {
//! use reconcile_sdk::events::{record, EventType};
//! record(cm, "my-operator", EventType::Normal, "Synced", "Sync", "the config map is in sync")?;
//! # Ok(()) }
//! ```

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube_core::Resource;

use crate::k8s::{Api, Error, ResourceType};

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something went as expected.
    Normal,
    /// Something needs attention.
    Warning,
}

/// The resource type of events, for [`Metadata::access_type`](crate::Metadata::access_type).
pub fn event_type() -> ResourceType {
    ResourceType::of::<Event>()
}

/// Records an Event about `regarding`, reported by `controller`. `reason`
/// is a short CamelCase word (`Scaled`), `action` what was done (`Scale`),
/// `note` a sentence for people.
pub fn record<K>(
    regarding: &K,
    controller: &str,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<Event, Error>
where
    K: Resource<DynamicType = ()>,
{
    let meta = regarding.meta();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = meta.name.clone().unwrap_or_default();
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(controller.to_owned()),
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(note.to_owned()),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        regarding: Some(ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Event>::namespaced(&namespace).create(&event)
}
