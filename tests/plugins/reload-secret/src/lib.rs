//! `reload` 3.0.0: reconciles Secrets instead of ConfigMaps, so that a
//! swap to it needs a new controller.
const VERSION: &str = "3.0.0";
type Primary = reconcile_sdk::k8s_openapi::api::core::v1::Secret;
include!("../../reload-v1/src/reload.rs");
