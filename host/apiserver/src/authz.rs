//! RBAC against the stored roles, for impersonated requests.
//!
//! A request that impersonates no one is the cluster admin's and is
//! served. One that impersonates a user (`Impersonate-User`,
//! `Impersonate-Group`: kubectl's `--as`, a kubeconfig's `as`) is served
//! only if the stored ClusterRoles, Roles and their bindings allow that
//! user the verb on the resource, and is otherwise refused with the real
//! server's 403, so that a client can be run as a ServiceAccount to learn
//! whether its RBAC is enough. As in a real cluster, every authenticated
//! user may create access reviews (`system:basic-user`) and read
//! discovery. A `SelfSubjectAccessReview` is answered by the same
//! evaluation. Rules match as the real RBAC authorizer
//! matches them: `*` for groups, resources and verbs, `resource/sub` and
//! `*/sub`, `resourceNames`; a ServiceAccount subject is the user
//! `system:serviceaccount:<namespace>:<name>`, with the groups
//! `system:serviceaccounts`, `system:serviceaccounts:<namespace>` and
//! `system:authenticated`.

use serde_json::{Value, json};

use crate::registry::ResourceDef;
use crate::status::ApiError;
use crate::store::{Filter, Store};

/// Who a request acts as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The impersonated user; `None`: the server's admin.
    pub user: Option<String>,
    /// Its groups, as asked plus those implied.
    pub groups: Vec<String>,
}

impl Subject {
    /// The subject of a request with these impersonation headers.
    pub fn impersonating(user: Option<String>, mut groups: Vec<String>) -> Self {
        if let Some(user) = &user {
            if let Some(rest) = user.strip_prefix("system:serviceaccount:")
                && let Some((ns, _)) = rest.split_once(':')
            {
                groups.push("system:serviceaccounts".to_owned());
                groups.push(format!("system:serviceaccounts:{ns}"));
            }
            groups.push("system:authenticated".to_owned());
        }
        Subject { user, groups }
    }

    fn is(&self, subject: &Value, binding_namespace: Option<&str>) -> bool {
        let name = subject["name"].as_str().unwrap_or_default();
        match subject["kind"].as_str() {
            Some("User") => self.user.as_deref() == Some(name),
            Some("Group") => self.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = subject["namespace"]
                    .as_str()
                    .or(binding_namespace)
                    .unwrap_or_default();
                self.user.as_deref() == Some(&format!("system:serviceaccount:{ns}:{name}"))
            }
            _ => false,
        }
    }
}

/// What is asked: a review's `spec.resourceAttributes`.
struct Attributes {
    namespace: Option<String>,
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    name: String,
}

fn contains(list: &Value, wanted: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(wanted)))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let groups = &rule["apiGroups"];
    let verbs = &rule["verbs"];
    let resources = &rule["resources"];
    let names = &rule["resourceNames"];
    let resource_ok = if a.subresource.is_empty() {
        contains(resources, &a.resource) || contains(resources, "*")
    } else {
        contains(resources, &format!("{}/{}", a.resource, a.subresource))
            || contains(resources, &format!("*/{}", a.subresource))
            || contains(resources, "*")
    };
    let names_ok = names.as_array().is_none_or(|n| n.is_empty()) || contains(names, &a.name);
    (contains(groups, &a.group) || contains(groups, "*"))
        && (contains(verbs, &a.verb) || contains(verbs, "*"))
        && resource_ok
        && names_ok
}

fn objects(
    store: &Store,
    def: Option<std::sync::Arc<ResourceDef>>,
    namespace: Option<&str>,
) -> Vec<Value> {
    let Some(def) = def else {
        return Vec::new();
    };
    let filter = Filter {
        namespace: namespace.map(str::to_owned),
        ..Filter::default()
    };
    store
        .list(&def, &filter, None, None)
        .map(|page| page.items.iter().map(|o| o.value()).collect())
        .unwrap_or_default()
}

