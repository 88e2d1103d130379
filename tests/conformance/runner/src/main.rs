//! `reconcile-conformance`: runs the conformance cases against a host
//! through its adapter.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs the host conformance suite against the host an adapter starts.
#[derive(Parser, Debug)]
#[command(name = "reconcile-conformance", version, about)]
struct Cli {
    /// The adapter: an executable that starts the host under test (see
    /// tests/conformance/README.md). Default: the one for reconcile-host.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The directory of cases (default: tests/conformance/cases).
    #[arg(long)]
    cases: Option<PathBuf>,
    /// The directory of built case plugins (default: build them).
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// The OTLP protocol the host is told to use: http/protobuf or grpc.
    #[arg(long, default_value = "http/protobuf")]
    protocol: String,
    /// Cases run at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The contract versions the host serves (repeatable; default: all):
    /// cases for none of them are left out, and named.
    #[arg(long = "contract")]
    contracts: Vec<String>,
    /// The longest any wait step waits, in ms, whatever its case says.
    #[arg(long)]
    wait_cap_ms: Option<u64>,
    /// List the cases and what each pins, and run none.
    #[arg(long)]
    list: bool,
    /// Run only the cases whose name contains one of these.
    filters: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cases_dir = cli
        .cases
        .clone()
        .unwrap_or_else(reconcile_conformance::cases_dir);
    let cases = match reconcile_conformance::case::load_all(&cases_dir) {
        Ok(cases) => reconcile_conformance::select(cases, &cli.filters),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cases, left_out) = reconcile_conformance::for_contracts(cases, &cli.contracts);
    if !left_out.is_empty() {
        println!(
            "left out, for contract versions not served ({}): {}",
            cli.contracts.join(", "),
            left_out.join(", ")
        );
    }
    if cli.list {
        for case in &cases {
            println!(
                "{}  [{}]  {}",
                case.name,
                case.contract.join(", "),
                case.pins
            );
        }
        return ExitCode::SUCCESS;
    }
    let plugins = match cli.plugins.clone() {
        Some(dir) => dir,
        None => match reconcile_conformance::build_plugins() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let cache = tempfile::tempdir().ok();
    let options = reconcile_conformance::Options {
        adapter: cli
            .adapter
            .clone()
            .unwrap_or_else(reconcile_conformance::reconcile_host_adapter),
        plugins,
        protocol: cli.protocol.clone(),
        env: Default::default(),
        cache_dir: cache.as_ref().map(|d| d.path().to_owned()),
        start_timeout: std::time::Duration::from_secs(30),
        wait_cap: cli.wait_cap_ms.map(std::time::Duration::from_millis),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(reconcile_conformance::run_suite(&cases, &options, cli.jobs));
    print!("{}", reconcile_conformance::report(&outcomes));
    if let Some(path) = &cli.junit
        && let Err(e) = std::fs::write(
            path,
            reconcile_conformance::junit::render("conformance", &outcomes),
        )
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if outcomes.iter().all(|o| o.failure.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
