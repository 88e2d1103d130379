//! Names, metadata, data keys and sizes, and required fields: what makes
//! an object `Invalid` (422), with the real server's field paths.

use serde_json::Value;

use crate::registry::ResourceDef;
use crate::status::{ApiError, Cause};

const SUBDOMAIN_HELP: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_HELP: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// A DNS-1123 label: at most 63 lower-case letters, digits and `-`,
/// starting and ending with a letter or digit.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated parts of
/// lower-case letters, digits and `-` (no length limit per part).
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

const QUALIFIED_HELP: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const CONFIG_KEY_HELP: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// Largest ConfigMap or Secret data, as in the real server.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Largest total size of an object's annotations.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// Why `s` is not a qualified name (`[prefix/]name`, as label keys,
/// annotation keys and finalizers are), if it is not.
pub fn qualified_name_error(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if !is_subdomain(prefix) {
            return Some(format!("prefix part {SUBDOMAIN_HELP}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || !ends_ok(name.chars().next())
        || !ends_ok(name.chars().last())
    {
        return Some(QUALIFIED_HELP.into());
    }
    None
}

fn cause(field: &str, reason: &str, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        message,
        field: field.into(),
    }
}

/// Checks the name of a new object.
pub fn check_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let (valid, help) = if def.plural == "namespaces" || def.plural == "services" {
        (is_label(name), LABEL_HELP)
    } else {
        (is_subdomain(name), SUBDOMAIN_HELP)
    };
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            &def.kind,
            name,
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": {help}"),
        ))
    }
}

fn required(object: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) {
    let present = object.pointer(pointer).is_some_and(|v| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    });
    if !present {
        causes.push(cause(field, "FieldValueRequired", "Required value".into()));
    }
}

/// Checks the fields each type requires.
pub fn check_object(def: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    match (def.group.as_str(), def.plural.as_str()) {
        ("apps", "deployments" | "statefulsets" | "daemonsets" | "replicasets") => {
            required(object, "/spec/selector", "spec.selector", &mut causes);
            required(object, "/spec/template", "spec.template", &mut causes);
            required(
                object,
                "/spec/template/spec/containers",
                "spec.template.spec.containers",
                &mut causes,
            );
            if let (Some(Value::Object(wanted)), Some(labels)) = (
                object.pointer("/spec/selector/matchLabels"),
                object.pointer("/spec/template/metadata/labels"),
            ) && wanted.iter().any(|(k, v)| labels.get(k) != Some(v))
            {
                causes.push(cause(
                    "spec.template.metadata.labels",
                    "FieldValueInvalid",
                    "Invalid value: `selector` does not match template `labels`".into(),
                ));
            }
        }
        ("", "pods") => required(object, "/spec/containers", "spec.containers", &mut causes),
        ("batch", "jobs") => required(
            object,
            "/spec/template/spec/containers",
            "spec.template.spec.containers",
            &mut causes,
        ),
        ("batch", "cronjobs") => {
            required(object, "/spec/schedule", "spec.schedule", &mut causes);
            required(object, "/spec/jobTemplate", "spec.jobTemplate", &mut causes);
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            required(object, "/roleRef/name", "roleRef.name", &mut causes);
            required(object, "/roleRef/kind", "roleRef.kind", &mut causes);
        }
        ("coordination.k8s.io", "leases") | ("", _) | (_, _) => {}
    }
    check_metadata(&object["metadata"], &mut causes);
    if def.group.is_empty() && matches!(def.kind.as_str(), "ConfigMap" | "Secret") {
        check_data(object, &mut causes);
    }
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            let value_ok = v.as_str().is_some_and(|v| {
                v.len() <= 63
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            });
            if !value_ok {
                causes.push(cause(
                    "metadata.labels",
                    "FieldValueInvalid",
                    format!("Invalid value: {v}: label {k:?} must be a string of at most 63 characters: alphanumerics, '-', '_' or '.'"),
                ));
            }
        }
    }
    if def.custom
        && let Some(schema) = &def.schema
    {
        check_schema(schema, object, "", &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&def.kind, name, causes))
    }
}

