//! The case format: `tests/conformance/cases/<case>/case.yaml` (see
//! `tests/conformance/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One case, as read from its folder.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The case's name (its folder's name by convention).
    pub name: String,
    /// The promise it pins, in a sentence.
    pub pins: String,
    /// The contract versions it applies to (`0.2.0`, ...).
    pub contract: Vec<String>,
    /// The case plugin: `<plugin>.wasm` in the plugin directory; its
    /// metadata name is the same.
    pub plugin: String,
    /// The grant file, as TOML.
    pub grant: String,
    /// Whether the host must start watching before the steps run (the
    /// default). `false` for a case whose plugin the host must refuse: the
    /// steps run as soon as the host is started.
    #[serde(default = "yes")]
    pub host_watches: bool,
    /// Environment for the host besides what the runner sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Objects applied before the host starts. In objects, in the objects
    /// of steps and in the grant, `${API_SERVER}` stands for the API
    /// server's `host:port`, `${HTTP}` for the case's HTTP server
    /// (`http://127.0.0.1:PORT`, answering 200 `ok` to any path) and
    /// `${HTTP_PORT}` for its port.
    #[serde(default)]
    pub objects: Vec<Value>,
    /// What happens once the host runs, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// What must hold after the steps (and the host's stop, which flushes
    /// its spans).
    #[serde(default)]
    pub expect: Expect,
    /// The folder it was read from.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// A step.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Server-side apply of an object (as the `conformance` manager).
    Apply(Value),
    /// A JSON merge patch of an object (of its status subresource with
    /// `status: true`, as another controller would write it).
    Patch {
        /// Which object.
        #[serde(flatten)]
        object: ObjectKey,
        /// The patch.
        merge: Value,
        /// Patch the status subresource.
        #[serde(default)]
        status: bool,
    },
    /// Deletes an object.
    Delete(ObjectKey),
    /// Waits (at most `timeout_ms`, default 20 s) for at least `count`
    /// exported spans named `name` whose attributes include `where`.
    WaitSpans {
        /// Span name.
        name: String,
        /// At least this many.
        #[serde(default = "one")]
        count: usize,
        /// Attribute filter.
        #[serde(default, rename = "where")]
        filter: BTreeMap<String, String>,
        /// Longest wait.
        #[serde(default = "twenty_seconds")]
        timeout_ms: u64,
    },
    /// Waits until no span arrives and the API server receives no request
    /// (watches aside) for `quiet_ms` (default 700).
    Idle {
        /// The quiet period.
        #[serde(default = "quiet")]
        quiet_ms: u64,
    },
    /// Waits (at most `timeout_ms`, default 20 s) for at least `count`
    /// host log lines whose message is `message` (or matches `~regex`).
    WaitLogs {
        /// The message, or `~regex`.
        message: String,
        /// At least this many.
        #[serde(default = "one")]
        count: usize,
        /// Longest wait.
        #[serde(default = "twenty_seconds")]
        timeout_ms: u64,
    },
    /// Remembers this moment by name: expectations with `since: NAME` look
    /// only at what came after it.
    Mark(String),
    /// The next `times` requests matching fail with `status` (and a
    /// `Retry-After` header of `retry_after_s` seconds, if given).
    Fail {
        /// Which requests.
        #[serde(flatten)]
        matcher: RequestMatch,
        /// The status code.
        status: u16,
        /// How many.
        #[serde(default = "one_u32")]
        times: u32,
        /// `Retry-After`, in seconds.
        #[serde(default)]
        retry_after_s: Option<u32>,
    },
    /// Requests matching are delayed by `ms`.
    Delay {
        /// Which requests.
        #[serde(flatten)]
        matcher: RequestMatch,
        /// The delay.
        ms: u64,
    },
    /// Every open watch is cut.
    CutWatches,
    /// Puts the built case plugin of this name in place of the case's
    /// plugin file (a copy, then a rename over it): a new version of the
    /// plugin, which the host must reload.
    ReplacePlugin(String),
    /// Waits `ms`.
    Sleep(u64),
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_u32() -> u32 {
    1
}
fn twenty_seconds() -> u64 {
    20_000
}
fn quiet() -> u64 {
    700
}

