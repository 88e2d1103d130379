//! The Kubernetes calls a plugin made, as the API server received them.

use reconcile_apiserver::faults::RequestRecord;

/// One request a plugin's reconcile sent to the API server (cache reads
/// send none, so they are not here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// `get`, `list`, `create`, `update`, `patch`, `apply`, `delete`
    /// (`apply` is a server-side apply patch).
    pub verb: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The resource, as in URLs (`deployments`).
    pub resource: String,
    /// The subresource (`status`).
    pub subresource: Option<String>,
    /// The namespace.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: Option<String>,
    /// The `fieldManager` of a write.
    pub field_manager: Option<String>,
    /// The trace id (hex) in its `traceparent`.
    pub(crate) trace_id: String,
}

impl Call {
    pub(crate) fn from_record(r: &RequestRecord) -> Option<Call> {
        let traceparent = r.traceparent.as_deref()?;
        let trace_id = traceparent.split('-').nth(1)?.to_owned();
        let resource = r.resource.clone()?;
        let apply = r
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/apply-patch"));
        let verb = if r.verb == "patch" && apply {
            "apply".to_owned()
        } else {
            r.verb.clone()
        };
        // /api/v1/... is the core group; /apis/GROUP/VERSION/... the rest.
        let mut parts = r.path.trim_start_matches('/').split('/');
        let group = match parts.next() {
            Some("apis") => parts.next().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        let field_manager = r
            .query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "fieldManager")
            .map(|(_, v)| v.to_owned());
        Some(Call {
            verb,
            group,
            resource,
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            field_manager,
            trace_id,
        })
    }

    /// `group/resource` (`apps/deployments`; `core/configmaps`).
    pub fn group_resource(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("{group}/{}", self.resource)
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.group_resource())?;
        if let Some(sub) = &self.subresource {
            write!(f, "/{sub}")?;
        }
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}")?,
            (Some(ns), None) => write!(f, " in {ns}")?,
            (None, Some(name)) => write!(f, " {name}")?,
            (None, None) => {}
        }
        if let Some(m) = &self.field_manager {
            write!(f, " as {m}")?;
        }
        Ok(())
    }
}
