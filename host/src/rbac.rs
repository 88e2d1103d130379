//! RBAC from grants: the Kubernetes permissions the loaded plugins' grants
//! need (`reconcile-host rbac`), and the host's check at start-up that its
//! ServiceAccount has them (`SelfSubjectAccessReview`), so that a missing
//! permission is named before the first 403.
//!
//! What a plugin needs is what its grant allows, on the resources its
//! metadata names (a grant rule for a kind the plugin never names is never
//! used, and is left out): each rule's verbs, cluster-wide (a ClusterRole)
//! or in the namespaces the rule lists (a Role in each), with `create`
//! wherever the grant has `patch` (the host lets a `patch` grant apply,
//! and Kubernetes authorizes an apply that creates the object as `create`
//! as well). Besides, for the
//! plugin's primary type: `<plural>/status` with the grant's `get`,
//! `patch` and `update` (status writes go to the subresource), `patch` on
//! the type itself when the plugin has a finalizer (the host adds and
//! removes it), and `update` on `<plural>/finalizers` when it owns types
//! (children with `blockOwnerDeletion` need it where the
//! OwnerReferencesPermissionEnforcement admission plugin runs). The host
//! itself needs the Lease verbs of leader election (`get`, `create`,
//! `update`) or sharding (and `list`, `delete`) in the lease namespace. A
//! `SelfSubjectAccessReview` needs no rule: every authenticated user may
//! create one (`system:basic-user`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::caps::k8s::ResourceType;
use crate::grants::Grant;
use crate::metadata::{PluginMetadata, Verb};

/// `(api group, resource or resource/subresource)`.
type Resource = (String, String);

/// The permissions needed, cluster-wide and per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Rules of the ClusterRole.
    pub cluster: BTreeMap<Resource, BTreeSet<String>>,
    /// Rules of a Role per namespace.
    pub namespaced: BTreeMap<String, BTreeMap<Resource, BTreeSet<String>>>,
    /// Grant rules left out, with why.
    pub unused: Vec<String>,
}

fn verb(v: Verb) -> String {
    v.to_string()
}

impl Needs {
    fn add(&mut self, namespace: Option<&str>, group: &str, resource: &str, verbs: &[String]) {
        if verbs.is_empty() {
            return;
        }
        let rules = match namespace {
            None => &mut self.cluster,
            Some(ns) => self.namespaced.entry(ns.to_owned()).or_default(),
        };
        rules
            .entry((group.to_owned(), resource.to_owned()))
            .or_default()
            .extend(verbs.iter().cloned());
    }

    /// Adds what `plugin`'s `grant` needs.
    pub fn plugin(&mut self, metadata: &PluginMetadata, grant: &Grant) {
        let types: Vec<&ResourceType> = std::iter::once(&metadata.primary)
            .chain(metadata.owns.iter())
            .chain(metadata.access.resources.iter().map(|a| &a.resource))
            .collect();
        let primary = &metadata.primary;
        for rule in &grant.resources {
            let Some(resource) = types
                .iter()
                .find(|t| t.group == rule.group && t.kind == rule.kind)
            else {
                self.unused.push(format!(
                    "{}: {} {} is granted but never named by the plugin",
                    metadata.name,
                    if rule.group.is_empty() {
                        "core"
                    } else {
                        &rule.group
                    },
                    rule.kind
                ));
                continue;
            };
            let namespaces: Vec<Option<&str>> = if rule.namespaces.is_empty() {
                vec![None]
            } else if resource.namespaced {
                rule.namespaces.iter().map(|n| Some(n.as_str())).collect()
            } else {
                // A namespace-limited rule never covers a cluster-scoped type.
                self.unused.push(format!(
                    "{}: {} is cluster-scoped, so a rule limited to namespaces gives nothing",
                    metadata.name, rule.kind
                ));
                continue;
            };
            let mut verbs: Vec<String> = rule.verbs.iter().copied().map(verb).collect();
            // A `patch` grant lets the plugin apply, and an apply that
            // creates the object is authorized as `create` too.
            if rule.verbs.contains(&Verb::Patch) && !rule.verbs.contains(&Verb::Create) {
                verbs.push(verb(Verb::Create));
            }
            let is_primary = resource.group == primary.group && resource.kind == primary.kind;
            for ns in namespaces {
                self.add(ns, &resource.group, &resource.plural, &verbs);
                if is_primary {
                    let status: Vec<String> = rule
                        .verbs
                        .iter()
                        .copied()
                        .filter(|v| matches!(v, Verb::Get | Verb::Patch | Verb::Update))
                        .map(verb)
                        .collect();
                    self.add(
                        ns,
                        &resource.group,
                        &format!("{}/status", resource.plural),
                        &status,
                    );
                    if metadata.finalizer.is_some() {
                        self.add(ns, &resource.group, &resource.plural, &[verb(Verb::Patch)]);
                    }
                    if !metadata.owns.is_empty() {
                        self.add(
                            ns,
                            &resource.group,
                            &format!("{}/finalizers", resource.plural),
                            &[verb(Verb::Update)],
                        );
                    }
                }
            }
        }
    }

