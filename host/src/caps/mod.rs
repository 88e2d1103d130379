//! Host capabilities: one module per WIT interface the plugin imports.
//!
//! Each module keeps its state apart from the generated `Host` trait impl,
//! which lives in the same file and works on [`HostState`](crate::engine::HostState).
//! `v0_2` serves the `reconcile:plugin@0.2.0` imports through the same
//! implementations; `http` holds the `wasi:http` hooks.

pub mod http;
pub mod k8s;
pub mod log;
pub mod trace;
mod v0_2;

use crate::engine::HostState;
use crate::engine::bindings::types;

impl types::Host for HostState {}