/// Whether `subject` may do what `attributes` say: `(allowed, reason)`.
fn allowed(store: &Store, subject: &Subject, a: &Attributes) -> (bool, String) {
    let Some(user) = &subject.user else {
        return (
            true,
            "the embedded API server allows everything to a client that impersonates no one"
                .to_owned(),
        );
    };
    let registry = store.registry();
    let find = |plural: &str| registry.find("rbac.authorization.k8s.io", "v1", plural);
    let role_rules = |kind: &str, name: &str, namespace: Option<&str>| -> Vec<Value> {
        let (plural, ns) = match kind {
            "ClusterRole" => ("clusterroles", None),
            _ => ("roles", namespace),
        };
        objects(store, find(plural), ns)
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
            .and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut bindings: Vec<(Value, Option<String>)> =
        objects(store, find("clusterrolebindings"), None)
            .into_iter()
            .map(|b| (b, None))
            .collect();
    if let Some(ns) = &a.namespace {
        bindings.extend(
            objects(store, find("rolebindings"), Some(ns))
                .into_iter()
                .map(|b| (b, Some(ns.clone()))),
        );
    }
    for (binding, namespace) in bindings {
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects.iter().any(|s| subject.is(s, namespace.as_deref())) {
            continue;
        }
        let kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
        if role_rules(kind, role, namespace.as_deref())
            .iter()
            .any(|rule| rule_allows(rule, a))
        {
            let name = binding["metadata"]["name"].as_str().unwrap_or_default();
            let which = match &namespace {
                Some(ns) => format!("RoleBinding \"{name}\" of {kind} \"{role}\" in {ns}"),
                None => format!("ClusterRoleBinding \"{name}\" of ClusterRole \"{role}\""),
            };
            return (true, format!("RBAC: allowed by {which}"));
        }
    }
    // As the real RBAC authorizer: no reason when no rule matched.
    let _ = user;
    (false, String::new())
}

/// Refuses a request on `def` that `subject` may not make (403 with the
/// real authorizer's message).
pub fn authorize(
    store: &Store,
    subject: &Subject,
    def: &ResourceDef,
    verb: &str,
    namespace: Option<&str>,
    name: &str,
    subresource: &str,
) -> Result<(), ApiError> {
    let Some(user) = &subject.user else {
        return Ok(());
    };
    // `system:basic-user`: every authenticated user may ask what it may do.
    if def.group == "authorization.k8s.io"
        && matches!(
            def.plural.as_str(),
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
    {
        return Ok(());
    }
    let a = Attributes {
        namespace: namespace.map(str::to_owned),
        verb: verb.to_owned(),
        group: def.group.clone(),
        resource: def.plural.clone(),
        subresource: subresource.to_owned(),
        name: name.to_owned(),
    };
    if allowed(store, subject, &a).0 {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            def,
            name,
            subresource,
            namespace,
            user,
            verb,
        ))
    }
}

/// Answers a `SelfSubjectAccessReview` (the review, with its status).
pub fn review(store: &Store, subject: &Subject, mut body: Value) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let attrs = &spec["resourceAttributes"];
    if !attrs.is_object() {
        return Err(ApiError::invalid_field(
            "SelfSubjectAccessReview",
            "",
            "spec.resourceAttributes",
            "FieldValueRequired",
            "this server reviews resource attributes only",
        ));
    }
    let text = |key: &str| attrs[key].as_str().unwrap_or_default().to_owned();
    let a = Attributes {
        namespace: attrs["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        verb: text("verb"),
        group: text("group"),
        resource: text("resource"),
        subresource: text("subresource"),
        name: text("name"),
    };
    let (allowed, reason) = allowed(store, subject, &a);
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SelfSubjectAccessReview");
    body["status"] = if reason.is_empty() {
        json!({"allowed": allowed})
    } else {
        json!({"allowed": allowed, "reason": reason})
    };
    if body["metadata"].is_null() {
        body["metadata"] = json!({});
    }
    Ok(body)
}
