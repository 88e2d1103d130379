//! Replicas of `run` against the embedded API server, coordinated through
//! Leases: leader election (one reconciles; SIGKILL and SIGTERM hand the
//! lease over; a leader cut off from its Lease stops before the next
//! starts) and sharding (six shards split between three processes; a
//! killed one's shards move; a rollout changes the shard count). Who
//! wrote what is read from the API server's request log (each replica's
//! User-Agent names it) and checked against the Lease history, so that no
//! two processes ever wrote for the same objects at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::watcher;
use reconcile_apiserver::RequestRecord;
use reconcile_host::lease::ownership::shard_of;
use support::host::{HostProcess, get};
use support::replicas::{LEASE, holder, setup};

/// Every holder of the leases the watch saw: lease name -> (holder,
/// acquireTime) in order.
type History = Arc<Mutex<BTreeMap<String, Vec<(String, SystemTime)>>>>;

fn watch_leases(client: &kube::Client) -> (History, tokio::task::JoinHandle<()>) {
    let history: History = Arc::default();
    let sink = history.clone();
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let leases = match event {
                Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => vec![l],
                _ => continue,
            };
            for lease in leases {
                let spec = lease.spec.unwrap_or_default();
                let (Some(holder), Some(acquired)) = (spec.holder_identity, spec.acquire_time)
                else {
                    continue;
                };
                let name = lease.metadata.name.unwrap_or_default();
                let mut h = sink.lock().unwrap();
                let list = h.entry(name).or_default();
                let acquired = SystemTime::from(acquired.0);
                if list
                    .last()
                    .is_none_or(|(last, at)| *last != holder || *at != acquired)
                {
                    list.push((holder, acquired));
                }
            }
        }
    });
    (history, task)
}

/// The holder of `lease` at `t`, by the history (acquire times are written
/// by the holders, on this machine's clock, before their first write).
fn holder_at(history: &[(String, SystemTime)], t: SystemTime) -> Option<&str> {
    history
        .iter()
        .rev()
        .find(|(_, at)| *at <= t)
        .map(|(h, _)| h.as_str())
}