    /// Adds the host's Lease verbs in `namespace`.
    pub fn leases(&mut self, namespace: &str, sharding: bool) {
        let mut verbs = vec!["get".to_owned(), "create".to_owned(), "update".to_owned()];
        if sharding {
            verbs.extend(["list".to_owned(), "delete".to_owned()]);
        }
        self.add(Some(namespace), "coordination.k8s.io", "leases", &verbs);
    }

    /// Every `(namespace, group, resource, verb)` needed, for a check.
    pub fn each(&self) -> Vec<(Option<String>, String, String, String)> {
        let mut out = Vec::new();
        for ((group, resource), verbs) in &self.cluster {
            for v in verbs {
                out.push((None, group.clone(), resource.clone(), v.clone()));
            }
        }
        for (ns, rules) in &self.namespaced {
            for ((group, resource), verbs) in rules {
                for v in verbs {
                    out.push((Some(ns.clone()), group.clone(), resource.clone(), v.clone()));
                }
            }
        }
        out
    }
}

/// RBAC verbs in kubectl's usual order.
fn ordered(verbs: &BTreeSet<String>) -> Vec<String> {
    const ORDER: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let mut out: Vec<String> = ORDER
        .iter()
        .filter(|v| verbs.contains(**v))
        .map(|v| (*v).to_owned())
        .collect();
    out.extend(
        verbs
            .iter()
            .filter(|v| !ORDER.contains(&v.as_str()))
            .cloned(),
    );
    out
}

/// Policy rules: one per group and verb set, resources together.
fn policy_rules(rules: &BTreeMap<Resource, BTreeSet<String>>) -> Vec<Value> {
    let mut grouped: BTreeMap<(String, Vec<String>), Vec<String>> = BTreeMap::new();
    for ((group, resource), verbs) in rules {
        grouped
            .entry((group.clone(), ordered(verbs)))
            .or_default()
            .push(resource.clone());
    }
    grouped
        .into_iter()
        .map(|((group, verbs), resources)| {
            json!({"apiGroups": [group], "resources": resources, "verbs": verbs})
        })
        .collect()
}

/// The ClusterRole, Roles and bindings for `needs`, bound to the
/// ServiceAccount `service_account` in `namespace`, as YAML documents.
pub fn manifests(needs: &Needs, name: &str, namespace: &str, service_account: &str) -> Vec<Value> {
    let subject =
        json!([{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]);
    let labels = json!({"app.kubernetes.io/name": "reconcile-host"});
    let mut out = Vec::new();
    if !needs.cluster.is_empty() {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": policy_rules(&needs.cluster),
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        }));
    }
    for (ns, rules) in &needs.namespaced {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "rules": policy_rules(rules),
        }));
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        }));
    }
    out
}

