//! Grants: what the operator allows a plugin to reach.
//!
//! A plugin asks (its `metadata()`); the operator grants, in a TOML file per
//! plugin, next to the `.wasm` (`<file>.grants.toml`) or as
//! `<plugin-name>.toml` under a `--grants` directory:
//!
//! ```toml
//! [[resources]]
//! group = "apps"              # "" (the default) for the core group
//! kind = "Deployment"
//! verbs = ["get", "list", "watch", "patch"]
//! namespaces = ["default"]    # leave out for every namespace
//!
//! http_hosts = ["api.example.com"]
//!
//! [limits]
//! deadline_ms = 10000
//! memory_mib = 64
//! concurrency = 4
//! ```
//!
//! A plugin whose request exceeds its grant is refused at load; a call
//! outside the grant fails with `forbidden` and sends nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::caps::k8s::ResourceType;
use crate::metadata::{PluginMetadata, Verb};

/// One resource rule of a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResourceGrant {
    /// API group; empty for core.
    #[serde(default)]
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Allowed verbs.
    pub verbs: Vec<Verb>,
    /// Allowed namespaces; empty for all.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Limits a grant sets.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsGrant {
    /// Wall-clock deadline of one reconcile, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Linear memory of one instance, in MiB.
    pub memory_mib: Option<usize>,
    /// Reconciles of this plugin running at once.
    pub concurrency: Option<u16>,
}

/// What a plugin may reach.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Kubernetes resources.
    #[serde(default)]
    pub resources: Vec<ResourceGrant>,
    /// HTTP hosts.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsGrant,
    /// Where the grant came from, for messages.
    #[serde(skip)]
    pub source: String,
}

/// A grant could not be read, or does not cover what the plugin asks.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The file could not be read.
    #[error("cannot read the grant {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not a valid grant.
    #[error("the grant {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (TOML errors name the line).
        message: String,
    },
    /// No grant file was found.
    #[error(
        "plugin {plugin} has no grant: write {expected} (run `reconcile-host inspect` on the plugin to see what it asks for)"
    )]
    Missing {
        /// The plugin.
        plugin: String,
        /// Where one was looked for.
        expected: String,
    },
    /// The plugin asks for more than it is granted.
    #[error("plugin {plugin} asks for more than its grant {source_name} gives: {}; add it to the grant or use a plugin that asks for less", missing.join("; "))]
    Insufficient {
        /// The plugin.
        plugin: String,
        /// The grant's source.
        source_name: String,
        /// Each missing permission.
        missing: Vec<String>,
    },
}