/// An object by type and name.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectKey {
    /// `v1`, `apps/v1`, ...
    pub api_version: String,
    /// `ConfigMap`, ...
    pub kind: String,
    /// Namespace (`default` when left out, for namespaced kinds).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// Which API requests.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    #[serde(default)]
    pub verb: Option<String>,
    /// Resource plural.
    #[serde(default)]
    pub resource: Option<String>,
    /// Subresource (`status`).
    #[serde(default)]
    pub subresource: Option<String>,
    /// Object name.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace (in expectations only; faults match any namespace).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// What must hold at the end.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Objects in the cluster.
    #[serde(default)]
    pub objects: Vec<ObjectExpect>,
    /// Requests the API server received.
    #[serde(default)]
    pub requests: Vec<RequestExpect>,
    /// Exported spans.
    #[serde(default)]
    pub spans: Vec<SpanExpect>,
    /// The host's log lines.
    #[serde(default)]
    pub logs: Vec<LogExpect>,
    /// Requests the case's HTTP server (`${HTTP}`) received.
    #[serde(default)]
    pub http_requests: Vec<HttpExpect>,
    /// The time between consecutive spans of a kind.
    #[serde(default)]
    pub timing: Vec<TimingExpect>,
}

/// The gaps between consecutive spans (by start time): from the end of
/// one to the start of the next.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingExpect {
    /// Span name.
    pub name: String,
    /// Only the spans whose attributes include these.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, String>,
    /// The first this many of them (at least this many must exist).
    pub first: usize,
    /// Each gap is at least this long.
    #[serde(default)]
    pub min_gap_ms: Option<u64>,
    /// Each gap is at most this long.
    #[serde(default)]
    pub max_gap_ms: Option<u64>,
    /// Each gap is longer than the one before.
    #[serde(default)]
    pub growing: bool,
    /// Each gap is at least this many times the one before.
    #[serde(default)]
    pub min_growth: Option<f64>,
    /// How many of all the matching spans run at once, at most.
    #[serde(default)]
    pub max_overlap: Option<Count>,
}

/// Requests the case's HTTP server received.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpExpect {
    /// The request path (all paths when left out).
    #[serde(default)]
    pub path: Option<String>,
    /// How many.
    #[serde(default)]
    pub count: Count,
    /// Each one's `traceparent` names a span of this name.
    #[serde(default)]
    pub traceparent_of: Option<String>,
}

/// An object that exists with these fields, or does not exist.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectExpect {
    /// Which object.
    #[serde(flatten)]
    pub object: ObjectKey,
    /// A JSON subset the object must contain.
    #[serde(default)]
    pub has: Option<Value>,
    /// The object must not exist.
    #[serde(default)]
    pub absent: bool,
}

/// How many: `3`, `">=1"`, `"<=2"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Count {
    /// Exactly.
    Exactly(usize),
    /// `>=N` or `<=N`.
    Bound(String),
}

impl Default for Count {
    fn default() -> Self {
        Count::Bound(">=1".to_owned())
    }
}

impl Count {
    /// Whether no item at all may match (then checks of each item would
    /// hold vacuously).
    pub fn may_be_zero(&self) -> bool {
        self.allows(0).unwrap_or(false)
    }

    /// Whether `n` is allowed.
    pub fn allows(&self, n: usize) -> Result<bool, String> {
        match self {
            Count::Exactly(want) => Ok(n == *want),
            Count::Bound(text) => {
                let wrong = || format!("count {text:?}: expected N, \">=N\" or \"<=N\"");
                let (at_least, rest) = match (text.strip_prefix(">="), text.strip_prefix("<=")) {
                    (Some(rest), _) => (true, rest),
                    (_, Some(rest)) => (false, rest),
                    _ => return Err(wrong()),
                };
                let bound: usize = rest.trim().parse().map_err(|_| wrong())?;
                Ok(if at_least { n >= bound } else { n <= bound })
            }
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Exactly(n) => write!(f, "{n}"),
            Count::Bound(text) => f.write_str(text),
        }
    }
}

/// Requests the API server must (or, with `count: 0`, must not) have
/// received.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestExpect {
    /// Which requests.
    #[serde(flatten)]
    pub matcher: RequestMatch,
    /// `fieldManager` of the request.
    #[serde(default)]
    pub field_manager: Option<String>,
    /// How many.
    #[serde(default)]
    pub count: Count,
    /// Each one's `traceparent` names a span of this name (same trace id,
    /// its span id as the parent id).
    #[serde(default)]
    pub traceparent_of: Option<String>,
    /// Each one carries a `traceparent` whose flags say not sampled
    /// (`false`) or sampled (`true`).
    #[serde(default)]
    pub sampled: Option<bool>,
    /// Only the requests after this mark.
    #[serde(default)]
    pub since: Option<String>,
}

