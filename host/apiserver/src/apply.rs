//! Server-side apply and `managedFields`.
//!
//! Field sets are kept in the `FieldsV1` form itself (`{"f:spec":
//! {"f:replicas": {}}}`, `k:{"name":"app"}` for keyed list elements,
//! `v:<json>` for set members, `.` for an element itself); an empty object
//! is a leaf. Each manager owns a set per operation (`Apply`, `Update`) and
//! subresource. Apply merges the applied object by the type's list
//! semantics, fails with `FieldManagerConflict` causes when it would change
//! a field another manager owns (unless forced, which moves ownership), and
//! removes fields the manager stopped applying that nobody else owns.
//! Other writes make their writer own what they changed.

use serde_json::{Map, Value, json};

use crate::registry::{ListType, ResourceDef};
use crate::status::ApiError;

/// Which part of an object a write touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The object, without `status` when the type has a status subresource.
    Main,
    /// The `status` subresource.
    Status,
}

impl Scope {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main => None,
            Scope::Status => Some("status"),
        }
    }

    /// Whether a top-level field belongs to this scope.
    pub fn owns_top(self, def: &ResourceDef, key: &str) -> bool {
        match (self, key) {
            (_, "apiVersion" | "kind") => false,
            (Scope::Status, k) => k == "status",
            (Scope::Main, "status") => !def.status,
            (Scope::Main, _) => true,
        }
    }
}

/// Metadata fields that are never managed.
const UNMANAGED_METADATA: [&str; 11] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

type FieldSet = Map<String, Value>;
type Path = Vec<String>;

fn list_type(def: &ResourceDef, path: &[String]) -> ListType {
    let names: Vec<&str> = path.iter().filter_map(|p| p.strip_prefix("f:")).collect();
    def.list_type(&names)
}

fn element_key(item: &Value, keys: &[String]) -> String {
    let mut key = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            key.insert(k.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(key))
}

/// The fields set in `object` (top level filtered by `scope`).
pub fn fields_of(def: &ResourceDef, scope: Scope, object: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (k, v) in map {
        if !scope.owns_top(def, k) {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        if k == "metadata" {
            let Some(meta) = v.as_object() else { continue };
            let mut sub = FieldSet::new();
            for (mk, mv) in meta {
                if UNMANAGED_METADATA.contains(&mk.as_str()) {
                    continue;
                }
                path.push(format!("f:{mk}"));
                sub.insert(
                    format!("f:{mk}"),
                    Value::Object(value_fields(def, &mut path, mv)),
                );
                path.pop();
            }
            if !sub.is_empty() {
                out.insert("f:metadata".into(), Value::Object(sub));
            }
            continue;
        }
        out.insert(
            format!("f:{k}"),
            Value::Object(value_fields(def, &mut path, v)),
        );
    }
    out
}

/// The field set below one value (empty for a leaf).
fn value_fields(def: &ResourceDef, path: &mut Path, value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                out.insert(format!("f:{k}"), Value::Object(value_fields(def, path, v)));
                path.pop();
            }
        }
        Value::Array(items) => match list_type(def, path) {
            ListType::Map(keys) => {
                for item in items {
                    let key = element_key(item, &keys);
                    path.push(key.clone());
                    let mut element = value_fields(def, path, item);
                    element.insert(".".into(), json!({}));
                    out.insert(key, Value::Object(element));
                    path.pop();
                }
            }
            ListType::Set => {
                for item in items {
                    out.insert(format!("v:{item}"), json!({}));
                }
            }
            ListType::Atomic => {}
        },
        _ => {}
    }
    out
}

/// Every leaf path of a set.
fn leaves(set: &FieldSet) -> Vec<Path> {
    let mut out = Vec::new();
    fn walk(set: &FieldSet, path: &mut Path, out: &mut Vec<Path>) {
        for (k, v) in set {
            path.push(k.clone());
            match v.as_object() {
                Some(child) if !child.is_empty() => walk(child, path, out),
                _ => out.push(path.clone()),
            }
            path.pop();
        }
    }
    walk(set, &mut Vec::new(), &mut out);
    out
}

fn has_leaf(set: &FieldSet, path: &[String]) -> bool {
    let mut node = set;
    for (i, el) in path.iter().enumerate() {
        match node.get(el).and_then(Value::as_object) {
            Some(child) if i + 1 == path.len() => return child.is_empty(),
            Some(child) => node = child,
            None => return false,
        }
    }
    false
}

fn has_prefix(set: &FieldSet, prefix: &[String]) -> bool {
    let mut node = set;
    for el in prefix {
        match node.get(el).and_then(Value::as_object) {
            Some(child) => node = child,
            None => return false,
        }
    }
    true
}