fn group_name(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

impl Grant {
    /// Parses a grant; `source` names it in errors.
    pub fn from_toml(text: &str, source: &Path) -> Result<Self, GrantError> {
        let mut grant: Grant = toml::from_str(text).map_err(|e| GrantError::Invalid {
            path: source.to_owned(),
            message: e.to_string(),
        })?;
        grant.source = source.display().to_string();
        Ok(grant)
    }

    /// Reads a grant file.
    pub fn load(path: &Path) -> Result<Self, GrantError> {
        let text = std::fs::read_to_string(path).map_err(|error| GrantError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_toml(&text, path)
    }

    /// The grant of the plugin at `wasm`: `<grants_dir>/<name>.toml` when a
    /// directory is given, else `<wasm without .wasm>.grants.toml`.
    pub fn find(wasm: &Path, name: &str, grants_dir: Option<&Path>) -> Result<Self, GrantError> {
        let path = match grants_dir {
            Some(dir) => dir.join(format!("{name}.toml")),
            None => wasm.with_extension("grants.toml"),
        };
        if !path.exists() {
            return Err(GrantError::Missing {
                plugin: name.to_owned(),
                expected: path.display().to_string(),
            });
        }
        Self::load(&path)
    }

    /// Exactly what the plugin asks for (`dev` grants this).
    pub fn from_request(metadata: &PluginMetadata) -> Self {
        Grant {
            resources: metadata
                .access
                .resources
                .iter()
                .map(|a| ResourceGrant {
                    group: a.resource.group.clone(),
                    kind: a.resource.kind.clone(),
                    verbs: a.verbs.clone(),
                    namespaces: vec![],
                })
                .collect(),
            http_hosts: metadata.access.http_hosts.clone(),
            limits: LimitsGrant::default(),
            source: "the plugin's own request (dev)".into(),
        }
    }

    /// Whether `verb` on `resource` in `namespace` is allowed.
    pub fn allows(&self, resource: &ResourceType, verb: Verb, namespace: Option<&str>) -> bool {
        self.resources.iter().any(|r| {
            r.group == resource.group
                && r.kind == resource.kind
                && r.verbs.contains(&verb)
                && (r.namespaces.is_empty()
                    // A rule limited to namespaces never covers a
                    // cluster-scoped type, whatever namespace the call names.
                    || (resource.namespaced
                        && namespace.is_some_and(|ns| r.namespaces.iter().any(|n| n == ns))))
        })
    }

    /// Checks that the grant covers everything the plugin asks for.
    pub fn check(&self, metadata: &PluginMetadata) -> Result<(), GrantError> {
        let mut missing = Vec::new();
        for access in &metadata.access.resources {
            for verb in &access.verbs {
                let covered = self.resources.iter().any(|r| {
                    r.group == access.resource.group
                        && r.kind == access.resource.kind
                        && r.verbs.contains(verb)
                });
                if !covered {
                    missing.push(format!(
                        "{verb} on {}/{}",
                        group_name(&access.resource.group),
                        access.resource.kind
                    ));
                }
            }
        }
        for host in &metadata.access.http_hosts {
            if !self.http_hosts.contains(host) {
                missing.push(format!("HTTP to {host}"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(GrantError::Insufficient {
                plugin: metadata.name.clone(),
                source_name: self.source.clone(),
                missing,
            })
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.resources {
            let verbs: Vec<String> = r.verbs.iter().map(ToString::to_string).collect();
            let ns = if r.namespaces.is_empty() {
                "all namespaces".to_owned()
            } else {
                r.namespaces.join(", ")
            };
            writeln!(
                f,
                "  {}/{}: {} ({ns})",
                group_name(&r.group),
                r.kind,
                verbs.join(", ")
            )?;
        }
        for h in &self.http_hosts {
            writeln!(f, "  HTTP: {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{AccessRequest, ResourceAccess};

    fn rt(group: &str, kind: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
            namespaced: true,
        }
    }

    fn metadata(verbs: Vec<Verb>) -> PluginMetadata {
        PluginMetadata {
            name: "demo".into(),
            version: "0.1.0".into(),
            primary: rt("apps", "Deployment"),
            owns: vec![],
            access: AccessRequest {
                resources: vec![ResourceAccess {
                    resource: rt("apps", "Deployment"),
                    verbs,
                }],
                http_hosts: vec![],
            },
            finalizer: None,
        }
    }

    const GRANT: &str = r#"
        [[resources]]
        group = "apps"
        kind = "Deployment"
        verbs = ["get", "list", "watch", "patch"]
        namespaces = ["default"]

        [limits]
        deadline_ms = 2000
    "#;

    #[test]
    fn parses_and_allows() {
        let grant = Grant::from_toml(GRANT, Path::new("demo.toml")).unwrap();
        assert_eq!(grant.limits.deadline_ms, Some(2000));
        assert!(grant.allows(&rt("apps", "Deployment"), Verb::Patch, Some("default")));
        assert!(!grant.allows(&rt("apps", "Deployment"), Verb::Patch, Some("other")));
        assert!(!grant.allows(&rt("apps", "Deployment"), Verb::Delete, Some("default")));
        assert!(!grant.allows(&rt("", "Secret"), Verb::Get, Some("default")));
        assert!(grant.check(&metadata(vec![Verb::Get, Verb::Patch])).is_ok());
    }

    #[test]
    fn a_namespace_limited_rule_does_not_cover_cluster_scoped_types() {
        let grant = Grant::from_toml(
            "[[resources]]\nkind = \"Node\"\nverbs = [\"get\"]\nnamespaces = [\"default\"]\n",
            Path::new("g.toml"),
        )
        .unwrap();
        let mut node = rt("", "Node");
        node.namespaced = false;
        assert!(!grant.allows(&node, Verb::Get, Some("default")));
        assert!(!grant.allows(&node, Verb::Get, None));
        node.namespaced = true;
        assert!(grant.allows(&node, Verb::Get, Some("default")));
    }

    #[test]
    fn a_request_beyond_the_grant_names_what_is_missing() {
        let grant = Grant::from_toml(GRANT, Path::new("demo.toml")).unwrap();
        let err = grant
            .check(&metadata(vec![Verb::Get, Verb::Delete]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("delete on apps/Deployment"), "{err}");
        assert!(err.contains("demo.toml"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let err = Grant::from_toml(
            "[[resources]]\nkind = \"X\"\nverbs = [\"fly\"]\n",
            Path::new("g.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("g.toml") && err.contains("fly"), "{err}");
        let err = Grant::from_toml("surprise = 1\n", Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
