//! Exercises the log and trace interfaces, stdout and stderr, and one
//! Kubernetes read, so that tests can check the span tree and the log lines.
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::prelude::*;

struct Traced;

impl Reconciler for Traced {
    fn metadata() -> Metadata {
        Metadata::new("traced", "1.2.3")
            .reconciles::<ConfigMap>()
            .access::<ConfigMap>(&[Verb::Patch])
            .http_host("example.com")
            .finalizer("traced.reconcile.dev/cleanup")
    }

    fn reconcile(request: Request) -> Result<Action> {
        info!(attempt = request.attempt(), first = request.attempt() == 1, share = 0.5, object = request.name(); "reconciling {}", request.name());
        set_attribute("traced.items", 3);
        set_attribute("reconcile.result", "overridden?");
        event("started", &[("step", "begin".into())]);
        let settings = try_span("fetch", || {
            debug!("inside fetch");
            let api = Api::<ConfigMap>::namespaced(request.namespace().unwrap_or("default"));
            let found = api.get_opt("settings")?;
            event("fetched", &[("found", found.is_some().into())]);
            Ok::<_, Error>(found)
        })?;
        span("render", || {
            span("render.inner", || warn!(stage = "inner"; "deep inside"));
        });
        let _: std::result::Result<(), String> =
            try_span("validate", || Err("validation failed".to_owned()));
        println!("plain stdout line");
        eprintln!("plain stderr line");
        match settings {
            Some(cm) if cm.data.as_ref().is_some_and(|d| d.contains_key("fail")) => {
                Err(Error::new("settings asked for a failure"))
            }
            Some(_) => Ok(Action::RequeueAfter(std::time::Duration::from_secs(30))),
            None => Ok(Action::Done),
        }
    }
}

reconcile_sdk::plugin!(Traced);
