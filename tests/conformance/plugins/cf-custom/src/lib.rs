//! Reconciles `widgets.conformance.reconcile.dev/v1` (namespaced
//! `Widget`), a type whose CRD the case installs, and logs `widget`.
use reconcile_sdk::k8s::ResourceType;
use reconcile_sdk::prelude::*;

struct Custom;

impl Reconciler for Custom {
    fn metadata() -> Metadata {
        Metadata::new("cf-custom", "0.1.0").reconciles_type(ResourceType {
            group: "conformance.reconcile.dev".to_owned(),
            version: "v1".to_owned(),
            kind: "Widget".to_owned(),
            plural: "widgets".to_owned(),
            namespaced: true,
        })
    }

    fn reconcile(_request: Request) -> Result<Action> {
        info!("widget");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Custom);