fn insert_leaf(set: &mut FieldSet, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = set;
    for el in parents {
        let entry = node.entry(el.clone()).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        let Some(child) = entry.as_object_mut() else {
            return;
        };
        node = child;
    }
    node.entry(last.clone()).or_insert_with(|| json!({}));
}

/// Removes a leaf and prunes parents it leaves empty.
fn remove_leaf(set: &mut FieldSet, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return set.remove(first).is_some();
    }
    let Some(child) = set.get_mut(first).and_then(Value::as_object_mut) else {
        return false;
    };
    let removed = remove_leaf(child, rest);
    if removed && child.is_empty() {
        set.remove(first);
    }
    removed
}

/// The value at a field path.
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = object;
    for el in path {
        node = if el == "." {
            node
        } else if let Some(name) = el.strip_prefix("f:") {
            node.get(name)?
        } else if let Some(key) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).ok()?;
            node.as_array()?
                .iter()
                .find(|e| key.iter().all(|(k, v)| e.get(k) == Some(v)))?
        } else if let Some(member) = el.strip_prefix("v:") {
            let member: Value = serde_json::from_str(member).ok()?;
            node.as_array()?.iter().find(|e| **e == member)?
        } else {
            return None;
        };
    }
    Some(node)
}

/// Removes the field or list element at a path.
fn remove_at(object: &mut Value, path: &[String]) {
    let (target, parent_path) = match path.last().map(String::as_str) {
        Some(".") => (
            path.get(path.len().saturating_sub(2)),
            &path[..path.len().saturating_sub(2)],
        ),
        _ => (path.last(), &path[..path.len().saturating_sub(1)]),
    };
    let Some(target) = target else { return };
    let mut node = object;
    for el in parent_path {
        let next = if el == "." {
            continue;
        } else if let Some(name) = el.strip_prefix("f:") {
            node.get_mut(name)
        } else {
            let key = el
                .strip_prefix("k:")
                .or_else(|| el.strip_prefix("v:"))
                .unwrap_or_default();
            let wanted: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            node.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|e| element_matches(e, &wanted, el.starts_with("k:")))
            })
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(name) = target.strip_prefix("f:") {
        if let Some(map) = node.as_object_mut() {
            map.remove(name);
        }
    } else {
        let keyed = target.starts_with("k:");
        let key = target
            .strip_prefix("k:")
            .or_else(|| target.strip_prefix("v:"))
            .unwrap_or_default();
        let wanted: Value = serde_json::from_str(key).unwrap_or(Value::Null);
        if let Some(list) = node.as_array_mut() {
            list.retain(|e| !element_matches(e, &wanted, keyed));
        }
    }
}

fn element_matches(element: &Value, wanted: &Value, keyed: bool) -> bool {
    if keyed {
        wanted
            .as_object()
            .is_some_and(|k| k.iter().all(|(k, v)| element.get(k) == Some(v)))
    } else {
        element == wanted
    }
}

/// `.spec.containers[name="app"].image`, as in conflict messages.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(name) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Merges an applied object into the live one by the type's list semantics.
fn merge_applied(def: &ResourceDef, path: &mut Path, live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            for (k, v) in applied {
                path.push(format!("f:{k}"));
                match live.get_mut(k) {
                    Some(existing) => merge_applied(def, path, existing, v),
                    None => {
                        live.insert(k.clone(), v.clone());
                    }
                }
                path.pop();
            }
        }
        (live @ Value::Array(_), Value::Array(items)) => match list_type(def, path) {
            ListType::Map(keys) => {
                for item in items {
                    let key = element_key(item, &keys);
                    let wanted: Value =
                        serde_json::from_str(key.trim_start_matches("k:")).unwrap_or(Value::Null);
                    let Some(list) = live.as_array_mut() else {
                        return;
                    };
                    match list.iter_mut().find(|e| element_matches(e, &wanted, true)) {
                        Some(existing) => {
                            path.push(key);
                            merge_applied(def, path, existing, item);
                            path.pop();
                        }
                        None => list.push(item.clone()),
                    }
                }
            }
            ListType::Set => {
                if let Some(list) = live.as_array_mut() {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                }
            }
            ListType::Atomic => *live = applied.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                    time: e["time"].as_str().unwrap_or_default().to_owned(),
                    subresource: e["subresource"].as_str().map(str::to_owned),
                    fields: e["fieldsV1"].as_object().cloned().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn store_entries(object: &mut Value, mut list: Vec<Entry>) {
    list.retain(|e| !e.fields.is_empty());
    let values: Vec<Value> = list
        .into_iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": Value::Object(e.fields),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = sub.into();
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if values.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(values));
        }
    }
}

