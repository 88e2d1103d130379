//! The ConfigMap mirror a first plugin author writes: each ConfigMap
//! labelled `mirror.reconcile.dev/enabled=true` is server-side applied into
//! an owned copy `<name>-mirror`, inside a guest span, and an Event
//! `Mirrored` is recorded about it on every reconcile (repeats are counted
//! on one Event). A ConfigMap with `fail: once` in its data fails its first
//! attempt, so that the retry is seen.
use reconcile_sdk::events::{EventType, record};
use reconcile_sdk::k8s_openapi::api::core::v1::ConfigMap;
use reconcile_sdk::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use reconcile_sdk::prelude::*;

const NAME: &str = "mirror";
const ENABLED: &str = "mirror.reconcile.dev/enabled";

struct Mirror;

impl Reconciler for Mirror {
    fn metadata() -> Metadata {
        Metadata::new(NAME, "0.1.0")
            .reconciles::<ConfigMap>()
            .owns::<ConfigMap>()
            .access::<ConfigMap>(&[Verb::Patch])
            .records_events()
            .field_manager("mirror-controller")
    }

    fn reconcile(request: Request) -> Result<Action> {
        let Some(cm) = request.object::<ConfigMap>()? else {
            return Ok(Action::Done);
        };
        if cm.labels().get(ENABLED).map(String::as_str) != Some("true") {
            return Ok(Action::Done);
        }
        let data = cm.data.clone().unwrap_or_default();
        if data.get("fail").map(String::as_str) == Some("once") && request.attempt() == 1 {
            return Err(Error::new("failing the first attempt, as asked"));
        }
        let namespace = cm.namespace().unwrap_or_else(|| "default".into());
        let name = format!("{}-mirror", cm.name_any());
        let mirror = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some([("mirror.reconcile.dev/of".to_owned(), cm.name_any())].into()),
                owner_references: cm.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(data.clone()),
            ..Default::default()
        };
        try_span("mirror", || {
            Api::<ConfigMap>::namespaced(&namespace).apply(&mirror)
        })?;
        record(
            &cm,
            NAME,
            EventType::Normal,
            "Mirrored",
            "Mirror",
            &format!("mirrored to {name}"),
        )?;
        info!(keys = data.len(), attempt = request.attempt(), copy = name; "mirrored");
        Ok(Action::Done)
    }
}

reconcile_sdk::plugin!(Mirror);
