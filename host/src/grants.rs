//! Grants: what the operator allows a plugin to reach.
//!
//! A plugin asks (its `metadata()`); the operator grants, in a TOML file per
//! plugin named `<plugin-name>.grants.toml`, next to the `.wasm` or under a
//! `--grants` directory (see [`Grant::find`] for the older names also read):
//!
//! ```toml
//! [[resources]]
//! group = "apps"              # "" or "core" (the default) for the core group
//! kind = "Deployment"
//! verbs = ["get", "list", "watch", "patch"]
//! namespaces = ["default"]    # leave out for every namespace
//!
//! [[http]]
//! url = "https://api.example.com"   # scheme://host[:port]; `*.example.com` and `*` match names
//!
//! [[http]]
//! url = "http://vault.vault.svc:8200"
//! private = true                    # the name may resolve to a private address
//!
//! [limits]
//! deadline_ms = 10000
//! memory_mib = 64
//! concurrency = 4
//! http_body_mib = 16                # largest HTTP response body
//! http_requests = 64                # HTTP requests per reconcile
//! http_in_flight = 8                # HTTP requests in flight at once
//! http_connect_timeout_ms = 5000    # DNS, TCP and TLS
//! http_first_byte_timeout_ms = 30000
//! ```
//!
//! `http_hosts = ["https://api.example.com"]` is a shorter way to write
//! `[[http]]` entries without `private`. An IP literal (`127.0.0.1:8080`)
//! allows that address only; names never match IP literals, and a name
//! that resolves to a loopback, link-local or private address is refused
//! unless its entry says `private = true` (see [`crate::caps::http::allow`]).
//!
//! A plugin whose request exceeds its grant is refused at load; a call
//! outside the grant fails with `forbidden` and sends nothing. The host
//! watches the plugin's primary and owned types only in the namespaces where
//! the grant allows `list` and `watch` on them ([`Grant::watch_namespaces`]), so a
//! plugin is never woken for an object it may not touch.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::caps::http::allow::Endpoint;
use crate::caps::http::{HttpPolicy, HttpRule};
use crate::caps::k8s::ResourceType;
use crate::metadata::{PluginMetadata, Verb};
use crate::operator::watch::Namespaces;

/// One resource rule of a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResourceGrant {
    /// API group; empty (or `core` in the file) for the core group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Allowed verbs.
    pub verbs: Vec<Verb>,
    /// Allowed namespaces; empty for all (left out of the file: an empty
    /// list there is refused, as it reads like "none").
    #[serde(default, deserialize_with = "namespace_list")]
    pub namespaces: Vec<String>,
}

fn namespace_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "namespaces = [] would read as no namespace: leave `namespaces` out for all namespaces, or list them",
        ));
    }
    Ok(list)
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
    /// Largest HTTP response body, in MiB.
    pub http_body_mib: Option<u64>,
    /// HTTP requests one reconcile may make.
    pub http_requests: Option<u32>,
    /// HTTP requests one reconcile may have in flight at once.
    pub http_in_flight: Option<usize>,
    /// Longest wait for an HTTP connection, in milliseconds.
    pub http_connect_timeout_ms: Option<u64>,
    /// Longest wait for HTTP response headers (and between body chunks),
    /// in milliseconds.
    pub http_first_byte_timeout_ms: Option<u64>,
}

/// One `[[http]]` entry of a grant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// `scheme://host[:port]`, the host a name, `*.suffix`, `*` or an IP.
    pub url: String,
    /// Whether the name may resolve to non-public addresses.
    #[serde(default)]
    pub private: bool,
}

