//! `reload` 1.0.0: reconciles ConfigMaps.
const VERSION: &str = "1.0.0";
type Primary = reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
include!("reload.rs");