/// When the first and the last of the writes by the identities `who`
/// picks arrived.
fn writes_between(
    writes: &[(String, RequestRecord)],
    who: impl Fn(&str) -> bool,
) -> (SystemTime, SystemTime) {
    let times: Vec<SystemTime> = writes
        .iter()
        .filter(|(id, _)| who(id))
        .map(|(_, w)| w.received)
        .collect();
    (
        *times.iter().min().expect("no write"),
        *times.iter().max().expect("no write"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_reconciles_and_the_lease_moves_on_kill_and_on_sigterm() {
    let s = setup().await;
    let (history, watching) = watch_leases(&s.client);
    let mut hosts = s.hosts(&["host-a", "host-b", "host-c"], &["--leader-elect"]);
    const N: usize = 12;
    s.create(N).await;
    s.mirrored(N, "1", Duration::from_secs(60)).await;
    let first = holder(&s.client, "reconcile-host").await.expect("a leader");
    let writers: BTreeSet<String> = s.writes().into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        writers,
        BTreeSet::from([first.clone()]),
        "only the leader writes"
    );
    // Every replica is ready: the leader, and standbys with synced caches.
    for host in hosts.values() {
        let url = host.probes().await;
        let mut ready = (0, String::new());
        for _ in 0..100 {
            ready = get(&format!("{url}/readyz")).await;
            if ready.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ready.0, 200, "{}", ready.1);
        assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    }

    // SIGKILL the leader; change every object meanwhile.
    let mut killed = hosts.remove(&first).unwrap();
    killed.child.start_kill().unwrap();
    killed.child.wait().await.unwrap();
    let at_kill = Instant::now();
    s.set(N, "2").await;
    let second = loop {
        if let Some(h) = holder(&s.client, "reconcile-host").await
            && h != first
        {
            break h;
        }
        assert!(at_kill.elapsed() < Duration::from_secs(30), "no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took_over = at_kill.elapsed();
    eprintln!("SIGKILL: {second} took over after {took_over:?}");
    // Within the lease duration (counted from the last renewal the standby
    // saw, at most a retry period before the kill) and a retry period.
    assert!(
        took_over <= Duration::from_secs_f64(LEASE + 1.5),
        "took {took_over:?}"
    );
    s.mirrored(N, "2", Duration::from_secs(30)).await;

    // SIGTERM the new leader: it releases the lease, the last one takes
    // over well within the lease duration, and it exits 0.
    let mut stopped = hosts.remove(&second).unwrap();
    let at_term = Instant::now();
    stopped.terminate();
    let third = loop {
        if let Some(h) = holder(&s.client, "reconcile-host").await
            && h != first
            && h != second
        {
            break h;
        }
        assert!(
            at_term.elapsed() < Duration::from_secs(30),
            "no third leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let handed_over = at_term.elapsed();
    eprintln!("SIGTERM: {third} took over after {handed_over:?}");
    assert!(
        handed_over < Duration::from_secs(3),
        "a released lease moves in about a retry period, took {handed_over:?}"
    );
    let status = stopped.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}: {}", stopped.log());
    assert!(
        stopped.find("released the lease").is_some(),
        "{}",
        stopped.log()
    );
    s.set(N, "3").await;
    s.mirrored(N, "3", Duration::from_secs(30)).await;
    assert!(hosts.contains_key(&third));

    // No two writers at once: every write was made by the holder of the
    // lease at that moment, and the writers came one after the other.
    let history = history
        .lock()
        .unwrap()
        .get("reconcile-host")
        .cloned()
        .unwrap();
    let holders: Vec<&str> = history.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        holders,
        vec![first.as_str(), second.as_str(), third.as_str()]
    );
    let writes = s.writes();
    for (identity, write) in &writes {
        assert_eq!(
            holder_at(&history, write.received),
            Some(identity.as_str()),
            "{identity} wrote {} {} at {:?} without the lease: {history:?}",
            write.verb,
            write.path,
            write.received
        );
    }
    let mut sequence: Vec<&str> = writes.iter().map(|(id, _)| id.as_str()).collect();
    sequence.dedup();
    assert_eq!(sequence, holders, "writers one after the other");
    let lease: Api<Lease> = Api::namespaced(s.client.clone(), "default");
    let spec = lease.get("reconcile-host").await.unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(2));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE as i32));
    watching.abort();
    drop(s.dir);
}

/// A leader cut off from its Lease while it can still write: it keeps
/// reconciling only until its renew deadline, then stops and exits 1; the
/// standby takes over only after the lease has expired, so the old
/// leader's last write comes before the new leader's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_partitioned_from_its_lease_stops_writing_before_the_next_starts() {
    let s = setup().await;
    let (history, watching) = watch_leases(&s.client);
    let mut hosts = s.hosts(&["part-a", "part-b"], &["--leader-elect"]);
    const N: usize = 4;
    s.create(N).await;
    s.mirrored(N, "1", Duration::from_secs(60)).await;
    let old = holder(&s.client, "reconcile-host").await.expect("a leader");
    let next = hosts.keys().find(|id| **id != old).unwrap().clone();

    // Every Lease request of the leader fails from now on; its other
    // requests still go through. The objects keep changing throughout.
    let cut = SystemTime::now();
    s.server.faults().fail(
        reconcile_apiserver::Match::any()
            .resource("leases")
            .user_agent_contains(&format!("({old})")),
        u32::MAX,
        503,
    );
    let changing = Instant::now();
    let mut round = 1;
    let mut new_leader_since = None;
    while new_leader_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2)) {
        round += 1;
        s.set(N, &round.to_string()).await;
        if new_leader_since.is_none()
            && holder(&s.client, "reconcile-host").await.as_ref() == Some(&next)
        {
            new_leader_since = Some(Instant::now());
        }
        assert!(changing.elapsed() < Duration::from_secs(30), "no take-over");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    s.mirrored(N, &round.to_string(), Duration::from_secs(30))
        .await;

    // The old leader stopped at its renew deadline and exited 1.
    let mut stopped = hosts.remove(&old).unwrap();
    let status = stopped.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "{}", stopped.log());
    assert!(
        stopped.find("cannot renew the lease").is_some(),
        "{}",
        stopped.log()
    );

    let writes = s.writes();
    let (_, last_old) = writes_between(&writes, |id| id == old);
    let (first_next, _) = writes_between(&writes, |id| id == next);
    let wrote_cut_off = writes
        .iter()
        .filter(|(id, w)| *id == old && w.received > cut)
        .count();
    let gap = first_next.duration_since(last_old).unwrap_or_default();
    eprintln!(
        "partition: the old leader wrote {wrote_cut_off} times while cut off, for {:?}; the next wrote {gap:?} after its last",
        last_old.duration_since(cut).unwrap_or_default()
    );
    // It was still reconciling while cut off (so the ordering below is
    // not that of a dead process), and it stopped before the next began.
    assert!(
        wrote_cut_off > 0,
        "the old leader wrote nothing once cut off"
    );
    assert!(
        last_old < first_next,
        "{old} wrote at {last_old:?}, after {next} began at {first_next:?}"
    );
    // And within its renew deadline of the cut (4 s, and a retry period).
    assert!(
        last_old.duration_since(cut).unwrap_or_default() < Duration::from_secs_f64(4.5),
        "{:?}",
        last_old.duration_since(cut)
    );
    let history = history
        .lock()
        .unwrap()
        .get("reconcile-host")
        .cloned()
        .unwrap();
    for (identity, write) in &writes {
        assert_eq!(
            holder_at(&history, write.received),
            Some(identity.as_str()),
            "{identity} wrote {} without the lease: {history:?}",
            write.path
        );
    }
    watching.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_split_six_shards_and_a_killed_ones_objects_move() {
    let s = setup().await;
    let (history, watching) = watch_leases(&s.client);
    let mut hosts = s.hosts(&["shard-a", "shard-b", "shard-c"], &["--shards", "6"]);
    const N: usize = 30;
    s.create(N).await;
    // All three settle at two shards each (membership takes a few rounds).
    let settled = Instant::now();
    loop {
        let mut counts = BTreeMap::new();
        for i in 0..6 {
            if let Some(h) = holder(&s.client, &format!("reconcile-host-shard-{i}")).await {
                *counts.entry(h).or_insert(0) += 1;
            }
        }
        if counts.len() == 3 && counts.values().all(|c| *c == 2) {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(40),
            "not split two each: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.set(N, "2").await;
    s.mirrored(N, "2", Duration::from_secs(30)).await;
    let writers: BTreeSet<String> = s.writes().into_iter().map(|(id, _)| id).collect();
    assert_eq!(writers.len(), 3, "every replica reconciles: {writers:?}");

    // Kill one; its shards move to the other two, and its objects are
    // reconciled.
    let victim = "shard-b".to_owned();
    let mut killed = hosts.remove(&victim).unwrap();
    killed.child.start_kill().unwrap();
    killed.child.wait().await.unwrap();
    s.set(N, "3").await;
    s.mirrored(N, "3", Duration::from_secs(40)).await;
    let mut counts = BTreeMap::new();
    for i in 0..6 {
        let h = holder(&s.client, &format!("reconcile-host-shard-{i}")).await;
        *counts.entry(h.unwrap()).or_insert(0) += 1;
    }
    assert!(!counts.contains_key(&victim), "{counts:?}");

    // Every mirror write (one per object and reconcile) was made by the
    // holder of its object's shard at that moment.
    let history = history.lock().unwrap().clone();
    let mut by_object: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (identity, write) in s.writes() {
        if write.resource.as_deref() != Some("configmaps") {
            continue;
        }
        let name = write.name.clone().unwrap();
        let source = name.strip_suffix("-mirror").unwrap().to_owned();
        let shard = shard_of("default", &source, 6);
        let lease = format!("reconcile-host-shard-{shard}");
        let holders = history.get(&lease).unwrap();
        assert_eq!(
            holder_at(holders, write.received),
            Some(identity.as_str()),
            "{identity} wrote {name} (shard {shard}) without its lease: {holders:?}"
        );
        by_object.entry(source).or_default().insert(identity);
    }
    assert_eq!(by_object.len(), N);
    // Objects of shards that never moved had one writer.
    for (source, writers) in &by_object {
        let shard = shard_of("default", source, 6);
        let holders = &history[&format!("reconcile-host-shard-{shard}")];
        let distinct: BTreeSet<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
        if distinct.len() == 1 {
            assert_eq!(writers.len(), 1, "{source}: {writers:?}");
        }
    }
    for (_, mut host) in hosts {
        host.terminate();
        let status = host.exit_within(Duration::from_secs(15)).await;
        assert!(status.success(), "{status:?}: {}", host.log());
    }
    // Every shard released, every member lease of a stopped host deleted.
    for i in 0..6 {
        assert_eq!(
            holder(&s.client, &format!("reconcile-host-shard-{i}")).await,
            None
        );
    }
    watching.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_changes_the_shard_count_hands_over_without_overlap() {
    let s = setup().await;
    let (history, watching) = watch_leases(&s.client);
    let mut old: Vec<HostProcess> = ["old-a", "old-b"]
        .into_iter()
        .map(|id| s.host(id, &["--shards", "4"]))
        .collect();
    const N: usize = 20;
    s.create(N).await;
    s.mirrored(N, "1", Duration::from_secs(30)).await;
    // A replica of the new split joins as a rollout's surge pod does: it
    // is ready (a standby) and takes nothing while the old ones live.
    let mut new = s.host("new-c", &["--shards", "6"]);
    let url = new.probes().await;
    let joined = Instant::now();
    while get(&format!("{url}/readyz")).await.0 != 200 {
        assert!(
            joined.elapsed() < Duration::from_secs(20),
            "the new replica is not ready: {}",
            get(&format!("{url}/readyz?verbose")).await.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    new.line("live members split the objects into another number of shards than 6")
        .await;
    // The old replicas go one by one; the one left takes all four shards.
    let mut first = old.remove(0);
    first.terminate();
    assert!(first.exit_within(Duration::from_secs(15)).await.success());
    s.set(N, "2").await;
    s.mirrored(N, "2", Duration::from_secs(30)).await;
    assert!(
        s.writes().iter().all(|(id, _)| id != "new-c"),
        "the new replica wrote while old ones lived"
    );
    let mut last = old.remove(0);
    last.terminate();
    assert!(last.exit_within(Duration::from_secs(15)).await.success());
    // The new replica takes the six shards and reconciles everything.
    s.set(N, "3").await;
    s.mirrored(N, "3", Duration::from_secs(30)).await;
    for i in 0..6 {
        assert_eq!(
            holder(&s.client, &format!("reconcile-host-shard-{i}"))
                .await
                .as_deref(),
            Some("new-c")
        );
    }
    // Every write came from the holder of the object's shard in the
    // writer's own split, and the new split wrote only after the old one
    // had stopped writing.
    let history = history.lock().unwrap().clone();
    let writes: Vec<_> = s
        .writes()
        .into_iter()
        .filter(|(_, w)| w.resource.as_deref() == Some("configmaps"))
        .collect();
    for (identity, write) in &writes {
        let split = if identity == "new-c" { 6 } else { 4 };
        let name = write.name.clone().unwrap();
        let source = name.strip_suffix("-mirror").unwrap();
        let lease = format!(
            "reconcile-host-shard-{}",
            shard_of("default", source, split)
        );
        assert_eq!(
            holder_at(&history[&lease], write.received),
            Some(identity.as_str()),
            "{identity} wrote {name} without its lease: {:?}",
            history[&lease]
        );
    }
    let (_, last_old) = writes_between(&writes, |id| id != "new-c");
    let (first_new, _) = writes_between(&writes, |id| id == "new-c");
    assert!(first_new > last_old, "the splits overlapped in time");
    new.terminate();
    assert!(new.exit_within(Duration::from_secs(15)).await.success());
    watching.abort();
}
