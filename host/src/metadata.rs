//! What a plugin says about itself, as the host keeps it, and the checks
//! applied when it loads.

use std::fmt;

use serde::Serialize;

use crate::caps::k8s::ResourceType;
use crate::engine::bindings::types as wit;

/// A Kubernetes verb a plugin asks for (named as in RBAC).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Read one.
    Get,
    /// List.
    List,
    /// Watch.
    Watch,
    /// Create.
    Create,
    /// Replace.
    Update,
    /// Patch and apply.
    Patch,
    /// Delete.
    Delete,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        })
    }
}

/// Access to one resource type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceAccess {
    /// The type.
    pub resource: ResourceType,
    /// The verbs.
    pub verbs: Vec<Verb>,
}

/// What a plugin asks to reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccessRequest {
    /// Kubernetes resources.
    pub resources: Vec<ResourceAccess>,
    /// HTTP hosts.
    pub http_hosts: Vec<String>,
}

/// A plugin's description of itself, from its `metadata()` export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PluginMetadata {
    /// Name: also the controller name and the field manager.
    pub name: String,
    /// Version.
    pub version: String,
    /// The type it reconciles.
    pub primary: ResourceType,
    /// Types it owns.
    pub owns: Vec<ResourceType>,
    /// What it asks to reach.
    pub access: AccessRequest,
    /// The finalizer the host manages for it.
    pub finalizer: Option<String>,
    /// A label selector on the primary type: only matching objects are
    /// watched (contract 0.2.0; `None` for 0.1.0 plugins).
    pub primary_selector: Option<String>,
    /// The field manager of the plugin's writes; `None` is the plugin name
    /// (contract 0.2.0).
    pub field_manager: Option<String>,
}

/// Why a plugin's metadata is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    /// An HTTP endpoint it asks for does not parse.
    #[error("plugin {plugin} asks for HTTP to {why}")]
    HttpHost {
        /// Plugin name.
        plugin: String,
        /// What is wrong with it.
        why: String,
    },
    /// The name is not a DNS label.
    #[error(
        "plugin name {0:?} is not valid: use 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    Name(String),
    /// The version is empty.
    #[error("plugin {0} has an empty version: set one, such as \"0.1.0\"")]
    Version(String),
    /// A resource type lacks a field.
    #[error("plugin {plugin}: {what} resource type {resource:?} needs a version, kind and plural")]
    Resource {
        /// Plugin name.
        plugin: String,
        /// Which one (primary, owned).
        what: &'static str,
        /// The type as given.
        resource: String,
    },
    /// The finalizer is not a qualified name.
    #[error(
        "plugin {plugin}: finalizer {finalizer:?} is not valid: use a domain-qualified name such as example.com/cleanup"
    )]
    Finalizer {
        /// Plugin name.
        plugin: String,
        /// The finalizer as given.
        finalizer: String,
    },
    /// The primary selector is not a label selector.
    #[error("plugin {plugin}: primary-selector {selector:?} is not a label selector: {why}")]
    Selector {
        /// Plugin name.
        plugin: String,
        /// The selector.
        selector: String,
        /// Why.
        why: String,
    },
    /// A selected watch cannot release a finalizer.
    #[error(
        "plugin {0}: primary-selector and finalizer cannot go together: an object relabelled out of the selector would keep the finalizer and never finish deleting"
    )]
    SelectorWithFinalizer(String),
    /// The field manager is too long for the API server.
    #[error(
        "plugin {plugin}: field-manager {manager:?}... is not valid: at most 128 bytes, no control characters"
    )]
    FieldManager {
        /// Plugin name.
        plugin: String,
        /// Its start.
        manager: String,
    },
}

impl PluginMetadata {
    pub(crate) fn from_wit(m: wit::PluginMetadata) -> Self {
        let verb = |v: wit::Verb| match v {
            wit::Verb::Get => Verb::Get,
            wit::Verb::List => Verb::List,
            wit::Verb::Watch => Verb::Watch,
            wit::Verb::Create => Verb::Create,
            wit::Verb::Update => Verb::Update,
            wit::Verb::Patch => Verb::Patch,
            wit::Verb::Delete => Verb::Delete,
        };
        PluginMetadata {
            name: m.name,
            version: m.version,
            primary: ResourceType::from_wit(m.primary),
            owns: m.owns.into_iter().map(ResourceType::from_wit).collect(),
            access: AccessRequest {
                resources: m
                    .access
                    .resources
                    .into_iter()
                    .map(|a| ResourceAccess {
                        resource: ResourceType::from_wit(a.resource),
                        verbs: a.verbs.into_iter().map(verb).collect(),
                    })
                    .collect(),
                http_hosts: m.access.http_hosts,
            },
            finalizer: m.finalizer,
            primary_selector: None,
            field_manager: None,
        }
    }

