//! What this process may reconcile now: every object (no coordination), or
//! the objects of the shards whose leases it holds (leader election is
//! one shard).
//!
//! A reconcile starts only through [`Ownership::begin`], which refuses once
//! a shard's renew deadline has passed, even if the task renewing it is
//! stuck; the k8s backend refuses writes once any held lease has lapsed
//! ([`Ownership::lapsed`]). A shard given up on purpose first stops
//! starting reconciles, and its lease is released only when the ones
//! running have ended ([`Ownership::idle`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// Shared by the controllers (which ask) and the lease loop (which grants).
#[derive(Clone)]
pub struct Ownership(Arc<Inner>);

struct Inner {
    /// `None`: no coordination, everything is ours.
    shards: Option<u32>,
    state: Mutex<State>,
    changes: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Held shards and until when a reconcile may start in them.
    held: BTreeMap<u32, Instant>,
    /// Held shards being given up: no new reconciles.
    releasing: BTreeSet<u32>,
    /// Reconciles running per shard.
    running: HashMap<u32, usize>,
    /// How many times each shard was taken.
    gains: BTreeMap<u32, u64>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("shards", &self.0.shards)
            .field("held", &self.held())
            .finish()
    }
}

impl Default for Ownership {
    fn default() -> Self {
        Self::everything()
    }
}

