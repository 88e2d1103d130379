//! The embedded API server's body and patch parsing: any bytes, as any of
//! the content types it accepts, parsed and then written (create, and each
//! patch type against an existing object). Errors are fine; a panic, a
//! hang or a stack overflow is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconcile_apiserver::Store;
use reconcile_apiserver::apply::Scope;
use reconcile_apiserver::store::{PatchType, WriteOptions};
use serde_json::json;

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/apply-patch+yaml",
    "application/merge-patch+json",
    "text/plain",
];

fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let Ok(value) = reconcile_apiserver::parse_body(body, content_type) else {
        return;
    };
    let store = Store::new(100);
    let registry = store.registry();
    let (Some(configmaps), Some(deployments)) = (
        registry.find("", "v1", "configmaps"),
        registry.find("apps", "v1", "deployments"),
    ) else {
        return;
    };
    let options = WriteOptions {
        manager: "fuzz".into(),
        dry_run: false,
        force: selector & 0x80 != 0,
    };
    let _ = store.create(&configmaps, Some("default"), value.clone(), &options);
    let _ = store.create(&deployments, Some("default"), value.clone(), &options);
    let base = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "base", "labels": {"a": "b"}}, "data": {"k": "v"}});
    if store
        .create(&configmaps, Some("default"), base, &options)
        .is_err()
    {
        return;
    }
    for kind in [
        PatchType::Merge,
        PatchType::Json,
        PatchType::Strategic,
        PatchType::Apply,
    ] {
        let _ = store.patch(
            &configmaps,
            Scope::Main,
            Some("default"),
            "base",
            kind,
            &value,
            &options,
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // As in the server: deep (allowed) nesting recurses on a big stack.
    let data = data.to_vec();
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || run(&data));
    if let Ok(worker) = worker
        && worker.join().is_err()
    {
        // A panic in `run`: let libFuzzer see it.
        std::process::abort();
    }
});
