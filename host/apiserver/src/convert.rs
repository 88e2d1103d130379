//! One stored object, served under two API groups: Events.
//!
//! The real API server keeps one Event and serves it as core `v1` and as
//! `events.k8s.io/v1`, with fields renamed between the two. Events are
//! stored here in their core form; an `events.k8s.io/v1` body is converted
//! on the way in and every read under that group converts it back, so an
//! Event a controller records through `events.k8s.io` is what `kubectl get
//! events` and `kubectl describe` list, and the other way round.

use serde_json::{Map, Value};

use crate::registry::ResourceDef;

/// `events.k8s.io/v1` field ↔ core `v1` field; the others keep their name
/// (`eventTime`, `series`, `reason`, `type`, `action`, `related`,
/// `reportingInstance`, `metadata`).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether `def` is `events.k8s.io` Events, stored in the core form.
pub fn is_events_group(def: &ResourceDef) -> bool {
    def.group == "events.k8s.io" && def.plural == "events"
}

/// The group/version/kind objects of `def` are stored as, when it is not
/// `def` itself.
pub fn storage_type(def: &ResourceDef) -> Option<(&'static str, &'static str)> {
    is_events_group(def).then_some(("v1", "Event"))
}

fn rename(object: &mut Value, pairs: impl Iterator<Item = (&'static str, &'static str)>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let mut renamed = Map::new();
    for (from, to) in pairs {
        if let Some(v) = map.remove(from) {
            renamed.insert(to.to_owned(), v);
        }
    }
    map.extend(renamed);
}

/// A body written under `def`, in the form it is stored in.
pub fn to_storage(def: &ResourceDef, mut object: Value) -> Value {
    if is_events_group(def) && object["apiVersion"] != "v1" {
        rename(&mut object, EVENT_FIELDS.iter().copied());
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), "v1".into());
        }
    }
    object
}

/// A stored object in the form `def` serves.
pub fn from_storage(def: &ResourceDef, object: &Value) -> Value {
    let mut object = object.clone();
    if is_events_group(def) && object["apiVersion"] == "v1" {
        rename(&mut object, EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtins;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_the_groups() {
        let defs = builtins();
        let def = defs.iter().find(|d| is_events_group(d)).unwrap();
        let written = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "ConfigMap", "name": "web"},
            "note": "synced", "reason": "Synced", "reportingController": "mirror",
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:00.000000Z"},
            "deprecatedCount": 3
        });
        let stored = to_storage(def, written.clone());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "web");
        assert_eq!(stored["message"], "synced");
        assert_eq!(stored["reportingComponent"], "mirror");
        assert_eq!(stored["count"], 3);
        assert_eq!(stored["series"]["count"], 2);
        assert!(stored.get("regarding").is_none() && stored.get("note").is_none());
        let mut back = from_storage(def, &stored);
        back["apiVersion"] = "events.k8s.io/v1".into();
        assert_eq!(back, written);
    }
}