/// What a plugin may reach.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Kubernetes resources.
    #[serde(default)]
    pub resources: Vec<ResourceGrant>,
    /// HTTP endpoints, shorthand for `[[http]]` entries without `private`.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// HTTP endpoints.
    #[serde(default)]
    pub http: Vec<HttpGrant>,
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
    /// More than one file could be the grant.
    #[error("plugin {plugin} has two grant files, {first} and {second}: keep one ({first})")]
    Ambiguous {
        /// The plugin.
        plugin: String,
        /// The file that would be used.
        first: String,
        /// The other.
        second: String,
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
    /// Parses a grant; `source` names it in errors. `group = "core"` is
    /// the core group, as the host's messages write it.
    pub fn from_toml(text: &str, source: &Path) -> Result<Self, GrantError> {
        let mut grant: Grant = toml::from_str(text).map_err(|e| GrantError::Invalid {
            path: source.to_owned(),
            message: e.to_string(),
        })?;
        for rule in &mut grant.resources {
            if rule.group == "core" {
                rule.group.clear();
            }
        }
        let problems = grant.problems();
        if !problems.is_empty() {
            return Err(GrantError::Invalid {
                path: source.to_owned(),
                message: problems.join("; "),
            });
        }
        grant.source = source.display().to_string();
        Ok(grant)
    }

    /// What would make every reconcile fail, or match nothing.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let limits = &self.limits;
        if limits.deadline_ms == Some(0) {
            problems.push("limits.deadline_ms = 0 would time out every reconcile at once: give a number of milliseconds above 0".to_owned());
        }
        // Longer would overflow clocks or never end a reconcile in practice.
        const HOUR_MS: u64 = 3_600_000;
        for (what, ms) in [
            ("deadline_ms", limits.deadline_ms),
            ("http_connect_timeout_ms", limits.http_connect_timeout_ms),
            (
                "http_first_byte_timeout_ms",
                limits.http_first_byte_timeout_ms,
            ),
        ] {
            if ms.is_some_and(|ms| ms > HOUR_MS) {
                problems.push(format!(
                    "limits.{what} is over an hour ({HOUR_MS}): give at most {HOUR_MS} milliseconds"
                ));
            }
        }
        if limits.memory_mib == Some(0) {
            problems.push(
                "limits.memory_mib = 0 leaves a plugin no memory: give a number of MiB above 0"
                    .to_owned(),
            );
        }
        if limits.concurrency == Some(0) {
            problems
                .push("limits.concurrency = 0 would run no reconcile: give 1 or more".to_owned());
        }
        for (what, zero) in [
            ("http_body_mib", limits.http_body_mib == Some(0)),
            ("http_requests", limits.http_requests == Some(0)),
            ("http_in_flight", limits.http_in_flight == Some(0)),
            (
                "http_connect_timeout_ms",
                limits.http_connect_timeout_ms == Some(0),
            ),
            (
                "http_first_byte_timeout_ms",
                limits.http_first_byte_timeout_ms == Some(0),
            ),
        ] {
            if zero {
                problems.push(format!(
                    "limits.{what} = 0 would fail every HTTP request: give a number above 0"
                ));
            }
        }
        for url in self.http_urls() {
            if let Err(why) = Endpoint::parse(url) {
                problems.push(format!("HTTP endpoint {why}"));
            }
        }
        for rule in &self.resources {
            for ns in &rule.namespaces {
                if !reconcile_apiserver::validation::is_label(ns) {
                    problems.push(format!(
                        "namespace {ns:?} of {} is not a valid namespace name (lower-case letters, digits and '-', at most 63)",
                        rule.kind
                    ));
                }
            }
        }
        problems
    }

    /// Reads a grant file.
    pub fn load(path: &Path) -> Result<Self, GrantError> {
        let text =
            crate::files::read_text(path, crate::files::MAX_TEXT_BYTES).map_err(|error| {
                GrantError::Read {
                    path: path.to_owned(),
                    error,
                }
            })?;
        Self::from_toml(&text, path)
    }

    /// The files a grant for plugin `name` (loaded from `wasm`) may be in,
    /// the first being the one to create when none exists.
    pub fn candidates(wasm: &Path, name: &str, grants_dir: Option<&Path>) -> Vec<PathBuf> {
        match grants_dir {
            Some(dir) => vec![
                dir.join(format!("{name}.grants.toml")),
                dir.join(format!("{name}.toml")),
            ],
            None => {
                let dir = wasm.parent().unwrap_or(Path::new(""));
                let mut by_stem = crate::files::plugin_stem(wasm).into_os_string();
                by_stem.push(".grants.toml");
                vec![
                    dir.join(format!("{name}.grants.toml")),
                    PathBuf::from(by_stem),
                ]
            }
        }
    }

    /// The grant of plugin `name` at `wasm`: `<name>.grants.toml` under
    /// `grants_dir` when one is given, else next to the `.wasm`. Older names
    /// are read too: `<name>.toml` under `grants_dir`, and next to the
    /// `.wasm` its file stem (`my_plugin.grants.toml` for `my_plugin.wasm`).
    /// Two different files that could both be the grant are refused.
    pub fn find(wasm: &Path, name: &str, grants_dir: Option<&Path>) -> Result<Self, GrantError> {
        let candidates = Self::candidates(wasm, name, grants_dir);
        let mut found: Vec<&PathBuf> = Vec::new();
        for path in &candidates {
            if path.exists() && !found.iter().any(|f| same_file(f, path)) {
                found.push(path);
            }
        }
        match found.as_slice() {
            [] => Err(GrantError::Missing {
                plugin: name.to_owned(),
                expected: candidates[0].display().to_string(),
            }),
            [path] => Self::load(path),
            [first, second, ..] => Err(GrantError::Ambiguous {
                plugin: name.to_owned(),
                first: first.display().to_string(),
                second: second.display().to_string(),
            }),
        }
    }

    /// Where the host may watch `resource` for this plugin: the namespaces
    /// in which the grant allows both `list` and `watch` on it (a watcher
    /// does both); `None` if nowhere. A rule limited to namespaces never
    /// covers a cluster-scoped type.
    pub fn watch_namespaces(&self, resource: &ResourceType) -> Option<Namespaces> {
        self.namespaces_for(resource, Verb::List)?
            .intersect(&self.namespaces_for(resource, Verb::Watch)?)
    }

    /// The namespaces in which the grant allows `verb` on `resource`.
    fn namespaces_for(&self, resource: &ResourceType, verb: Verb) -> Option<Namespaces> {
        let mut namespaces = std::collections::BTreeSet::new();
        for rule in self.rules_for(resource, verb) {
            if rule.namespaces.is_empty() {
                return Some(Namespaces::All);
            }
            namespaces.extend(rule.namespaces.iter().cloned());
        }
        (!namespaces.is_empty()).then_some(Namespaces::Only(namespaces))
    }

    /// The rules that give `verb` on `resource` somewhere.
    fn rules_for<'a>(
        &'a self,
        resource: &'a ResourceType,
        verb: Verb,
    ) -> impl Iterator<Item = &'a ResourceGrant> + 'a {
        self.resources.iter().filter(move |r| {
            r.group == resource.group
                && r.kind == resource.kind
                && r.verbs.contains(&verb)
                && (resource.namespaced || r.namespaces.is_empty())
        })
    }

    fn http_urls(&self) -> impl Iterator<Item = &str> {
        self.http_hosts
            .iter()
            .map(String::as_str)
            .chain(self.http.iter().map(|h| h.url.as_str()))
    }

    /// The `[[http]]` entries and `http_hosts`, parsed (entries that do not
    /// parse are refused when the grant is read).
    pub fn http_rules(&self) -> Vec<HttpRule> {
        let private = self.http_hosts.iter().map(|_| false);
        let private = private.chain(self.http.iter().map(|h| h.private));
        self.http_urls()
            .zip(private)
            .filter_map(|(url, private)| {
                Endpoint::parse(url)
                    .ok()
                    .map(|endpoint| HttpRule { endpoint, private })
            })
            .collect()
    }

    /// The HTTP allow-list and bounds this grant gives.
    pub fn http_policy(&self) -> HttpPolicy {
        let mut policy = HttpPolicy::new(self.http_rules());
        let limits = &self.limits;
        if let Some(mib) = limits.http_body_mib {
            policy.max_body_bytes = mib.saturating_mul(1024 * 1024);
        }
        if let Some(n) = limits.http_requests {
            policy.max_requests = n;
        }
        if let Some(n) = limits.http_in_flight {
            policy.max_in_flight = n;
        }
        if let Some(ms) = limits.http_connect_timeout_ms {
            policy.connect_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = limits.http_first_byte_timeout_ms {
            policy.first_byte_timeout = std::time::Duration::from_millis(ms);
        }
        policy
    }

    /// Exactly what the plugin asks for, in every namespace, plus what the
    /// host needs to watch its types (`dev` grants this).
    pub fn from_request(metadata: &PluginMetadata) -> Self {
        let mut resources: Vec<ResourceGrant> = metadata
            .access
            .resources
            .iter()
            .map(|a| ResourceGrant {
                group: a.resource.group.clone(),
                kind: a.resource.kind.clone(),
                verbs: a.verbs.clone(),
                namespaces: vec![],
            })
            .collect();
        for watched in watched_types(metadata) {
            let rule = match resources
                .iter_mut()
                .find(|r| r.group == watched.group && r.kind == watched.kind)
            {
                Some(rule) => rule,
                None => {
                    resources.push(ResourceGrant {
                        group: watched.group.clone(),
                        kind: watched.kind.clone(),
                        verbs: vec![],
                        namespaces: vec![],
                    });
                    let last = resources.len() - 1;
                    &mut resources[last]
                }
            };
            for verb in WATCH_VERBS {
                if !rule.verbs.contains(&verb) {
                    rule.verbs.push(verb);
                }
            }
        }
        Grant {
            resources,
            http_hosts: metadata.access.http_hosts.clone(),
            http: vec![],
            limits: LimitsGrant::default(),
            source: "the plugin's own request (dev)".into(),
        }
    }

    /// Whether `verb` on `resource` in `namespace` is allowed.
    pub fn allows(&self, resource: &ResourceType, verb: Verb, namespace: Option<&str>) -> bool {
        // `rules_for` leaves out namespace-limited rules of cluster-scoped
        // types, whatever namespace the call names.
        self.rules_for(resource, verb).any(|r| {
            r.namespaces.is_empty()
                || namespace.is_some_and(|ns| r.namespaces.iter().any(|n| n == ns))
        })
    }

    /// Checks that the grant covers everything the plugin asks for, and
    /// `list` and `watch` on the types the host watches for it.
    pub fn check(&self, metadata: &PluginMetadata) -> Result<(), GrantError> {
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let asked = metadata
            .access
            .resources
            .iter()
            .flat_map(|a| a.verbs.iter().map(move |verb| (&a.resource, *verb, "")));
        let watched = watched_types(metadata).flat_map(|r| {
            [Verb::List, Verb::Watch].map(|verb| {
                (
                    r,
                    verb,
                    " (the host watches the types a plugin reconciles and owns)",
                )
            })
        });
        for (resource, verb, why) in asked.chain(watched) {
            if self.rules_for(resource, verb).next().is_none()
                && seen.insert((resource.group.as_str(), resource.kind.as_str(), verb))
            {
                // Kinds are case-sensitive: a grant writing `deployment`
                // for `Deployment` gets a hint.
                let hint = self
                    .resources
                    .iter()
                    .find(|r| {
                        r.kind != resource.kind && r.kind.eq_ignore_ascii_case(&resource.kind)
                    })
                    .map(|r| {
                        format!(
                            " (the grant writes kind {:?}; kinds are case-sensitive: {:?})",
                            r.kind, resource.kind
                        )
                    })
                    .unwrap_or_default();
                missing.push(format!(
                    "{verb} on {}/{}{why}{hint}",
                    group_name(&resource.group),
                    resource.kind
                ));
            }
        }
        let granted = self.http_rules();
        for asked in &metadata.access.http_hosts {
            let covered = match Endpoint::parse(asked) {
                Ok(asked) => granted.iter().any(|r| r.endpoint.covers(&asked)),
                Err(_) => false,
            };
            if !covered {
                missing.push(format!(
                    "HTTP to {asked} (add an [[http]] entry with url = {asked:?})"
                ));
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

/// Verbs the host needs on a type it watches (get serves the plugin's reads).
const WATCH_VERBS: [Verb; 3] = [Verb::Get, Verb::List, Verb::Watch];

/// The primary type and the owned types: those the host watches.
fn watched_types(metadata: &PluginMetadata) -> impl Iterator<Item = &ResourceType> {
    std::iter::once(&metadata.primary).chain(metadata.owns.iter())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
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
        for r in self.http_rules() {
            let private = if r.private {
                " (private addresses too)"
            } else {
                ""
            };
            writeln!(f, "  HTTP: {}{private}", r.endpoint)?;
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
            primary_selector: None,
            field_manager: None,
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
    fn core_is_the_core_group() {
        let grant = Grant::from_toml(
            "[[resources]]\ngroup = \"core\"\nkind = \"ConfigMap\"\nverbs = [\"get\"]\n",
            Path::new("g.toml"),
        )
        .unwrap();
        assert!(grant.allows(&rt("", "ConfigMap"), Verb::Get, Some("default")));
        assert!(!grant.allows(&rt("core", "ConfigMap"), Verb::Get, Some("default")));
        assert_eq!(
            grant.to_string().trim(),
            "core/ConfigMap: get (all namespaces)"
        );
    }

    #[test]
    fn the_host_watches_where_the_grant_allows_watch() {
        let grant = Grant::from_toml(
            r#"
            [[resources]]
            group = "apps"
            kind = "Deployment"
            verbs = ["get", "list", "watch"]
            namespaces = ["b", "a"]
            [[resources]]
            group = "apps"
            kind = "Deployment"
            verbs = ["watch"]
            namespaces = ["c"]
            [[resources]]
            group = "apps"
            kind = "Deployment"
            verbs = ["list", "watch"]
            namespaces = ["e"]
            [[resources]]
            group = "apps"
            kind = "Deployment"
            verbs = ["patch"]
            namespaces = ["d"]
            [[resources]]
            kind = "Secret"
            verbs = ["get"]
            "#,
            Path::new("g.toml"),
        )
        .unwrap();
        let only = |v: &[&str]| Namespaces::Only(v.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(
            grant.watch_namespaces(&rt("apps", "Deployment")),
            Some(only(&["a", "b", "e"])),
            "list and watch, in any rules"
        );
        assert_eq!(grant.watch_namespaces(&rt("", "Secret")), None);
        let mut m = metadata(vec![Verb::Get]);
        m.primary = rt("", "Secret");
        let err = grant.check(&m).unwrap_err().to_string();
        assert!(
            err.contains("list on core/Secret (the host watches")
                && err.contains("watch on core/Secret"),
            "{err}"
        );
    }

    #[test]
    fn the_grant_is_found_by_the_plugin_name_or_the_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("my_plugin.wasm");
        let rule = "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\"]\n";
        let missing = Grant::find(&wasm, "my-plugin", None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("my-plugin.grants.toml"), "{missing}");
        // Next to the .wasm: the plugin name, or cargo's file stem.
        std::fs::write(dir.path().join("my_plugin.grants.toml"), rule).unwrap();
        assert!(Grant::find(&wasm, "my-plugin", None).is_ok());
        std::fs::write(dir.path().join("my-plugin.grants.toml"), rule).unwrap();
        let two = Grant::find(&wasm, "my-plugin", None)
            .unwrap_err()
            .to_string();
        assert!(two.contains("two grant files"), "{two}");
        std::fs::remove_file(dir.path().join("my_plugin.grants.toml")).unwrap();
        let found = Grant::find(&wasm, "my-plugin", None).unwrap();
        assert!(
            found.source.ends_with("my-plugin.grants.toml"),
            "{}",
            found.source
        );
        // Under --grants: the same name, or <name>.toml.
        let grants = tempfile::tempdir().unwrap();
        std::fs::write(grants.path().join("my-plugin.toml"), rule).unwrap();
        assert!(Grant::find(&wasm, "my-plugin", Some(grants.path())).is_ok());
        std::fs::rename(
            grants.path().join("my-plugin.toml"),
            grants.path().join("my-plugin.grants.toml"),
        )
        .unwrap();
        let found = Grant::find(&wasm, "my-plugin", Some(grants.path())).unwrap();
        assert!(found.source.ends_with("my-plugin.grants.toml"));
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

    #[test]
    fn grants_that_would_fail_every_reconcile_are_refused_at_load() {
        let refused = |text: &str| {
            Grant::from_toml(text, Path::new("g.toml"))
                .unwrap_err()
                .to_string()
        };
        for (limit, what) in [
            ("memory_mib = 0", "memory_mib = 0"),
            ("deadline_ms = 0", "deadline_ms = 0"),
            ("concurrency = 0", "concurrency = 0"),
            (
                "deadline_ms = 9223372036854775807",
                "deadline_ms is over an hour",
            ),
            (
                "http_connect_timeout_ms = 3600001",
                "http_connect_timeout_ms is over an hour",
            ),
        ] {
            let err = refused(&format!("[limits]\n{limit}\n"));
            assert!(err.contains(what), "{err}");
        }
        let rule = |extra: &str| {
            format!("[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\"]\n{extra}\n")
        };
        let err = refused(&rule("namespaces = [\"Bad_NS\"]"));
        assert!(
            err.contains("\"Bad_NS\" of ConfigMap is not a valid namespace name"),
            "{err}"
        );
        let err = refused(&rule("namespaces = []"));
        assert!(
            err.contains("leave `namespaces` out for all namespaces"),
            "{err}"
        );
        // A kind in the wrong case loads, and the plugin it fails is told why.
        let lower = Grant::from_toml(
            "[[resources]]\ngroup = \"apps\"\nkind = \"deployment\"\nverbs = [\"get\", \"list\", \"watch\"]\n",
            Path::new("g.toml"),
        )
        .unwrap();
        let err = lower
            .check(&metadata(vec![Verb::Get]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kinds are case-sensitive: \"Deployment\""),
            "{err}"
        );
        // Every problem at once.
        let err = refused("[limits]\nmemory_mib = 0\nconcurrency = 0\n");
        assert!(
            err.contains("memory_mib") && err.contains("concurrency"),
            "{err}"
        );
    }
}
