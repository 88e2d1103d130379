//! Structured logging. Lines go to the host's log with the plugin name and
//! the current `trace_id` and `span_id`.
//!
//! ```no_run
//! use reconcile_sdk::{info, warn};
//! let replicas = 3;
//! info!("scaling to {replicas}");
//! warn!(replicas = replicas, image = "nginx"; "image is not pinned");
//! ```
//!
//! Writing to stdout or stderr also works; each line becomes an `info`
//! (stdout) or `warn` (stderr) log line.

use crate::bindings::reconcile::plugin::log as wit;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    fn into_wit(self) -> wit::Level {
        match self {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// Whether a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    wit::enabled(level.into_wit())
}

/// Write one line with key/value fields.
pub fn log(level: Level, message: &str, fields: &[(&str, String)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    wit::log(level.into_wit(), message, &fields);
}

#[doc(hidden)]
pub fn __log(
    level: Level,
    message: impl FnOnce() -> String,
    fields: impl FnOnce() -> Vec<(&'static str, String)>,
) {
    if enabled(level) {
        log(level, &message(), &fields());
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, $($key:ident = $value:expr),+ ; $($arg:tt)+) => {
        $crate::log::__log(
            $level,
            || ::std::format!($($arg)+),
            || ::std::vec![$((::core::stringify!($key), ::std::string::ToString::to_string(&$value))),+],
        )
    };
    ($level:expr, $($arg:tt)+) => {
        $crate::log::__log($level, || ::std::format!($($arg)+), ::std::vec::Vec::new)
    };
}

/// Log at `error` level: `error!("text {}", x)` or `error!(key = value; "text")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Error, $($arg)+) };
}

/// Log at `warn` level: `warn!("text {}", x)` or `warn!(key = value; "text")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Warn, $($arg)+) };
}

/// Log at `info` level: `info!("text {}", x)` or `info!(key = value; "text")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Info, $($arg)+) };
}

/// Log at `debug` level: `debug!("text {}", x)` or `debug!(key = value; "text")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Debug, $($arg)+) };
}

/// Log at `trace` level: `trace!("text {}", x)` or `trace!(key = value; "text")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::__log!($crate::log::Level::Trace, $($arg)+) };
}
