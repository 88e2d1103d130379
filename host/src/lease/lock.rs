//! One `coordination.k8s.io/v1` Lease held by one identity at a time, with
//! client-go's `resourcelock` semantics.
//!
//! - Expiry is judged on the local monotonic clock: a lease held by someone
//!   else counts as expired `leaseDurationSeconds` after this process last
//!   saw its record *change* (holder, renew time, resource version), never
//!   by comparing the record's `renewTime` with the local wall clock, so
//!   clock skew between nodes cannot hand a lease to two holders.
//! - Every write is a replace with the `resourceVersion` read: of two
//!   processes racing for a free lease, one gets a 409 and stays out.
//! - A release writes an empty holder (and a 1 s duration), so that the
//!   next candidate may take it at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// A Lease API call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else wrote the lease first (409): not an error of the
    /// lease, the race was lost.
    #[error("the lease {0} was changed by another holder meanwhile")]
    Conflict(String),
    /// The lease does not exist (404).
    #[error("the lease {0} does not exist")]
    NotFound(String),
    /// The API server refused (403): the ServiceAccount lacks a permission.
    #[error(
        "the API server refused access to the lease {name}: grant get, create and update on coordination.k8s.io leases (see `reconcile-host rbac`): {message}"
    )]
    Forbidden {
        /// The lease.
        name: String,
        /// The server's message.
        message: String,
    },
    /// Anything else: the API server is unreachable or failed; the caller
    /// tries again at its next period.
    #[error("lease {name}: {message}")]
    Api {
        /// The lease.
        name: String,
        /// What failed.
        message: String,
    },
}

/// The Lease calls a [`Lock`] makes; [`KubeLeases`] makes them against an
/// API server, tests use an in-memory one on a paused clock.
#[async_trait::async_trait]
pub trait LeaseApi: Send + Sync {
    /// The lease, or `None` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError>;
    /// Creates it; [`LeaseError::Conflict`] when it exists.
    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError>;
    /// Replaces it, if its `resourceVersion` is still the one given;
    /// [`LeaseError::Conflict`] otherwise.
    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError>;
    /// The leases with these labels (`key=value,...`).
    async fn list(&self, selector: &str) -> Result<Vec<Lease>, LeaseError>;
    /// Deletes it (if its `resourceVersion` is still the one given); gone
    /// already is fine.
    async fn delete(&self, name: &str, resource_version: Option<String>) -> Result<(), LeaseError>;
}

/// Leases of one namespace, through a `kube::Client`; every call bounded
/// by `timeout`.
pub struct KubeLeases {
    api: kube::Api<Lease>,
    timeout: Duration,
}

impl KubeLeases {
    /// Leases in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, timeout: Duration) -> Self {
        KubeLeases {
            api: kube::Api::namespaced(client, namespace),
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        name: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                Err(LeaseError::Conflict(name.to_owned()))
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                Err(LeaseError::NotFound(name.to_owned()))
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(LeaseError::Forbidden {
                name: name.to_owned(),
                message: status.message.clone(),
            }),
            Ok(Err(e)) => Err(LeaseError::Api {
                name: name.to_owned(),
                message: e.to_string(),
            }),
            Err(_) => Err(LeaseError::Api {
                name: name.to_owned(),
                message: format!("no answer within {}s", self.timeout.as_secs_f64()),
            }),
        }
    }
}

