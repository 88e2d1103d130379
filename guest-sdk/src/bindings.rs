//! The one `wit_bindgen::generate!` of the SDK, from `wit/`.

wit_bindgen::generate!({
    world: "reconciler",
    path: "../wit",
    pub_export_macro: true,
    export_macro_name: "__export_reconciler",
    default_bindings_module: "reconcile_sdk::__private::bindings",
});
