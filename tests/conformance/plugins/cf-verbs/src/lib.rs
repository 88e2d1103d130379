//! For a ConfigMap with `verbs: "yes"`, calls each verb once and logs
//! `<call>: <result>`: on Secret `<name>-s` (not a cached type) create,
//! get, list, replace, patch (merge), apply and delete; on the status of
//! the Service `<name>-svc` (which the case creates) get, patch, apply
//! and replace. Its writes name the field manager `conformance-verbs`.
use reconcile_sdk::k8s::Error as K8sError;
use reconcile_sdk::k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use reconcile_sdk::prelude::*;

struct Verbs;

fn log<T>(call: &str, r: std::result::Result<T, K8sError>) -> Option<T> {
    match r {
        Ok(v) => {
            info!("{call}: ok");
            Some(v)
        }
        Err(e) => {
            let kind = match e {
                K8sError::NotFound(_) => "not_found",
                K8sError::Conflict(_) => "conflict",
                K8sError::Forbidden(_) => "forbidden",
                K8sError::Invalid(_) => "invalid",
                K8sError::Unavailable(_) => "unavailable",
                _ => "other",
            };
            info!("{call}: {kind}");
            None
        }
    }
}

fn secret(name: &str, namespace: &str, value: &str) -> Result<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"cf": "verbs"}},
        "stringData": {"v": value},
    }))?)
}

impl Reconciler for Verbs {
    fn metadata() -> Metadata {
        Metadata::new("cf-verbs", "0.1.0")
            .reconciles::<ConfigMap>()
            .selector("cf=case")
            .field_manager("conformance-verbs")
            .access::<Secret>(&[
                Verb::Get,
                Verb::List,
                Verb::Create,
                Verb::Update,
                Verb::Patch,
                Verb::Delete,
            ])
            .access::<Service>(&[Verb::Get, Verb::Update, Verb::Patch])
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        if cm.data.unwrap_or_default().get("verbs").map(String::as_str) != Some("yes") {
            return Ok(Action::Done);
        }
        let ns = request.namespace().unwrap_or("default").to_owned();
        let name = format!("{}-s", request.name());
        let secrets = Api::<Secret>::namespaced(&ns);
        log("create", secrets.create(&secret(&name, &ns, "1")?));
        if let Some(mut got) = log("get", secrets.get(&name)) {
            got.string_data = Some([("v".to_owned(), "2".to_owned())].into());
            log("replace", secrets.replace(&name, &got));
        }
        log("list", secrets.list(&ListParams::default().labels("cf=verbs")));
        let patch = serde_json::json!({"metadata": {"annotations": {"cf": "patched"}}});
        log("patch", secrets.patch(&name, &Patch::Merge(&patch)));
        log("apply", secrets.apply(&secret(&name, &ns, "3")?));
        log("delete", secrets.delete(&name));

        let svc = format!("{}-svc", request.name());
        let services = Api::<Service>::namespaced(&ns);
        let got = log("get_status", services.get_status(&svc));
        let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        log("patch_status", services.patch_status(&svc, &Patch::Merge(&status)));
        let applied = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}},
        });
        log("apply_status", services.apply_status(&svc, &applied, true));
        if let Some(latest) = got.and_then(|_| services.get_status(&svc).ok()) {
            log("replace_status", services.replace_status(&svc, &latest));
        }
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Verbs);