/// Spans that must have been exported.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanExpect {
    /// Span name.
    pub name: String,
    /// Only the spans whose attributes include these.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, String>,
    /// How many match.
    #[serde(default)]
    pub count: Count,
    /// `internal`, `client`, `server`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `unset`, `ok`, `error`.
    #[serde(default)]
    pub status: Option<String>,
    /// The status message: a value, or `~regex`.
    #[serde(default)]
    pub status_message: Option<String>,
    /// The parent's name, or `none` for a root.
    #[serde(default)]
    pub parent: Option<String>,
    /// Attributes each must have: a value, or `~regex`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Attributes each must not have.
    #[serde(default)]
    pub absent_attributes: Vec<String>,
    /// Events each must have.
    #[serde(default)]
    pub events: Vec<String>,
    /// Names of children each must have.
    #[serde(default)]
    pub children: Vec<String>,
    /// Each lasts at least this long.
    #[serde(default)]
    pub min_duration_ms: Option<u64>,
    /// Each lasts at most this long.
    #[serde(default)]
    pub max_duration_ms: Option<u64>,
    /// Only the spans that started after this mark.
    #[serde(default)]
    pub since: Option<String>,
}

/// Log lines of the host (JSON on its standard error).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogExpect {
    /// The line's message, exactly, or `~regex`.
    pub message: String,
    /// How many such lines.
    #[serde(default)]
    pub count: Count,
    /// Each carries the `trace_id` and `span_id` of a span of this name.
    #[serde(default)]
    pub in_span: Option<String>,
    /// Each carries a `trace_id` and a `span_id` (exported or not).
    #[serde(default)]
    pub traced: bool,
    /// Fields each carries (keys of the JSON line), as text: a value, or
    /// `~regex`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Only the lines written after this mark.
    #[serde(default)]
    pub since: Option<String>,
}

/// The longest a wait step may ask for.
const MAX_WAIT_MS: u64 = 600_000;

