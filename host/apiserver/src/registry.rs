//! The resource types the server serves: the built-in ones an operator
//! commonly touches, and those of every CustomResourceDefinition created at
//! run time; with the list semantics that strategic merge and server-side
//! apply need.

use std::sync::Arc;

use serde_json::Value;

/// One served group/version/resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceDef {
    /// API group; empty for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural, as in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether a `status` subresource is served.
    pub status: bool,
    /// Additional printer columns (CRDs).
    pub printer_columns: Vec<PrinterColumn>,
    /// The OpenAPI v3 schema of a CRD version, if any.
    pub schema: Option<Value>,
    /// True for custom resources.
    pub custom: bool,
}

/// A CRD's additional printer column.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean, date.
    pub type_: String,
    /// A simple JSONPath such as `.spec.replicas`.
    pub json_path: String,
    /// Description.
    pub description: String,
    /// 0 shows by default.
    pub priority: i64,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` or `plural` for core, as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The storage key: the same objects are served under every version
    /// (and `events.k8s.io` Events are the core ones, see [`crate::convert`]).
    pub fn storage_key(&self) -> (String, String) {
        match crate::convert::storage_type(self) {
            Some(_) => (String::new(), self.plural.clone()),
            None => (self.group.clone(), self.plural.clone()),
        }
    }

    /// The field selectors served for this type: each label and the path
    /// of the stored object it reads, with the value a missing field has.
    pub fn field_labels(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        let mut labels = METADATA_FIELD_LABELS.to_vec();
        // The involved object's fields: events.k8s.io's label, core's label
        // (the stored path).
        const INVOLVED: [(&str, &str); 7] = [
            ("regarding.kind", "involvedObject.kind"),
            ("regarding.namespace", "involvedObject.namespace"),
            ("regarding.name", "involvedObject.name"),
            ("regarding.uid", "involvedObject.uid"),
            ("regarding.apiVersion", "involvedObject.apiVersion"),
            (
                "regarding.resourceVersion",
                "involvedObject.resourceVersion",
            ),
            ("regarding.fieldPath", "involvedObject.fieldPath"),
        ];
        let same = |label: &'static str| (label, label, "");
        match (self.group.as_str(), self.plural.as_str()) {
            ("", "events") => {
                labels.extend(INVOLVED.map(|(_, core)| same(core)));
                labels.extend([
                    same("reason"),
                    same("reportingComponent"),
                    ("source", "source.component|reportingComponent", ""),
                    same("type"),
                ]);
                return labels;
            }
            ("events.k8s.io", "events") => {
                labels.extend(INVOLVED.map(|(label, core)| (label, core, "")));
                labels.extend([
                    same("reason"),
                    ("reportingController", "reportingComponent", ""),
                    same("type"),
                ]);
                return labels;
            }
            _ => {}
        }
        let extra: &[(&'static str, &'static str, &'static str)] =
            match (self.group.as_str(), self.plural.as_str()) {
                ("", "pods") => &[
                    ("spec.nodeName", "spec.nodeName", ""),
                    ("spec.restartPolicy", "spec.restartPolicy", ""),
                    ("spec.schedulerName", "spec.schedulerName", ""),
                    ("spec.serviceAccountName", "spec.serviceAccountName", ""),
                    ("spec.hostNetwork", "spec.hostNetwork", "false"),
                    ("status.phase", "status.phase", ""),
                    ("status.podIP", "status.podIP", ""),
                    ("status.nominatedNodeName", "status.nominatedNodeName", ""),
                ],
                ("", "secrets") => &[("type", "type", "")],
                ("", "namespaces") => &[("status.phase", "status.phase", "")],
                ("", "nodes") => &[("spec.unschedulable", "spec.unschedulable", "false")],
                ("", "services") => &[
                    ("spec.clusterIP", "spec.clusterIP", ""),
                    ("spec.type", "spec.type", ""),
                ],
                ("apps", "replicasets") => &[("status.replicas", "status.replicas", "0")],
                ("batch", "jobs") => &[("status.successful", "status.successful", "0")],
                _ => &[],
            };
        labels.extend_from_slice(extra);
        labels
    }

    /// The kind of lists of this type.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The verbs served.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// How the list at `path` (field names from the object root, list
    /// indices left out) merges.
    pub fn list_type(&self, path: &[&str]) -> ListType {
        if let ["metadata", field] = path {
            return match *field {
                "finalizers" => ListType::Set,
                "ownerReferences" => ListType::Map(vec!["uid".into()]),
                "managedFields" => ListType::Atomic,
                _ => ListType::Atomic,
            };
        }
        if self.custom {
            return self
                .schema
                .as_ref()
                .map(|s| schema_list_type(s, path))
                .unwrap_or(ListType::Atomic);
        }
        builtin_list_type(path)
    }
}

/// The field selectors every type serves (see [`ResourceDef::field_labels`]).
pub const METADATA_FIELD_LABELS: [(&str, &str, &str); 2] = [
    ("metadata.name", "metadata.name", ""),
    ("metadata.namespace", "metadata.namespace", ""),
];

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// A map keyed by these fields of each element.
    Map(Vec<String>),
}

fn builtin_list_type(path: &[&str]) -> ListType {
    let Some(last) = path.last() else {
        return ListType::Atomic;
    };
    let keyed = |k: &[&str]| ListType::Map(k.iter().map(|s| (*s).to_owned()).collect());
    match *last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env" => keyed(&["name"]),
        "ports" if path.contains(&"containers") || path.contains(&"initContainers") => {
            keyed(&["containerPort"])
        }
        "ports" if path.first() == Some(&"spec") => keyed(&["port"]),
        "volumeMounts" => keyed(&["mountPath"]),
        "volumeDevices" => keyed(&["devicePath"]),
        "conditions" => keyed(&["type"]),
        "hostAliases" => keyed(&["ip"]),
        _ => ListType::Atomic,
    }
}

/// Walks a CRD's OpenAPI schema along `path` to the list's extensions.
fn schema_list_type(schema: &Value, path: &[&str]) -> ListType {
    let mut node = schema;
    for name in path {
        if node.get("type").and_then(Value::as_str) == Some("array") {
            node = &node["items"];
        }
        node = match node.get("properties").and_then(|p| p.get(*name)) {
            Some(next) => next,
            None => match node.get("additionalProperties") {
                Some(next) if next.is_object() => next,
                _ => return ListType::Atomic,
            },
        };
    }
    match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            node.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListType::Atomic,
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    status: bool,
    all: bool,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        categories: if all { vec!["all".into()] } else { vec![] },
        namespaced,
        status,
        printer_columns: vec![],
        schema: None,
        custom: false,
    }
}

/// The built-in types, in discovery order.
pub fn builtins() -> Vec<ResourceDef> {
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            &["ns"],
            false,
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            &["cm"],
            true,
            false,
            false,
        ),
        builtin("", "v1", "Secret", "secrets", &[], true, false, false),
        builtin("", "v1", "Service", "services", &["svc"], true, true, true),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            &["sa"],
            true,
            false,
            false,
        ),
        builtin("", "v1", "Pod", "pods", &["po"], true, true, true),
        builtin("", "v1", "Event", "events", &["ev"], true, false, false),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            &["pvc"],
            true,
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            &["pv"],
            false,
            true,
            false,
        ),
        builtin("", "v1", "Node", "nodes", &["no"], false, true, false),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            &["deploy"],
            true,
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            &["sts"],
            true,
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "DaemonSet",
            "daemonsets",
            &["ds"],
            true,
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            &["rs"],
            true,
            true,
            true,
        ),
        builtin("batch", "v1", "Job", "jobs", &[], true, true, true),
        builtin(
            "batch",
            "v1",
            "CronJob",
            "cronjobs",
            &["cj"],
            true,
            true,
            true,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            &["ev"],
            true,
            false,
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            &[],
            true,
            false,
            false,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            &["ing"],
            true,
            true,
            false,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            &[],
            false,
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            &[],
            true,
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            &[],
            true,
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            &[],
            false,
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            &[],
            false,
            false,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            false,
        ),
    ]
}

/// Why a CRD cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CrdError(pub String);

/// The resource definitions of a CRD object, one per served version.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceDef>, CrdError> {
    let spec = &crd["spec"];
    let text = |v: &Value, field: &str| -> Result<String, CrdError> {
        v.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| CrdError(format!("spec.{field}: Required value")))
    };
    let group = text(spec, "group")?;
    let names = &spec["names"];
    let plural =
        text(names, "plural").map_err(|_| CrdError("spec.names.plural: Required value".into()))?;
    let kind =
        text(names, "kind").map_err(|_| CrdError("spec.names.kind: Required value".into()))?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(CrdError(
                "spec.scope: Unsupported value: must be Namespaced or Cluster".into(),
            ));
        }
    };
    if crd["metadata"]["name"].as_str() != Some(&format!("{plural}.{group}")) {
        return Err(CrdError(format!(
            "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({plural}.{group})"
        )));
    }
    // As the real server's CRD validation.
    if !group.contains('.') {
        return Err(CrdError(format!(
            "spec.group: Invalid value: {group:?}: should be a domain with at least one dot"
        )));
    }
    if !crate::validation::is_subdomain(&group) {
        return Err(CrdError(format!(
            "spec.group: Invalid value: {group:?}: a lowercase RFC 1123 subdomain"
        )));
    }
    let protected = ["k8s.io", "kubernetes.io"]
        .iter()
        .any(|d| group == *d || group.ends_with(&format!(".{d}")));
    if protected
        && crd["metadata"]["annotations"]["api-approved.kubernetes.io"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return Err(CrdError(
            "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111".into(),
        ));
    }
    let kind_ok = kind.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !kind.ends_with('-');
    if !kind_ok {
        return Err(CrdError(format!(
            "spec.names.kind: Invalid value: {kind:?}: may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"
        )));
    }
    if !crate::validation::is_label(&plural) {
        return Err(CrdError(format!(
            "spec.names.plural: Invalid value: {plural:?}: a lowercase RFC 1123 label"
        )));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            CrdError("spec.versions: Invalid value: []: must have exactly one version marked as storage version".into())
        })?;
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage != 1 {
        return Err(CrdError(format!(
            "spec.versions: Invalid value: {storage} storage versions: must have exactly one version marked as storage version"
        )));
    }
    let mut defs = Vec::new();
    for version in versions {
        if version.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let name = text(version, "name")
            .map_err(|_| CrdError("spec.versions[].name: Required value".into()))?;
        let columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c["name"].as_str().unwrap_or_default().to_owned(),
                        type_: c["type"].as_str().unwrap_or("string").to_owned(),
                        json_path: c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                        description: c["description"].as_str().unwrap_or_default().to_owned(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        defs.push(ResourceDef {
            group: group.clone(),
            version: name,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            namespaced,
            status: version.pointer("/subresources/status").is_some(),
            printer_columns: columns,
            schema: version.pointer("/schema/openAPIV3Schema").cloned(),
            custom: true,
        });
    }
    Ok(defs)
}

/// All served types.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    defs: Vec<Arc<ResourceDef>>,
}

impl Registry {
    /// The built-in types.
    pub fn new() -> Self {
        Registry {
            defs: builtins().into_iter().map(Arc::new).collect(),
        }
    }

    /// The type served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// The type of `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }

    /// Every served type.
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// Groups with their versions, in order of first appearance (core first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for d in &self.defs {
            match groups.iter_mut().find(|(g, _)| *g == d.group) {
                Some((_, versions)) if !versions.contains(&d.version) => {
                    versions.push(d.version.clone())
                }
                Some(_) => {}
                None => groups.push((d.group.clone(), vec![d.version.clone()])),
            }
        }
        groups
    }

    /// Serve the types of a CRD, replacing those it served before.
    pub fn install_crd(&mut self, defs: Vec<ResourceDef>) {
        if let Some(first) = defs.first() {
            let (group, plural) = (first.group.clone(), first.plural.clone());
            self.remove_crd(&group, &plural);
        }
        self.defs.extend(defs.into_iter().map(Arc::new));
    }

    /// Stop serving a CRD's types.
    pub fn remove_crd(&mut self, group: &str, plural: &str) {
        self.defs
            .retain(|d| !(d.custom && d.group == group && d.plural == plural));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_list_types() {
        let r = Registry::new();
        let deploy = r.find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            deploy.list_type(&["spec", "template", "spec", "containers"]),
            ListType::Map(vec!["name".into()])
        );
        assert_eq!(
            deploy.list_type(&["spec", "template", "spec", "containers", "ports"]),
            ListType::Map(vec!["containerPort".into()])
        );
        assert_eq!(deploy.list_type(&["metadata", "finalizers"]), ListType::Set);
        assert_eq!(
            deploy.list_type(&["spec", "template", "spec", "tolerations"]),
            ListType::Atomic
        );
        let svc = r.find("", "v1", "services").unwrap();
        assert_eq!(
            svc.list_type(&["spec", "ports"]),
            ListType::Map(vec!["port".into()])
        );
    }

    #[test]
    fn crd_versions_and_schema_list_types() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {
                        "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                                  "items": {"type": "object", "properties": {"tags": {"type": "array", "x-kubernetes-list-type": "set"}}}}
                     }}}}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        });
        let defs = from_crd(&crd).unwrap();
        assert_eq!(defs.len(), 1);
        let d = &defs[0];
        assert!(d.status && d.namespaced && d.custom);
        assert_eq!(d.short_names, vec!["wd"]);
        assert_eq!(
            d.list_type(&["spec", "items"]),
            ListType::Map(vec!["id".into()])
        );
        assert_eq!(d.list_type(&["spec", "items", "tags"]), ListType::Set);
        assert_eq!(d.list_type(&["spec", "other"]), ListType::Atomic);
        let mut bad = crd.clone();
        bad["metadata"]["name"] = "wrong".into();
        assert!(from_crd(&bad).is_err());
    }
}
