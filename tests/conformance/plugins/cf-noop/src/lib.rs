//! cf-noop 1.2.3: reconciles ConfigMaps labelled `cf=case`, logs one
//! line, returns done.
const VERSION: &str = "1.2.3";
include!("noop.rs");
