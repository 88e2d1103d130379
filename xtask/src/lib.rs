//! Builds the guests for `wasm32-wasip2`, for `cargo xtask` and for the
//! host's tests: the example plugins (members of the main workspace, built
//! with its `plugin` profile), and the test and case plugins (workspaces
//! of their own, built with theirs).
//!
//! All builds share one target directory, `target/wasm`; each built
//! component is copied to its output directory as `<name>.wasm` (hyphens
//! kept, as in the package name). The example plugins are also written
//! compressed, `target/plugins-gz/<name>.wasm.gz`, the form a ConfigMap
//! (1 MiB at most) delivers them in.
//!
//! [`guests`] builds the Python and JavaScript twins of the example
//! plugins, and [`dist`] the host as a static (musl) binary.

pub mod dist;
pub mod guests;
pub mod scaffold;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest target.
pub const TARGET: &str = "wasm32-wasip2";

/// A set of guests, how to build them, and where their components go.
#[derive(Clone, Copy, Debug)]
pub struct GuestWorkspace {
    /// Where cargo runs, relative to the project root.
    pub dir: &'static str,
    /// The packages to build (`-p`); empty for the whole workspace.
    pub packages: &'static [&'static str],
    /// The cargo profile.
    pub profile: &'static str,
    /// The output directory, relative to the project root.
    pub out: &'static str,
    /// Where gzip-compressed copies go (`<name>.wasm.gz`), if anywhere.
    pub compressed: Option<&'static str>,
}

/// The example plugins.
pub const PLUGINS: GuestWorkspace = GuestWorkspace {
    dir: ".",
    packages: &["demoapp", "uptime"],
    profile: "plugin",
    out: "target/plugins",
    compressed: Some("target/plugins-gz"),
};
/// The test plugins.
pub const TEST_PLUGINS: GuestWorkspace = GuestWorkspace {
    dir: "tests/plugins",
    packages: &[],
    profile: "release",
    out: "target/test-plugins",
    compressed: None,
};

/// The conformance suite's case plugins.
pub const CONFORMANCE_PLUGINS: GuestWorkspace = GuestWorkspace {
    dir: "tests/conformance/plugins",
    packages: &[],
    profile: "release",
    out: "target/conformance-plugins",
    compressed: None,
};

/// The project root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Adds the wasm target with rustup when the toolchain lacks it (rustup
/// does not install targets by itself). Without rustup, nothing is done and
/// a failed build says what is missing.
pub fn ensure_target(root: &Path) -> Result<(), String> {
    ensure_rust_target(root, TARGET, "the plugins")
}

/// Adds `target` with rustup when the toolchain lacks it; `what` says what
/// cannot be built without it.
pub fn ensure_rust_target(root: &Path, target: &str, what: &str) -> Result<(), String> {
    let installed = Command::new("rustup")
        .current_dir(root)
        .args(["target", "list", "--installed"])
        .output();
    let Ok(installed) = installed else {
        return Ok(());
    };
    if !installed.status.success()
        || String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    eprintln!("installing the {target} target: rustup target add {target}");
    let status = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", target])
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rustup target add {target}` failed: {what} cannot be built without it"
        ))
    }
}

/// Builds `workspace` and copies every component to its output
/// directory. Returns name → path of the copies.
pub fn build(root: &Path, workspace: GuestWorkspace) -> Result<BTreeMap<String, PathBuf>, String> {
    ensure_target(root)?;
    let built = build_guests(
        &root.join(workspace.dir),
        workspace.packages,
        workspace.profile,
        &root.join("target/wasm"),
    )?;
    let out = root.join(workspace.out);
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut copies = BTreeMap::new();
    for (name, wasm) in built {
        let dest = out.join(format!("{name}.wasm"));
        let tmp = out.join(format!(".{name}.wasm.{}.tmp", std::process::id()));
        std::fs::copy(&wasm, &tmp).map_err(|e| format!("cannot copy {}: {e}", wasm.display()))?;
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        if let Some(dir) = workspace.compressed {
            compress(&dest, &root.join(dir).join(format!("{name}.wasm.gz")))?;
        }
        copies.insert(name, dest);
    }
    if let Some(dir) = workspace.compressed {
        // The folder goes whole into a ConfigMap: nothing but the plugins
        // just built may be in it.
        let dir = root.join(dir);
        let keep: Vec<String> = copies.keys().map(|n| format!("{n}.wasm.gz")).collect();
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
            }
        }
    }
    Ok(copies)
}

/// Writes `from` compressed with gzip to `to` (through a temporary file,
/// so that a host reading the directory never sees half of it).
pub fn compress(from: &Path, to: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let bytes = std::fs::read(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let packed = encoder
        .write_all(&bytes)
        .and_then(|()| encoder.finish())
        .map_err(|e| format!("cannot compress {}: {e}", from.display()))?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, packed).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("cannot write {}: {e}", to.display()))
}

/// Runs `cargo build --target wasm32-wasip2` in `dir` (the crate or
/// workspace there; `packages` with `-p`) with `profile`, into
/// `target_dir`. Returns package name → built component. The target must
/// be installed (see [`ensure_target`]).
pub fn build_guests(
    dir: &Path,
    packages: &[&str],
    profile: &str,
    target_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let packages = packages.iter().flat_map(|p| ["-p", *p]);
    let mut child = Command::new(&cargo)
        .current_dir(dir)
        .args([
            "build",
            "--profile",
            profile,
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .args(packages)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut built = BTreeMap::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let name = message["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .replace('_', "-");
            let wasm = message["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"));
            if let Some(wasm) = wasm {
                built.insert(name, PathBuf::from(wasm));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for cargo: {e}"))?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        let hint = if stderr.contains("may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!("\nthe {TARGET} target is missing: run `rustup target add {TARGET}`")
        } else {
            String::new()
        };
        return Err(format!(
            "building {} failed:\n{stderr}{hint}",
            dir.display()
        ));
    }
    Ok(built)
}

/// A custom section named `name` holding `payload`. Appended to a
/// component, it gives another digest and changes nothing else: tests and
/// benchmarks use it for "a new version" that the compile cache has not
/// seen.
pub fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut section = vec![0u8];
    leb128(body.len(), &mut section);
    section.extend(body);
    section
}
