//! `reload` 2.0.0: the same types as 1.0.0, other code.
const VERSION: &str = "2.0.0";
type Primary = reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
include!("../../reload-v1/src/reload.rs");
