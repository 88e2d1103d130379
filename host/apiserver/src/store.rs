//! In-memory storage and the semantics of writes: one global
//! `resourceVersion`, uid and timestamps, generation, finalizers and
//! `deletionTimestamp`, garbage collection by owner uid, namespaces, CRDs;
//! and a bounded history of events that watches resume from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::apply::{self, Applier, Scope};
use crate::convert;
use crate::patch;
use crate::registry::{self, Registry, ResourceDef};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::typed;
use crate::validation;

/// Events buffered for watches; a watch further behind gets ERROR 410 and
/// re-lists (each buffered event keeps its object version alive).
const EVENT_BUFFER: usize = 8_192;

/// `(group, plural)`: objects are stored once, served under every version.
pub type StorageKey = (String, String);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// Which type.
    pub key: StorageKey,
    /// The namespace (empty for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object after (for deletes: as it was, with the new version).
    pub object: Arc<Stored>,
    /// The object before, for modifications.
    pub previous: Option<Arc<Stored>>,
}

/// How dependents of a deleted object are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the object now, dependents afterwards.
    Background,
    /// Delete dependents first.
    Foreground,
    /// Leave dependents, without the owner reference.
    Orphan,
}

/// Patch formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

/// Who writes, and how.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The field manager.
    pub manager: String,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `force=true` (apply only).
    pub force: bool,
}

/// The result of a delete.
#[derive(Clone, Debug)]
pub enum Deleted {
    /// Finalizers hold the object: it is returned with its `deletionTimestamp`.
    Pending(Value),
    /// It is gone.
    Gone(Value),
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The objects.
    pub items: Vec<Arc<Stored>>,
    /// The list's resourceVersion.
    pub rv: u64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Objects after this page.
    pub remaining: Option<u64>,
}

/// Filters of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Namespace; `None` for all.
    pub namespace: Option<String>,
    /// Labels.
    pub labels: LabelSelector,
    /// Fields.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether an object passes.
    pub fn matches(&self, object: &Stored) -> bool {
        if let Some(ns) = &self.namespace
            && object.namespace != *ns
        {
            return false;
        }
        self.labels.matches(&object.labels)
            && match self.fields.metadata_only() {
                true => self.fields.matches(&object.name, &object.namespace),
                false => self.fields.matches_object(&object.value()),
            }
    }
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
type ObjectKey = (String, String);
type Objects = BTreeMap<ObjectKey, Arc<Stored>>;
/// The events still in the history after a version, and a receiver for the next ones.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

struct State {
    registry: Registry,
    rv: u64,
    objects: HashMap<StorageKey, Objects>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Bytes of the objects in the history, and their bound.
    history_bytes: usize,
    history_bytes_limit: usize,
    /// Versions at or below this one are no longer in the history.
    compacted: u64,
    /// Events of the write in progress, published when it commits.
    pending: Vec<Arc<Event>>,
}

/// A stored object: its JSON, and what the store needs to know about it
/// without parsing (reads serve the bytes as they are).
#[derive(Debug)]
pub struct Stored {
    /// The object, serialized.
    pub json: bytes::Bytes,
    /// `apiVersion` it was written with.
    pub api_version: String,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// uid.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// uids of its owners.
    pub owners: Vec<String>,
    /// Finalizers.
    pub finalizers: Vec<String>,
    /// Whether `deletionTimestamp` is set.
    pub deleting: bool,
}

