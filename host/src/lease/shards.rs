//! Sharding: the object space split into N shards, each a Lease; every
//! replica holds about N / replicas of them and reconciles only their
//! objects.
//!
//! - **Membership** is a Lease per replica (`<id>-member-<identity>`,
//!   labelled with the shard count), renewed every round; a member counts
//!   as alive while its lease has changed within its duration, as seen from
//!   here. A member lease not renewed for ten durations is deleted by
//!   whichever replica sees it first.
//! - **Fair share**: `N / members`, one more for the first `N % members`
//!   members in name order (6 shards over 4 replicas: 2, 2, 1, 1). A replica under it takes
//!   free or expired shards (in an order of its own, so that replicas do
//!   not all race for shard 0); one over it gives shards up: it stops
//!   starting reconciles in them, and releases each lease once the
//!   reconciles running in it have ended.
//! - **Hand-over** follows the leases: a shard is taken only once its lease
//!   was released or expired, and its holder stops at its renew deadline,
//!   before anyone may take it (see [`super::election`] for the timings).
//!   A held shard whose lease cannot be renewed in time, or that someone
//!   else took, is [`Lost`]: the host exits.
//! - **Another split**: member and shard leases carry the shard count. A
//!   replica that sees a live member with another count that was there
//!   before it, or a live shard lease of another count (a replica that
//!   lost its member lease but not its shards), takes no shard until they
//!   are gone: two splits at once would overlap. It is a standby
//!   meanwhile, and ready, so that a rollout that changes `--shards`
//!   proceeds: the old replicas share the shards among those left, and
//!   the new ones take over once the last old one has released its
//!   shards.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lock::{Attempt, LeaseApi, Lock, Record};
use super::ownership::Ownership;
use super::{Lost, Status, Timings, jittered};

/// The label naming the lease set (the `--leader-election-id`).
pub const SET_LABEL: &str = "reconcile-host.dev/lease-set";
/// The label saying what a lease is: `member` or `shard`.
pub const ROLE_LABEL: &str = "reconcile-host.dev/lease-role";
/// The label of a member or shard lease with its shard count.
pub const SHARDS_LABEL: &str = "reconcile-host.dev/shards";
/// The label of a member lease that says whether it waits for another
/// split to go (`true`: its peers leave it out of the fair share).
pub const WAITING_LABEL: &str = "reconcile-host.dev/waiting";

/// The sharding of one host deployment.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The lease set's name: leases are `<id>-shard-<i>` and `<id>-member-<identity>`.
    pub id: String,
    /// This replica's identity.
    pub identity: String,
    /// Number of shards.
    pub shards: u32,
    /// Lease timings.
    pub timings: Timings,
}

