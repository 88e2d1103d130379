//! Leader election: one Lease, one holder; the holder reconciles every
//! object, the others are standbys with warm caches.
//!
//! The timings are client-go's: a standby tries every `retry_period` (plus
//! up to 20% jitter); the leader renews every `retry_period`, and if no
//! renewal has succeeded within `renew_deadline` of the last successful
//! attempt's start, it has lost: nothing starts after that instant
//! ([`Ownership::begin`]), writes are refused, and [`elect`] returns
//! [`Lost`] (the host then exits, as controller-runtime's managers do).
//! Others take the lease only `lease_duration` after they last saw it
//! change, so a leader always stops before a successor may start.

use tokio::time::Instant;

use super::lock::{Attempt, Lock};
use super::ownership::Ownership;
use super::{Lost, Status, Timings, jittered};

/// Runs the election until `stop` turns true (the caller has stopped its
/// reconciles by then), then releases the lease if it holds it.
pub async fn elect(
    mut lock: Lock,
    ownership: Ownership,
    timings: Timings,
    status: tokio::sync::watch::Sender<Status>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Lost> {
    let mut leading: Option<Instant> = None;
    loop {
        let attempt = match leading {
            Some(until) => tokio::time::timeout_at(until, lock.try_acquire_or_renew())
                .await
                .unwrap_or_else(|_| {
                    Err(super::lock::LeaseError::Api {
                        name: lock.name().to_owned(),
                        message: "no renewal within the renew deadline".to_owned(),
                    })
                }),
            None => lock.try_acquire_or_renew().await,
        };
        match attempt {
            Ok(Attempt::Held { at, acquired }) => {
                let until = at + timings.renew_deadline;
                ownership.renewed(0, until);
                if acquired || leading.is_none() {
                    tracing::info!(lease = %lock.name(), "leading: this replica reconciles");
                }
                leading = Some(until);
                status.send_modify(|s| s.ok(true, lock.holder()));
            }
            Ok(Attempt::Other { holder }) => {
                if leading.is_some() {
                    ownership.lapse(0);
                    return Err(Lost(format!(
                        "the lease {} is held by {holder} now",
                        lock.name()
                    )));
                }
                status.send_modify(|s| s.ok(false, Some(&holder)));
            }
            // Another candidate wrote first: the race was lost, nothing
            // is wrong (the next round reads who holds it).
            Err(super::lock::LeaseError::Conflict(_)) if leading.is_none() => {
                status.send_modify(|s| s.ok(false, None));
            }
            Err(e) => {
                if let Some(until) = leading
                    && Instant::now() >= until
                {
                    ownership.lapse(0);
                    return Err(Lost(format!(
                        "the lease {} was not renewed within the renew deadline of {}s: {e}",
                        lock.name(),
                        timings.renew_deadline.as_secs_f64()
                    )));
                }
                if leading.is_some() {
                    // Still leading until the deadline: ready, and retrying.
                    tracing::warn!(lease = %lock.name(), "cannot renew the lease (retrying until the renew deadline): {e}");
                } else {
                    status.send_modify(|s| s.failed(&e.to_string()));
                }
            }
        }
        let next = match leading {
            Some(until) => (Instant::now() + timings.retry_period).min(until),
            None => Instant::now() + jittered(timings.retry_period),
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    if leading.is_some() {
        // Nothing starts while the release is on its way.
        ownership.releasing(0);
        match lock.release().await {
            Ok(_) => tracing::info!(lease = %lock.name(), "released the lease"),
            Err(e) => tracing::warn!(
                lease = %lock.name(),
                "cannot release the lease: a standby takes over once it expires ({}s): {e}",
                timings.lease_duration.as_secs_f64()
            ),
        }
        ownership.released(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::super::lock::MemoryLeases;
    use super::super::tests::run_for;
    use super::*;

    struct Candidate {
        ownership: Ownership,
        status: tokio::sync::watch::Receiver<Status>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), Lost>>,
    }

    fn candidate(api: &Arc<MemoryLeases>, identity: &str) -> Candidate {
        let ownership = Ownership::coordinated(1);
        let (status_tx, status) = tokio::sync::watch::channel(Status::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let lock = Lock::new(
            api.clone(),
            "host",
            identity,
            Timings::default().lease_duration,
            BTreeMap::new(),
        );
        let task = tokio::spawn(elect(
            lock,
            ownership.clone(),
            Timings::default(),
            status_tx,
            stopped,
        ));
        Candidate {
            ownership,
            status,
            stop,
            task,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_leads_a_killed_leader_is_replaced_after_the_lease_duration() {
        let api = Arc::new(MemoryLeases::default());
        let a = candidate(&api, "a");
        run_for(Duration::from_millis(500)).await;
        let b = candidate(&api, "b");
        run_for(Duration::from_secs(5)).await;
        assert!(a.ownership.begin("ns", "x").is_some(), "a leads");
        assert!(b.ownership.begin("ns", "x").is_none(), "b stands by");
        assert!(b.status.borrow().healthy(Timings::default().lease_duration));
        // a dies without releasing (SIGKILL).
        a.task.abort();
        let killed = Instant::now();
        let mut taken = None;
        for _ in 0..400 {
            run_for(Duration::from_millis(100)).await;
            if b.ownership.begin("ns", "x").is_some() {
                taken = Some(killed.elapsed());
                break;
            }
        }
        let taken = taken.expect("b takes over");
        // b last saw a's renewal up to one retry period before the kill,
        // and tries every 2-2.4 s: within lease duration + one retry.
        assert!(taken >= Duration::from_secs(12), "{taken:?}");
        assert!(taken <= Duration::from_secs(15 + 3), "{taken:?}");
        b.stop.send_replace(true);
        b.task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_moves_within_a_retry_period() {
        let api = Arc::new(MemoryLeases::default());
        let a = candidate(&api, "a");
        run_for(Duration::from_millis(500)).await;
        let b = candidate(&api, "b");
        run_for(Duration::from_secs(5)).await;
        a.stop.send_replace(true);
        a.task.await.unwrap().unwrap();
        assert!(a.ownership.begin("ns", "x").is_none());
        let released = Instant::now();
        while b.ownership.begin("ns", "x").is_none() {
            run_for(Duration::from_millis(100)).await;
        }
        assert!(released.elapsed() <= Duration::from_millis(2500));
        b.stop.send_replace(true);
        b.task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_at_the_renew_deadline() {
        let api = Arc::new(MemoryLeases::default());
        let a = candidate(&api, "a");
        run_for(Duration::from_millis(500)).await;
        assert!(a.ownership.begin("ns", "x").is_some());
        api.unreachable.store(true, Ordering::SeqCst);
        let cut = Instant::now();
        // The last renewal started at most one retry period before the cut.
        run_for(Duration::from_secs(8)).await;
        while a.ownership.begin("ns", "x").is_some() {
            run_for(Duration::from_millis(100)).await;
        }
        let stopped = cut.elapsed();
        assert!(stopped <= Duration::from_secs(10), "{stopped:?}");
        assert!(a.ownership.lapsed(), "writes are fenced");
        let lost = a.task.await.unwrap();
        assert!(lost.is_err(), "{lost:?}");
        // A standby that starts now takes over only after the lease
        // duration, i.e. after the old leader stopped.
        api.unreachable.store(false, Ordering::SeqCst);
        let b = candidate(&api, "b");
        run_for(Duration::from_secs(3)).await;
        assert!(b.ownership.begin("ns", "x").is_none());
        run_for(Duration::from_secs(16)).await;
        assert!(b.ownership.begin("ns", "x").is_some());
        b.stop.send_replace(true);
        b.task.await.unwrap().unwrap();
    }
}
