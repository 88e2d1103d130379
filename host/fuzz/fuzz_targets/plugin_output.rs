//! What the host decodes from a plugin: its metadata (names, types,
//! access, finalizer) checked and turned into a grant, the label and field
//! selectors of its list calls matched against objects, the object bodies
//! it sends, and the manifests and objects users hand to `dev` and `call`.
//! Errors are fine; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconcile_apiserver::selectors::{FieldSelector, LabelSelector};
use reconcile_host::caps::k8s::ResourceType;
use reconcile_host::grants::Grant;
use reconcile_host::metadata::{AccessRequest, PluginMetadata, ResourceAccess, Verb};

const VERBS: [Verb; 7] = [
    Verb::Get,
    Verb::List,
    Verb::Watch,
    Verb::Create,
    Verb::Update,
    Verb::Patch,
    Verb::Delete,
];

fn resource(parts: &mut impl Iterator<Item = String>, namespaced: bool) -> ResourceType {
    ResourceType {
        group: parts.next().unwrap_or_default(),
        version: parts.next().unwrap_or_default(),
        kind: parts.next().unwrap_or_default(),
        plural: parts.next().unwrap_or_default(),
        namespaced,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\u{1f}').map(str::to_owned);
    let name = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    let primary = resource(&mut parts, flags & 1 != 0);
    let owned = resource(&mut parts, flags & 2 != 0);
    let accessed = resource(&mut parts, flags & 4 != 0);
    let finalizer = parts.next();
    let labels = parts.next().unwrap_or_default();
    let fields = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let metadata = PluginMetadata {
        name,
        version,
        primary,
        owns: vec![owned],
        access: AccessRequest {
            resources: vec![ResourceAccess {
                resource: accessed,
                verbs: VERBS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| flags & (1 << (i % 8)) != 0)
                    .map(|(_, v)| *v)
                    .collect(),
            }],
            http_hosts: parts.next().into_iter().collect(),
        },
        finalizer,
        primary_selector: None,
        field_manager: None,
    };
    if metadata.validate().is_ok() {
        let grant = Grant::from_request(&metadata);
        let _ = grant.check(&metadata);
        let _ = grant.to_string();
        let _ = grant.watch_namespaces(&metadata.primary);
    }
    let object = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
    if let Ok(selector) = LabelSelector::parse(&labels) {
        let _ = selector.matches_object(&object);
    }
    if let Ok(selector) = FieldSelector::parse(&fields) {
        let _ = selector.matches_object(&object);
    }
    let _ = reconcile_host::operator::manifests::documents(&body);
    let _ = reconcile_host::operator::manifests::first_object(&body);
});