/// A reconcile running in a shard; dropping it ends it.
pub struct Held {
    owner: Option<Ownership>,
    shard: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            let mut state = owner.lock();
            if let Some(n) = state.running.get_mut(&self.shard) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The shard of `namespace/name` among `shards`: FNV-1a (64-bit) of
/// `namespace/name` (`/name` for a cluster-scoped object) modulo `shards`.
/// Stable across processes, builds and versions, as a split shared by
/// replicas must be.
pub fn shard_of(namespace: &str, name: &str, shards: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

impl Ownership {
    /// No coordination: every object is this process's.
    pub fn everything() -> Self {
        Ownership(Arc::new(Inner {
            shards: None,
            state: Mutex::default(),
            changes: tokio::sync::watch::channel(0).0,
        }))
    }

    /// Objects split into `shards` (1 for leader election), none held yet.
    pub fn coordinated(shards: u32) -> Self {
        Ownership(Arc::new(Inner {
            shards: Some(shards.max(1)),
            state: Mutex::default(),
            changes: tokio::sync::watch::channel(0).0,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether objects are split between processes at all.
    pub fn is_coordinated(&self) -> bool {
        self.0.shards.is_some()
    }

    /// The number of shards (1 without sharding).
    pub fn shards(&self) -> u32 {
        self.0.shards.unwrap_or(1)
    }

    /// The shard of an object.
    pub fn shard(&self, namespace: &str, name: &str) -> u32 {
        shard_of(namespace, name, self.shards())
    }

    /// Starts a reconcile of `namespace/name` if its shard is held and its
    /// renew deadline has not passed; `None`: not this process's now.
    pub fn begin(&self, namespace: &str, name: &str) -> Option<Held> {
        if !self.is_coordinated() {
            return Some(Held {
                owner: None,
                shard: 0,
            });
        }
        let shard = self.shard(namespace, name);
        let mut state = self.lock();
        let valid = state
            .held
            .get(&shard)
            .is_some_and(|until| Instant::now() < *until);
        if !valid || state.releasing.contains(&shard) {
            return None;
        }
        *state.running.entry(shard).or_default() += 1;
        Some(Held {
            owner: Some(self.clone()),
            shard,
        })
    }

    /// Whether an object's shard is held (for requeues after a gain).
    pub fn holds(&self, namespace: &str, name: &str) -> bool {
        if !self.is_coordinated() {
            return true;
        }
        let shard = self.shard(namespace, name);
        let state = self.lock();
        state.held.contains_key(&shard) && !state.releasing.contains(&shard)
    }

    /// Whether `shard` is held and not being given up.
    pub fn holds_shard(&self, shard: u32) -> bool {
        let state = self.lock();
        state.held.contains_key(&shard) && !state.releasing.contains(&shard)
    }

    /// How many times each shard has been taken so far.
    pub fn gains(&self) -> BTreeMap<u32, u64> {
        self.lock().gains.clone()
    }

    /// The shards held now (releasing ones included).
    pub fn held(&self) -> BTreeSet<u32> {
        self.lock().held.keys().copied().collect()
    }

    /// True once a held lease's renew deadline has passed without a
    /// renewal: the backend refuses writes from then on.
    pub fn lapsed(&self) -> bool {
        let now = Instant::now();
        self.lock().held.values().any(|until| *until <= now)
    }

    /// Changes whenever a shard is gained or released.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changes.subscribe()
    }

    /// The lease of `shard` was taken or renewed: reconciles may start in
    /// it until `until` (the attempt's start plus the renew deadline).
    pub fn renewed(&self, shard: u32, until: Instant) {
        let gained = {
            let mut state = self.lock();
            let gained = state.held.insert(shard, until).is_none();
            if gained {
                *state.gains.entry(shard).or_default() += 1;
            }
            gained
        };
        if gained {
            self.0.changes.send_modify(|n| *n += 1);
        }
    }

    /// `shard`'s lease was lost: nothing starts in it, and writes are
    /// refused until the process stops.
    pub fn lapse(&self, shard: u32) {
        let now = Instant::now();
        if let Some(until) = self.lock().held.get_mut(&shard) {
            *until = now;
        }
    }

    /// `shard` is being given up: no reconcile starts in it any more.
    pub fn releasing(&self, shard: u32) {
        self.lock().releasing.insert(shard);
    }

    /// Whether no reconcile runs in `shard`.
    pub fn idle(&self, shard: u32) -> bool {
        self.lock().running.get(&shard).copied().unwrap_or(0) == 0
    }

    /// `shard`'s lease is released or lost: it is not held any more.
    pub fn released(&self, shard: u32) {
        {
            let mut state = self.lock();
            state.held.remove(&shard);
            state.releasing.remove(&shard);
        }
        self.0.changes.send_modify(|n| *n += 1);
    }

    /// Reconciles running, in all shards.
    pub fn running(&self) -> usize {
        self.lock().running.values().sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_shard_of_an_object_is_stable_and_spread() {
        // Fixed values: a change here would split replicas of two builds.
        assert_eq!(shard_of("default", "a", 6), 4);
        assert_eq!(shard_of("kube-system", "coredns", 16), 7);
        assert_eq!(shard_of("", "", 1), 0);
        let mut counts = [0usize; 6];
        for i in 0..6000 {
            counts[shard_of("ns", &format!("obj-{i}"), 6) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_reconcile_starts_after_the_renew_deadline() {
        let owner = Ownership::coordinated(1);
        assert!(owner.begin("ns", "a").is_none(), "nothing held yet");
        let gains = owner.subscribe();
        owner.renewed(0, Instant::now() + Duration::from_secs(10));
        assert!(gains.has_changed().unwrap());
        let held = owner.begin("ns", "a").expect("held");
        assert_eq!(owner.running(), 1);
        assert!(!owner.lapsed());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(owner.begin("ns", "a").is_none(), "past the deadline");
        assert!(owner.lapsed(), "writes are fenced");
        drop(held);
        assert!(owner.idle(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_being_released_starts_nothing_and_waits_for_its_reconciles() {
        let owner = Ownership::coordinated(2);
        let until = Instant::now() + Duration::from_secs(10);
        owner.renewed(0, until);
        owner.renewed(1, until);
        let (ns, name) = (0..)
            .map(|i| ("ns".to_owned(), format!("o{i}")))
            .find(|(ns, n)| owner.shard(ns, n) == 1)
            .unwrap();
        let running = owner.begin(&ns, &name).unwrap();
        owner.releasing(1);
        assert!(owner.begin(&ns, &name).is_none());
        assert!(!owner.holds(&ns, &name));
        assert!(!owner.idle(1));
        drop(running);
        assert!(owner.idle(1));
        owner.released(1);
        assert_eq!(owner.held(), BTreeSet::from([0]));
    }

    #[test]
    fn without_coordination_everything_is_ours() {
        let owner = Ownership::everything();
        assert!(owner.begin("x", "y").is_some());
        assert!(!owner.lapsed());
        assert!(owner.holds("x", "y"));
    }
}
