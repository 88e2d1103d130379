//! `cargo xtask dist`: the static (musl) binary is built, has no program
//! interpreter, and runs: `--version`, and `inspect` on a plugin.
//!
//! The test builds with the dev profile (the same target, linker and
//! static linking as the release build the Containerfile makes, in a
//! fraction of the time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

#[test]
fn dist_builds_a_static_binary_that_runs() {
    let root = xtask::project_root();
    let binary = xtask::dist::build(&root, "dev").unwrap();
    assert_eq!(binary, root.join("target/dist/reconcile-host"));
    let bytes = std::fs::read(&binary).unwrap();
    assert!(
        xtask::dist::is_static_elf(&bytes),
        "has a program interpreter"
    );
    // The glibc build, for comparison, is dynamic.
    let dynamic = std::fs::read(env!("CARGO_BIN_EXE_reconcile-host")).unwrap();
    assert!(!xtask::dist::is_static_elf(&dynamic));

    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("reconcile-host {}", env!("CARGO_PKG_VERSION"))
    );
    let cache = tempfile::tempdir().unwrap();
    let inspect = Command::new(&binary)
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("inspect")
        .arg(support::guest("demoapp"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let out = String::from_utf8_lossy(&inspect.stdout);
    assert!(out.contains("plugin:      demoapp 0.1.0"), "{out}");
    assert!(out.contains("wit:         reconcile:plugin@0.2.0"), "{out}");
}
