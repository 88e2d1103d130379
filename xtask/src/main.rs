//! `cargo xtask <command>`: build orchestration for reconcile-host.
//!
//! - `plugins`: build the example plugins into `target/plugins/` (and
//!   compressed, for a ConfigMap, into `target/plugins-gz/`) and the test
//!   plugins into `target/test-plugins/`.
//! - `dev`: build the plugins, then run `reconcile-host dev` on the examples;
//!   with `--watch`, rebuild the example plugins when their sources change
//!   (the running host reloads them from `target/plugins`).
//! - `dist [--profile P]`: the host as a static (musl) binary in
//!   `target/dist/reconcile-host` (`release` by default).

use std::process::{Command, ExitCode};

mod watch;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = xtask::project_root();
    match args.first().map(String::as_str) {
        Some("plugins") => match build_all(&root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Some("dev") => {
            if let Err(e) = build_all(&root) {
                return fail(&e);
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let watch = args[1..].iter().any(|a| a == "--watch");
            // The kubeconfig where the README says it is, unless asked otherwise.
            let mut extra: Vec<String> = args[1..]
                .iter()
                .filter(|a| *a != "--watch")
                .cloned()
                .collect();
            // The example server uptime's example checks.
            if !extra.iter().any(|a| a.starts_with("--example-http")) {
                extra.extend(["--example-http".to_owned(), "127.0.0.1:18080".to_owned()]);
            }
            if !extra.iter().any(|a| a.starts_with("--kubeconfig")) {
                extra.extend([
                    "--kubeconfig".to_owned(),
                    "target/reconcile-host-dev.kubeconfig".to_owned(),
                ]);
            }
            let host = Command::new(cargo)
                .current_dir(&root)
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "reconcile-host",
                    "--",
                    "dev",
                    "--apply",
                    "deploy/crds",
                    "--apply",
                    "deploy/examples",
                ])
                .args(&extra)
                .spawn();
            let mut host = match host {
                Ok(host) => host,
                Err(e) => return fail(&format!("cannot run the host: {e}")),
            };
            let status = if watch {
                watch::rebuild_on_change(&root, &mut host)
            } else {
                host.wait()
            };
            match status {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => fail(&format!("cannot run the host: {e}")),
            }
        }
        Some("dist") => {
            let profile = match args.iter().position(|a| a == "--profile") {
                Some(i) => match args.get(i + 1) {
                    Some(p) => p.clone(),
                    None => return fail("--profile needs a cargo profile (release, dev, ...)"),
                },
                None => "release".to_owned(),
            };
            match xtask::dist::build(&root, &profile) {
                Ok(path) => {
                    eprintln!(
                        "built {} (static, {})",
                        path.display(),
                        xtask::dist::target()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Some("new-plugin") => {
            let Some(name) = args.get(1) else {
                return fail("usage: cargo xtask new-plugin NAME [--dir DIR]");
            };
            let dir = match args.iter().position(|a| a == "--dir") {
                Some(i) => match args.get(i + 1) {
                    Some(dir) => std::path::PathBuf::from(dir),
                    None => return fail("--dir needs a directory"),
                },
                None => std::path::PathBuf::from(name),
            };
            match xtask::scaffold::create(name, &dir, &root) {
                Ok(dir) => {
                    eprintln!(
                        "created {}: `cargo test` there runs its test; see its README.md",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        _ => {
            eprintln!("usage: cargo xtask <plugins|dev|dist|new-plugin>");
            eprintln!(
                "  plugins  build plugins/ into target/plugins (compressed: target/plugins-gz) and tests/plugins into target/test-plugins"
            );
            eprintln!(
                "  new-plugin NAME [--dir DIR]  a plugin crate to start from (CRD type, harness test, grant, CRD)"
            );
            eprintln!(
                "  dev      build the plugins and run `reconcile-host dev` on deploy/crds and deploy/examples\n           (extra arguments go to it, such as --exit-when-idle)\n           --watch: rebuild plugins/ when its sources change; the host reloads them"
            );
            eprintln!(
                "  dist [--profile P]  the host as a static (musl) binary: target/dist/reconcile-host"
            );
            ExitCode::from(2)
        }
    }
}

fn build_all(root: &std::path::Path) -> Result<(), String> {
    for workspace in [
        xtask::PLUGINS,
        xtask::TEST_PLUGINS,
        xtask::CONFORMANCE_PLUGINS,
    ] {
        let built = xtask::build(root, workspace)?;
        for path in built.values() {
            eprintln!("built {}", path.display());
        }
    }
    for guests in [&xtask::guests::TWINS[..], &xtask::guests::TEST_GUESTS[..]] {
        for path in xtask::guests::build(root, guests)?.values() {
            eprintln!("built {}", path.display());
        }
    }
    Ok(())
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
