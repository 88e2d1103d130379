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

/// Most operations in one JSON patch, as on the real server (413 past it).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes one JSON patch may copy in all (`copy` can double a document
/// per operation).
pub const MAX_COPIED_BYTES: usize = 10 * 1024 * 1024;

/// Why a JSON patch was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonPatchError {
    /// Too many operations (413).
    TooLarge(String),
    /// Malformed, failing, or building something too deep or too big (400/422).
    Invalid(String),
}

/// How deep `value` nests (a scalar is 0), without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                deepest = deepest.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Bytes of `value` as JSON, without recursion (an upper bound is enough).
fn size(value: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Array(items) => {
                stack.extend(items.iter());
                2 + items.len()
            }
            Value::Object(map) => {
                stack.extend(map.values());
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
            Value::String(s) => s.len() + 2,
            other => other.to_string().len(),
        };
    }
    total
}

fn segments(pointer: &str) -> usize {
    pointer.matches('/').count()
}

/// Applies a JSON patch. A `test` of `null` against a missing path passes,
/// as on the real API server (kube-runtime's finalizer helper relies on it).
/// No operation may nest the document past `max_depth`, and copies are
/// bounded in bytes: a patch cannot build what no body could send.
pub fn json_patch(
    target: &mut Value,
    patch: &Value,
    max_depth: usize,
) -> Result<(), JsonPatchError> {
    let invalid = |m: String| JsonPatchError::Invalid(m);
    let ops = patch
        .as_array()
        .ok_or_else(|| invalid("a JSON patch must be a list of operations".into()))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(JsonPatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    let mut doc_depth = depth(target);
    let mut copied = 0usize;
    for op in ops {
        let is_null_test = op["op"] == "test" && op.get("value").is_some_and(Value::is_null);
        if is_null_test {
            let path = op["path"].as_str().unwrap_or_default();
            if target.pointer(path).is_none_or(Value::is_null) {
                continue;
            }
        }
        let parsed: json_patch::PatchOperation = serde_json::from_value(op.clone())
            .map_err(|e| invalid(format!("invalid JSON patch: {e}")))?;
        let (path, added) = match &parsed {
            json_patch::PatchOperation::Add(a) => (a.path.as_str(), Some(depth(&a.value))),
            json_patch::PatchOperation::Replace(r) => (r.path.as_str(), Some(depth(&r.value))),
            json_patch::PatchOperation::Copy(c) => {
                let from = target.pointer(c.from.as_str());
                let bytes = from.map_or(0, size);
                copied += bytes;
                if copied > MAX_COPIED_BYTES {
                    return Err(invalid(format!(
                        "the JSON patch copies more than {MAX_COPIED_BYTES} bytes in all"
                    )));
                }
                (c.path.as_str(), from.map(depth))
            }
            json_patch::PatchOperation::Move(m) => {
                // Exact depth only when the cheap bound says it could matter.
                let bound = segments(m.path.as_str()) + doc_depth;
                let moved = if bound > max_depth {
                    target.pointer(m.from.as_str()).map(depth)
                } else {
                    Some(doc_depth)
                };
                (m.path.as_str(), moved)
            }
            json_patch::PatchOperation::Remove(_) | json_patch::PatchOperation::Test(_) => {
                ("", None)
            }
        };
        if let Some(added) = added {
            let reached = segments(path) + added;
            if reached > max_depth {
                return Err(invalid(format!(
                    "the JSON patch would nest the object {reached} levels deep, past the limit of {max_depth}"
                )));
            }
            doc_depth = doc_depth.max(reached);
        }
        json_patch::patch(target, std::slice::from_ref(&parsed))
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
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
        json_patch(&mut v, &patch, 100).unwrap();
        assert_eq!(v["metadata"]["finalizers"], json!(["f"]));
        // A real mismatch still fails.
        let again = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        assert!(json_patch(&mut v, &again, 100).is_err());
    }

    #[test]
    fn json_patches_cannot_build_what_no_body_could_send() {
        // Each copy doubles the depth: refused once past the limit.
        let mut v = json!({"spec": [[[]]]});
        let mut ops = Vec::new();
        let mut path = String::from("/spec");
        for _ in 0..12 {
            path.push_str("/0");
            ops.push(json!({"op": "copy", "from": "/spec", "path": format!("{path}/0")}));
            path = format!("{path}/0");
        }
        let e = json_patch(&mut v, &json!(ops), 50).unwrap_err();
        assert!(
            matches!(&e, JsonPatchError::Invalid(m) if m.contains("past the limit of 50")),
            "{e:?}"
        );
        // Copies are bounded in bytes.
        let mut v = json!({"a": "x".repeat(1024 * 1024)});
        let ops: Vec<Value> = (0..11)
            .map(|i| json!({"op": "copy", "from": "/a", "path": format!("/b{i}")}))
            .collect();
        let e = json_patch(&mut v, &json!(ops), 50).unwrap_err();
        assert!(
            matches!(&e, JsonPatchError::Invalid(m) if m.contains("copies more than")),
            "{e:?}"
        );
        // At most 10,000 operations.
        let ops = vec![json!({"op": "test", "path": "/a", "value": "x"}); 10_001];
        assert!(matches!(
            json_patch(&mut json!({"a": "x"}), &json!(ops), 50),
            Err(JsonPatchError::TooLarge(_))
        ));
        assert_eq!(depth(&json!({"a": [[1]], "b": 2})), 3);
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
