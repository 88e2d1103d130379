//! `reconcile-host inspect` on a good plugin and on each kind of bad file,
//! through the real binary; and the compile cache behind every load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{Harness, guest};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn inspect(path: &Path, extra: &[&str]) -> Run {
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("inspect")
        .arg(path)
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A bad file: non-zero exit, nothing on stdout, and one line naming the
/// file and the problem.
fn assert_refused(path: &Path, problem: &str) {
    let run = inspect(path, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(&path.display().to_string()),
        "names the file: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(problem),
        "expected {problem:?} in: {}",
        lines[0]
    );
}

#[test]
fn a_good_plugin_prints_metadata_digest_and_wit_version() {
    let path = guest("demoapp");
    let run = inspect(&path, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))
    };
    for expected in [
        "plugin:      demoapp 0.1.0".to_owned(),
        format!("digest:      sha256:{digest}"),
        "wit:         reconcile:plugin@0.2.0".to_owned(),
        "reconciles:  demo.reconcile.dev/v1alpha1 DemoApp (demoapps, namespaced)".to_owned(),
        "owns:        apps/v1 Deployment (deployments, namespaced)".to_owned(),
        "             v1 Service (services, namespaced)".to_owned(),
        "finalizer:   demo.reconcile.dev/cleanup".to_owned(),
    ] {
        assert!(
            run.stdout.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{}",
            run.stdout
        );
    }
}

#[test]
fn json_output_is_machine_readable() {
    let run = inspect(&guest("traced"), &["--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(value["metadata"]["name"], "traced");
    assert_eq!(value["metadata"]["version"], "1.2.3");
    assert_eq!(value["metadata"]["access"]["http_hosts"][0], "example.com");
    assert_eq!(
        value["metadata"]["access"]["resources"][0]["verbs"],
        serde_json::json!(["get", "list", "watch", "patch"])
    );
    assert_eq!(value["wit"], "reconcile:plugin@0.2.0");
    assert!(value["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.wasm");
    std::fs::write(&path, "#!/bin/sh\necho not wasm\n").unwrap();
    assert_refused(&path, "is not a WebAssembly file");
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    assert_refused(&path, "is a core WebAssembly module, not a component");
}

#[test]
fn a_truncated_component_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(guest("noop")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&path, "is not a valid component");
}

#[test]
fn a_component_of_another_world() {
    assert_refused(
        &guest("not-a-reconciler"),
        "does not target the reconcile:plugin/reconciler world: it exports wasi:cli/run",
    );
}

#[test]
fn a_plugin_of_a_contract_version_the_host_does_not_serve() {
    assert_refused(
        &guest("contract-unknown"),
        "was built against reconcile:plugin@0.9.0, which this host cannot run: it serves reconcile:plugin 0.1.0, 0.2.0",
    );
}

#[test]
fn a_plugin_whose_metadata_traps() {
    assert_refused(
        &guest("bad-metadata"),
        "metadata() failed (trap): the plugin panicked at bad-metadata/src/lib.rs",
    );
}

#[test]
fn a_missing_file() {
    assert_refused(Path::new("no/such/plugin.wasm"), "cannot read");
}

#[tokio::test]
async fn compiled_plugins_are_cached_by_digest_and_bad_entries_are_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let h = Harness::new();
    let config = reconcile_host::engine::EngineConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..reconcile_host::engine::EngineConfig::default()
    };
    let engine =
        reconcile_host::engine::Engine::new(config, h.provider_tracer(), h.logger.clone()).unwrap();
    let plugin = engine.load_file(&guest("noop")).await.unwrap();
    let digest = plugin.digest().strip_prefix("sha256:").unwrap().to_owned();
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = entries[0].clone();
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("{digest}-")) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A corrupt entry is ignored, the plugin recompiled and the entry rewritten.
    std::fs::write(&entry, b"garbage").unwrap();
    let again = engine.load_file(&guest("noop")).await.unwrap();
    assert_eq!(again.digest(), plugin.digest());
    assert_ne!(std::fs::read(&entry).unwrap(), b"garbage");
    let noop = again.reconcile(support::configmap_request("x")).await;
    assert_eq!(noop.outcome, reconcile_host::reconcile::Outcome::Done);
}
