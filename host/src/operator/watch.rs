//! Watching a type in the namespaces a grant names, and only those.
//!
//! kube-runtime watches one namespace or all of them. A grant may name
//! several: the host then runs one watcher per namespace and merges their
//! events into one stream that a single reflector store can follow. The
//! store must see one initial list, so the merged stream holds the first
//! lists back until every namespace has listed once; a later re-list of one
//! namespace (after its watch expired) becomes the `Apply` and `Delete`
//! events that turn the store's view of that namespace into the new list,
//! without touching the others.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::stream::{BoxStream, StreamExt as _};
use kube::ResourceExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher as watch};

/// Where a type is watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace (and cluster-scoped types).
    All,
    /// These namespaces; never empty.
    Only(BTreeSet<String>),
}

impl Namespaces {
    /// Whether objects of `namespace` are watched.
    pub fn covers(&self, namespace: Option<&str>) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(set) => namespace.is_some_and(|ns| set.contains(ns)),
        }
    }

    /// The namespaces both watch (`None`: none in common).
    pub fn intersect(&self, other: &Namespaces) -> Option<Namespaces> {
        match (self, other) {
            (Namespaces::All, n) | (n, Namespaces::All) => Some(n.clone()),
            (Namespaces::Only(a), Namespaces::Only(b)) => {
                let both: BTreeSet<String> = a.intersection(b).cloned().collect();
                (!both.is_empty()).then_some(Namespaces::Only(both))
            }
        }
    }
}

impl std::fmt::Display for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespaces::All => f.write_str("all namespaces"),
            Namespaces::Only(set) => {
                let names: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, "namespaces {}", names.join(", "))
            }
        }
    }
}

/// The watch events of `resource` in `namespaces`, as one stream; each
/// namespace's watcher backs off on its own errors.
pub fn watch_in(
    client: &kube::Client,
    resource: &ApiResource,
    namespaces: &Namespaces,
    selector: Option<&str>,
) -> BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>> {
    let config = match selector {
        Some(labels) => watcher::Config::default().labels(labels),
        None => watcher::Config::default(),
    };
    let one = |api: Api<DynamicObject>| watch(api, config.clone()).default_backoff().boxed();
    match namespaces {
        Namespaces::All => one(Api::all_with(client.clone(), resource)),
        Namespaces::Only(set) if set.len() == 1 => {
            let ns = set.iter().next().map(String::as_str).unwrap_or("default");
            one(Api::namespaced_with(client.clone(), ns, resource))
        }
        Namespaces::Only(set) => {
            let streams = set.iter().map(|ns| {
                let ns_owned = ns.clone();
                one(Api::namespaced_with(client.clone(), ns, resource))
                    .map(move |event| (ns_owned.clone(), event))
                    .boxed()
            });
            let mut merge = Merge::new(resource.clone(), set.iter().cloned());
            futures::stream::select_all(streams)
                .flat_map(move |(ns, event)| {
                    let out: Vec<_> = match event {
                        Ok(event) => merge.handle(&ns, event).into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    };
                    futures::stream::iter(out)
                })
                .boxed()
        }
    }
}

/// Objects by name.
type Named = BTreeMap<String, DynamicObject>;

/// Turns the events of several namespaces' watchers into the events of one.
struct Merge {
    resource: ApiResource,
    /// Until every namespace has listed once: what each has listed so far,
    /// and whether its list is complete.
    first: Option<BTreeMap<String, (Named, bool)>>,
    /// Afterwards: the names the store holds per namespace.
    known: HashMap<String, HashSet<String>>,
    /// Re-lists in progress.
    relist: HashMap<String, Named>,
}

impl Merge {
    fn new(resource: ApiResource, namespaces: impl Iterator<Item = String>) -> Self {
        Merge {
            resource,
            first: Some(
                namespaces
                    .map(|ns| (ns, (BTreeMap::new(), false)))
                    .collect(),
            ),
            known: HashMap::new(),
            relist: HashMap::new(),
        }
    }

