//! The host's one `bindgen!`, from `wit/`.
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