/// The manifests as one YAML stream.
pub fn to_yaml(manifests: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(m).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The permissions of `needs` the client's identity lacks, each as one
/// line (`patch demoapps.demo.reconcile.dev in default`); `Err` when the
/// API server does not answer SelfSubjectAccessReviews (nothing checked).
pub async fn missing(client: &kube::Client, needs: &Needs) -> Result<Vec<String>, String> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    let mut lacking = Vec::new();
    for (namespace, group, resource, verb) in needs.each() {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
            None => (resource.clone(), None),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.clone()),
                    resource: Some(resource.clone()),
                    subresource: subresource.clone(),
                    verb: Some(verb.clone()),
                    namespace: namespace.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("cannot review access: {e}"))?;
        if !answer.status.is_some_and(|s| s.allowed) {
            let what = match (&subresource, group.is_empty()) {
                (Some(sub), true) => format!("{resource}/{sub}"),
                (Some(sub), false) => format!("{resource}.{group}/{sub}"),
                (None, true) => resource.clone(),
                (None, false) => format!("{resource}.{group}"),
            };
            lacking.push(match &namespace {
                Some(ns) => format!("{verb} {what} in {ns}"),
                None => format!("{verb} {what} (all namespaces)"),
            });
        }
    }
    Ok(lacking)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::metadata::{AccessRequest, ResourceAccess};

    fn rt(group: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    #[test]
    fn a_grant_becomes_cluster_rules_namespaced_roles_and_the_host_s_extras() {
        let metadata = PluginMetadata {
            name: "app".into(),
            version: "0.1.0".into(),
            primary: rt("demo.dev", "App", "apps", true),
            owns: vec![rt("", "ConfigMap", "configmaps", true)],
            access: AccessRequest {
                resources: vec![ResourceAccess {
                    resource: rt("", "Secret", "secrets", true),
                    verbs: vec![Verb::Get],
                }],
                ..AccessRequest::default()
            },
            finalizer: Some("demo.dev/cleanup".into()),
            primary_selector: None,
            field_manager: None,
        };
        let grant = Grant::from_toml(
            r#"
            [[resources]]
            group = "demo.dev"
            kind = "App"
            verbs = ["get", "list", "watch", "patch"]
            [[resources]]
            kind = "ConfigMap"
            verbs = ["get", "list", "watch", "create"]
            [[resources]]
            kind = "Secret"
            verbs = ["get"]
            namespaces = ["a", "b"]
            [[resources]]
            kind = "Pod"
            verbs = ["delete"]
            "#,
            std::path::Path::new("app.grants.toml"),
        )
        .unwrap();
        let mut needs = Needs::default();
        needs.plugin(&metadata, &grant);
        needs.leases("ops", false);
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let key = |g: &str, r: &str| (g.to_owned(), r.to_owned());
        // A patch grant may apply, and an apply may create.
        assert_eq!(
            needs.cluster[&key("demo.dev", "apps")],
            set(&["get", "list", "watch", "patch", "create"])
        );
        assert_eq!(
            needs.cluster[&key("demo.dev", "apps/status")],
            set(&["get", "patch"])
        );
        assert_eq!(
            needs.cluster[&key("demo.dev", "apps/finalizers")],
            set(&["update"])
        );
        assert_eq!(
            needs.cluster[&key("", "configmaps")],
            set(&["get", "list", "watch", "create"])
        );
        assert_eq!(needs.namespaced["a"][&key("", "secrets")], set(&["get"]));
        assert_eq!(needs.namespaced["b"][&key("", "secrets")], set(&["get"]));
        assert!(!needs.cluster.contains_key(&key("", "secrets")));
        assert_eq!(
            needs.namespaced["ops"][&key("coordination.k8s.io", "leases")],
            set(&["get", "create", "update"])
        );
        assert!(!needs.cluster.contains_key(&key("", "pods")), "never named");
        assert_eq!(needs.unused.len(), 1, "{:?}", needs.unused);
        let yaml = to_yaml(&manifests(
            &needs,
            "reconcile-host",
            "ops",
            "reconcile-host",
        ))
        .unwrap();
        assert_eq!(yaml.matches("kind: ClusterRoleBinding").count(), 1);
        assert_eq!(yaml.matches("kind: RoleBinding").count(), 3, "{yaml}");
    }
}
