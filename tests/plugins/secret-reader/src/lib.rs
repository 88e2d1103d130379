//! Asks only for ConfigMaps, then tries to read a Secret: the host must
//! answer `forbidden` without sending anything.
use reconcile_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret};
use reconcile_sdk::prelude::*;

struct SecretReader;

impl Reconciler for SecretReader {
    fn metadata() -> Metadata {
        Metadata::new("secret-reader", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(request: Request) -> Result<Action> {
        let ns = request.namespace().unwrap_or("default");
        match Api::<Secret>::namespaced(ns).get("db-password") {
            Err(e) if e.is_forbidden() => {
                warn!(error = e; "reading the secret was refused");
                Ok(Action::Done)
            }
            Ok(_) => Err(Error::new("the secret was readable")),
            Err(e) => Err(e.into()),
        }
    }
}

reconcile_sdk::plugin!(SecretReader);