/// Label and annotation keys, finalizers, owner references.
fn check_metadata(meta: &Value, causes: &mut Vec<Cause>) {
    for (field, map) in [
        ("metadata.labels", &meta["labels"]),
        ("metadata.annotations", &meta["annotations"]),
    ] {
        for key in map.as_object().into_iter().flat_map(|m| m.keys()) {
            // Annotation keys are checked case-insensitively, as there.
            let checked = if field == "metadata.annotations" {
                key.to_ascii_lowercase()
            } else {
                key.clone()
            };
            if let Some(why) = qualified_name_error(&checked) {
                causes.push(cause(
                    field,
                    "FieldValueInvalid",
                    format!("Invalid value: {key:?}: {why}"),
                ));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATION_BYTES {
            causes.push(cause(
                "metadata.annotations",
                "FieldValueTooLong",
                format!("Too long: must have at most {MAX_ANNOTATION_BYTES} bytes"),
            ));
        }
    }
    for (i, finalizer) in meta["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = finalizer.as_str().unwrap_or_default();
        if let Some(why) = qualified_name_error(text) {
            causes.push(cause(
                &format!("metadata.finalizers[{i}]"),
                "FieldValueInvalid",
                format!("Invalid value: {text:?}: {why}"),
            ));
        }
    }
    let refs = meta["ownerReferences"].as_array();
    for reference in refs.into_iter().flatten() {
        for (key, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            if reference[key].as_str().is_none_or(str::is_empty) {
                causes.push(cause(
                    &format!("metadata.ownerReferences.{key}"),
                    "FieldValueInvalid",
                    format!("Invalid value: \"\": {what} must not be empty"),
                ));
            }
        }
    }
    let controllers: Vec<&str> = refs
        .into_iter()
        .flatten()
        .filter(|r| r["controller"].as_bool() == Some(true))
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    if controllers.len() > 1 {
        causes.push(cause(
            "metadata.ownerReferences",
            "FieldValueInvalid",
            format!(
                "Invalid value: only one reference can have Controller set to true; found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

/// ConfigMap and Secret keys, and their total size (of the decoded bytes,
/// where the field holds base64).
fn check_data(object: &Value, causes: &mut Vec<Cause>) {
    let secret = object["kind"] == "Secret";
    let mut size = 0usize;
    for field in ["data", "binaryData", "stringData"] {
        let base64 = field == "binaryData" || (secret && field == "data");
        for (key, value) in object[field].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            size += if base64 {
                ((text.len() / 4) * 3)
                    .saturating_sub(text.bytes().rev().take_while(|b| *b == b'=').count().min(2))
            } else {
                text.len()
            };
            let valid = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                && key != "."
                && key != ".."
                && !key.starts_with("..");
            if !valid {
                let why = if key.starts_with("..") {
                    "must not start with '..'".to_owned()
                } else {
                    CONFIG_KEY_HELP.to_owned()
                };
                causes.push(cause(
                    &format!("{field}[{key}]"),
                    "FieldValueInvalid",
                    format!("Invalid value: {key:?}: {why}"),
                ));
            }
        }
    }
    if size > MAX_DATA_BYTES {
        causes.push(cause(
            "data",
            "FieldValueTooLong",
            format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        ));
    }
}

/// A field manager longer than the real server allows: 422 on the
/// request's options, as there.
pub fn check_field_manager(options_kind: &str, manager: &str) -> Result<(), ApiError> {
    if manager.len() <= 128 {
        return Ok(());
    }
    let mut e = ApiError::invalid(
        options_kind,
        "",
        vec![cause(
            "fieldManager",
            "FieldValueTooLong",
            "Too long: must have at most 128 bytes".into(),
        )],
    );
    e.message = format!(
        "{options_kind}.meta.k8s.io \"\" is invalid: fieldManager: Too long: must have at most 128 bytes"
    );
    Err(e)
}

/// Type and `required` checks against a CRD's OpenAPI schema.
fn check_schema(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let field = if path.is_empty() {
        "<root>".to_owned()
    } else {
        path.trim_start_matches('.').to_owned()
    };
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
        && (value.is_string() || value.is_i64());
    if !type_ok && !int_or_string {
        {
            causes.push(cause(
                &field,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: {value}: {field} in body must be of type {}",
                    schema["type"].as_str().unwrap_or_default()
                ),
            ));
            return;
        }
    }
    if let Some(Value::Array(required)) = schema.get("required") {
        for r in required.iter().filter_map(Value::as_str) {
            if value.get(r).is_none_or(Value::is_null) {
                causes.push(cause(
                    format!("{}.{r}", field.trim_start_matches("<root>")).trim_start_matches('.'),
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
        }
    }
    if let (Some(Value::Object(props)), Some(map)) = (schema.get("properties"), value.as_object()) {
        for (k, sub) in props {
            if k == "metadata" && path.is_empty() {
                continue;
            }
            if let Some(v) = map.get(k).filter(|v| !v.is_null()) {
                check_schema(sub, v, &format!("{path}.{k}"), causes);
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            check_schema(items, v, &format!("{path}[{i}]"), causes);
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        causes.push(cause(
            &field,
            "FieldValueNotSupported",
            format!("Unsupported value: {value}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_subdomain("web.example-1"));
        assert!(!is_subdomain("Bad_Name"));
        assert!(!is_subdomain("-x"));
        let r = Registry::new();
        let cm = r.find("", "v1", "configmaps").unwrap();
        let err = check_name(&cm, "Bad_Name").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.starts_with(
                "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
            ),
            "{}",
            err.message
        );
        let ns = r.find("", "v1", "namespaces").unwrap();
        assert!(check_name(&ns, "a.b").is_err());
    }

    #[test]
    fn required_fields() {
        let r = Registry::new();
        let d = r.find("apps", "v1", "deployments").unwrap();
        let err = check_object(&d, &json!({"metadata": {"name": "x"}, "spec": {}})).unwrap_err();
        assert_eq!(err.causes().len(), 3);
        assert_eq!(err.causes()[0].field, "spec.selector");
    }
}
