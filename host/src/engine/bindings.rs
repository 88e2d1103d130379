//! The host's `bindgen!`s: `reconcile:plugin@0.1.0` from `wit/` (the
//! names at the top of this module) and `0.2.0` from `wit/0.2.0/`
//! ([`v0_2`]), whose `wasi:http` types are wasmtime-wasi-http's.
//!
//! Kubernetes calls are async (they reach the API server); every import may
//! trap, so that a host fault or an exceeded limit ends the call.

wasmtime::component::bindgen!({
    world: "reconciler",
    path: "../wit",
    imports: {
        "reconcile:plugin/k8s": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use exports::reconcile::plugin::plugin as guest;
pub use reconcile::plugin::{k8s, log, trace, types};

/// `reconcile:plugin@0.2.0`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "reconciler",
        path: "../wit/0.2.0",
        imports: {
            "reconcile:plugin/k8s": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });

    pub use exports::reconcile::plugin::plugin as guest;
    pub use reconcile::plugin::{k8s, log, trace, types};
}
