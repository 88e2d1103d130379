//! `meta.k8s.io/v1` Table responses for `kubectl get`: NAME, the CRD's
//! `additionalPrinterColumns`, AGE.

use serde_json::{Value, json};

use crate::registry::ResourceDef;

/// Whether the client asked for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Age as kubectl prints it: `45s`, `12m`, `5h`, `3d`.
fn age(created: Option<&str>) -> String {
    let Some(created) = created.and_then(|c| {
        time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
    }) else {
        return "<unknown>".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - created)
        .whole_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Evaluates a simple JSONPath (`.spec.replicas`, `.status.conditions[0].type`).
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = object;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            node = node.get(field)?;
        }
        if let Some(i) = index {
            node = node.get(i)?;
        }
    }
    Some(node)
}

fn cell(value: Option<&Value>, type_: &str) -> Value {
    match (value, type_) {
        (None, _) | (Some(Value::Null), _) => Value::Null,
        (Some(v), "date") => v
            .as_str()
            .map(|s| age(Some(s)).into())
            .unwrap_or(Value::Null),
        (Some(v), _) => v.clone(),
    }
}

/// The first of these fields the object has.
fn first<'a>(object: &'a Value, paths: &[&str]) -> Option<&'a Value> {
    paths
        .iter()
        .filter_map(|p| json_path(object, p))
        .find(|v| !v.is_null())
}

/// Events as the real server prints them: LAST SEEN, TYPE, REASON, OBJECT,
/// MESSAGE, in either group's field names.
fn events_table(objects: &[Value], list_meta: Value) -> Value {
    let column = |name: &str, type_: &str, description: &str| json!({"name": name, "type": type_, "format": "", "description": description, "priority": 0});
    let columns = vec![
        column("Last Seen", "string", "The time the event was last seen"),
        column("Type", "string", "The type of the event"),
        column("Reason", "string", "The reason of the event"),
        column("Object", "string", "The object the event is about"),
        column("Message", "string", "The message of the event"),
    ];
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let seen = first(
                o,
                &[
                    ".series.lastObservedTime",
                    ".lastTimestamp",
                    ".deprecatedLastTimestamp",
                    ".eventTime",
                    ".metadata.creationTimestamp",
                ],
            );
            let mut last_seen = age(seen.and_then(Value::as_str));
            let count = first(o, &[".series.count", ".count", ".deprecatedCount"])
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if count > 1 {
                let since = first(
                    o,
                    &[".eventTime", ".firstTimestamp", ".deprecatedFirstTimestamp"],
                );
                last_seen = format!("{last_seen} (x{count} over {})", age(since.and_then(Value::as_str)));
            }
            let regarding = first(o, &[".involvedObject", ".regarding"]).cloned().unwrap_or_default();
            let object = format!(
                "{}/{}",
                regarding["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
                regarding["name"].as_str().unwrap_or_default()
            );
            let text = |paths: &[&str]| first(o, paths).cloned().unwrap_or(Value::Null);
            json!({
                "cells": [last_seen, text(&[".type"]), text(&[".reason"]), object, text(&[".message", ".note"])],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}

/// A Table of `objects`.
pub fn table(def: &ResourceDef, objects: &[Value], list_meta: Value) -> Value {
    if def.plural == "events" && (def.group.is_empty() || def.group == "events.k8s.io") {
        return events_table(objects, list_meta);
    }
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in &def.printer_columns {
        columns.push(json!({"name": c.name, "type": c.type_, "format": "", "description": c.description, "priority": c.priority}));
    }
    columns.push(json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}));
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &def.printer_columns {
                cells.push(cell(json_path(o, &c.json_path), &c.type_));
            }
            cells.push(age(o["metadata"]["creationTimestamp"].as_str()).into());
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]},
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::PrinterColumn;

    #[test]
    fn printer_columns() {
        let mut def = crate::registry::Registry::new()
            .find("", "v1", "configmaps")
            .map(|d| (*d).clone())
            .unwrap();
        def.printer_columns = vec![PrinterColumn {
            name: "Replicas".into(),
            type_: "integer".into(),
            json_path: ".spec.replicas".into(),
            description: String::new(),
            priority: 0,
        }];
        let t = table(
            &def,
            &[json!({"metadata": {"name": "a"}, "spec": {"replicas": 3}})],
            json!({}),
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Replicas");
        assert_eq!(t["rows"][0]["cells"][0], "a");
        assert_eq!(t["rows"][0]["cells"][1], 3);
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
