//! `cargo xtask new-plugin`: the crate it writes builds, and `dev` runs it
//! on its CRD and example. (Its own `cargo test` runs in `.ci/run`: it
//! builds the harness as a dependency of another workspace.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn a_scaffolded_plugin_builds_and_dev_runs_it() {
    let root = xtask::project_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hello-world");
    xtask::scaffold::create("hello-world", &dir, &root).unwrap();
    // A second time is refused: nothing is overwritten.
    let again = xtask::scaffold::create("hello-world", &dir, &root).unwrap_err();
    assert!(again.contains("exists already"), "{again}");
    let bad = xtask::scaffold::create("Hello", &tmp.path().join("x"), &root).unwrap_err();
    assert!(bad.contains("lower-case letters"), "{bad}");

    xtask::ensure_target(&root).unwrap();
    let built = xtask::build_guests(&dir, &[], "release", &root.join("target/wasm")).unwrap();
    let wasm = &built["hello-world"];
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(wasm, plugins.join("hello_world.wasm")).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .args([
            "--log-format",
            "json",
            "dev",
            "--exit-when-idle",
            "--plugins",
        ])
        .arg(&plugins)
        .arg("--apply")
        .arg(dir.join("deploy/crd.yaml"))
        .arg("--apply")
        .arg(dir.join("deploy/example.yaml"))
        .arg("--kubeconfig")
        .arg(tmp.path().join("kubeconfig"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    // The trace view of dev: the reconcile and the plugin's line in it.
    assert!(
        stdout.contains("reconcile  hello-world  HelloWorld  default/hello"),
        "{stdout}"
    );
    assert!(stdout.contains("applied its ConfigMap"), "{stdout}");
    assert!(stderr.contains(r#""failed":0"#), "{stderr}");
}
