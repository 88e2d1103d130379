//! Built-in objects decoded against their k8s-openapi types before they
//! are stored, as the real server decodes into its Go types: a field of the
//! wrong JSON type is a 400 naming the field (`data.a`, `spec.replicas`).

use k8s_openapi::api::{apps, batch, coordination, core, networking, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::registry::ResourceDef;
use crate::status::ApiError;

/// Decodes `object` (in storage form) as the built-in type `def` serves;
/// custom resources are checked against their schema elsewhere.
pub fn check(def: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    if def.custom {
        return Ok(());
    }
    let decoded = match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => decode::<core::v1::Namespace>(object),
        ("", "ConfigMap") => decode::<core::v1::ConfigMap>(object),
        ("", "Secret") => decode::<core::v1::Secret>(object),
        ("", "Service") => decode::<core::v1::Service>(object),
        ("", "ServiceAccount") => decode::<core::v1::ServiceAccount>(object),
        ("", "Pod") => decode::<core::v1::Pod>(object),
        ("", "Event") => decode::<core::v1::Event>(object),
        ("", "PersistentVolumeClaim") => decode::<core::v1::PersistentVolumeClaim>(object),
        ("", "PersistentVolume") => decode::<core::v1::PersistentVolume>(object),
        ("", "Node") => decode::<core::v1::Node>(object),
        ("apps", "Deployment") => decode::<apps::v1::Deployment>(object),
        ("apps", "StatefulSet") => decode::<apps::v1::StatefulSet>(object),
        ("apps", "DaemonSet") => decode::<apps::v1::DaemonSet>(object),
        ("apps", "ReplicaSet") => decode::<apps::v1::ReplicaSet>(object),
        ("batch", "Job") => decode::<batch::v1::Job>(object),
        ("batch", "CronJob") => decode::<batch::v1::CronJob>(object),
        ("events.k8s.io", "Event") => decode::<k8s_openapi::api::events::v1::Event>(object),
        ("coordination.k8s.io", "Lease") => decode::<coordination::v1::Lease>(object),
        ("networking.k8s.io", "Ingress") => decode::<networking::v1::Ingress>(object),
        ("rbac.authorization.k8s.io", "Role") => decode::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io", "RoleBinding") => decode::<rbac::v1::RoleBinding>(object),
        ("rbac.authorization.k8s.io", "ClusterRole") => decode::<rbac::v1::ClusterRole>(object),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            decode::<rbac::v1::ClusterRoleBinding>(object)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            decode::<CustomResourceDefinition>(object)
        }
        _ => Ok(()),
    };
    decoded.map_err(|message| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {message}",
            kind = def.kind,
            version = def.version
        ))
    })
}

/// The first type error, with the path of its field. A missing required
/// field is not a type error (Go decodes it as empty): the validation that
/// follows names it as the real server does.
fn decode<T: DeserializeOwned>(object: &Value) -> Result<(), String> {
    match serde_path_to_error::deserialize::<_, T>(object) {
        Ok(_) => Ok(()),
        Err(e) if e.inner().to_string().starts_with("missing field") => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                Err(inner.to_string())
            } else {
                Err(format!("{path}: {inner}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn names_the_field_of_a_type_error() {
        let r = Registry::new();
        let cm = r.find("", "v1", "configmaps").unwrap();
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        assert!(check(&cm, &ok).is_ok());
        let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": 1}});
        let e = check(&cm, &bad).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("data.a: invalid type: integer `1`"),
            "{}",
            e.message
        );
        // A missing required field is left to validation.
        let pod = r.find("", "v1", "pods").unwrap();
        let nameless = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"image": "i"}]}});
        assert!(check(&pod, &nameless).is_ok());
    }
}
