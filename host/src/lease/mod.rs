//! Coordination between replicas through `coordination.k8s.io/v1` Leases:
//! leader election (`run --leader-elect`) and sharding (`run --shards N`).
//!
//! # Where to start
//!
//! [`Coordination::start`] runs one or the other and hands out the
//! [`Ownership`] the controllers ask before each reconcile; `main` stops
//! it after the controllers have stopped, which releases the leases.
//!
//! # Layout
//!
//! - [`lock`]: one Lease with client-go's semantics (expiry judged on the
//!   local clock from the last change seen, optimistic writes, release).
//! - [`election`]: one lease, one leader, standbys with warm caches.
//! - [`shards`]: N shard leases and a membership lease per replica.
//! - [`ownership`]: what may be reconciled now, the shard of an object,
//!   the write fence.
//!
//! Why not a crate: `kubert`'s lease judges expiry by comparing the
//! lease's `renewTime` with the local wall clock (skew between nodes moves
//! it) and has no renew deadline; `kube-lease-manager` gives a leader flag
//! without a deadline a reconcile can be checked against. Neither shards.

pub mod election;
pub mod lock;
pub mod ownership;
pub mod shards;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use ownership::Ownership;

/// client-go's lease timings; controller-runtime's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long others wait, from the last change they saw, before taking
    /// a lease whose holder stopped renewing.
    pub lease_duration: Duration,
    /// How long a holder keeps reconciling without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a holder renews and a candidate tries.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// client-go's rules: lease duration > renew deadline > 1.2 × retry period.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({}s) must be longer than the renew deadline ({}s)",
                self.lease_duration.as_secs_f64(),
                self.renew_deadline.as_secs_f64()
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(format!(
                "the renew deadline ({}s) must be longer than 1.2 × the retry period ({}s)",
                self.renew_deadline.as_secs_f64(),
                self.retry_period.as_secs_f64()
            ));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(
                "the lease duration must be at least 1 s (leases count whole seconds)".into(),
            );
        }
        Ok(())
    }
}

/// `period` plus up to 20% of it, so that candidates do not try in step.
pub(crate) fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// This replica's standing, for readiness and logs.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Leading, or holding at least one shard.
    pub leading: bool,
    /// The leader as last seen (leader election).
    pub holder: Option<String>,
    /// The shards held (sharding).
    pub shards: BTreeSet<u32>,
    /// When a round with the API server last went through.
    pub last_ok: Option<Instant>,
    /// The last problem, until a round goes through.
    pub problem: Option<String>,
}

impl Status {
    fn ok(&mut self, leading: bool, holder: Option<&str>) {
        self.leading = leading;
        if let Some(holder) = holder {
            self.holder = Some(holder.to_owned());
        }
        self.last_ok = Some(Instant::now());
        self.problem = None;
    }

    fn failed(&mut self, problem: &str) {
        self.problem = Some(problem.to_owned());
    }

    /// Leading or a healthy standby: a round went through within the lease
    /// duration. One failed call does not make a replica unhealthy (it
    /// retries within a retry period, and the probe would flap); a lease
    /// duration without a round that went through does.
    pub fn healthy(&self, lease_duration: Duration) -> bool {
        self.last_ok.is_some_and(|t| t.elapsed() < lease_duration)
    }
}

/// This replica lost a lease it held: it must stop at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Lost(pub String);

/// What is coordinated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One leader reconciles everything.
    Leader,
    /// The objects are split into this many shards.
    Shards(u32),
}

/// How replicas coordinate.
#[derive(Clone, Debug)]
pub struct CoordinationConfig {
    /// Leader election or sharding.
    pub mode: Mode,
    /// The namespace of the leases.
    pub namespace: String,
    /// The lease (leader election) or the prefix of the leases (sharding).
    pub id: String,
    /// This replica's identity.
    pub identity: String,
    /// Timings.
    pub timings: Timings,
}

/// The identity of this replica: `POD_NAME`, else the hostname and a
/// random suffix (two processes on one machine must differ).
pub fn identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "reconcile-host".to_owned());
    format!("{host}_{:08x}", rand::random::<u32>())
}

