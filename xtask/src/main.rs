//! `cargo xtask <command>`: build orchestration for reconcile-host.
//!
//! - `plugins`: build the example plugins into `target/plugins/` and the
//!   test plugins into `target/test-plugins/`.
//! - `dev`: build the plugins, then run `reconcile-host dev` on the examples.

use std::process::{Command, ExitCode};

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
            // The kubeconfig where the README says it is, unless asked otherwise.
            let mut extra: Vec<String> = args[1..].to_vec();
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
            let status = Command::new(cargo)
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
                .status();
            match status {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => fail(&format!("cannot run the host: {e}")),
            }
        }
        _ => {
            eprintln!("usage: cargo xtask <plugins|dev>");
            eprintln!(
                "  plugins  build plugins/ into target/plugins and tests/plugins into target/test-plugins"
            );
            eprintln!(
                "  dev      build the plugins and run `reconcile-host dev` on deploy/crds and deploy/examples\n           (extra arguments go to it, such as --exit-when-idle)"
            );
            ExitCode::from(2)
        }
    }
}

fn build_all(root: &std::path::Path) -> Result<(), String> {
    for workspace in [xtask::PLUGINS, xtask::TEST_PLUGINS] {
        let built = xtask::build(root, workspace)?;
        for path in built.values() {
            eprintln!("built {}", path.display());
        }
    }
    Ok(())
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
