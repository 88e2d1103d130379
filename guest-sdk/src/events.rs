//! Kubernetes Events (`events.k8s.io/v1`) about the reconciled object.
//!
//! The plugin needs `get`, `create`, `patch` and `delete` on
//! `events.k8s.io/Event` in its grant:
//! [`Metadata::records_events`](crate::Metadata::records_events) asks for them.
//! The API server serves the same Events through core `v1` too, so
//! `kubectl get events` and `kubectl describe` show them.
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

use crate::k8s::{Api, Error, Patch, ResourceType};

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

/// How long a repeated Event keeps counting: an occurrence later than this
/// after the last one starts a new Event (client-go's events recorder waits
/// six minutes too).
pub const SERIES_WINDOW_SECONDS: i64 = 6 * 60;

/// Records an Event about `regarding`, reported by `controller`. `reason`
/// is a short CamelCase word (`Scaled`), `action` what was done (`Scale`),
/// `note` a sentence for people.
///
/// Repeats are counted, as client-go's recorder does: the same `type_`,
/// `reason`, `action` and `note` about the same object within
/// [`SERIES_WINDOW_SECONDS`] of the last occurrence update one Event's
/// `series` (`count`, `lastObservedTime`) instead of creating another, so a
/// reconciler that records on every pass does not flood the namespace; a
/// later one starts a new Event in its place. The Event's name is derived
/// from those fields; recording needs `get`, `create`, `patch` and `delete`
/// on `events.k8s.io/Event`
/// ([`Metadata::records_events`](crate::Metadata::records_events) asks for them).
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
    let type_ = match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    let kind = K::kind(&());
    let identity = meta
        .uid
        .clone()
        .unwrap_or_else(|| format!("{kind}/{namespace}/{name}"));
    let key = fnv1a(&[&identity, controller, type_, reason, action, note]);
    // Names are at most 253 characters, and each part ends alphanumeric.
    let prefix: String = name.chars().take(253 - 17).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let event_name = format!("{prefix}.{key:016x}");
    let api = Api::<Event>::namespaced(&namespace);
    let now = Timestamp::now();

    let existing = api.get_opt(&event_name)?;
    if let Some(existing) = &existing {
        let last = existing
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(existing.event_time.as_ref().map(|t| t.0));
        if last.is_some_and(|t| now.as_second() - t.as_second() <= SERIES_WINDOW_SECONDS) {
            let count = existing.series.as_ref().map_or(1, |s| s.count) + 1;
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": existing.metadata.resource_version},
                "series": {"count": count, "lastObservedTime": MicroTime(now)},
            });
            return api.patch(&event_name, &Patch::Merge(patch));
        }
    }
    let event = Event {
        metadata: ObjectMeta {
            name: Some(event_name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(controller.to_owned()),
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(note.to_owned()),
        type_: Some(type_.to_owned()),
        regarding: Some(ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(kind.into_owned()),
            name: Some(name),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if existing.is_some() {
        // The last occurrence is too old: a new Event in its place (the API
        // server lets only `series` of an Event change).
        match api.delete(&event_name) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    api.create(&event)
}

/// FNV-1a of the parts, each followed by a zero byte: stable across builds
/// and hosts, so the same Event always gets the same name.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_key_is_stable_and_separates_fields() {
        assert_eq!(super::fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a(&["a", "b"]), super::fnv1a(&["a", "b"]));
        assert_ne!(super::fnv1a(&["ab", ""]), super::fnv1a(&["a", "b"]));
    }
}