#[async_trait::async_trait]
impl LeaseApi for KubeLeases {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.bounded(name, self.api.get_opt(name)).await
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.bounded(&name, self.api.create(&Default::default(), lease))
            .await
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.bounded(&name, self.api.replace(&name, &Default::default(), lease))
            .await
    }

    async fn list(&self, selector: &str) -> Result<Vec<Lease>, LeaseError> {
        let params = kube::api::ListParams::default().labels(selector);
        self.bounded("(list)", self.api.list(&params))
            .await
            .map(|list| list.items)
    }

    async fn delete(&self, name: &str, resource_version: Option<String>) -> Result<(), LeaseError> {
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version,
                uid: None,
            }),
            ..Default::default()
        };
        match self.bounded(name, self.api.delete(name, &params)).await {
            Ok(_) => Ok(()),
            Err(LeaseError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a lease's record says, as compared between two reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The holder; `None` or empty: free.
    pub holder: Option<String>,
    /// How long the holder may go without renewing.
    pub duration: Duration,
    /// Its `renewTime`, as written (for the record, never for expiry).
    pub renew_time: Option<Timestamp>,
    /// Its `acquireTime`.
    pub acquire_time: Option<Timestamp>,
    /// Changes of holder so far.
    pub transitions: i32,
    /// The object's `resourceVersion`.
    pub resource_version: String,
}

impl Record {
    /// The record of `lease`.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            renew_time: spec.renew_time.map(|t| t.0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

/// The outcome of one [`Lock::try_acquire_or_renew`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This identity holds the lease; `at` is when the attempt started (a
    /// holder's time runs from there, never from when the answer came).
    Held {
        /// When the successful attempt started.
        at: Instant,
        /// True when the lease was just taken (not renewed).
        acquired: bool,
    },
    /// Someone else holds it and it has not expired as seen from here.
    Other {
        /// Its holder.
        holder: String,
    },
}

/// One named lease, as one identity sees it.
pub struct Lock {
    api: Arc<dyn LeaseApi>,
    name: String,
    identity: String,
    duration: Duration,
    labels: BTreeMap<String, String>,
    /// The record last read or written, and when it last changed.
    observed: Option<(Record, Instant)>,
}

impl Lock {
    /// The lease `name`, for `identity`, held for `duration` per renewal;
    /// `labels` go on the lease when this lock creates it.
    pub fn new(
        api: Arc<dyn LeaseApi>,
        name: &str,
        identity: &str,
        duration: Duration,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Lock {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            labels,
            observed: None,
        }
    }

    /// Sets a label written with the next acquisition or renewal.
    pub fn set_label(&mut self, key: &str, value: &str) {
        self.labels.insert(key.to_owned(), value.to_owned());
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder as last seen, and whether that is this identity.
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|(r, _)| r.holder.as_deref())
    }

    fn spec(&self, now: Timestamp, acquire: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquire)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Reads the lease and takes or renews it if it is free, expired (as
    /// seen from here) or already this identity's.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let started = Instant::now();
        let now = Timestamp::now();
        let Some(current) = self.api.get(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            let created = self.api.create(&lease).await?;
            self.observed = Some((Record::of(&created), started));
            return Ok(Attempt::Held {
                at: started,
                acquired: true,
            });
        };
        let record = Record::of(&current);
        // A change counts from when the answer came (client-go's
        // observedTime): the record may have been written while the GET
        // was on its way, never after it returned.
        let now_seen = Instant::now();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record);
        if changed {
            self.observed = Some((record.clone(), now_seen));
        }
        let seen_at = self.observed.as_ref().map_or(now_seen, |(_, at)| *at);
        let ours = record.holder.as_deref() == Some(self.identity.as_str());
        if let Some(holder) = record.holder.as_deref().filter(|_| !ours) {
            // The holder's own duration: it is what the holder renews by.
            if now_seen < seen_at + record.duration {
                return Ok(Attempt::Other {
                    holder: holder.to_owned(),
                });
            }
        }
        let (acquire, transitions) = if ours {
            (record.acquire_time.unwrap_or(now), record.transitions)
        } else {
            (now, record.transitions.saturating_add(1))
        };
        let mut lease = current;
        if !self.labels.is_empty() {
            let labels = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(self.labels.clone());
        }
        lease.spec = Some(self.spec(now, acquire, transitions));
        let written = self.api.replace(&lease).await?;
        self.observed = Some((Record::of(&written), started));
        Ok(Attempt::Held {
            at: started,
            acquired: !ours,
        })
    }

    /// Reads the lease without writing it, so that its expiry is judged
    /// from when it last changed: the holder, and whether it is expired
    /// (or free) as seen from here.
    pub async fn observe(&mut self) -> Result<(Option<String>, bool), LeaseError> {
        let current = self.api.get(&self.name).await?;
        Ok(self.observe_lease(current.as_ref()))
    }

    /// [`observe`](Self::observe) with the lease just read (by a list).
    pub fn observe_lease(&mut self, current: Option<&Lease>) -> (Option<String>, bool) {
        let now = Instant::now();
        let Some(current) = current else {
            self.observed = None;
            return (None, true);
        };
        let record = Record::of(current);
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record)
        {
            self.observed = Some((record.clone(), now));
        }
        let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        let free = record.holder.is_none() || now >= seen_at + record.duration;
        (record.holder, free)
    }

    /// Deletes the lease if it still is as last seen (a holder that
    /// renewed meanwhile keeps it).
    pub async fn delete(&mut self) -> Result<(), LeaseError> {
        let version = self
            .observed
            .as_ref()
            .map(|(r, _)| r.resource_version.clone());
        self.api.delete(&self.name, version).await?;
        self.observed = None;
        Ok(())
    }

    /// Gives the lease up if this identity holds it, so that the next
    /// candidate takes it at once; `false` when it was not held.
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        let Some(current) = self.api.get(&self.name).await? else {
            return Ok(false);
        };
        let record = Record::of(&current);
        if record.holder.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(record.transitions),
            ..LeaseSpec::default()
        });
        let written = self.api.replace(&lease).await?;
        self.observed = Some((Record::of(&written), Instant::now()));
        Ok(true)
    }
}

