//! The one `wit_bindgen::generate!` of the SDK, from `wit/0.2.0/` (the
//! `reconcile:plugin@0.2.0` contract and the WASI 0.2 WIT it imports).

wit_bindgen::generate!({
    world: "reconcile:plugin/reconciler@0.2.0",
    path: "../wit/0.2.0",
    pub_export_macro: true,
    export_macro_name: "__export_reconciler",
    default_bindings_module: "reconcile_sdk::__private::bindings",
    generate_all,
});
