//! cf-noop 2.0.0: the same plugin name as cf-noop, another version and
//! digest, for the reload case.
const VERSION: &str = "2.0.0";
include!("../../cf-noop/src/noop.rs");