/// A Lease name made from an identity: lowercase alphanumerics and `-`,
/// at most 253 characters.
fn lease_name(prefix: &str, identity: &str) -> String {
    let cleaned: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{prefix}-member-{cleaned}");
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

/// Runs this replica's part until `stop` turns true (its reconciles have
/// stopped by then), then releases its shards and deletes its member lease.
pub async fn run(
    api: Arc<dyn LeaseApi>,
    ownership: Ownership,
    config: ShardConfig,
    status: tokio::sync::watch::Sender<Status>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Lost> {
    let n = config.shards.max(1);
    let duration = config.timings.lease_duration;
    // Member and shard leases carry the shard count: a replica of another
    // split sees from either that this one is live.
    let labels = |role: &str| {
        BTreeMap::from([
            (SET_LABEL.to_owned(), config.id.clone()),
            (ROLE_LABEL.to_owned(), role.to_owned()),
            (SHARDS_LABEL.to_owned(), n.to_string()),
        ])
    };
    let mut member = Lock::new(
        api.clone(),
        &lease_name(&config.id, &config.identity),
        &config.identity,
        duration,
        labels("member"),
    );
    // Waiting until a round has shown otherwise: peers count a member in
    // the fair share only once it says it takes shards.
    member.set_label(WAITING_LABEL, "true");
    let mut locks: Vec<Lock> = (0..n)
        .map(|i| {
            Lock::new(
                api.clone(),
                &format!("{}-shard-{i}", config.id),
                &config.identity,
                duration,
                labels("shard"),
            )
        })
        .collect();
    // This replica's order of preference: from a start of its own.
    let start = super::ownership::shard_of("", &config.identity, n);
    let order: Vec<u32> = (0..n).map(|i| (start + i) % n).collect();
    let mut valid: HashMap<u32, Instant> = HashMap::new();
    let mut members: HashMap<String, (Record, Instant)> = HashMap::new();
    let selector = format!("{SET_LABEL}={},{ROLE_LABEL}=member", config.id);
    let shard_selector = format!("{SET_LABEL}={},{ROLE_LABEL}=shard", config.id);
    let mut last_share = None;
    // Shard leases of another split as last seen, and when they changed.
    let mut others: HashMap<String, (Record, Instant)> = HashMap::new();
    let mut last_wait: Option<String> = None;
    // When this replica first saw its own member lease in a list: it takes
    // no shard before a retry period has passed since, so that a replica
    // that started at the same moment sees it too.
    let mut member_seen: Option<Instant> = None;
    let mut first_round = true;
    // The shard count of each live member's holder (for shard leases
    // written without the label).
    let mut member_splits: HashMap<String, Option<u32>> = HashMap::new();
    loop {
        let round = Instant::now();
        let mut problem: Option<String> = None;
        let mut wait: Option<String> = None;
        // 1. Held shards first: their deadlines matter most.
        for shard in ownership.held() {
            let Some(lock) = locks.get_mut(shard as usize) else {
                continue;
            };
            let until = valid.get(&shard).copied().unwrap_or(round);
            let attempt = tokio::time::timeout_at(until, lock.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(Attempt::Held { at, .. })) => {
                    let until = at + config.timings.renew_deadline;
                    valid.insert(shard, until);
                    ownership.renewed(shard, until);
                }
                Ok(Ok(Attempt::Other { holder })) => {
                    ownership.lapse(shard);
                    return Err(Lost(format!(
                        "the lease {} is held by {holder} now",
                        lock.name()
                    )));
                }
                Ok(Err(e)) if Instant::now() < until => problem = Some(e.to_string()),
                Ok(Err(e)) => {
                    ownership.lapse(shard);
                    return Err(Lost(format!(
                        "the lease {} was not renewed within the renew deadline: {e}",
                        lock.name()
                    )));
                }
                Err(_) => {
                    ownership.lapse(shard);
                    return Err(Lost(format!(
                        "the lease {} was not renewed within the renew deadline",
                        lock.name()
                    )));
                }
            }
        }
        // 2. Shards given up whose reconciles have ended.
        for shard in ownership.held() {
            if !ownership.holds_shard(shard) && ownership.idle(shard) {
                if let Some(lock) = locks.get_mut(shard as usize) {
                    match lock.release().await {
                        Ok(_) => tracing::info!(lease = %lock.name(), shard, "gave up the shard"),
                        Err(e) => {
                            tracing::warn!(lease = %lock.name(), "cannot release the shard (it expires instead): {e}")
                        }
                    }
                }
                ownership.released(shard);
                valid.remove(&shard);
            }
        }
        // 3. Membership.
        let waiting = first_round || last_wait.is_some();
        member.set_label(WAITING_LABEL, if waiting { "true" } else { "false" });
        if let Err(e) = member.try_acquire_or_renew().await {
            problem = Some(e.to_string());
        }
        let alive = match api.list(&selector).await {
            Ok(leases) => {
                let now = Instant::now();
                let mut seen = HashMap::new();
                for lease in &leases {
                    let name = lease.metadata.name.clone().unwrap_or_default();
                    let record = Record::of(lease);
                    let at = match members.get(&name) {
                        Some((old, at)) if *old == record => *at,
                        _ => now,
                    };
                    let label = |key: &str| lease.metadata.labels.as_ref().and_then(|l| l.get(key));
                    let shards = label(SHARDS_LABEL).and_then(|s| s.parse::<u32>().ok());
                    let waiting = label(WAITING_LABEL).is_some_and(|w| w == "true");
                    seen.insert(name, (record, at, shards, waiting));
                }
                members = seen
                    .iter()
                    .map(|(k, (r, at, _, _))| (k.clone(), (r.clone(), *at)))
                    .collect();
                if member_seen.is_none() && seen.contains_key(member.name()) {
                    member_seen = Some(now);
                }
                let live: Vec<(&String, &Record, Option<u32>, bool)> = seen
                    .iter()
                    .filter(|(k, (r, at, _, _))| {
                        **k == *member.name() || (r.holder.is_some() && now < *at + r.duration)
                    })
                    .map(|(k, (r, _, s, w))| (k, r, *s, *w))
                    .collect();
                member_splits = live
                    .iter()
                    .filter_map(|(_, r, s, _)| Some((r.holder.clone()?, *s)))
                    .collect();
                // Members gone for ten durations: delete their leases.
                for (name, (record, at, _, _)) in &seen {
                    if *name != *member.name() && now >= *at + duration * 10 {
                        // Only as last seen: one that renewed meanwhile stays.
                        if api
                            .delete(name, Some(record.resource_version.clone()))
                            .await
                            .is_ok()
                        {
                            tracing::info!(lease = %name, holder = ?record.holder, "deleted the lease of a member gone");
                        }
                    }
                }
                // Members of another split that were there first (waiting
                // or not; ties go by name) win: this replica waits for them
                // to go.
                let mine = live
                    .iter()
                    .find(|(k, _, _, _)| **k == *member.name())
                    .and_then(|(_, r, _, _)| r.acquire_time);
                let first: Vec<&str> = live
                    .iter()
                    .filter(|(k, r, s, _)| {
                        *s != Some(n)
                            && match (r.acquire_time, mine) {
                                (Some(theirs), Some(mine)) => {
                                    theirs < mine || (theirs == mine && k.as_str() < member.name())
                                }
                                _ => true,
                            }
                    })
                    .map(|(k, _, _, _)| k.as_str())
                    .collect();
                if !first.is_empty() {
                    wait = Some(format!(
                        "live members split the objects into another number of shards than {n} ({})",
                        first.join(", ")
                    ));
                    Some((0, 0))
                } else {
                    // Members in name order: the first N % members hold one
                    // more than the others (6 over 4: 2, 2, 1, 1). Members
                    // that wait take nothing, and count for nothing.
                    let mut same: Vec<&str> = live
                        .iter()
                        .filter(|(k, _, s, waiting)| {
                            *s == Some(n) && (!*waiting || **k == *member.name())
                        })
                        .map(|(k, _, _, _)| k.as_str())
                        .collect();
                    same.sort_unstable();
                    let index = same.iter().position(|k| *k == member.name()).unwrap_or(0);
                    Some((same.len().max(1), index))
                }
            }
            Err(e) => {
                problem = Some(e.to_string());
                None
            }
        };
        // 4. Balance towards the fair share.
        if let Some((alive, index)) = alive {
            let n = n as usize;
            let share = match (n.checked_div(alive), n.checked_rem(alive)) {
                (Some(each), Some(rest)) => each + usize::from(index < rest),
                _ => 0,
            };
            if last_share != Some(share) {
                tracing::info!(
                    shards = n,
                    members = alive,
                    share,
                    "this replica aims at {share} of {n} shards"
                );
                last_share = Some(share);
            }
            let mut kept: Vec<u32> = order
                .iter()
                .copied()
                .filter(|s| ownership.holds_shard(*s))
                .collect();
            while kept.len() > share {
                if let Some(extra) = kept.pop() {
                    tracing::info!(shard = extra, "giving up the shard for the fair share");
                    ownership.releasing(extra);
                }
            }
            let held = ownership.held();
            let mut count = kept.len();
            // Every shard lease in one list: expiry counts from a change
            // seen here, so the ones not held are observed every round.
            let shard_leases: Option<HashMap<String, _>> = match api.list(&shard_selector).await {
                Ok(leases) => Some(
                    leases
                        .into_iter()
                        .map(|l| (l.metadata.name.clone().unwrap_or_default(), l))
                        .collect(),
                ),
                Err(e) => {
                    // Nothing is taken on a round that could not see them.
                    problem = Some(e.to_string());
                    None
                }
            };
            // A shard lease of another split still held (its holder may
            // have lost its member lease but not its shards): taking any
            // shard could overlap with its objects.
            if let Some(shard_leases) = shard_leases {
                let now = Instant::now();
                others.retain(|name, _| shard_leases.contains_key(name));
                let mut held_elsewhere = Vec::new();
                for (name, lease) in &shard_leases {
                    let record = Record::of(lease);
                    // A lease written without the label (by an earlier
                    // version) has its holder's member lease's count.
                    let split = lease
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SHARDS_LABEL))
                        .and_then(|s| s.parse::<u32>().ok())
                        .or_else(|| {
                            record
                                .holder
                                .as_ref()
                                .and_then(|h| member_splits.get(h).copied().flatten())
                        });
                    if split == Some(config.shards.max(1)) {
                        others.remove(name);
                        continue;
                    }
                    let at = match others.get(name) {
                        Some((old, at)) if *old == record => *at,
                        _ => now,
                    };
                    if let Some(holder) = &record.holder
                        && now < at + record.duration
                    {
                        held_elsewhere.push(format!("{name} held by {holder}"));
                    }
                    // One of another count that no lease of this split
                    // replaces, unchanged for ten durations: deleted (only
                    // as last seen), as a member gone is.
                    if now >= at + duration * 10
                        && !locks.iter().any(|l| l.name() == name.as_str())
                        && api
                            .delete(name, Some(record.resource_version.clone()))
                            .await
                            .is_ok()
                    {
                        tracing::info!(lease = %name, holder = ?record.holder, "deleted a shard lease of another shard count");
                        continue;
                    }
                    others.insert(name.clone(), (record, at));
                }
                if member_seen.is_none_or(|t| now < t + config.timings.retry_period) {
                    count = share;
                }
                if !held_elsewhere.is_empty() {
                    held_elsewhere.sort_unstable();
                    wait.get_or_insert_with(|| {
                        format!(
                            "shard leases of another number of shards than {n} are held ({})",
                            held_elsewhere.join(", ")
                        )
                    });
                    count = share;
                }
                // Renewals come first: taking more stops short of the
                // earliest renew deadline.
                let earliest = valid.values().copied().min();
                for shard in order.iter().copied().filter(|s| !held.contains(s)) {
                    let Some(lock) = locks.get_mut(shard as usize) else {
                        continue;
                    };
                    let (_, free) = lock.observe_lease(shard_leases.get(lock.name()));
                    let in_time =
                        earliest.is_none_or(|e| Instant::now() + config.timings.retry_period < e);
                    if count >= share || !free || !in_time {
                        continue;
                    }
                    match lock.try_acquire_or_renew().await {
                        Ok(Attempt::Held { at, .. }) => {
                            let until = at + config.timings.renew_deadline;
                            valid.insert(shard, until);
                            ownership.renewed(shard, until);
                            tracing::info!(lease = %lock.name(), shard, "took the shard");
                            count += 1;
                        }
                        Ok(Attempt::Other { .. }) | Err(super::lock::LeaseError::Conflict(_)) => {}
                        Err(e) => problem = Some(e.to_string()),
                    }
                }
            }
        }
        if wait != last_wait {
            match &wait {
                Some(why) => tracing::warn!(
                    "{why}: this replica takes no shard until they are gone (a standby meanwhile)"
                ),
                None if last_wait.is_some() => {
                    tracing::info!("no replica of another split is left: taking shards")
                }
                None => {}
            }
            last_wait = wait;
        }
        first_round = false;
        let holding = ownership.held();
        status.send_modify(|s| {
            s.shards = holding.clone();
            match &problem {
                Some(p) => s.failed(p),
                None => s.ok(!holding.is_empty(), None),
            }
        });
        let next = valid
            .values()
            .copied()
            .fold(round + jittered(config.timings.retry_period), Instant::min);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep_until(next.max(round + Duration::from_millis(50))) => {}
        }
    }
    for shard in ownership.held() {
        // Nothing starts in it while the release is on its way.
        ownership.releasing(shard);
        if let Some(lock) = locks.get_mut(shard as usize)
            && let Err(e) = lock.release().await
        {
            tracing::warn!(lease = %lock.name(), "cannot release the shard (it expires instead): {e}");
        }
        ownership.released(shard);
    }
    if let Err(e) = member.delete().await {
        tracing::warn!(lease = %member.name(), "cannot delete the member lease: {e}");
    }
    tracing::info!("released every shard");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeSet;

    use super::super::lock::MemoryLeases;
    use super::super::tests::run_for;
    use super::*;

    struct Replica {
        ownership: Ownership,
        status: tokio::sync::watch::Receiver<Status>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), Lost>>,
    }

    impl Replica {
        fn healthy(&self) -> bool {
            self.status
                .borrow()
                .healthy(Timings::default().lease_duration)
        }
    }

    fn replica(api: &Arc<MemoryLeases>, identity: &str, shards: u32) -> Replica {
        let ownership = Ownership::coordinated(shards);
        let (status, status_rx) = tokio::sync::watch::channel(Status::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            api.clone(),
            ownership.clone(),
            ShardConfig {
                id: "host".into(),
                identity: identity.into(),
                shards,
                timings: Timings::default(),
            },
            status,
            stopped,
        ));
        Replica {
            ownership,
            status: status_rx,
            stop,
            task,
        }
    }

    /// Held shards of each replica: never two holders of one shard.
    fn split(replicas: &[&Replica]) -> Vec<BTreeSet<u32>> {
        let sets: Vec<BTreeSet<u32>> = replicas.iter().map(|r| r.ownership.held()).collect();
        for (i, a) in sets.iter().enumerate() {
            for b in sets.iter().skip(i + 1) {
                assert!(a.is_disjoint(b), "{sets:?}");
            }
        }
        sets
    }

    #[tokio::test(start_paused = true)]
    async fn three_replicas_split_six_shards_and_a_killed_ones_move() {
        let api = Arc::new(MemoryLeases::default());
        let a = replica(&api, "a", 6);
        let b = replica(&api, "b", 6);
        let c = replica(&api, "c", 6);
        // Checked every 100 ms while they settle: no overlap at any step.
        for _ in 0..300 {
            run_for(Duration::from_millis(100)).await;
            split(&[&a, &b, &c]);
        }
        let sets = split(&[&a, &b, &c]);
        assert!(sets.iter().all(|s| s.len() == 2), "{sets:?}");
        c.task.abort();
        let mut moved = false;
        for _ in 0..400 {
            run_for(Duration::from_millis(100)).await;
            let sets = split(&[&a, &b]);
            if sets.iter().map(BTreeSet::len).sum::<usize>() == 6 {
                moved = true;
                break;
            }
        }
        assert!(moved, "{:?}", split(&[&a, &b]));
        let sets = split(&[&a, &b]);
        assert!(sets.iter().all(|s| s.len() == 3), "{sets:?}");
        // c's member lease, unchanged for ten durations, is deleted.
        let members = || api.list("reconcile-host.dev/lease-role=member");
        assert_eq!(members().await.unwrap().len(), 3);
        run_for(Duration::from_secs(160)).await;
        let names: Vec<String> = members()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|l| l.metadata.name)
            .collect();
        assert_eq!(names, ["host-member-a", "host-member-b"], "{names:?}");
        for r in [a, b] {
            r.stop.send_replace(true);
            r.task.await.unwrap().unwrap();
        }
        // Both released their shards and deleted their member leases.
        assert!(members().await.unwrap().is_empty());
        for i in 0..6 {
            let lease = api.lease(&format!("host-shard-{i}")).unwrap();
            assert!(lease.spec.unwrap().holder_identity.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shards_that_do_not_divide_evenly_are_spread_one_apart() {
        let api = Arc::new(MemoryLeases::default());
        let replicas: Vec<Replica> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| replica(&api, id, 6))
            .collect();
        for _ in 0..300 {
            run_for(Duration::from_millis(100)).await;
            split(&replicas.iter().collect::<Vec<_>>());
        }
        let mut counts: Vec<usize> = replicas.iter().map(|r| r.ownership.held().len()).collect();
        counts.sort_unstable();
        assert_eq!(counts, [1, 1, 2, 2]);
        for r in replicas {
            r.stop.send_replace(true);
            r.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_with_another_shard_count_takes_nothing_and_is_a_ready_standby() {
        let api = Arc::new(MemoryLeases::default());
        let a = replica(&api, "a", 6);
        run_for(Duration::from_secs(5)).await;
        let b = replica(&api, "b", 4);
        run_for(Duration::from_secs(10)).await;
        assert!(b.ownership.held().is_empty());
        assert!(b.healthy(), "{:?}", *b.status.borrow());
        a.stop.send_replace(true);
        a.task.await.unwrap().unwrap();
        run_for(Duration::from_secs(5)).await;
        assert_eq!(b.ownership.held().len(), 4);
        // The shard leases carry b's count now.
        let lease = api.lease("host-shard-0").unwrap();
        assert_eq!(lease.metadata.labels.unwrap()[SHARDS_LABEL], "4");
        b.stop.send_replace(true);
        b.task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_shard_lease_of_another_count_holds_a_replica_back_without_a_member() {
        let api = Arc::new(MemoryLeases::default());
        // A replica of six shards that lost its member lease but renews
        // its shard 5 (and nothing else exists).
        let labels = BTreeMap::from([
            (SET_LABEL.to_owned(), "host".to_owned()),
            (ROLE_LABEL.to_owned(), "shard".to_owned()),
            (SHARDS_LABEL.to_owned(), "6".to_owned()),
        ]);
        let duration = Timings::default().lease_duration;
        let mut ghost = Lock::new(api.clone(), "host-shard-5", "old", duration, labels);
        ghost.try_acquire_or_renew().await.unwrap();
        let b = replica(&api, "b", 4);
        for _ in 0..15 {
            run_for(Duration::from_secs(2)).await;
            ghost.try_acquire_or_renew().await.unwrap();
            assert!(b.ownership.held().is_empty());
        }
        assert!(b.healthy());
        // The old replica stops renewing: b takes its four shards once the
        // lease has expired as b sees it, not before.
        run_for(duration - Duration::from_secs(3)).await;
        assert!(b.ownership.held().is_empty());
        run_for(Duration::from_secs(8)).await;
        assert_eq!(b.ownership.held().len(), 4);
        // The old count's shard 5, which no lease of b's replaces, is
        // deleted once it has not changed for ten durations.
        assert!(api.lease("host-shard-5").is_some());
        run_for(duration * 10).await;
        assert!(api.lease("host-shard-5").is_none());
        b.stop.send_replace(true);
        b.task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_mixed_rollout_every_shard_has_a_holder() {
        let api = Arc::new(MemoryLeases::default());
        let a1 = replica(&api, "a1", 6);
        let a2 = replica(&api, "a2", 6);
        run_for(Duration::from_secs(10)).await;
        // The new count joins, then an old-count pod comes back (a node
        // drain): both wait, and a1 and a2 still hold all six shards.
        let b = replica(&api, "b", 4);
        run_for(Duration::from_secs(5)).await;
        let a3 = replica(&api, "a3", 6);
        for _ in 0..300 {
            run_for(Duration::from_millis(100)).await;
            split(&[&a1, &a2, &a3, &b]);
        }
        assert!(b.ownership.held().is_empty() && a3.ownership.held().is_empty());
        assert_eq!(a1.ownership.held().len() + a2.ownership.held().len(), 6);
        let waiting =
            |name: &str| api.lease(name).unwrap().metadata.labels.unwrap()[WAITING_LABEL].clone();
        assert_eq!(waiting("host-member-b"), "true");
        assert_eq!(waiting("host-member-a3"), "true");
        assert_eq!(waiting("host-member-a1"), "false");
        assert!(a3.healthy() && b.healthy());
        for r in [a1, a2, a3, b] {
            r.stop.send_replace(true);
            r.task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shard_leases_without_the_count_have_their_holder_s_count() {
        // Leases written by an earlier version: the shard leases carry no
        // count, the member lease does.
        let api = Arc::new(MemoryLeases::default());
        let duration = Timings::default().lease_duration;
        let base = |role: &str| {
            BTreeMap::from([
                (SET_LABEL.to_owned(), "host".to_owned()),
                (ROLE_LABEL.to_owned(), role.to_owned()),
            ])
        };
        for (count, waits) in [("6", "false"), ("4", "true")] {
            let mut member_labels = base("member");
            member_labels.insert(SHARDS_LABEL.to_owned(), count.to_owned());
            let mut old = vec![Lock::new(
                api.clone(),
                "host-member-old",
                "old",
                duration,
                member_labels,
            )];
            old.push(Lock::new(
                api.clone(),
                "host-shard-0",
                "old",
                duration,
                base("shard"),
            ));
            let b = replica(&api, "b", 6);
            for _ in 0..10 {
                for lock in &mut old {
                    lock.try_acquire_or_renew().await.unwrap();
                }
                run_for(Duration::from_secs(2)).await;
            }
            let labels = api.lease("host-member-b").unwrap().metadata.labels.unwrap();
            assert_eq!(labels[WAITING_LABEL], waits, "old count {count}");
            b.stop.send_replace(true);
            b.task.await.unwrap().unwrap();
            for mut lock in old {
                lock.release().await.unwrap();
            }
            run_for(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_failed_round_keeps_a_replica_ready_and_a_lease_duration_of_them_does_not() {
        let api = Arc::new(MemoryLeases::default());
        let a = replica(&api, "a", 6);
        run_for(Duration::from_secs(10)).await;
        assert_eq!(a.ownership.held().len(), 6);
        assert!(a.healthy());
        // The API server is away for 3 s: within the renew deadline, a
        // holder keeps its shards and stays ready throughout.
        api.unreachable
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..30 {
            run_for(Duration::from_millis(100)).await;
            assert!(a.healthy(), "{:?}", *a.status.borrow());
        }
        api.unreachable
            .store(false, std::sync::atomic::Ordering::SeqCst);
        run_for(Duration::from_secs(3)).await;
        assert_eq!(a.ownership.held().len(), 6);
        assert!(a.status.borrow().problem.is_none());
        a.stop.send_replace(true);
        a.task.await.unwrap().unwrap();
        // A standby (of another count, so that it holds nothing to lose)
        // turns unready only when no round has gone through for a lease
        // duration.
        let duration = Timings::default().lease_duration;
        let x = replica(&api, "x", 6);
        run_for(Duration::from_secs(3)).await;
        let y = replica(&api, "y", 4);
        run_for(Duration::from_secs(5)).await;
        assert!(y.ownership.held().is_empty());
        assert!(y.healthy());
        api.unreachable
            .store(true, std::sync::atomic::Ordering::SeqCst);
        run_for(duration - Duration::from_secs(1)).await;
        assert!(y.healthy());
        run_for(Duration::from_secs(2)).await;
        assert!(!y.healthy());
        assert!(
            y.status
                .borrow()
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("unreachable")),
            "{:?}",
            *y.status.borrow()
        );
        drop(x);
    }
}
