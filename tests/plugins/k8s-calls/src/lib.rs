//! Makes every call of the `k8s` interface once through the SDK's `Api`, so
//! that tests can check what reaches the host for each verb.
use reconcile_sdk::k8s::{ListParams, Patch, Propagation};
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::k8s_openapi::api::rbac::v1::ClusterRole;
use reconcile_sdk::kube_core::{ApiResource, DynamicObject, GroupVersionKind};
use reconcile_sdk::prelude::*;

struct Calls;

impl Reconciler for Calls {
    fn metadata() -> Metadata {
        Metadata::new("k8s-calls", "0.1.0").reconciles::<ConfigMap>()
    }

    fn reconcile(_request: Request) -> Result<Action> {
        let api = Api::<ConfigMap>::namespaced("apps");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("settings".into());
        cm.data = Some([("k".to_owned(), "v".to_owned())].into());

        let listed = api.list(
            &ListParams::default()
                .labels("app=web")
                .fields("metadata.name=settings")
                .limit(5),
        )?;
        info!(items = listed.items.len(); "listed");
        api.get("settings")?;
        api.create(&cm)?;
        api.apply_without_force(&cm)?;
        api.apply(&cm)?;
        api.patch(
            "settings",
            &Patch::Merge(serde_json::json!({"data": {"k": "w"}})),
        )?;
        api.patch(
            "settings",
            &Patch::Json(serde_json::json!([{"op": "remove", "path": "/data/k"}])),
        )?;
        api.replace("settings", &cm)?;
        let gone = api.delete_with("settings", Some(Propagation::Foreground))?;
        info!(gone = gone.is_none(); "deleted");
        api.get_status("settings")?;
        api.apply_status(
            "settings",
            &serde_json::json!({"status": {"ok": true}}),
            false,
        )?;
        api.patch_status(
            "settings",
            &Patch::Merge(serde_json::json!({"status": {"ok": false}})),
        )?;
        api.replace_status("settings", &cm)?;

        // Cluster-scoped typed and namespaced dynamic types.
        Api::<ClusterRole>::all().get("admin")?;
        let gvk = GroupVersionKind::gvk("demo.reconcile.dev", "v1alpha1", "DemoApp");
        let demo = ApiResource::from_gvk_with_plural(&gvk, "demoapps");
        let mut app = DynamicObject::new("hello", &demo);
        app.data = serde_json::json!({"spec": {"image": "nginx"}});
        Api::<DynamicObject>::namespaced_with("apps", &demo).apply(&app)?;

        // An object over the API server's 3 MiB limit is refused by the host.
        let mut big = cm.clone();
        big.data = Some([("blob".to_owned(), "x".repeat(3 * 1024 * 1024 + 1))].into());
        match api.create(&big) {
            Err(reconcile_sdk::k8s::Error::Invalid(status)) if status.code == 413 => {}
            other => {
                return Err(Error::new(format!(
                    "expected 413 for the oversized object, got {other:?}"
                )));
            }
        }

        // Names that would change the request path are refused by the host.
        let bad_names: [(&str, &str); 3] = [
            ("apps", "../../secrets/token"),
            ("apps", ""),
            ("kube-system/secrets", "x"),
        ];
        for (ns, name) in bad_names {
            match Api::<ConfigMap>::namespaced(ns).get(name) {
                Err(reconcile_sdk::k8s::Error::Invalid(status)) if status.code == 400 => {}
                other => {
                    return Err(Error::new(format!(
                        "expected 400 for {ns:?}/{name:?}, got {other:?}"
                    )));
                }
            }
        }

        // A call that fails reaches the plugin as a typed error.
        match api.get("missing") {
            Err(e) if e.is_not_found() => Ok(Action::Done),
            other => Err(Error::new(format!("expected not-found, got {other:?}"))),
        }
    }
}

reconcile_sdk::plugin!(Calls);
