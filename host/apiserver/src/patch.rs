//! Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch for built-in types.

use serde_json::{Map, Value};

use crate::registry::{ListType, ResourceDef};

/// Applies a JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (k, v) in patch {
                    if v.is_null() {
                        map.remove(k);
                    } else {
                        merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a JSON patch. A `test` of `null` against a missing path passes,
/// as on the real API server (kube-runtime's finalizer helper relies on it).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be a list of operations")?;
    let mut kept = Vec::with_capacity(ops.len());
    for op in ops {
        let is_null_test = op["op"] == "test" && op.get("value").is_some_and(Value::is_null);
        if is_null_test {
            let path = op["path"].as_str().unwrap_or_default();
            if target.pointer(path).is_none_or(Value::is_null) {
                continue;
            }
        }
        kept.push(op.clone());
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(kept))
        .map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

/// Applies a strategic merge patch to a built-in object.
pub fn strategic_merge(def: &ResourceDef, target: &mut Value, patch: &Value) -> Result<(), String> {
    let patch = patch
        .as_object()
        .ok_or("a strategic merge patch must be an object")?;
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut path = Vec::new();
    if let Value::Object(map) = target
        && merge_map(def, &mut path, map, patch)?
    {
        map.clear();
    }
    Ok(())
}

/// Removes `$`-directives from a value about to be stored.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Merges `patch` into `map`; returns true when the map itself is to be deleted.
fn merge_map(
    def: &ResourceDef,
    path: &mut Vec<String>,
    map: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<bool, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(true),
        Some("replace") => {
            if let Value::Object(replacement) = clean(&Value::Object(patch.clone())) {
                *map = replacement;
            }
            return Ok(false);
        }
        Some(other) if other != "merge" => {
            return Err(format!("unknown patch directive $patch: {other}"));
        }
        _ => {}
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((
                field.to_owned(),
                value.as_array().cloned().unwrap_or_default(),
            ));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = map.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(child) => {
                let existing = map
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !existing.is_object() {
                    *existing = Value::Object(Map::new());
                }
                if let Value::Object(existing) = existing
                    && merge_map(def, path, existing, child)?
                {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let list_path: Vec<&str> = path.iter().map(String::as_str).collect();
                let merged = match def.list_type(&list_path) {
                    ListType::Map(keys) => merge_keyed_list(def, path, map.get(key), items, &keys)?,
                    ListType::Set => {
                        let mut list = map
                            .get(key)
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        for item in items {
                            if !list.contains(item) {
                                list.push(item.clone());
                            }
                        }
                        list
                    }
                    ListType::Atomic => items.iter().map(clean).collect(),
                };
                map.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        map.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = map.get_mut(&field) {
            reorder(list, &order);
        }
    }
    Ok(false)
}

fn same_key(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter()
        .all(|k| b.get(k).is_none() || a.get(k) == b.get(k))
}

fn merge_keyed_list(
    def: &ResourceDef,
    path: &mut Vec<String>,
    existing: Option<&Value>,
    items: &[Value],
    keys: &[String],
) -> Result<Vec<Value>, String> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(clean)
            .collect());
    }
    let mut list = existing
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in items {
        let Some(patch_map) = item.as_object() else {
            list.push(item.clone());
            continue;
        };
        let position = list.iter().position(|e| same_key(e, item, keys));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            list.retain(|e| !same_key(e, item, keys));
            continue;
        }
        match position {
            Some(i) => {
                if let Value::Object(element) = &mut list[i] {
                    merge_map(def, path, element, patch_map)?;
                }
            }
            None => list.push(clean(item)),
        }
    }
    Ok(list)
}

/// Orders `list` like `order` (elements matched by their merge key or value);
/// elements not named keep their place at the end.
fn reorder(list: &mut Vec<Value>, order: &[Value]) {
    let matches = |element: &Value, wanted: &Value| match wanted {
        Value::Object(w) => w.iter().all(|(k, v)| element.get(k) == Some(v)),
        other => element == other,
    };
    let mut ordered = Vec::with_capacity(list.len());
    for wanted in order {
        if let Some(i) = list.iter().position(|e| matches(e, wanted)) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut v, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_test_null_on_missing_field_passes() {
        let mut v = json!({"metadata": {"name": "x"}});
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
        ]);
        json_patch(&mut v, &patch).unwrap();
        assert_eq!(v["metadata"]["finalizers"], json!(["f"]));
        // A real mismatch still fails.
        let again = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        assert!(json_patch(&mut v, &again).is_err());
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let r = Registry::new();
        let deploy = r.find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({
            "metadata": {"finalizers": ["y"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [
                    {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "c:1"}
                ]
            }}}
        });
        strategic_merge(&deploy, &mut d, &patch).unwrap();
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "c");
        assert_eq!(containers[1]["image"], "a:2");
        assert_eq!(
            containers[1]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
        assert_eq!(containers.as_array().unwrap().len(), 2);
        assert_eq!(d["metadata"]["finalizers"], json!(["x", "y"]));
    }
}
