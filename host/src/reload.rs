//! Hot reload: the plugin directory is watched, and each new or changed
//! plugin is validated exactly as at start-up before it replaces the
//! running version.
//!
//! [`Reloader::scan`] is one pass over the directory: every `*.wasm` (and
//! the grant files of the plugins found) is fingerprinted; what is new or
//! changed is loaded (compile, contract versions, `metadata()`, grant) and
//! handed to [`Operator::upsert`]; what disappeared is drained and stopped
//! ([`Operator::remove`]). A file that fails keeps the running version of
//! its plugin serving. [`Reloader::watch`] runs a scan after every
//! debounced change that `notify` reports, and every `rescan` as a safety
//! net (a watch can be lost, an event dropped).
//!
//! Files arrive in one of two ways, and both work:
//! - an atomic rename into the directory (`cp` to a temporary name, then
//!   `mv`): names starting with `.` and without the `.wasm` extension are
//!   never loaded;
//! - a ConfigMap or Secret volume: the visible files are symlinks through
//!   `..data`, and the kubelet swaps that symlink to a new timestamped
//!   directory; the swap is an event in the directory, and every scan
//!   reads through the symlinks.
//!
//! A file caught half-written fails validation (it is not a component yet)
//! and is tried again when the next event shows it changed (a failure is
//! remembered with the digest of the bytes and of the grant files, so the
//! same bytes are not tried, nor reported, twice); a file that changed
//! while it was being validated is not swapped in (its digest must be the
//! one loaded).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use sha2::{Digest as _, Sha256};

use crate::engine::{Engine, LoadError};
use crate::grants::{Grant, GrantError};
use crate::operator::{self, Change, GrantPolicy, Operator, OperatorError};

/// How the plugin directory is watched.
#[derive(Clone, Debug)]
pub struct ReloadConfig {
    /// The plugin directory.
    pub dir: PathBuf,
    /// Where grants come from.
    pub policy: GrantPolicy,
    /// How long a file must be quiet before it is loaded.
    pub debounce: Duration,
    /// How often the directory is scanned even without events.
    pub rescan: Duration,
    /// Before a plugin runs, check with `SelfSubjectAccessReview`s that the
    /// host may do what its grant allows (`run`).
    pub check_access: bool,
}

impl ReloadConfig {
    /// The defaults: 10 ms of quiet, a rescan every 10 s.
    pub fn new(dir: PathBuf, policy: GrantPolicy) -> Self {
        ReloadConfig {
            dir,
            policy,
            debounce: Duration::from_millis(10),
            rescan: Duration::from_secs(10),
            check_access: false,
        }
    }
}

/// What one scan did.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Plugins started, by name.
    pub started: Vec<String>,
    /// Plugins whose new version is current, by name.
    pub replaced: Vec<String>,
    /// Files that did not load, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Plugins stopped because their file is gone, by name.
    pub removed: Vec<String>,
    /// Plugins whose file changed while it was validated: loaded again on
    /// its next event, and not removed meanwhile.
    pending: Vec<String>,
}

impl ScanReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !(self.started.is_empty()
            && self.replaced.is_empty()
            && self.failed.is_empty()
            && self.removed.is_empty())
    }
}

/// What was seen of a file the last time it was loaded or failed.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    digest: String,
    /// The plugin's name, once its metadata was read.
    name: Option<String>,
    /// The fingerprint of its grant files, for that name.
    grant: String,
    /// It failed because another file holds a plugin of the same name.
    duplicate: bool,
}

impl Seen {
    fn new(digest: String, name: Option<String>, grant: String) -> Self {
        Seen {
            digest,
            name,
            grant,
            duplicate: false,
        }
    }
}

/// A failure message on a span: bounded, as every attribute is.
const MAX_MESSAGE: usize = 4096;

/// Watches a plugin directory and keeps the operator's controllers in step
/// with it.
pub struct Reloader {
    engine: Engine,
    operator: Arc<Operator>,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    config: ReloadConfig,
    /// Files whose plugin runs.
    loaded: BTreeMap<PathBuf, Seen>,
    /// Files that did not load, as they were then.
    failed: BTreeMap<PathBuf, Seen>,
    /// Scans so far.
    scans: Arc<AtomicU64>,
    /// The API server did not answer an access review: not asked again.
    access_unchecked: bool,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("dir", &self.config.dir)
            .field("loaded", &self.loaded.len())
            .field("failed", &self.failed.len())
            .finish()
    }
}

