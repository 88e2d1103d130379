//! Per-call limits: a wall-clock deadline and a linear-memory cap, and how a
//! call that broke one is told apart from other traps.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Trap};

use crate::reconcile::FailureKind;

/// Limits of one plugin call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for one call, host calls included.
    pub deadline: Duration,
    /// Linear memory of one instance, in bytes.
    pub memory: usize,
}

impl Limits {
    /// Default deadline: 10 s.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
    /// Default memory cap: 64 MiB.
    pub const DEFAULT_MEMORY: usize = 64 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Self::DEFAULT_DEADLINE,
            memory: Self::DEFAULT_MEMORY,
        }
    }
}

/// The call ran past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the call ran past its deadline of {0:?}")]
pub struct DeadlineExceeded(pub Duration);

/// The plugin asked for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("the plugin asked for {desired} bytes of linear memory; its limit is {limit}")]
pub struct MemoryLimitExceeded {
    /// Bytes asked for.
    pub desired: usize,
    /// The cap.
    pub limit: usize,
}

/// Most table elements of one instance.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The store's resource limiter.
#[derive(Debug)]
pub(crate) struct CallLimiter {
    memory: usize,
    pub(crate) memory_exceeded: bool,
    /// The largest linear memory the call was given.
    pub(crate) peak: usize,
}

impl CallLimiter {
    pub(crate) fn new(memory: usize) -> Self {
        CallLimiter {
            memory,
            memory_exceeded: false,
            peak: 0,
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.memory_exceeded = true;
            // An error traps at once: a guest allocator that checked for
            // failure could otherwise go on limping.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.memory,
            }));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Classifies a failed call: exceeded limits first, then traps. `panic` is
/// the plugin's panic message, when it printed one.
pub(crate) fn classify(
    error: &wasmtime::Error,
    memory_exceeded: bool,
    panic: Option<String>,
) -> (FailureKind, String) {
    if let Some(e) = error.downcast_ref::<MemoryLimitExceeded>() {
        return (FailureKind::Memory, e.to_string());
    }
    if memory_exceeded {
        return (
            FailureKind::Memory,
            format!("the plugin ran out of memory: {}", trap_text(error)),
        );
    }
    if let Some(deadline) = error.downcast_ref::<DeadlineExceeded>() {
        return (FailureKind::Timeout, deadline.to_string());
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return (
            FailureKind::Timeout,
            "the call was interrupted at its deadline".to_owned(),
        );
    }
    match panic {
        Some(panic) => (FailureKind::Trap, format!("the plugin {panic}")),
        None => (
            FailureKind::Trap,
            format!("the plugin trapped: {}", trap_text(error)),
        ),
    }
}

/// The trap, or the error's first line, without the wasm backtrace.
fn trap_text(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}