/// Who is applying, and how.
#[derive(Clone, Debug)]
pub struct Applier<'a> {
    /// The field manager.
    pub manager: &'a str,
    /// Take over conflicting fields.
    pub force: bool,
    /// The current time, RFC 3339.
    pub now: &'a str,
}

/// Server-side apply of `applied` onto `live` (`{}` when creating). Returns
/// the new object with its `managedFields`; the caller keeps the fields it
/// owns (identity, versions) as it does for other writes.
pub fn apply(
    def: &ResourceDef,
    scope: Scope,
    live: &Value,
    applied: &Value,
    who: &Applier<'_>,
) -> Result<Value, ApiError> {
    let name = applied["metadata"]["name"].as_str().unwrap_or_default();
    let subresource = scope.subresource().map(str::to_owned);
    let mut list = entries(live);
    let applied_set = fields_of(def, scope, applied);
    let applied_leaves = leaves(&applied_set);

    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for entry in list
        .iter()
        .filter(|e| e.manager != who.manager && e.subresource == subresource)
    {
        for leaf in &applied_leaves {
            if has_leaf(&entry.fields, leaf) && value_at(live, leaf) != value_at(applied, leaf) {
                conflicts.push((entry.manager.clone(), leaf.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !who.force {
            let shown = conflicts
                .iter()
                .map(|(m, p)| (m.clone(), display(p)))
                .collect();
            return Err(ApiError::apply_conflict(def, name, shown));
        }
        for (manager, leaf) in &conflicts {
            for entry in list
                .iter_mut()
                .filter(|e| &e.manager == manager && e.subresource == subresource)
            {
                remove_leaf(&mut entry.fields, leaf);
            }
        }
    }

    let mut result = live.clone();
    if !result.is_object() {
        result = json!({});
    }
    if let (Some(target), Some(source)) = (result.as_object_mut(), applied.as_object()) {
        for (k, v) in source {
            if !scope.owns_top(def, k) {
                continue;
            }
            let mut path = vec![format!("f:{k}")];
            let v = if k == "metadata" {
                let mut meta = v.clone();
                if let Some(m) = meta.as_object_mut() {
                    m.retain(|mk, _| !UNMANAGED_METADATA.contains(&mk.as_str()));
                }
                meta
            } else {
                v.clone()
            };
            match target.get_mut(k) {
                Some(existing) => merge_applied(def, &mut path, existing, &v),
                None => {
                    target.insert(k.clone(), v);
                }
            }
        }
    }

    // Fields this manager applied before and no longer does go, unless
    // another manager owns them.
    let own = |e: &Entry| {
        e.manager == who.manager && e.operation == "Apply" && e.subresource == subresource
    };
    let previous = list
        .iter()
        .find(|e| own(e))
        .map(|e| leaves(&e.fields))
        .unwrap_or_default();
    let mut dropped: Vec<Path> = previous
        .into_iter()
        .filter(|p| !has_leaf(&applied_set, p))
        .collect();
    // Deepest first, so that removing an element does not hide its fields.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        let others = list
            .iter()
            .filter(|e| !own(e) && e.subresource == subresource);
        let element = path.last().is_some_and(|l| l == ".");
        let owned_elsewhere = others.clone().any(|e| {
            if element {
                has_prefix(&e.fields, &path[..path.len() - 1])
            } else {
                has_leaf(&e.fields, &path)
            }
        }) || (element && has_prefix(&applied_set, &path[..path.len() - 1]));
        if !owned_elsewhere {
            remove_at(&mut result, &path);
        }
    }

    match list.iter_mut().find(|e| own(e)) {
        Some(entry) => {
            entry.fields = applied_set;
            entry.time = who.now.to_owned();
            entry.api_version = def.api_version();
        }
        None => list.push(Entry {
            manager: who.manager.to_owned(),
            operation: "Apply".into(),
            api_version: def.api_version(),
            time: who.now.to_owned(),
            subresource,
            fields: applied_set,
        }),
    }
    store_entries(&mut result, list);
    Ok(result)
}

/// The fields `new` sets differently from `old`.
fn changed(def: &ResourceDef, scope: Scope, old: &Value, new: &Value) -> Vec<Path> {
    let old_set = fields_of(def, scope, old);
    leaves(&fields_of(def, scope, new))
        .into_iter()
        .filter(|p| !has_leaf(&old_set, p) || value_at(old, p) != value_at(new, p))
        .collect()
}

/// Records a non-apply write (create, update, patch) by `manager`: it owns
/// what it changed, other managers lose it, and fields it removed are
/// nobody's. `new` must still carry `old`'s `managedFields`.
pub fn record_update(
    def: &ResourceDef,
    scope: Scope,
    old: &Value,
    new: &mut Value,
    manager: &str,
    now: &str,
) {
    let subresource = scope.subresource().map(str::to_owned);
    let changed = changed(def, scope, old, new);
    let new_set = fields_of(def, scope, new);
    let removed: Vec<Path> = leaves(&fields_of(def, scope, old))
        .into_iter()
        .filter(|p| !has_leaf(&new_set, p))
        .collect();
    let mut list = entries(new);
    for entry in list.iter_mut().filter(|e| e.subresource == subresource) {
        for p in changed.iter().chain(removed.iter()) {
            remove_leaf(&mut entry.fields, p);
        }
    }
    if !changed.is_empty() {
        let mine = |e: &Entry| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        };
        if !list.iter().any(mine) {
            list.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: def.api_version(),
                time: now.to_owned(),
                subresource: subresource.clone(),
                fields: FieldSet::new(),
            });
        }
        if let Some(entry) = list.iter_mut().find(|e| mine(e)) {
            for p in &changed {
                insert_leaf(&mut entry.fields, p);
            }
            entry.time = now.to_owned();
        }
    }
    store_entries(new, list);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn deploy() -> std::sync::Arc<ResourceDef> {
        Registry::new().find("apps", "v1", "deployments").unwrap()
    }

    fn who(manager: &str, force: bool) -> Applier<'_> {
        Applier {
            manager,
            force,
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn applied(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_form() {
        let set = fields_of(&deploy(), Scope::Main, &applied(1, "a"));
        assert_eq!(
            Value::Object(set),
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}})
        );
    }

    #[test]
    fn conflict_then_force_moves_ownership() {
        let d = deploy();
        let first = apply(
            &d,
            Scope::Main,
            &json!({}),
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap();
        // Same values: shared, no conflict.
        let shared = apply(
            &d,
            Scope::Main,
            &first,
            &applied(1, "a"),
            &who("bob", false),
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // A different value conflicts.
        let err = apply(
            &d,
            Scope::Main,
            &shared,
            &applied(3, "a"),
            &who("bob", false),
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.causes().len(), 1);
        assert_eq!(err.causes()[0].reason, "FieldManagerConflict");
        assert_eq!(err.causes()[0].field, ".spec.replicas");
        assert_eq!(
            err.causes()[0].message,
            "conflict with \"alice\" using apps/v1"
        );
        // Forced: bob takes replicas.
        let forced = apply(
            &d,
            Scope::Main,
            &shared,
            &applied(3, "a"),
            &who("bob", true),
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let alice = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "alice")
            .unwrap();
        assert!(alice["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        // Now alice conflicts.
        let err = apply(
            &d,
            Scope::Main,
            &forced,
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap_err();
        assert_eq!(
            err.causes()[0].message,
            "conflict with \"bob\" using apps/v1"
        );
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_owned_elsewhere() {
        let d = deploy();
        let first = apply(
            &d,
            Scope::Main,
            &json!({}),
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap();
        let mut less = applied(1, "a");
        less["metadata"]["labels"] = json!({});
        less["spec"].as_object_mut().unwrap().remove("replicas");
        let second = apply(&d, Scope::Main, &first, &less, &who("alice", false)).unwrap();
        assert!(second["spec"].get("replicas").is_none());
        assert!(second["metadata"]["labels"].get("app").is_none());
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["image"],
            "a"
        );
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let d = deploy();
        let live = apply(
            &d,
            Scope::Main,
            &json!({}),
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap();
        let mut new = live.clone();
        new["spec"]["replicas"] = 5.into();
        record_update(&d, Scope::Main, &live, &mut new, "kubectl-edit", "now");
        let entries = new["metadata"]["managedFields"].as_array().unwrap();
        let edit = entries
            .iter()
            .find(|e| e["manager"] == "kubectl-edit")
            .unwrap();
        assert_eq!(edit["operation"], "Update");
        assert_eq!(edit["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        let err = apply(
            &d,
            Scope::Main,
            &new,
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap_err();
        assert_eq!(
            err.causes()[0].message,
            "conflict with \"kubectl-edit\" using apps/v1"
        );
    }

    #[test]
    fn status_is_its_own_scope() {
        let d = deploy();
        let live = apply(
            &d,
            Scope::Main,
            &json!({}),
            &applied(1, "a"),
            &who("alice", false),
        )
        .unwrap();
        let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 9}, "status": {"readyReplicas": 1}});
        let out = apply(&d, Scope::Status, &live, &status, &who("ctrl", false)).unwrap();
        assert_eq!(out["status"]["readyReplicas"], 1);
        assert_eq!(out["spec"]["replicas"], 1, "status apply ignores spec");
        let ctrl = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "ctrl")
            .unwrap();
        assert_eq!(ctrl["subresource"], "status");
    }
}