impl Reloader {
    /// A reloader for `config.dir`, driving `operator`; `plugin.load`
    /// spans go to `tracer`.
    pub fn new(
        engine: Engine,
        operator: Arc<Operator>,
        tracer: opentelemetry_sdk::trace::SdkTracer,
        config: ReloadConfig,
    ) -> Self {
        Reloader {
            engine,
            operator,
            tracer,
            config,
            loaded: BTreeMap::new(),
            failed: BTreeMap::new(),
            scans: Arc::default(),
            access_unchecked: false,
        }
    }

    /// The number of scans made so far, shared (it keeps counting once
    /// the reloader is moved into [`watch`](Self::watch)).
    pub fn scans(&self) -> Arc<AtomicU64> {
        self.scans.clone()
    }

    /// The plugin files in the directory, in name order.
    fn list(&self) -> Result<Vec<PathBuf>, OperatorError> {
        let dir = &self.config.dir;
        let entries = std::fs::read_dir(dir).map_err(|error| OperatorError::ReadDir {
            path: dir.clone(),
            error,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                crate::files::is_plugin_name(&name)
            })
            .map(|e| e.path())
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// The fingerprint of the grant files plugin `name` at `path` may use.
    fn grant_print(&self, path: &Path, name: Option<&str>) -> String {
        let (GrantPolicy::Files(dir), Some(name)) = (&self.config.policy, name) else {
            return String::new();
        };
        let mut hash = Sha256::new();
        for candidate in Grant::candidates(path, name, dir.as_deref()) {
            if let Ok(text) = crate::files::read_text(&candidate, crate::files::MAX_TEXT_BYTES) {
                hash.update(candidate.as_os_str().as_encoded_bytes());
                hash.update([0]);
                hash.update(text.as_bytes());
                hash.update([0]);
            }
        }
        hex::encode(hash.finalize())
    }

    /// One pass: loads what is new or changed, stops what is gone.
    /// Fails only if the directory cannot be read.
    pub async fn scan(&mut self) -> Result<ScanReport, OperatorError> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let paths = self.list()?;
        let mut report = ScanReport::default();
        let gone: BTreeSet<PathBuf> = self
            .loaded
            .keys()
            .chain(self.failed.keys())
            .filter(|p| !paths.contains(p))
            .cloned()
            .collect();
        // A file refused as a duplicate of one now gone gets another try
        // (first, so that it takes over the running controller).
        let gone_names: BTreeSet<String> = gone
            .iter()
            .filter_map(|p| self.loaded.get(p).and_then(|s| s.name.clone()))
            .collect();
        self.release_duplicates(&gone_names);
        for path in &paths {
            let bytes = match read(path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    // A file that vanished between listing and reading is
                    // handled by the next scan.
                    if !path.exists() {
                        continue;
                    }
                    let seen = Seen::new(String::new(), None, String::new());
                    if self.failed.get(path) != Some(&seen) {
                        let error = OperatorError::Load(e);
                        self.fail(path, seen, None, &error, &mut report);
                    }
                    continue;
                }
            };
            let digest = hex::encode(Sha256::digest(&bytes));
            // The latest seen: a failure is newer than the version serving.
            let known = self.failed.get(path).or_else(|| self.loaded.get(path));
            if let Some(seen) = known
                && seen.digest == digest
                && seen.grant == self.grant_print(path, seen.name.as_deref())
            {
                continue;
            }
            self.load(path, &bytes, digest, &gone, &mut report).await;
        }
        // Files gone last: a plugin moved to another file name was found
        // there above, and keeps its controller.
        for path in gone {
            self.failed.remove(&path);
            self.operator
                .activity()
                .load_result(&path.display().to_string(), None);
            let Some(name) = self.loaded.remove(&path).and_then(|seen| seen.name) else {
                continue;
            };
            if let Some((moved, _)) = self
                .loaded
                .iter()
                .find(|(_, s)| s.name.as_deref() == Some(&name))
            {
                tracing::info!(plugin = %name, file = %path.display(), "its file is gone; it runs from {} now", moved.display());
                continue;
            }
            // Moved to a file that is still being written: it keeps
            // running until that file loads.
            if report.pending.contains(&name) {
                continue;
            }
            self.operator.remove(&name).await;
            tracing::info!(plugin = %name, file = %path.display(), "removed: its controller is stopped; its objects are left as they are (finalizers it added stay until released)");
            report.removed.push(name);
        }
        // A name no file serves any more (its file gone, or holding another
        // plugin now): a file refused as its duplicate loads now.
        let released: BTreeSet<String> = report.removed.iter().cloned().collect();
        let retry: Vec<PathBuf> = self
            .failed
            .iter()
            .filter(|(_, s)| s.duplicate && s.name.as_ref().is_some_and(|n| released.contains(n)))
            .map(|(p, _)| p.clone())
            .collect();
        for path in retry {
            self.failed.remove(&path);
            if let Ok(bytes) = read(&path).await {
                let digest = hex::encode(Sha256::digest(&bytes));
                self.load(&path, &bytes, digest, &BTreeSet::new(), &mut report)
                    .await;
            }
        }
        if report.changed() {
            let serving: Vec<String> = self
                .operator
                .plugins()
                .await
                .iter()
                .map(|p| {
                    let m = p.metadata();
                    format!("{} {} ({})", m.name, m.version, short(p.digest()))
                })
                .collect();
            if serving.is_empty() {
                tracing::info!(dir = %self.config.dir.display(), "no plugins running; watching for them");
            } else {
                tracing::info!(dir = %self.config.dir.display(), "plugins running: {}", serving.join(", "));
            }
        }
        Ok(report)
    }

    /// Forgets the duplicate failures of `names`, so that they are tried.
    fn release_duplicates(&mut self, names: &BTreeSet<String>) {
        self.failed.retain(|_, seen| {
            !(seen.duplicate && seen.name.as_ref().is_some_and(|n| names.contains(n)))
        });
    }

    /// What the host's identity may not do of what `plugin`'s grant
    /// allows; `None` when nothing is missing or nothing could be checked
    /// (an API server without SelfSubjectAccessReview: its 403s will say).
    async fn missing_access(&mut self, plugin: &crate::engine::Plugin) -> Option<Vec<String>> {
        if !self.config.check_access || self.access_unchecked {
            return None;
        }
        let grant = plugin.grant()?;
        let mut needs = crate::rbac::Needs::default();
        needs.plugin(plugin.metadata(), grant);
        match crate::rbac::missing(self.operator.client(), &needs).await {
            Ok(missing) if missing.is_empty() => None,
            Ok(missing) => Some(missing),
            Err(e) => {
                tracing::warn!(
                    "cannot check the host's access before running plugins ({e}): a missing permission shows as a 403 on the call that needs it"
                );
                self.access_unchecked = true;
                None
            }
        }
    }

    /// Validates one new or changed file and makes it current.
    async fn load(
        &mut self,
        path: &Path,
        bytes: &[u8],
        digest: String,
        gone: &BTreeSet<PathBuf>,
        report: &mut ScanReport,
    ) {
        let file = path.display().to_string();
        let previous = self.loaded.get(path).cloned();
        let mut span = self
            .tracer
            .span_builder("plugin.load")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("plugin.file", file.clone()),
                KeyValue::new("plugin.digest", format!("sha256:{digest}")),
            ])
            .start_with_context(&self.tracer, &opentelemetry::Context::new());
        let started = Instant::now();
        let previous_name = previous.as_ref().and_then(|p| p.name.clone());
        let grant_before = self.grant_print(path, previous_name.as_deref());
        let loaded =
            operator::load_plugin_bytes(&self.engine, bytes, path, &self.config.policy).await;
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(error) => {
                let name = match &error {
                    OperatorError::Grant(GrantError::Insufficient { plugin, .. })
                    | OperatorError::Grant(GrantError::Missing { plugin, .. })
                    | OperatorError::Grant(GrantError::Ambiguous { plugin, .. })
                    | OperatorError::Limits { plugin, .. }
                    | OperatorError::Access { plugin, .. } => Some(plugin.clone()),
                    _ => previous.as_ref().and_then(|p| p.name.clone()),
                };
                if let Some(name) = &name {
                    span.set_attribute(KeyValue::new("plugin.name", name.clone()));
                    if let Some(serving) = self.serving(name).await {
                        span.set_attribute(KeyValue::new("plugin.digest.previous", serving));
                    }
                }
                let mut grant = self.grant_print(path, name.as_deref());
                // The grant changed while it was read: try it again.
                if name == previous_name && grant != grant_before {
                    grant = "changed while validated".to_owned();
                }
                let seen = Seen::new(digest, name, grant);
                self.fail(path, seen, Some(span), &error, report);
                return;
            }
        };
        // A file still being written: its next event loads it.
        match read(path).await {
            Ok(now) if hex::encode(Sha256::digest(&now)) == digest => {}
            _ => {
                span.set_attribute(KeyValue::new("plugin.load.result", "changed"));
                span.end();
                report.pending.push(plugin.metadata().name.clone());
                tracing::debug!(file = %file, "the file changed while it was validated: loading it again on its next change");
                return;
            }
        }
        let m = plugin.metadata().clone();
        let stats = plugin.load_stats();
        span.set_attributes([
            KeyValue::new("plugin.name", m.name.clone()),
            KeyValue::new("plugin.version", m.version.clone()),
            KeyValue::new("plugin.cached", stats.cached),
            KeyValue::new("plugin.compile_ms", stats.compile.as_secs_f64() * 1000.0),
        ]);
        if let Some((other, _)) = self.loaded.iter().find(|(p, s)| {
            p.as_path() != path && !gone.contains(*p) && s.name.as_deref() == Some(&m.name)
        }) {
            let error = OperatorError::Duplicate {
                name: m.name.clone(),
                first: other.display().to_string(),
                second: file.clone(),
            };
            let grant = self.grant_print(path, Some(&m.name));
            let mut seen = Seen::new(digest, Some(m.name.clone()), grant);
            seen.duplicate = true;
            self.fail(path, seen, Some(span), &error, report);
            return;
        }
        // The grant in force must be the one fingerprinted: if its file
        // changed while the plugin was validated, the next scan loads it.
        let mut grant = self.grant_print(path, Some(&m.name));
        if let GrantPolicy::Files(dir) = &self.config.policy {
            let on_disk = Grant::find(path, &m.name, dir.as_deref()).ok();
            if on_disk.as_ref() != plugin.grant().map(|g| g.as_ref()) {
                grant = "changed while validated".to_owned();
            }
        }
        if let Some(missing) = self.missing_access(&plugin).await {
            let error = OperatorError::Access {
                plugin: m.name.clone(),
                missing,
            };
            let seen = Seen::new(digest, Some(m.name.clone()), grant);
            self.fail(path, seen, Some(span), &error, report);
            return;
        }
        let old = self
            .operator
            .plugins()
            .await
            .into_iter()
            .find(|p| p.metadata().name == m.name);
        if let Some(old) = &old {
            span.set_attribute(KeyValue::new(
                "plugin.digest.previous",
                old.digest().to_owned(),
            ));
        }
        // The file now holds another plugin: the old one stops.
        if let Some(prev) = previous.as_ref().and_then(|p| p.name.clone())
            && prev != m.name
        {
            self.operator.remove(&prev).await;
            tracing::info!(plugin = %prev, file = %file, "removed: the file holds {} now", m.name);
            report.removed.push(prev);
        }
        let change = self.operator.upsert(plugin.clone()).await;
        let metrics = self.engine.metrics();
        metrics.plugin_load(true);
        match change {
            Change::Swapped => metrics.plugin_reload("swapped"),
            Change::Replaced => metrics.plugin_reload("replaced"),
            Change::Started | Change::Unchanged => {}
        }
        let result = match change {
            Change::Started => "loaded",
            Change::Swapped | Change::Replaced => "replaced",
            Change::Unchanged => "unchanged",
        };
        span.set_attribute(KeyValue::new("plugin.load.result", result));
        let cx = opentelemetry::Context::current_with_span(span);
        {
            let _in_span = cx.clone().attach();
            let granted = plugin.grant().map(ToString::to_string).unwrap_or_default();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match (change, &old) {
                (Change::Started, _) => {
                    tracing::info!(plugin = %m.name, version = %m.version, digest = %plugin.digest(), file = %file, cached = stats.cached, load_ms = ms, "loaded; granted:\n{}", granted.trim_end());
                }
                (Change::Swapped, Some(old)) => {
                    tracing::info!(plugin = %m.name, version = %m.version, digest = %plugin.digest(), previous = %old.digest(), file = %file, cached = stats.cached, load_ms = ms, "replaced: new reconciles run this version, running ones finish on the old; its objects are requeued");
                }
                (Change::Replaced, Some(old)) => {
                    tracing::info!(plugin = %m.name, version = %m.version, digest = %plugin.digest(), previous = %old.digest(), file = %file, cached = stats.cached, load_ms = ms, "replaced, with a new controller (its types, finalizer, selector, field manager, concurrency or watched namespaces changed): the old one was drained first");
                }
                _ => {
                    tracing::debug!(plugin = %m.name, file = %file, "unchanged");
                }
            }
        }
        cx.span().end();
        match change {
            Change::Started => report.started.push(m.name.clone()),
            Change::Swapped | Change::Replaced => report.replaced.push(m.name.clone()),
            Change::Unchanged => {}
        }
        self.failed.remove(path);
        self.operator.activity().load_result(&file, None);
        self.loaded
            .insert(path.to_owned(), Seen::new(digest, Some(m.name), grant));
    }

    /// The digest of the version of `name` that runs, if one does.
    async fn serving(&self, name: &str) -> Option<String> {
        self.operator
            .plugins()
            .await
            .into_iter()
            .find(|p| p.metadata().name == name)
            .map(|p| p.digest().to_owned())
    }

    /// Records a file that did not load: one log line, the span's event,
    /// and the failure kept until the file changes.
    fn fail(
        &mut self,
        path: &Path,
        seen: Seen,
        span: Option<opentelemetry_sdk::trace::Span>,
        error: &OperatorError,
        report: &mut ScanReport,
    ) {
        let file = path.display().to_string();
        let message =
            crate::caps::trace::truncate(format!("{error}").replace('\n', "; "), MAX_MESSAGE)
                .into_owned();
        let mut span = span.unwrap_or_else(|| {
            self.tracer
                .span_builder("plugin.load")
                .with_kind(SpanKind::Internal)
                .with_attributes([KeyValue::new("plugin.file", file.clone())])
                .start_with_context(&self.tracer, &opentelemetry::Context::new())
        });
        span.set_attribute(KeyValue::new("plugin.load.result", "failed"));
        span.set_attribute(KeyValue::new("error.type", error_type(error)));
        span.add_event(
            "exception",
            vec![
                KeyValue::new("exception.type", error_type(error)),
                KeyValue::new("exception.message", message.clone()),
            ],
        );
        span.set_status(Status::error(message.clone()));
        let serving = seen
            .name
            .as_ref()
            .filter(|n| self.loaded.values().any(|s| s.name.as_ref() == Some(n)))
            .cloned();
        let metrics = self.engine.metrics();
        metrics.plugin_load(false);
        if serving.is_some() {
            metrics.plugin_reload("failure");
        }
        let cx = opentelemetry::Context::current_with_span(span);
        {
            let _in_span = cx.clone().attach();
            match &serving {
                Some(name) => {
                    tracing::error!(file = %file, plugin = %name, "plugin did not load, the running version keeps serving: {message}")
                }
                None => tracing::error!(file = %file, "plugin did not load: {message}"),
            }
        }
        cx.span().end();
        self.operator
            .activity()
            .load_result(&file, Some(message.clone()));
        report.failed.push((path.to_owned(), message));
        self.failed.insert(path.to_owned(), seen);
    }

    /// Scans after every debounced change in the directory (and in the
    /// grants directory, if any), and every `rescan`, until `shutdown`.
    pub async fn watch(mut self, shutdown: impl Future<Output = ()>) {
        use notify::RecursiveMode;
        let (events, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let debouncer = notify_debouncer_full::new_debouncer(
            self.config.debounce,
            None,
            move |result: notify_debouncer_full::DebounceEventResult| {
                let _ = events.send(result);
            },
        );
        let mut dirs = vec![self.config.dir.clone()];
        if let GrantPolicy::Files(Some(grants)) = &self.config.policy
            && grants != &self.config.dir
        {
            dirs.push(grants.clone());
        }
        let _debouncer = match debouncer {
            Ok(mut debouncer) => {
                for dir in &dirs {
                    if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), "cannot watch for changes ({e}): rescanning every {}s instead", self.config.rescan.as_secs_f64());
                    }
                }
                Some(debouncer)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch for plugin changes ({e}): rescanning every {}s instead",
                    self.config.rescan.as_secs_f64()
                );
                None
            }
        };
        let mut rescan = tokio::time::interval(self.config.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Its first tick is now: what changed since the caller's scan,
        // before the watch was in place, is found at once.
        let mut unreadable = false;
        let mut events_open = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                change = changes.recv(), if events_open => {
                    match change {
                        // The scans' own reads are events too (opens,
                        // closes): only changes call for a scan.
                        Some(Ok(events)) if !events.iter().any(|e| is_change(&e.event)) => continue,
                        // One scan for every batch queued meanwhile.
                        Some(Ok(_)) => while changes.try_recv().is_ok() {},
                        Some(Err(errors)) => {
                            for e in errors {
                                tracing::warn!("watching the plugins: {e}");
                            }
                        }
                        // No watcher: the rescans are all there is.
                        None => {
                            events_open = false;
                            continue;
                        }
                    }
                }
                _ = rescan.tick() => {}
            }
            // A scan (a long compile, a drain) gives way to the shutdown.
            let scanned = tokio::select! {
                () = &mut shutdown => break,
                scanned = self.scan() => scanned,
            };
            match scanned {
                Ok(_) => unreadable = false,
                Err(e) if !unreadable => {
                    unreadable = true;
                    tracing::error!("{e}; the running plugins keep running");
                }
                Err(_) => {}
            }
        }
    }
}

