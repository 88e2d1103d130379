//! `reconcile-host test`: case folders in the conformance format run
//! against one plugin; the report and the exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

fn test_command(cases: &Path) -> (i32, String, String) {
    test_plugin(&support::guest("demoapp"), cases)
}

fn test_plugin(plugin: &Path, cases: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_reconcile-host"))
        .arg("test")
        .arg(plugin)
        .arg(cases)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_case_that_holds_passes_and_one_that_does_not_fails_with_what_differed() {
    let cases = xtask::project_root().join("plugins/demoapp/cases");
    let (code, stdout, stderr) = test_command(&cases);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok    demoapp-ready-when-replicas-are ("),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 passed, 0 failed\n"), "{stdout}");

    // The compressed plugin, as a ConfigMap carries it, passes the same.
    support::guest("demoapp");
    let gz = xtask::project_root().join("target/plugins-gz/demoapp.wasm.gz");
    let (code, stdout, stderr) = test_plugin(&gz, &cases);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.ends_with("1 passed, 0 failed\n"), "{stdout}");

    // The same case expecting five replicas.
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("five-replicas");
    std::fs::create_dir(&case).unwrap();
    let text = std::fs::read_to_string(cases.join("ready-when-replicas-are/case.yaml")).unwrap();
    let wrong = text.replace("has: {spec: {replicas: 2}}", "has: {spec: {replicas: 5}}");
    assert_ne!(wrong, text);
    std::fs::write(case.join("case.yaml"), wrong).unwrap();
    let (code, stdout, _) = test_command(&case);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(r#"FAIL  demoapp-ready-when-replicas-are: object Deployment hello: expected to contain {"spec":{"replicas":5}}"#),
        "{stdout}"
    );
    assert!(stdout.ends_with("0 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn a_folder_without_cases_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = test_command(dir.path());
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("holds no case folder (a folder with a case.yaml)"),
        "{stderr}"
    );
}