impl Case {
    /// Counts and patterns are well formed, and no check applies to each
    /// of zero items (it would hold whatever the host did).
    pub fn validate(&self) -> Result<(), String> {
        let patterns = |map: &BTreeMap<String, String>| -> Result<(), String> {
            for (k, v) in map {
                if let Some(re) = v.strip_prefix('~') {
                    regex::Regex::new(re).map_err(|e| format!("{k}: pattern {v:?}: {e}"))?;
                }
            }
            Ok(())
        };
        let pattern = |what: &str, p: &Option<String>| -> Result<(), String> {
            if let Some(re) = p.as_deref().and_then(|p| p.strip_prefix('~')) {
                regex::Regex::new(re).map_err(|e| format!("{what}: pattern {re:?}: {e}"))?;
            }
            Ok(())
        };
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::WaitSpans { timeout_ms, .. } | Step::WaitLogs { timeout_ms, .. }
                    if *timeout_ms > MAX_WAIT_MS =>
                {
                    return Err(format!(
                        "step {}: timeout_ms over {MAX_WAIT_MS} (ten minutes)",
                        i + 1
                    ));
                }
                Step::Fail { matcher, .. } | Step::Delay { matcher, .. }
                    if matcher.namespace.is_some() =>
                {
                    return Err(format!(
                        "step {}: faults match verb, resource, subresource and name, not namespace",
                        i + 1
                    ));
                }
                Step::WaitLogs { message, .. } => pattern("wait_logs", &Some(message.clone()))?,
                _ => {}
            }
        }
        for s in &self.expect.spans {
            s.count.allows(0)?;
            patterns(&s.attributes)?;
            pattern(
                &format!("span {} status_message", s.name),
                &s.status_message,
            )?;
            if s.filter.values().any(|v| v.starts_with('~')) {
                return Err(format!(
                    "span {}: `where` takes values, not patterns",
                    s.name
                ));
            }
            let per_item = s.min_duration_ms.is_some()
                || s.max_duration_ms.is_some()
                || s.kind.is_some()
                || s.status.is_some()
                || s.status_message.is_some()
                || s.parent.is_some()
                || !s.attributes.is_empty()
                || !s.absent_attributes.is_empty()
                || !s.events.is_empty()
                || !s.children.is_empty();
            if per_item && s.count.may_be_zero() {
                return Err(format!(
                    "span {}: a count that allows 0 with checks of each span would hold vacuously",
                    s.name
                ));
            }
        }
        for r in &self.expect.requests {
            r.count.allows(0)?;
            pattern("requests traceparent_of", &r.traceparent_of)?;
            if (r.traceparent_of.is_some() || r.sampled.is_some()) && r.count.may_be_zero() {
                return Err(
                    "requests: traceparent_of or sampled with a count that allows 0".to_owned(),
                );
            }
        }
        for h in &self.expect.http_requests {
            h.count.allows(0)?;
            if h.traceparent_of.is_some() && h.count.may_be_zero() {
                return Err("http_requests: traceparent_of with a count that allows 0".to_owned());
            }
        }
        for t in &self.expect.timing {
            if t.first < 2 {
                return Err(format!("timing {}: `first` must be 2 or more", t.name));
            }
            if t.min_gap_ms.is_none()
                && t.max_gap_ms.is_none()
                && !t.growing
                && t.min_growth.is_none()
                && t.max_overlap.is_none()
            {
                return Err(format!("timing {}: nothing to check", t.name));
            }
            if let Some(overlap) = &t.max_overlap {
                // `first` (2 or more) spans exist: one at least runs alone.
                if overlap.allows(0)? && overlap.allows(1)? && overlap.allows(usize::MAX)? {
                    return Err(format!(
                        "timing {}: max_overlap {overlap} holds for any host",
                        t.name
                    ));
                }
            }
        }
        let marks: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Mark(m) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        let since = self
            .expect
            .spans
            .iter()
            .map(|s| &s.since)
            .chain(self.expect.requests.iter().map(|r| &r.since))
            .chain(self.expect.logs.iter().map(|l| &l.since))
            .flatten();
        for mark in since {
            if !marks.contains(&mark.as_str()) {
                return Err(format!("since: {mark:?} is no `mark` step"));
            }
        }
        for step in &self.steps {
            if let Step::WaitLogs { message, .. } = step {
                patterns(&BTreeMap::from([("wait_logs".to_owned(), message.clone())]))?;
            }
        }
        for l in &self.expect.logs {
            l.count.allows(0)?;
            patterns(&BTreeMap::from([("logs".to_owned(), l.message.clone())]))?;
            patterns(&l.fields)?;
            if (l.in_span.is_some() || l.traced || !l.fields.is_empty()) && l.count.may_be_zero() {
                return Err(format!(
                    "logs {:?}: in_span, traced or fields with a count that allows 0",
                    l.message
                ));
            }
        }
        Ok(())
    }
}

/// Reads every case under `dir` (a folder per case with a `case.yaml`),
/// in name order.
pub fn load_all(dir: &Path) -> Result<Vec<Case>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.yaml").is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| load(d)).collect()
}

/// Reads the case in `dir`.
pub fn load(dir: &Path) -> Result<Case, String> {
    let path = dir.join("case.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut case: Case =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    case.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    case.dir = dir.to_owned();
    Ok(case)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: &str) -> Result<(), String> {
        let text = format!(
            "name: x\npins: y\ncontract: [\"0.2.0\"]\nplugin: p\ngrant: \"\"\nexpect:\n{expect}"
        );
        let case: Case = serde_saphyr::from_str(&text).map_err(|e| e.to_string())?;
        case.validate()
    }

    #[test]
    fn vacuous_and_malformed_expectations_are_refused() {
        assert!(case("  spans:\n    - {name: reconcile, count: 1, status: ok}\n").is_ok());
        assert!(case("  spans:\n    - {name: reconcile, count: 0}\n").is_ok());
        let zero = case("  spans:\n    - {name: reconcile, count: 0, status: ok}\n");
        assert!(zero.unwrap_err().contains("vacuously"));
        assert!(case("  spans:\n    - {name: r, count: \"<=2\", events: [e]}\n").is_err());
        assert!(case("  spans:\n    - {name: r, count: \"≥1\"}\n").is_err());
        assert!(case("  spans:\n    - {name: r, where: {a: \"~x\"}}\n").is_err());
        assert!(case("  spans:\n    - {name: r, attributes: {a: \"~(\"}}\n").is_err());
        assert!(case("  logs:\n    - {message: m, count: 0, traced: true}\n").is_err());
    }
}