/// The namespace of the leases by default: `POD_NAMESPACE`, else the
/// ServiceAccount's namespace in a pod, else `default`.
pub fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_owned())
}

/// Leader election or sharding, running.
pub struct Coordination {
    ownership: Ownership,
    status: tokio::sync::watch::Receiver<Status>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), Lost>>>,
    lease_duration: Duration,
}

impl Coordination {
    /// Starts coordinating through `client`.
    pub fn start(client: kube::Client, config: CoordinationConfig) -> Self {
        let timeout = (config.timings.retry_period * 2).max(Duration::from_secs(1));
        let api: Arc<dyn lock::LeaseApi> =
            Arc::new(lock::KubeLeases::new(client, &config.namespace, timeout));
        Self::start_with(api, config)
    }

    /// Starts coordinating through `api`.
    pub fn start_with(api: Arc<dyn lock::LeaseApi>, config: CoordinationConfig) -> Self {
        let (status_tx, status) = tokio::sync::watch::channel(Status::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (ownership, task) = match config.mode {
            Mode::Leader => {
                let ownership = Ownership::coordinated(1);
                let lock = lock::Lock::new(
                    api,
                    &config.id,
                    &config.identity,
                    config.timings.lease_duration,
                    Default::default(),
                );
                let task = tokio::spawn(election::elect(
                    lock,
                    ownership.clone(),
                    config.timings,
                    status_tx,
                    stopped,
                ));
                (ownership, task)
            }
            Mode::Shards(n) => {
                let ownership = Ownership::coordinated(n);
                let task = tokio::spawn(shards::run(
                    api,
                    ownership.clone(),
                    shards::ShardConfig {
                        id: config.id.clone(),
                        identity: config.identity.clone(),
                        shards: n,
                        timings: config.timings,
                    },
                    status_tx,
                    stopped,
                ));
                (ownership, task)
            }
        };
        Coordination {
            ownership,
            status,
            stop,
            task: Some(task),
            lease_duration: config.timings.lease_duration,
        }
    }

    /// What the controllers may reconcile.
    pub fn ownership(&self) -> Ownership {
        self.ownership.clone()
    }

    /// `Ok` when leading or a healthy standby; why not otherwise.
    pub fn ready(&self) -> Result<(), String> {
        self.readiness()()
    }

    /// [`ready`](Self::ready) as a check that outlives this handle.
    pub fn readiness(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let status = self.status.clone();
        let lease_duration = self.lease_duration;
        move || {
            let status = status.borrow();
            if status.healthy(lease_duration) {
                return Ok(());
            }
            Err(match &status.problem {
                Some(p) => p.clone(),
                None => "no round with the Lease API has gone through yet".to_owned(),
            })
        }
    }

    /// A watch of the status.
    pub fn status(&self) -> tokio::sync::watch::Receiver<Status> {
        self.status.clone()
    }

    /// Resolves when a held lease is lost (never if it is not).
    pub async fn lost(&mut self) -> Lost {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Err(lost)) => lost,
            Ok(Ok(())) => std::future::pending().await,
            Err(e) => Lost(format!("the lease task stopped: {e}")),
        }
    }

    /// Releases the leases held (the controllers have stopped).
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Ok(Err(lost)) = task.await
        {
            tracing::warn!("{lost}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Lets `d` pass on the paused clock in 100 ms steps, so that every
    /// timer in between fires in order.
    pub(crate) async fn run_for(d: Duration) {
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            let s = step.min(left);
            tokio::time::sleep(s).await;
            left -= s;
        }
    }

    #[test]
    fn the_default_timings_are_valid_and_bad_ones_say_why() {
        assert!(Timings::default().check().is_ok());
        let bad = Timings {
            renew_deadline: Duration::from_secs(15),
            ..Timings::default()
        };
        assert!(bad.check().unwrap_err().contains("renew deadline"));
        let bad = Timings {
            retry_period: Duration::from_secs(9),
            ..Timings::default()
        };
        assert!(bad.check().unwrap_err().contains("retry period"));
    }
}