impl Stored {
    fn new(object: &Value) -> Self {
        let m = &object["metadata"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Stored {
            json: bytes::Bytes::from(object.to_string()),
            api_version: text(&object["apiVersion"]),
            namespace: text(&m["namespace"]),
            name: text(&m["name"]),
            uid: text(&m["uid"]),
            labels: m["labels"]
                .as_object()
                .map(|l| {
                    l.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
            owners: m["ownerReferences"]
                .as_array()
                .map(|refs| {
                    refs.iter()
                        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            finalizers: finalizers(object),
            deleting: m.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
        }
    }

    /// The object, parsed (objects may nest as deep as bodies may).
    pub fn value(&self) -> Value {
        // The bytes were written from a Value by `new`.
        let mut json = serde_json::Deserializer::from_slice(&self.json);
        json.disable_recursion_limit();
        serde::Deserialize::deserialize(&mut json).unwrap_or(Value::Null)
    }

    fn key(&self) -> ObjectKey {
        (self.namespace.clone(), self.name.clone())
    }
}

/// The store. Cheap to share.
pub struct Store {
    state: std::sync::Mutex<State>,
    /// A copy of `state.registry`, refreshed when CRDs change.
    served: std::sync::RwLock<Registry>,
    events: broadcast::Sender<Arc<Event>>,
}

/// Sets `status.phase`, whatever `status` held before (a client may have
/// written anything there).
fn set_phase(object: &mut Value, phase: &str) {
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    object["status"]["phase"] = phase.into();
}

/// RFC 3339, whole seconds.
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn meta(object: &Value) -> &Value {
    &object["metadata"]
}

/// Runs `f` on the object's metadata map, creating it when missing.
fn with_meta<R: Default>(object: &mut Value, f: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
    if !object.is_object() {
        *object = json!({});
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => f(m),
        None => R::default(),
    }
}

fn name_of(object: &Value) -> String {
    meta(object)["name"].as_str().unwrap_or_default().to_owned()
}

fn namespace_key(def: &ResourceDef, namespace: Option<&str>) -> String {
    if def.namespaced {
        namespace.unwrap_or_default().to_owned()
    } else {
        String::new()
    }
}

fn finalizers(object: &Value) -> Vec<String> {
    meta(object)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether anything but metadata (and, for types with a status
/// subresource, status) differs: what bumps `generation`.
fn spec_changed(def: &ResourceDef, a: &Value, b: &Value) -> bool {
    let skip =
        |k: &str| matches!(k, "metadata" | "apiVersion" | "kind") || (def.status && k == "status");
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.iter()
                .filter(|(k, _)| !skip(k))
                .any(|(k, v)| b.get(k) != Some(v))
                || b.keys().filter(|k| !skip(k)).any(|k| !a.contains_key(k))
        }
        _ => a != b,
    }
}

/// The object as served under `def`'s group and version.
pub fn present(def: &ResourceDef, object: &Value) -> Value {
    let mut v = convert::from_storage(def, object);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), def.api_version().into());
        m.insert("kind".into(), def.kind.clone().into());
    }
    v
}

fn random_suffix() -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl State {
    /// The type `def`'s objects are stored as, when another (Events of
    /// `events.k8s.io` are stored as core Events).
    fn storage_def(&self, def: &ResourceDef) -> Option<Arc<ResourceDef>> {
        convert::storage_type(def).and_then(|(v, k)| self.registry.by_kind(v, k))
    }

    fn table(&self, def: &ResourceDef) -> Option<&Objects> {
        self.objects.get(&def.storage_key())
    }

    fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Arc<Stored>> {
        self.table(def)
            .and_then(|t| t.get(&(ns.to_owned(), name.to_owned())))
            .cloned()
    }

    fn namespace(&self, name: &str) -> Option<Arc<Stored>> {
        self.objects
            .get(&(String::new(), "namespaces".into()))
            .and_then(|t| t.get(&(String::new(), name.to_owned())))
            .cloned()
    }

    fn record(
        &mut self,
        def_key: StorageKey,
        ns: String,
        kind: EventType,
        object: Arc<Stored>,
        previous: Option<Arc<Stored>>,
    ) {
        let event = Arc::new(Event {
            rv: self.rv,
            key: def_key,
            namespace: ns,
            kind,
            object,
            previous,
        });
        self.history_bytes += event.object.json.len();
        self.history.push_back(event.clone());
        // Bounded by count and by bytes (the newest event always stays).
        while self.history.len() > self.history_limit
            || (self.history_bytes > self.history_bytes_limit && self.history.len() > 1)
        {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes = self.history_bytes.saturating_sub(old.object.json.len());
                self.compacted = self.compacted.max(old.rv);
            }
        }
        self.pending.push(event);
    }

    /// Stores `object` (new or changed) under a new resourceVersion; returns
    /// it as stored.
    fn put(
        &mut self,
        def: &ResourceDef,
        mut object: Value,
        previous: Option<Arc<Stored>>,
    ) -> Arc<Stored> {
        self.rv += 1;
        with_meta(&mut object, |m| {
            m.insert("resourceVersion".into(), self.rv.to_string().into())
        });
        let stored = Arc::new(Stored::new(&object));
        let ns = stored.namespace.clone();
        self.objects
            .entry(def.storage_key())
            .or_default()
            .insert(stored.key(), stored.clone());
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(def.storage_key(), ns, kind, stored.clone(), previous);
        stored
    }

    /// Removes an object for good, and collects its dependents.
    fn remove(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        propagation: Propagation,
    ) -> Option<Value> {
        let old = self
            .objects
            .get_mut(&def.storage_key())?
            .remove(&(ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut gone = old.value();
        with_meta(&mut gone, |m| {
            m.insert("resourceVersion".into(), self.rv.to_string().into())
        });
        self.record(
            def.storage_key(),
            ns.to_owned(),
            EventType::Deleted,
            Arc::new(Stored::new(&gone)),
            Some(old.clone()),
        );
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.remove_crd(&gone);
        }
        self.collect_dependents(&old.uid, propagation);
        self.finish_foreground_owners();
        if !ns.is_empty() {
            self.finish_namespace(ns);
        }
        Some(gone)
    }

    fn remove_crd(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default().to_owned();
        let plural = crd["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (group.clone(), plural.clone());
        let names: Vec<(String, String)> = self
            .objects
            .get(&key)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(def) = self
            .registry
            .all()
            .iter()
            .find(|d| d.custom && d.group == group && d.plural == plural)
            .cloned()
        {
            for (ns, name) in names {
                self.remove(&def, &ns, &name, Propagation::Background);
            }
        }
        self.objects.remove(&key);
        self.registry.remove_crd(&group, &plural);
    }

    /// Every object whose ownerReferences name `uid`, with its type.
    fn dependents(&self, uid: &str) -> Vec<(Arc<ResourceDef>, Arc<Stored>)> {
        if uid.is_empty() {
            return vec![];
        }
        let mut out = Vec::new();
        for (key, table) in &self.objects {
            let Some(def) = self
                .registry
                .all()
                .iter()
                .find(|d| d.storage_key() == *key)
                .cloned()
            else {
                continue;
            };
            for object in table.values().filter(|o| o.owners.iter().any(|o| o == uid)) {
                out.push((def.clone(), object.clone()));
            }
        }
        out
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects
            .values()
            .any(|t| t.values().any(|o| o.uid == uid))
    }

    fn collect_dependents(&mut self, uid: &str, propagation: Propagation) {
        for (def, snapshot) in self.dependents(uid) {
            // A nested removal may have changed or removed it since.
            let Some(object) = self.get(&def, &snapshot.namespace, &snapshot.name) else {
                continue;
            };
            if object.uid != snapshot.uid {
                continue;
            }
            let other_owners_alive = object
                .owners
                .iter()
                .filter(|o| *o != uid)
                .any(|o| self.uid_exists(o));
            if propagation == Propagation::Orphan || other_owners_alive {
                let mut updated = object.value();
                with_meta(&mut updated, |m| {
                    if let Some(Value::Array(refs)) = m.get_mut("ownerReferences") {
                        refs.retain(|r| r["uid"] != uid);
                    }
                });
                self.put(&def, updated, Some(object));
            } else {
                self.begin_delete(
                    &def,
                    &object.namespace,
                    &object.name,
                    Propagation::Background,
                );
            }
        }
    }

    /// Deletes an object: at once, or by setting `deletionTimestamp` while
    /// finalizers (or foreground deletion) hold it.
    fn begin_delete(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        propagation: Propagation,
    ) -> Option<Deleted> {
        let old = self.get(def, ns, name)?;
        let mut held = old.finalizers.clone();
        if propagation == Propagation::Foreground
            && !self.dependents(&old.uid).is_empty()
            && !held.iter().any(|f| f == "foregroundDeletion")
        {
            held.push("foregroundDeletion".into());
        }
        if held.is_empty() {
            return self.remove(def, ns, name, propagation).map(Deleted::Gone);
        }
        if old.deleting && held == old.finalizers {
            return Some(Deleted::Pending(old.value()));
        }
        let mut object = old.value();
        with_meta(&mut object, |m| {
            if !m.contains_key("deletionTimestamp") {
                m.insert("deletionTimestamp".into(), now().into());
                m.insert("deletionGracePeriodSeconds".into(), 0.into());
                let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                m.insert("generation".into(), (generation + 1).into());
            }
            m.insert("finalizers".into(), json!(held));
        });
        if def.plural == "namespaces" && def.group.is_empty() {
            set_phase(&mut object, "Terminating");
        }
        self.put(def, object, Some(old.clone()));
        match propagation {
            Propagation::Foreground => self.collect_dependents(&old.uid, Propagation::Background),
            Propagation::Orphan => self.collect_dependents(&old.uid, Propagation::Orphan),
            Propagation::Background => {}
        }
        self.finish_foreground_owners();
        // The finalizers may all have been foregroundDeletion: then it is gone.
        match self.get(def, ns, name) {
            Some(current) => Some(Deleted::Pending(current.value())),
            None => {
                let mut gone = old.value();
                with_meta(&mut gone, |m| {
                    m.insert("resourceVersion".into(), self.rv.to_string().into())
                });
                Some(Deleted::Gone(gone))
            }
        }
    }

    /// Owners in foreground deletion whose dependents are all gone lose
    /// their `foregroundDeletion` finalizer.
    fn finish_foreground_owners(&mut self) {
        let waiting: Vec<(Arc<ResourceDef>, Arc<Stored>)> = self
            .objects
            .iter()
            .flat_map(|(key, table)| {
                let def = self
                    .registry
                    .all()
                    .iter()
                    .find(|d| d.storage_key() == *key)
                    .cloned();
                table
                    .values()
                    .filter(|o| o.finalizers.iter().any(|f| f == "foregroundDeletion"))
                    .filter_map(move |o| def.clone().map(|d| (d, o.clone())))
            })
            .collect();
        for (def, object) in waiting {
            if self.dependents(&object.uid).is_empty() {
                let mut updated = object.value();
                with_meta(&mut updated, |m| {
                    if let Some(Value::Array(list)) = m.get_mut("finalizers") {
                        list.retain(|f| f != "foregroundDeletion");
                    }
                });
                self.commit_update(&def, updated, object);
            }
        }
    }

    /// A terminating namespace goes once it is empty.
    fn finish_namespace(&mut self, ns: &str) {
        let Some(namespace) = self.namespace(ns) else {
            return;
        };
        if !namespace.deleting {
            return;
        }
        let empty = self
            .objects
            .iter()
            .all(|(key, t)| key.1 == "namespaces" || !t.keys().any(|(n, _)| n == ns));
        if empty && let Some(def) = self.registry.find("", "v1", "namespaces") {
            self.remove(&def, "", ns, Propagation::Background);
        }
    }

    /// Stores an update; completes a deletion that no finalizer holds anymore.
    fn commit_update(&mut self, def: &ResourceDef, object: Value, old: Arc<Stored>) -> Arc<Stored> {
        let deleting = meta(&object)
            .get("deletionTimestamp")
            .is_some_and(|t| !t.is_null());
        if deleting && finalizers(&object).is_empty() {
            let ns = meta(&object)["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let name = name_of(&object);
            // Store the final state first so the DELETED event carries it.
            self.put(def, object, Some(old));
            let gone = self
                .remove(def, &ns, &name, Propagation::Background)
                .unwrap_or_default();
            return Arc::new(Stored::new(&gone));
        }
        self.put(def, object, Some(old))
    }
}

impl Store {
    /// A store with the built-in types, the standard namespaces, and a
    /// history of `history_limit` events (and at most 64 MiB of objects).
    pub fn new(history_limit: usize) -> Self {
        Self::with_limits(history_limit, 64 * 1024 * 1024)
    }

    /// A store whose history keeps at most `history_limit` events and
    /// `history_bytes` bytes of objects.
    pub fn with_limits(history_limit: usize, history_bytes: usize) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let store = Store {
            state: std::sync::Mutex::new(State {
                registry: Registry::new(),
                rv: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                history_bytes: 0,
                history_bytes_limit: history_bytes,
                compacted: 0,
                pending: Vec::new(),
            }),
            served: std::sync::RwLock::new(Registry::new()),
            events,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let options = WriteOptions {
                manager: "reconcile-apiserver".into(),
                dry_run: false,
                force: false,
            };
            let _ = store.with_def("", "v1", "namespaces", |s, def| {
                s.create(&def, None, object, &options)
            });
        }
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the data is still
        // consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, state: &mut State) {
        // Served types change with CRDs only: discovery and routing read a
        // copy, without waiting for the lock a long write holds.
        if state
            .pending
            .iter()
            .any(|e| e.key.0 == "apiextensions.k8s.io" && e.key.1 == "customresourcedefinitions")
        {
            *self.served.write().unwrap_or_else(|e| e.into_inner()) = state.registry.clone();
        }
        for event in state.pending.drain(..) {
            // No receivers is fine.
            let _ = self.events.send(event);
        }
    }

    fn with_def<T>(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        f: impl FnOnce(&Self, Arc<ResourceDef>) -> T,
    ) -> Option<T> {
        let def = self.lock().registry.find(group, version, plural)?;
        Some(f(self, def))
    }

    /// The served types (as of the latest committed write).
    pub fn registry(&self) -> Registry {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Forget the whole history: watches from earlier versions get 410.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.history_bytes = 0;
        state.compacted = state.rv;
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.lock().objects.values().map(BTreeMap::len).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_namespace(state: &State, def: &ResourceDef, ns: Option<&str>) -> Result<(), ApiError> {
        if !def.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| {
            ApiError::bad_request("a namespace is required for a namespaced resource")
        })?;
        if state.namespace(ns).is_none() {
            return Err(ApiError::namespace_not_found(ns));
        }
        Ok(())
    }

    /// Read one object.
    pub fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Stored>, ApiError> {
        let state = self.lock();
        state
            .get(def, &namespace_key(def, ns), name)
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// List objects.
    pub fn list(
        &self,
        def: &ResourceDef,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let state = self.lock();
        let (start, list_rv) = match continue_token {
            Some(token) => {
                let (rv, key) = decode_continue(token)?;
                if rv < state.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (Some(key), rv)
            }
            None => (None, state.rv),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0u64;
        if let Some(table) = state.table(def) {
            let range: Box<dyn Iterator<Item = (&ObjectKey, &Arc<Stored>)>> = match &start {
                Some(key) => Box::new(table.range((
                    std::ops::Bound::Excluded(key.clone()),
                    std::ops::Bound::Unbounded,
                ))),
                None => Box::new(table.iter()),
            };
            for (_, object) in range {
                if !filter.matches(object) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    if next.is_none() {
                        next = items.last().map(|o: &Arc<Stored>| o.key());
                    }
                    remaining += 1;
                    continue;
                }
                items.push(object.clone());
            }
        }
        Ok(ListPage {
            items,
            rv: list_rv,
            continue_token: next.map(|key| encode_continue(list_rv, &key)),
            remaining: (remaining > 0).then_some(remaining),
        })
    }

    /// Create an object.
    pub fn create(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        object: Value,
        options: &WriteOptions,
    ) -> Result<Arc<Stored>, ApiError> {
        if let Some(rv) = object["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| !rv.is_empty())
        {
            return Err(ApiError::invalid_field(
                &def.kind,
                object["metadata"]["name"].as_str().unwrap_or_default(),
                "metadata.resourceVersion",
                "FieldValueInvalid",
                format!("Invalid value: {rv:?}: must be empty"),
            ));
        }
        let mut state = self.lock();
        let result = match state.storage_def(def) {
            Some(storage) => check_body_type(def, &object).and_then(|()| {
                let object = convert::to_storage(def, object);
                Self::create_in(&mut state, &storage, ns, object, options, None)
            }),
            None => Self::create_in(&mut state, def, ns, object, options, None),
        };
        self.publish(&mut state);
        result
    }

    /// Creates an object under the caller's lock; `managed` replaces the
    /// creator's Update entry (an apply that creates).
    fn create_in(
        state: &mut State,
        def: &ResourceDef,
        ns: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
        managed: Option<Value>,
    ) -> Result<Arc<Stored>, ApiError> {
        check_body_type(def, &object)?;
        let ns_key = namespace_key(def, ns);
        if def.namespaced {
            if let Some(body_ns) = meta(&object)["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                && body_ns != ns_key
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Self::check_namespace(state, def, ns)?;
            if let Some(namespace) = state.namespace(&ns_key)
                && namespace.deleting
            {
                let mut e = ApiError::bad_request(format!(
                    "unable to create new content in namespace {ns_key} because it is being terminated"
                ));
                e.code = 403;
                e.reason = "Forbidden";
                return Err(e);
            }
        }
        let mut name = name_of(&object);
        if name.is_empty() {
            let prefix = meta(&object)["generateName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid_field(
                    &def.kind,
                    "",
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                ));
            }
            loop {
                name = format!("{prefix}{}", random_suffix());
                if state.get(def, &ns_key, &name).is_none() {
                    break;
                }
            }
        }
        validation::check_name(def, &name)?;
        if state.get(def, &ns_key, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        with_meta(&mut object, |m| {
            m.insert("name".into(), name.clone().into());
            if def.namespaced {
                m.insert("namespace".into(), ns_key.clone().into());
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now().into());
            m.insert("generation".into(), 1.into());
            for key in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "managedFields",
                "selfLink",
            ] {
                m.remove(key);
            }
        });
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), def.api_version().into());
            map.insert("kind".into(), def.kind.clone().into());
            if def.status {
                map.remove("status");
            }
        }
        typed::check(def, &object)?;
        validation::check_object(def, &object)?;
        let crd_defs = Self::prepare_special(def, &mut object)?;
        match managed {
            // An apply that creates: the apply's own managedFields.
            Some(managed) => {
                with_meta(&mut object, |m| m.insert("managedFields".into(), managed));
            }
            None => apply::record_update(
                def,
                Scope::Main,
                &json!({}),
                &mut object,
                &options.manager,
                &now(),
            ),
        }
        if options.dry_run {
            return Ok(Arc::new(Stored::new(&object)));
        }
        if let Some(defs) = crd_defs {
            state.registry.install_crd(defs);
        }
        Ok(state.put(def, object, None))
    }

    /// Type-specific preparation of a new or changed object: CRDs become
    /// served types, namespaces get their phase.
    fn prepare_special(
        def: &ResourceDef,
        object: &mut Value,
    ) -> Result<Option<Vec<ResourceDef>>, ApiError> {
        match (def.group.as_str(), def.plural.as_str()) {
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let defs = registry::from_crd(object).map_err(|e| {
                    ApiError::invalid_field(
                        &def.kind,
                        &name_of(object),
                        e.0.split(':').next().unwrap_or_default(),
                        "FieldValueInvalid",
                        e.0.clone(),
                    )
                })?;
                let time = now();
                object["status"] = json!({
                    "acceptedNames": object["spec"]["names"].clone(),
                    "storedVersions": defs.iter().map(|d| d.version.clone()).take(1).collect::<Vec<_>>(),
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time}
                    ]
                });
                Ok(Some(defs))
            }
            ("", "namespaces") => {
                if object["status"]["phase"].is_null() {
                    object["status"] = json!({"phase": "Active"});
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Replace an object (`PUT`), or its status.
    pub fn update(
        &self,
        def: &ResourceDef,
        scope: Scope,
        ns: Option<&str>,
        name: &str,
        body: Value,
        options: &WriteOptions,
    ) -> Result<Arc<Stored>, ApiError> {
        let mut state = self.lock();
        check_body_type(def, &body)?;
        let storage = state.storage_def(def);
        let (def, body) = match &storage {
            Some(storage) => (&**storage, convert::to_storage(def, body)),
            None => (def, body),
        };
        let ns_key = namespace_key(def, ns);
        let old = state
            .get(def, &ns_key, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        let body_name = name_of(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta(&body)["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && old.value()["metadata"]["resourceVersion"].as_str() != Some(rv)
        {
            return Err(ApiError::conflict(def, name));
        }
        let result = self.finish_write(&mut state, def, scope, old, body, options);
        self.publish(&mut state);
        result
    }

    /// Patch an object or its status; an apply to a missing object creates
    /// it (the boolean is true then).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        def: &ResourceDef,
        scope: Scope,
        ns: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        options: &WriteOptions,
    ) -> Result<(Arc<Stored>, bool), ApiError> {
        let mut state = self.lock();
        let ns_key = namespace_key(def, ns);
        let old = state.get(def, &ns_key, name);
        // A type stored in another form is patched in the form the client
        // sees, and stored back in its own.
        let storage = state.storage_def(def);
        let served = |stored: &Stored| match &storage {
            Some(_) => present(def, &stored.value()),
            None => stored.value(),
        };
        let storage_def: &ResourceDef = storage.as_deref().unwrap_or(def);
        if kind == PatchType::Apply {
            check_body_type(def, body)?;
            let body_name = name_of(body);
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            if def.namespaced
                && let Some(body_ns) = meta(body)["namespace"].as_str().filter(|s| !s.is_empty())
                && body_ns != ns_key
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let Some(old) = old else {
                if scope == Scope::Status {
                    return Err(ApiError::not_found(def, name));
                }
                let who = Applier {
                    manager: &options.manager,
                    force: options.force,
                    now: &now(),
                };
                let applied = apply::apply(def, scope, &json!({}), body, &who)?;
                let managed = applied["metadata"]["managedFields"].clone();
                let mut object = convert::to_storage(def, applied);
                with_meta(&mut object, |m| m.insert("name".into(), name.into()));
                let create_options = WriteOptions {
                    manager: options.manager.clone(),
                    dry_run: options.dry_run,
                    force: false,
                };
                let created = Self::create_in(
                    &mut state,
                    storage_def,
                    ns,
                    object,
                    &create_options,
                    Some(managed),
                );
                self.publish(&mut state);
                return created.map(|c| (c, true));
            };
            let old_value = served(&old);
            if let Some(rv) = meta(body)["resourceVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
                && meta(&old_value)["resourceVersion"].as_str() != Some(rv)
            {
                return Err(ApiError::conflict(def, name));
            }
            let who = Applier {
                manager: &options.manager,
                force: options.force,
                now: &now(),
            };
            let applied =
                convert::to_storage(def, apply::apply(def, scope, &old_value, body, &who)?);
            let result = self.finish_write(
                &mut state,
                storage_def,
                scope,
                old,
                applied,
                &WriteOptions {
                    manager: String::new(),
                    ..options.clone()
                },
            );
            self.publish(&mut state);
            return result.map(|v| (v, false));
        }
        let old = old.ok_or_else(|| ApiError::not_found(def, name))?;
        let old_value = served(&old);
        let mut patched = old_value.clone();
        match kind {
            // A merge patch that is not an object would replace the whole object.
            PatchType::Merge if !body.is_object() => {
                return Err(ApiError::bad_request(
                    "Invalid JSON Patch: a merge patch must be a JSON object",
                ));
            }
            PatchType::Merge => patch::merge_patch(&mut patched, body),
            PatchType::Json => {
                patch::json_patch(&mut patched, body, crate::MAX_DEPTH).map_err(|e| match e {
                    patch::JsonPatchError::TooLarge(m) => ApiError::too_large_message(m),
                    patch::JsonPatchError::Invalid(e) => ApiError::invalid_field(
                        &def.kind,
                        name,
                        "patch",
                        "FieldValueInvalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    ),
                })?;
            }
            PatchType::Strategic => {
                if def.custom {
                    return Err(ApiError::unsupported_media_type(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                patch::strategic_merge(def, &mut patched, body).map_err(ApiError::bad_request)?;
            }
            PatchType::Apply => {}
        }
        if meta(&patched)["resourceVersion"] != meta(&old_value)["resourceVersion"]
            && meta(&patched)["resourceVersion"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::conflict(def, name));
        }
        if !patched.is_object() {
            return Err(ApiError::bad_request(format!(
                "the patch leaves {}, not an object",
                json_kind(&patched)
            )));
        }
        check_body_type(def, &patched)?;
        if name_of(&patched) != name {
            return Err(ApiError::bad_request(
                "a patch may not change metadata.name",
            ));
        }
        let patched = convert::to_storage(def, patched);
        let result = self.finish_write(&mut state, storage_def, scope, old, patched, options);
        self.publish(&mut state);
        result.map(|v| (v, false))
    }

    /// The common end of update, patch and apply: keep what the client may
    /// not change, bump generation, track managers, store or no-op.
    fn finish_write(
        &self,
        state: &mut State,
        def: &ResourceDef,
        scope: Scope,
        stored: Arc<Stored>,
        body: Value,
        options: &WriteOptions,
    ) -> Result<Arc<Stored>, ApiError> {
        let old = stored.value();
        let name = name_of(&old);
        check_immutable(def, &name, &old, &body)?;
        let mut new = match scope {
            Scope::Status => {
                if body
                    .get("status")
                    .is_some_and(|st| !st.is_object() && !st.is_null())
                {
                    return Err(ApiError::invalid_field(
                        &def.kind,
                        &name,
                        "status",
                        "FieldValueTypeInvalid",
                        "Invalid value: status must be an object",
                    ));
                }
                let mut new = old.clone();
                new["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                if new["status"].is_null()
                    && let Some(m) = new.as_object_mut()
                {
                    m.remove("status");
                }
                if options.manager.is_empty() {
                    // Apply already computed managedFields.
                    with_meta(&mut new, |m| {
                        m.insert(
                            "managedFields".into(),
                            body["metadata"]["managedFields"].clone(),
                        )
                    });
                }
                new
            }
            Scope::Main => {
                let mut new = body;
                if let Some(map) = new.as_object_mut() {
                    map.insert("apiVersion".into(), def.api_version().into());
                    map.insert("kind".into(), def.kind.clone().into());
                    if def.status {
                        match old.get("status") {
                            Some(status) => map.insert("status".into(), status.clone()),
                            None => map.remove("status"),
                        };
                    }
                }
                with_meta(&mut new, |m| {
                    for key in [
                        "name",
                        "namespace",
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "deletionTimestamp",
                        "deletionGracePeriodSeconds",
                        "generateName",
                    ] {
                        match old["metadata"].get(key) {
                            Some(v) => m.insert(key.into(), v.clone()),
                            None => m.remove(key),
                        };
                    }
                    if !options.manager.is_empty() {
                        match old["metadata"].get("managedFields") {
                            Some(v) => m.insert("managedFields".into(), v.clone()),
                            None => m.remove("managedFields"),
                        };
                    }
                });
                new
            }
        };
        with_meta(&mut new, |m| {
            m.insert(
                "resourceVersion".into(),
                old["metadata"]["resourceVersion"].clone(),
            )
        });
        if meta(&new)["managedFields"].is_null()
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove("managedFields");
        }
        // No new finalizers once deletion started.
        if meta(&old).get("deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid_field(
                    &def.kind,
                    &name,
                    "metadata.finalizers",
                    "FieldValueForbidden",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        typed::check(def, &new)?;
        if scope == Scope::Main {
            validation::check_object(def, &new)?;
            if spec_changed(def, &new, &old) {
                let generation = meta(&old)["generation"].as_i64().unwrap_or(1);
                with_meta(&mut new, |m| {
                    m.insert("generation".into(), (generation + 1).into())
                });
            }
        }
        if !options.manager.is_empty() {
            apply::record_update(def, scope, &old, &mut new, &options.manager, &now());
        }
        let crd_defs = if scope == Scope::Main {
            Self::prepare_special(def, &mut new)?
        } else {
            None
        };
        // A write that changes nothing keeps the resourceVersion.
        if same_but_times(&new, &old) {
            return Ok(stored);
        }
        if options.dry_run {
            return Ok(Arc::new(Stored::new(&new)));
        }
        if let Some(defs) = crd_defs {
            state.registry.install_crd(defs);
        }
        Ok(state.commit_update(def, new, stored))
    }

    /// Delete one object.
    pub fn delete(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        propagation: Propagation,
        preconditions: &Value,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let mut state = self.lock();
        let ns_key = namespace_key(def, ns);
        let stored = state
            .get(def, &ns_key, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        let old = stored.value();
        for (field, pointer) in [
            ("uid", "/metadata/uid"),
            ("resourceVersion", "/metadata/resourceVersion"),
        ] {
            if let Some(wanted) = preconditions.get(field).and_then(Value::as_str)
                && old.pointer(pointer).and_then(Value::as_str) != Some(wanted)
            {
                let mut e = ApiError::conflict(def, name);
                e.message = format!(
                    "Precondition failed: {field}: {wanted}, {field} in object meta: {}",
                    old.pointer(pointer)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                );
                return Err(e);
            }
        }
        if dry_run {
            return Ok(if stored.finalizers.is_empty() {
                Deleted::Gone(old)
            } else {
                Deleted::Pending(old)
            });
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            if ["default", "kube-system", "kube-public"].contains(&name) {
                return Err(ApiError::forbidden(
                    def,
                    name,
                    "this namespace may not be deleted",
                ));
            }
            let result = Self::delete_namespace(&mut state, def, name);
            self.publish(&mut state);
            return result;
        }
        let result = state
            .begin_delete(def, &ns_key, name, propagation)
            .ok_or_else(|| ApiError::not_found(def, name));
        self.publish(&mut state);
        result.map(|d| match d {
            Deleted::Pending(v) => Deleted::Pending(present(def, &v)),
            Deleted::Gone(v) => Deleted::Gone(present(def, &v)),
        })
    }

    fn delete_namespace(
        state: &mut State,
        def: &ResourceDef,
        name: &str,
    ) -> Result<Deleted, ApiError> {
        let old = state
            .namespace(name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if !old.deleting {
            let mut object = old.value();
            with_meta(&mut object, |m| {
                m.insert("deletionTimestamp".into(), now().into())
            });
            set_phase(&mut object, "Terminating");
            state.put(def, object, Some(old.clone()));
        }
        let contents: Vec<(Arc<ResourceDef>, String)> = state
            .objects
            .iter()
            .filter(|(key, _)| key.1 != "namespaces" || !key.0.is_empty())
            .flat_map(|(key, table)| {
                let def = state
                    .registry
                    .all()
                    .iter()
                    .find(|d| d.storage_key() == *key && d.namespaced)
                    .cloned();
                table
                    .keys()
                    .filter(|(ns, _)| ns == name)
                    .filter_map(move |(_, n)| def.clone().map(|d| (d, n.clone())))
            })
            .collect();
        for (d, n) in contents {
            state.begin_delete(&d, name, &n, Propagation::Background);
        }
        state.finish_namespace(name);
        match state.namespace(name) {
            Some(ns) => Ok(Deleted::Pending(ns.value())),
            None => Ok(Deleted::Gone(old.value())),
        }
    }

    /// Delete every matching object.
    pub fn delete_collection(
        &self,
        def: &ResourceDef,
        filter: &Filter,
        propagation: Propagation,
        dry_run: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self.list(def, filter, None, None)?;
        let mut deleted = Vec::new();
        for object in page.items {
            let ns = (!object.namespace.is_empty()).then(|| object.namespace.clone());
            match self.delete(
                def,
                ns.as_deref(),
                &object.name,
                propagation,
                &Value::Null,
                dry_run,
            ) {
                Ok(Deleted::Gone(v) | Deleted::Pending(v)) => deleted.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Start a watch from `rv` (exclusive): the events still in the history
    /// and a receiver for what follows, taken atomically. `None` means the
    /// version is too old (410).
    pub fn watch_from(&self, rv: u64) -> Option<WatchStart> {
        let state = self.lock();
        if rv < state.compacted {
            return None;
        }
        let backlog = state
            .history
            .iter()
            .filter(|e| e.rv > rv)
            .cloned()
            .collect();
        Some((backlog, self.events.subscribe()))
    }

    /// Current objects for synthetic ADDED events, with the version they
    /// are consistent with.
    pub fn snapshot(
        &self,
        def: &ResourceDef,
        filter: &Filter,
    ) -> (Vec<Arc<Stored>>, u64, broadcast::Receiver<Arc<Event>>) {
        let state = self.lock();
        let items = state
            .table(def)
            .map(|t| t.values().filter(|o| filter.matches(o)).cloned().collect())
            .unwrap_or_default();
        (items, state.rv, self.events.subscribe())
    }

    /// The oldest version a watch can resume from.
    pub fn compacted(&self) -> u64 {
        self.lock().compacted
    }
}

/// Equal except for the `time` of managedFields entries: a write that
/// changes nothing else is a no-op.
fn same_but_times(a: &Value, b: &Value) -> bool {
    fn same_entries(a: &Value, b: &Value) -> bool {
        match (a.as_array(), b.as_array()) {
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| match (x.as_object(), y.as_object()) {
                            (Some(x), Some(y)) => {
                                x.len() == y.len()
                                    && x.iter().all(|(k, v)| k == "time" || y.get(k) == Some(v))
                            }
                            _ => x == y,
                        })
            }
            _ => a == b,
        }
    }
    fn same_map(a: &Value, b: &Value, inner: fn(&str, &Value, &Value) -> bool) -> bool {
        match (a.as_object(), b.as_object()) {
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.get(k).is_some_and(|w| inner(k, v, w)))
            }
            _ => a == b,
        }
    }
    same_map(a, b, |k, v, w| {
        if k == "metadata" {
            same_map(v, w, |k, v, w| {
                if k == "managedFields" {
                    same_entries(v, w)
                } else {
                    v == w
                }
            })
        } else {
            v == w
        }
    })
}

/// What a write may not change, refused as the real server does (a
/// changed `creationTimestamp` is ignored there too, and here).
fn check_immutable(
    def: &ResourceDef,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let text = |v: &Value, key: &str| v["metadata"][key].as_str().unwrap_or_default().to_owned();
    let namespace = text(new, "namespace");
    if def.namespaced && !namespace.is_empty() && namespace != text(old, "namespace") {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({namespace}) does not match the namespace sent on the request ({})",
            text(old, "namespace")
        )));
    }
    let uid = text(new, "uid");
    if !uid.is_empty() && uid != text(old, "uid") {
        return Err(ApiError::invalid_field(
            &def.kind,
            name,
            "metadata.uid",
            "FieldValueInvalid",
            format!("Invalid value: {uid:?}: field is immutable"),
        ));
    }
    let deletion = text(new, "deletionTimestamp");
    if !deletion.is_empty() && text(old, "deletionTimestamp").is_empty() {
        return Err(ApiError::invalid_field(
            &def.kind,
            name,
            "metadata.deletionTimestamp",
            "FieldValueInvalid",
            format!("Invalid value: {deletion:?}: field is immutable; set by a delete only"),
        ));
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_body_type(def: &ResourceDef, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && api_version != def.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    Ok(())
}

fn encode_continue(rv: u64, key: &(String, String)) -> String {
    use base64::Engine as _;
    let token = json!({"rv": rv, "ns": key.0, "name": key.1});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request("the continue token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    Ok((
        rv,
        (
            v["ns"].as_str().unwrap_or_default().to_owned(),
            v["name"].as_str().unwrap_or_default().to_owned(),
        ),
    ))
}
