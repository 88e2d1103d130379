//! Helpers for the status of a reconciled object: conditions with correct
//! `lastTransitionTime`, and `observedGeneration`.
//!
//! ```no_run
//! use reconcile_sdk::status::{Conditions, condition};
//! use reconcile_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
//! let mut conditions: Vec<Condition> = Vec::new();
//! conditions.set(condition("Ready", true, "Available", "all replicas are ready", Some(3)));
//! assert!(conditions.is_true("Ready"));
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube_core::Resource;

/// The current time, for `lastTransitionTime` and events.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// A condition of `type_`, `True` or `False`, observed at `generation`.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time: now(),
    }
}

/// Operations on a list of conditions.
pub trait Conditions {
    /// Sets a condition by type. The `lastTransitionTime` changes only when
    /// the status does, as Kubernetes conventions ask. Returns true when the
    /// status changed (or the condition is new).
    fn set(&mut self, condition: Condition) -> bool;

    /// The condition of this type.
    fn get_condition(&self, type_: &str) -> Option<&Condition>;

    /// Whether the condition of this type is `True`.
    fn is_true(&self, type_: &str) -> bool {
        self.get_condition(type_)
            .is_some_and(|c| c.status == "True")
    }
}

impl Conditions for Vec<Condition> {
    fn set(&mut self, mut condition: Condition) -> bool {
        match self.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(existing) => {
                let changed = existing.status != condition.status;
                if !changed {
                    condition.last_transition_time = existing.last_transition_time.clone();
                }
                *existing = condition;
                changed
            }
            None => {
                self.push(condition);
                true
            }
        }
    }

    fn get_condition(&self, type_: &str) -> Option<&Condition> {
        self.iter().find(|c| c.type_ == type_)
    }
}

/// The object's `metadata.generation`, for `status.observedGeneration`.
pub fn generation<K: Resource>(object: &K) -> Option<i64> {
    object.meta().generation
}