    /// Checks what the host relies on: a DNS-label name, a version,
    /// complete resource types and a qualified finalizer.
    pub fn validate(&self) -> Result<(), MetadataError> {
        if !reconcile_apiserver::validation::is_label(&self.name) {
            return Err(MetadataError::Name(self.name.clone()));
        }
        if self.version.trim().is_empty() {
            return Err(MetadataError::Version(self.name.clone()));
        }
        let complete =
            |r: &ResourceType| !r.version.is_empty() && !r.kind.is_empty() && !r.plural.is_empty();
        let types = std::iter::once(("primary", &self.primary))
            .chain(self.owns.iter().map(|r| ("owned", r)));
        for (what, resource) in types {
            if !complete(resource) {
                return Err(MetadataError::Resource {
                    plugin: self.name.clone(),
                    what,
                    resource: format!("{}/{}/{}", resource.group, resource.version, resource.kind),
                });
            }
        }
        for host in &self.access.http_hosts {
            if let Err(why) = crate::caps::http::allow::Endpoint::parse(host) {
                return Err(MetadataError::HttpHost {
                    plugin: self.name.clone(),
                    why,
                });
            }
        }
        if let Some(selector) = &self.primary_selector
            && let Err(why) = reconcile_apiserver::selectors::LabelSelector::parse(selector)
        {
            return Err(MetadataError::Selector {
                plugin: self.name.clone(),
                selector: selector.clone(),
                why,
            });
        }
        if self.primary_selector.is_some() && self.finalizer.is_some() {
            return Err(MetadataError::SelectorWithFinalizer(self.name.clone()));
        }
        if let Some(manager) = &self.field_manager
            && (manager.len() > 128 || manager.chars().any(|c| c.is_control()))
        {
            return Err(MetadataError::FieldManager {
                plugin: self.name.clone(),
                manager: manager.chars().take(40).collect(),
            });
        }
        if let Some(finalizer) = &self.finalizer {
            let valid = finalizer.split_once('/').is_some_and(|(domain, name)| {
                domain.contains('.') && !name.is_empty() && !name.contains('/')
            });
            if !valid {
                return Err(MetadataError::Finalizer {
                    plugin: self.name.clone(),
                    finalizer: finalizer.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(kind: &str) -> ResourceType {
        ResourceType {
            group: "demo.reconcile.dev".into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: "demos".into(),
            namespaced: true,
        }
    }

    fn metadata() -> PluginMetadata {
        PluginMetadata {
            name: "demo".into(),
            version: "0.1.0".into(),
            primary: rt("Demo"),
            owns: vec![],
            access: AccessRequest::default(),
            finalizer: Some("demo.reconcile.dev/cleanup".into()),
            primary_selector: None,
            field_manager: None,
        }
    }

    #[test]
    fn a_selector_is_a_label_selector_and_excludes_a_finalizer() {
        let mut m = metadata();
        m.finalizer = None;
        m.primary_selector = Some("app in (web".into());
        assert!(matches!(m.validate(), Err(MetadataError::Selector { .. })));
        m.primary_selector = Some("app=web".into());
        assert!(m.validate().is_ok());
        m.finalizer = Some("demo.reconcile.dev/cleanup".into());
        assert!(matches!(
            m.validate(),
            Err(MetadataError::SelectorWithFinalizer(_))
        ));
        m.finalizer = None;
        m.field_manager = Some("x".repeat(129));
        assert!(matches!(
            m.validate(),
            Err(MetadataError::FieldManager { .. })
        ));
    }

    #[test]
    fn valid_metadata_passes() {
        assert_eq!(metadata().validate(), Ok(()));
    }

    #[test]
    fn each_problem_is_named() {
        let mut m = metadata();
        m.name = "Demo_App".into();
        assert!(matches!(m.validate(), Err(MetadataError::Name(_))));
        let mut m = metadata();
        m.version = " ".into();
        assert!(matches!(m.validate(), Err(MetadataError::Version(_))));
        let mut m = metadata();
        m.primary = rt("");
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("primary resource type")
        );
        let mut m = metadata();
        m.finalizer = Some("cleanup".into());
        assert!(matches!(m.validate(), Err(MetadataError::Finalizer { .. })));
    }
}
