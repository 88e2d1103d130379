//! The conformance suite (`tests/conformance/`) against `reconcile-host`,
//! through the adapter this project ships; and the suite failing when the
//! host breaks its promises, so that a case that cannot fail is caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use reconcile_conformance::{Options, Outcome, case};

/// The case plugins, built once per test process.
fn plugins() -> &'static PathBuf {
    static PLUGINS: OnceLock<PathBuf> = OnceLock::new();
    PLUGINS.get_or_init(|| reconcile_conformance::build_plugins().unwrap())
}

fn options(env: &[(&str, &str)]) -> Options {
    let mut all: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert(
        "RECONCILE_HOST".to_owned(),
        env!("CARGO_BIN_EXE_reconcile-host").to_owned(),
    );
    Options {
        adapter: reconcile_conformance::reconcile_host_adapter(),
        plugins: plugins().clone(),
        protocol: "http/protobuf".to_owned(),
        env: all,
        cache_dir: Some(xtask::project_root().join("target/test-compile-cache")),
        start_timeout: std::time::Duration::from_secs(30),
        wait_cap: None,
    }
}

fn cases() -> Vec<case::Case> {
    case::load_all(&reconcile_conformance::cases_dir()).unwrap()
}

fn outcome<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
    outcomes.iter().find(|o| o.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_against_reconcile_host() {
    let cases = cases();
    assert!(cases.len() >= 33, "{} cases", cases.len());
    let outcomes = reconcile_conformance::run_suite(&cases, &options(&[]), 2).await;
    let report = reconcile_conformance::report(&outcomes);
    println!("{report}");
    assert!(outcomes.iter().all(|o| o.failure.is_none()), "{report}");
    assert!(report.ends_with(&format!("{} passed, 0 failed\n", cases.len())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_over_grpc_passes_too() {
    let cases = reconcile_conformance::select(cases(), &["root-span".to_owned()]);
    let mut options = options(&[]);
    options.protocol = "grpc".to_owned();
    let outcomes = reconcile_conformance::run_suite(&cases, &options, 1).await;
    assert!(outcomes[0].failure.is_none(), "{:?}", outcomes[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_fail_when_the_host_breaks_their_promises() {
    // No spans exported: every case that expects a span fails, naming it
    // (no wait for spans lasts over 3 s: they are not coming).
    let mut off = options(&[("OTEL_TRACES_SAMPLER", "always_off")]);
    off.wait_cap = Some(std::time::Duration::from_secs(3));
    let outcomes = reconcile_conformance::run_suite(&cases(), &off, 4).await;
    for name in [
        "root-span",
        "k8s-apply",
        "requeue-after",
        "trap-then-retry",
        "deadline",
        "typed-errors-404-409",
        "finalizer",
        "k8s-verbs",
        "backoff-and-attempt",
        "guest-bounds",
        "concurrency-limit",
        "crd-installed-later",
        "contract-0.1.0",
    ] {
        let failure = outcome(&outcomes, name).failure.clone();
        let failure = failure.unwrap_or_else(|| panic!("{name} passed without spans"));
        assert!(
            failure.contains("wait_spans") || failure.contains("span "),
            "{name}: {failure}"
        );
    }

    // A grant that refuses the plugin: it never runs.
    let mut refused = reconcile_conformance::select(cases(), &["k8s-apply".to_owned()]);
    refused[0].grant = "[[resources]]\nkind = \"ConfigMap\"\nverbs = [\"get\"]\n".to_owned();
    let mut quick = options(&[]);
    quick.start_timeout = std::time::Duration::from_secs(5);
    let outcomes = reconcile_conformance::run_suite(&refused, &quick, 1).await;
    let failure = outcomes[0]
        .failure
        .clone()
        .expect("k8s-apply passed with a refused grant");
    assert!(failure.contains("did not start watching"), "{failure}");
    assert!(failure.contains("grant"), "{failure}");

    // An adapter that starts nothing useful.
    let mut wrong = options(&[]);
    wrong.adapter = PathBuf::from("/bin/false");
    let some = reconcile_conformance::select(cases(), &["root-span".to_owned()]);
    let outcomes = reconcile_conformance::run_suite(&some, &wrong, 1).await;
    let failure = outcomes[0]
        .failure
        .clone()
        .expect("root-span passed without a host");
    assert!(failure.contains("the host exited at start"), "{failure}");
}

#[test]
fn the_runner_does_not_depend_on_the_host() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(xtask::project_root())
        .args([
            "tree",
            "-p",
            "reconcile-conformance",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(tree.contains("reconcile-apiserver"), "{tree}");
    assert!(
        !tree.lines().any(|l| l.starts_with("reconcile-host ")),
        "the runner links the host:\n{tree}"
    );
}
