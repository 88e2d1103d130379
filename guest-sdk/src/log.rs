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
//! Fields keep their type: integers, floats and booleans stay numbers and
//! booleans in a JSON log line; anything else that implements `Display` is
//! written as text.
//!
//! Writing to stdout or stderr also works; each line becomes an `info`
//! (stdout) or `warn` (stderr) log line.

use std::fmt::Display;

use crate::bindings::reconcile::plugin::log as wit;
use crate::trace::Value;

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
pub fn log(level: Level, message: &str, fields: &[(&str, Value)]) {
    let fields: Vec<(String, wit::Value)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone().into_wit()))
        .collect();
    wit::log(level.into_wit(), message, &fields);
}

#[doc(hidden)]
pub struct __Field<'a, T: ?Sized>(pub &'a T);

/// Fields of a type with a [`Value`] of its own (numbers, booleans, text).
#[doc(hidden)]
pub trait __Typed {
    fn __value(&self) -> Value;
}

/// Any other field: its `Display` text.
#[doc(hidden)]
pub trait __Shown {
    fn __value(&self) -> Value;
}

impl<T: Display + ?Sized> __Shown for __Field<'_, T> {
    fn __value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

macro_rules! typed {
    ($($ty:ty => |$v:ident| $e:expr),+ $(,)?) => {$(
        impl __Typed for &__Field<'_, $ty> {
            fn __value(&self) -> Value {
                let $v = self.0;
                $e
            }
        }
    )+};
}

typed! {
    i8 => |v| Value::Int((*v).into()),
    i16 => |v| Value::Int((*v).into()),
    i32 => |v| Value::Int((*v).into()),
    i64 => |v| Value::Int(*v),
    u8 => |v| Value::Int((*v).into()),
    u16 => |v| Value::Int((*v).into()),
    u32 => |v| Value::Int((*v).into()),
    u64 => |v| i64::try_from(*v).map_or_else(|_| Value::String(v.to_string()), Value::Int),
    usize => |v| i64::try_from(*v).map_or_else(|_| Value::String(v.to_string()), Value::Int),
    isize => |v| i64::try_from(*v).map_or_else(|_| Value::String(v.to_string()), Value::Int),
    f32 => |v| Value::Float((*v).into()),
    f64 => |v| Value::Float(*v),
    bool => |v| Value::Bool(*v),
    str => |v| Value::String(v.to_owned()),
    &str => |v| Value::String((*v).to_owned()),
    String => |v| Value::String(v.clone()),
}

#[doc(hidden)]
pub fn __log(
    level: Level,
    message: impl FnOnce() -> String,
    fields: impl FnOnce() -> Vec<(&'static str, Value)>,
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
            || {
                #[allow(unused_imports)]
                use $crate::log::{__Shown as _, __Typed as _};
                ::std::vec![$((::core::stringify!($key), (&&$crate::log::__Field(&$value)).__value())),+]
            },
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