/// An in-memory [`LeaseApi`] with the API server's optimistic concurrency,
/// for tests of the timing logic on a paused clock.
#[derive(Default)]
pub struct MemoryLeases {
    leases: std::sync::Mutex<(u64, BTreeMap<String, Lease>)>,
    /// While set, every call fails as if the API server were unreachable.
    pub unreachable: std::sync::atomic::AtomicBool,
}

impl MemoryLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<String, Lease>)> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reachable(&self, name: &str) -> Result<(), LeaseError> {
        if self.unreachable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LeaseError::Api {
                name: name.to_owned(),
                message: "unreachable".to_owned(),
            });
        }
        Ok(())
    }

    /// The lease as stored.
    pub fn lease(&self, name: &str) -> Option<Lease> {
        self.lock().1.get(name).cloned()
    }
}

#[async_trait::async_trait]
impl LeaseApi for MemoryLeases {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.reachable(name)?;
        Ok(self.lock().1.get(name).cloned())
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.reachable(&name)?;
        let mut state = self.lock();
        if state.1.contains_key(&name) {
            return Err(LeaseError::Conflict(name));
        }
        state.0 += 1;
        let mut stored = lease.clone();
        stored.metadata.resource_version = Some(state.0.to_string());
        state.1.insert(name, stored.clone());
        Ok(stored)
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.reachable(&name)?;
        let mut state = self.lock();
        let current = state
            .1
            .get(&name)
            .and_then(|l| l.metadata.resource_version.clone());
        if current.is_none() || current != lease.metadata.resource_version {
            return Err(LeaseError::Conflict(name));
        }
        state.0 += 1;
        let mut stored = lease.clone();
        stored.metadata.resource_version = Some(state.0.to_string());
        state.1.insert(name, stored.clone());
        Ok(stored)
    }

    async fn list(&self, selector: &str) -> Result<Vec<Lease>, LeaseError> {
        self.reachable("(list)")?;
        let wanted: Vec<(&str, &str)> = selector
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        Ok(self
            .lock()
            .1
            .values()
            .filter(|lease| {
                let labels = lease.metadata.labels.clone().unwrap_or_default();
                wanted
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect())
    }

    async fn delete(&self, name: &str, resource_version: Option<String>) -> Result<(), LeaseError> {
        self.reachable(name)?;
        let mut state = self.lock();
        let current = state
            .1
            .get(name)
            .and_then(|l| l.metadata.resource_version.clone());
        if current.is_some() && resource_version.is_some() && current != resource_version {
            return Err(LeaseError::Conflict(name.to_owned()));
        }
        state.1.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn lock(api: &Arc<MemoryLeases>, identity: &str) -> Lock {
        Lock::new(
            api.clone(),
            "l",
            identity,
            Duration::from_secs(15),
            BTreeMap::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_lease_expires_a_duration_after_it_last_changed_as_seen_here() {
        let api = Arc::new(MemoryLeases::default());
        let mut a = lock(&api, "a");
        let mut b = lock(&api, "b");
        assert!(matches!(
            a.try_acquire_or_renew().await.unwrap(),
            Attempt::Held { acquired: true, .. }
        ));
        // b first sees the record now; it expires 15 s from now for b.
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Other { holder: "a".into() }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        // a renews: the record changes, b's count starts again.
        assert!(matches!(
            a.try_acquire_or_renew().await.unwrap(),
            Attempt::Held {
                acquired: false,
                ..
            }
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Other { holder: "a".into() }
        );
        tokio::time::advance(Duration::from_secs(14)).await;
        // b saw the renewal when it read it (10 s after a wrote it): not
        // expired 14 s later...
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Other { holder: "a".into() }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        // ...but 15 s after: taken.
        assert!(matches!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Held { acquired: true, .. }
        ));
        let spec = api.lease("l").unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
        // a sees b now: a's own lease is not a's any more.
        assert_eq!(
            a.try_acquire_or_renew().await.unwrap(),
            Attempt::Other { holder: "b".into() }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once_and_a_race_has_one_winner() {
        let api = Arc::new(MemoryLeases::default());
        let mut a = lock(&api, "a");
        let mut b = lock(&api, "b");
        let mut c = lock(&api, "c");
        a.try_acquire_or_renew().await.unwrap();
        assert!(!b.release().await.unwrap(), "b does not hold it");
        assert!(a.release().await.unwrap());
        assert!(matches!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Held { acquired: true, .. }
        ));
        b.release().await.unwrap();
        // c and a read the same free record; only one write can land.
        let (rc, ra) = tokio::join!(c.try_acquire_or_renew(), a.try_acquire_or_renew());
        let held = [&rc, &ra]
            .iter()
            .filter(|r| matches!(r, Ok(Attempt::Held { .. })))
            .count();
        assert_eq!(held, 1, "{rc:?} {ra:?}");
        assert!(
            [&rc, &ra]
                .iter()
                .any(|r| matches!(r, Err(LeaseError::Conflict(_)) | Ok(Attempt::Other { .. })))
        );
    }
}