    fn handle(&mut self, ns: &str, event: Event<DynamicObject>) -> Vec<Event<DynamicObject>> {
        if let Some(first) = &mut self.first {
            let Some((objects, done)) = first.get_mut(ns) else {
                return Vec::new();
            };
            match event {
                Event::Init => {
                    objects.clear();
                    *done = false;
                }
                Event::InitApply(o) | Event::Apply(o) => {
                    objects.insert(o.name_any(), o);
                }
                Event::Delete(o) => {
                    objects.remove(&o.name_any());
                }
                Event::InitDone => *done = true,
            }
            if !first.values().all(|(_, done)| *done) {
                return Vec::new();
            }
            let mut out = vec![Event::Init];
            for (ns, (objects, _)) in std::mem::take(first) {
                self.known
                    .insert(ns, objects.keys().cloned().collect::<HashSet<_>>());
                out.extend(objects.into_values().map(Event::InitApply));
            }
            out.push(Event::InitDone);
            self.first = None;
            return out;
        }
        match event {
            Event::Init => {
                self.relist.insert(ns.to_owned(), BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                self.relist
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(o.name_any(), o);
                Vec::new()
            }
            Event::InitDone => {
                let listed = self.relist.remove(ns).unwrap_or_default();
                let known = self.known.entry(ns.to_owned()).or_default();
                let mut out: Vec<Event<DynamicObject>> = known
                    .iter()
                    .filter(|name| !listed.contains_key(*name))
                    .map(|name| Event::Delete(DynamicObject::new(name, &self.resource).within(ns)))
                    .collect();
                *known = listed.keys().cloned().collect();
                out.extend(listed.into_values().map(Event::Apply));
                out
            }
            Event::Apply(o) => {
                self.known
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(o.name_any());
                vec![Event::Apply(o)]
            }
            Event::Delete(o) => {
                if let Some(known) = self.known.get_mut(ns) {
                    known.remove(&o.name_any());
                }
                vec![Event::Delete(o)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::{self, ObjectRef};

    fn resource() -> ApiResource {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        }
    }

    fn cm(ns: &str, name: &str) -> DynamicObject {
        DynamicObject::new(name, &resource()).within(ns)
    }

    fn names(store: &reflector::Store<DynamicObject>) -> Vec<String> {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
        names.sort();
        names
    }

    fn feed(
        merge: &mut Merge,
        writer: &mut reflector::store::Writer<DynamicObject>,
        ns: &str,
        event: Event<DynamicObject>,
    ) -> usize {
        let out = merge.handle(ns, event);
        for e in &out {
            writer.apply_watcher_event(e);
        }
        out.len()
    }

    #[test]
    fn the_store_is_ready_once_every_namespace_has_listed_and_relists_stay_in_their_namespace() {
        let mut merge = Merge::new(resource(), ["a".to_owned(), "b".to_owned()].into_iter());
        let mut writer = reflector::store::Writer::new(resource());
        let store = writer.as_reader();
        assert_eq!(feed(&mut merge, &mut writer, "a", Event::Init), 0);
        feed(
            &mut merge,
            &mut writer,
            "a",
            Event::InitApply(cm("a", "one")),
        );
        feed(&mut merge, &mut writer, "a", Event::InitDone);
        // a's later change is held until b has listed too.
        feed(&mut merge, &mut writer, "a", Event::Apply(cm("a", "two")));
        assert!(futures::FutureExt::now_or_never(store.wait_until_ready()).is_none());
        assert!(store.is_empty());
        feed(&mut merge, &mut writer, "b", Event::Init);
        feed(&mut merge, &mut writer, "b", Event::InitApply(cm("b", "x")));
        feed(&mut merge, &mut writer, "b", Event::InitDone);
        assert!(futures::FutureExt::now_or_never(store.wait_until_ready()).is_some());
        assert_eq!(names(&store), ["a/one", "a/two", "b/x"]);

        // b's watch expires; while it was away b/x went and b/y came.
        feed(&mut merge, &mut writer, "b", Event::Init);
        feed(&mut merge, &mut writer, "b", Event::InitApply(cm("b", "y")));
        feed(&mut merge, &mut writer, "a", Event::Delete(cm("a", "one")));
        assert_eq!(names(&store), ["a/two", "b/x"]);
        feed(&mut merge, &mut writer, "b", Event::InitDone);
        assert_eq!(names(&store), ["a/two", "b/y"]);
        assert!(
            store
                .get(&ObjectRef::new_with("y", resource()).within("b"))
                .is_some()
        );
    }

    #[test]
    fn namespaces_intersect() {
        let only = |v: &[&str]| Namespaces::Only(v.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(Namespaces::All.intersect(&only(&["a"])), Some(only(&["a"])));
        assert_eq!(
            only(&["a", "b"]).intersect(&only(&["b", "c"])),
            Some(only(&["b"]))
        );
        assert_eq!(only(&["a"]).intersect(&only(&["c"])), None);
        assert!(only(&["a"]).covers(Some("a")));
        assert!(!only(&["a"]).covers(Some("b")));
        assert!(!only(&["a"]).covers(None));
        assert!(Namespaces::All.covers(None));
    }
}
