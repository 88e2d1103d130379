//! `reconcile-host test PLUGIN.wasm CASES...`: the conformance suite's case
//! format run against one plugin, for authors who do not write Rust. Each
//! case's `plugin` is replaced by the plugin given; the host under test is
//! this binary, started by the suite's own adapter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reconcile_conformance::{Options, case};

/// The adapter the suite ships for reconcile-host.
const ADAPTER: &str = include_str!("../../tests/conformance/adapters/reconcile-host");

/// Cases from `paths`: a case folder (with `case.yaml`) or a folder of
/// them.
pub fn load_cases(paths: &[PathBuf]) -> Result<Vec<case::Case>, String> {
    let mut cases = Vec::new();
    for path in paths {
        if path.join("case.yaml").is_file() {
            cases.push(case::load(path)?);
        } else if path.is_dir() {
            let found = case::load_all(path)?;
            if found.is_empty() {
                return Err(format!(
                    "{} holds no case folder (a folder with a case.yaml)",
                    path.display()
                ));
            }
            cases.extend(found);
        } else {
            return Err(format!(
                "{} is not a case folder (no case.yaml) or a folder of them",
                path.display()
            ));
        }
    }
    Ok(cases)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cases` against `plugin`, `jobs` at once, with `host` (this
/// binary) under test. Returns the report (as the conformance runner
/// prints it) and whether every case passed.
pub async fn run(
    plugin: &Path,
    mut cases: Vec<case::Case>,
    jobs: usize,
    host: &Path,
) -> Result<(String, bool), String> {
    let file_name = plugin
        .file_name()
        .and_then(|s| s.to_str())
        .filter(|n| crate::files::is_plugin_name(n))
        .ok_or_else(|| format!("{} is not a .wasm or .wasm.gz file", plugin.display()))?
        .to_owned();
    let name = crate::files::plugin_stem(Path::new(&file_name))
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = TempDir(std::env::temp_dir().join(format!(
        "reconcile-host-test-{}-{nanos}",
        std::process::id()
    )));
    let plugins = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins)
        .map_err(|e| format!("cannot create {}: {e}", plugins.display()))?;
    // The case runner takes `NAME.wasm`: a compressed plugin goes in
    // decompressed, as the host would read it.
    let component = crate::files::read_plugin(plugin)
        .map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    std::fs::write(plugins.join(format!("{name}.wasm")), component)
        .map_err(|e| format!("cannot write {}: {e}", plugins.display()))?;
    let adapter = dir.0.join("adapter");
    std::fs::write(&adapter, ADAPTER)
        .map_err(|e| format!("cannot write {}: {e}", adapter.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&adapter, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", adapter.display()))?;
    }
    for case in &mut cases {
        case.plugin = name.clone();
    }
    let options = Options {
        adapter,
        plugins,
        protocol: "http/protobuf".to_owned(),
        env: [("RECONCILE_HOST".to_owned(), host.display().to_string())].into(),
        cache_dir: Some(dir.0.join("cache")),
        start_timeout: Duration::from_secs(30),
        wait_cap: None,
    };
    let outcomes = reconcile_conformance::run_suite(&cases, &options, jobs.max(1)).await;
    let passed = outcomes.iter().all(|o| o.failure.is_none());
    Ok((reconcile_conformance::report(&outcomes), passed))
}
