//! Returns an error on attempts 1 to 3, and done on the fourth: the
//! retries show the host's backoff.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Fail;

impl Reconciler for Fail {
    fn metadata() -> Metadata {
        Metadata::new("cf-fail", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
    }

    fn reconcile(request: Request) -> Result<Action> {
        if request.attempt() <= 3 {
            return Err(Error::new(format!("attempt {} fails", request.attempt())));
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Fail);
