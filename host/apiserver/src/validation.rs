//! Names and required fields: what makes an object `Invalid` (422).

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

/// A DNS-1123 subdomain.
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
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
