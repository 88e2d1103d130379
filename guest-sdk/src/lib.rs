//! The Rust SDK for reconcile-host plugins.
//!
//! A plugin is a `reconcile` function compiled to `wasm32-wasip2`. The host
//! watches the plugin's resources, calls `reconcile` in a fresh sandboxed
//! instance inside a `reconcile` trace span, and serves the plugin's
//! Kubernetes calls (as child spans, or from its cache) and HTTP requests
//! (as `http.client` spans, within the grant's allow-list). The SDK targets
//! the `reconcile:plugin@0.2.0` contract.
//!
//! # Where to start
//!
//! Implement [`Reconciler`] and export it with [`plugin!`]:
//!
//! ```no_run
//! use reconcile_sdk::prelude::*;
//! use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
//!
//! struct Labeler;
//!
//! impl Reconciler for Labeler {
//!     fn metadata() -> Metadata {
//!         Metadata::new("labeler", "0.1.0")
//!             .reconciles::<ConfigMap>()
//!             .access::<ConfigMap>(&[Verb::Patch])
//!     }
//!
//!     fn reconcile(request: Request) -> Result<Action> {
//!         let Some(cm) = request.object::<ConfigMap>()? else { return Ok(Action::Done) };
//!         info!(name = request.name(); "labelling config map");
//!         let api = Api::<ConfigMap>::namespaced(request.namespace().unwrap_or("default"));
//!         let patch = serde_json::json!({"metadata": {"labels": {"seen": "true"}}});
//!         try_span("label", || api.patch(&cm.name_any(), &Patch::Merge(patch)))?;
//!         Ok(Action::Done)
//!     }
//! }
//!
//! reconcile_sdk::plugin!(Labeler);
//! ```
//!
//! # Testing
//!
//! The `reconcile-test` crate (`host/harness` in the reconcile-host
//! repository) tests a plugin crate natively: it builds the crate for
//! `wasm32-wasip2`, runs it in the real engine and host logic against an
//! embedded Kubernetes API server, one reconcile at a time on a virtual
//! clock, and asserts objects, calls and spans. Make the crate an `rlib`
//! as well as a `cdylib` so that its tests can use its types;
//! [`plugin!`] exports the component only when built for wasm.
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` in `target/wasm32-wasip2/release/` is the plugin.
//!
//! # Layout
//!
//! - [`plugin`](mod@plugin): [`Reconciler`], [`Metadata`], [`Request`], [`Action`], [`Error`].
//! - [`k8s`]: [`Api`](k8s::Api), the typed Kubernetes client served by the host.
//! - [`http`]: outbound HTTP ([`http::get`], [`http::Request`]) over `wasi:http`.
//! - [`log`](mod@log): logging macros ([`info!`], [`warn!`], ...) and functions.
//! - [`trace`]: [`span`](trace::span), [`event`](trace::event), [`set_attribute`](trace::set_attribute).
//! - [`status`]: conditions and `observedGeneration`; [`events`]: Kubernetes Events.
//! - [`prelude`]: everything a plugin usually needs, in one `use`.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod __private;
#[doc(hidden)]
pub mod bindings;
pub mod events;
pub mod http;
pub mod k8s;
pub mod log;
pub mod plugin;
pub mod status;
pub mod trace;

pub use k8s_openapi;
pub use kube_core;
pub use plugin::{Action, Error, ErrorKind, Metadata, Reason, Reconciler, Request, Result, Verb};
pub use serde_json;

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::k8s::{Api, ListParams, Patch, Propagation};
    pub use crate::plugin::{
        Action, Error, ErrorKind, Metadata, Reason, Reconciler, Request, Result, Verb,
    };
    pub use crate::status::Conditions;
    pub use crate::trace::{Value, event, set_attribute, span, try_span};
    pub use crate::{debug, error, info, trace, warn};
    pub use kube_core::{Resource, ResourceExt};
    pub use serde_json;
}

/// Export a [`Reconciler`] as the plugin's implementation of the
/// `reconciler` world. Use it once per plugin crate.
///
/// ```no_run
/// # use reconcile_sdk::prelude::*;
/// # use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
/// struct Noop;
/// impl Reconciler for Noop {
///     fn metadata() -> Metadata { Metadata::new("noop", "0.1.0").reconciles::<ConfigMap>() }
///     fn reconcile(_: Request) -> Result<Action> { Ok(Action::Done) }
/// }
/// reconcile_sdk::plugin!(Noop);
/// ```
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        const _: () = {
            #[allow(dead_code)]
            struct __ReconcilePlugin;
            impl $crate::__private::Guest for __ReconcilePlugin {
                fn metadata() -> $crate::__private::types::PluginMetadata {
                    $crate::__private::metadata::<$ty>()
                }
                fn reconcile(
                    request: $crate::__private::types::ReconcileRequest,
                ) -> ::core::result::Result<
                    $crate::__private::types::Action,
                    $crate::__private::types::ReconcileError,
                > {
                    $crate::__private::reconcile::<$ty>(request)
                }
            }
            // Exported only from the component: a native build of the crate
            // (its tests, which load the component with the test harness)
            // cannot link names such as `reconcile:plugin/plugin@0.2.0#...`.
            #[cfg(target_family = "wasm")]
            $crate::__private::bindings::__export_reconciler!(
                __ReconcilePlugin with_types_in $crate::__private::bindings
            );
        };
    };
}
