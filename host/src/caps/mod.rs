//! Host capabilities: one module per WIT interface the plugin imports.
//!
//! Each module keeps its state apart from the generated `Host` trait impl,
//! which lives in the same file and works on [`HostState`](crate::engine::HostState).

pub mod k8s;
pub mod log;
pub mod trace;

use crate::engine::HostState;
use crate::engine::bindings::types;

impl types::Host for HostState {}