/// Whether an event is a change (not a read: the scans' own reads are
/// reported too).
fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reads a plugin file, off the async workers.
async fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    let owned = path.to_owned();
    let read = tokio::task::spawn_blocking(move || crate::files::read_plugin(&owned))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read.map_err(|error| LoadError::Read {
        source_name: path.display().to_string(),
        error,
    })
}

/// `sha256:0123456789ab`: enough of a digest to tell versions apart.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The `error.type` of a failed load.
fn error_type(error: &OperatorError) -> &'static str {
    match error {
        OperatorError::Load(e) => match e {
            LoadError::Read { .. } => "read",
            LoadError::NotWasm { .. } | LoadError::CoreModule { .. } => "not_a_component",
            LoadError::Compile { .. } => "compile",
            LoadError::WrongWorld { .. } => "wrong_world",
            LoadError::Version { .. } => "contract_version",
            LoadError::Imports { .. } => "imports",
            LoadError::Metadata { .. } => "metadata",
            LoadError::InvalidMetadata { .. } => "invalid_metadata",
        },
        OperatorError::Grant(_) => "grant",
        OperatorError::Limits { .. } => "limits",
        OperatorError::Access { .. } => "access",
        OperatorError::Duplicate { .. } => "duplicate",
        OperatorError::ReadDir { .. } | OperatorError::NoPlugins(_) => "read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    #[test]
    fn only_changes_call_for_a_scan() {
        let change = |kind| is_change(&Event::new(kind));
        // The scans' own reads.
        assert!(!change(EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!change(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!change(EventKind::Access(AccessKind::Read)));
        // Writes, renames (the kubelet's `..data` swap), creations.
        assert!(change(EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(change(EventKind::Modify(ModifyKind::Name(
            RenameMode::Both
        ))));
        assert!(change(EventKind::Create(CreateKind::File)));
        assert!(change(EventKind::Remove(notify::event::RemoveKind::Any)));
    }
}
