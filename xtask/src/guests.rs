//! Guests in Python and JavaScript: the example twins of `plugins/demoapp`,
//! `plugins/demoapp-py` into `target/plugins-py/` and `plugins/demoapp-js`
//! into `target/plugins-js/` (a folder each, not `target/plugins/`, so that
//! `dev` on a folder runs one DemoApp controller), and the test guests of
//! `tests/plugins/*-py` and `*-js` into `target/test-plugins/`.
//!
//! The tools are installed here on first use, pinned:
//! - Python: `componentize-py` in a virtualenv, `target/guest-tools/python`
//!   (it carries its own CPython; the machine's `python3` only makes the
//!   virtualenv).
//! - JavaScript: `npm ci` in `guest-sdk/js` (jco, componentize-js and
//!   TypeScript from its lockfile); the contract's `.d.ts` types are
//!   generated into `guest-sdk/js/types` (`jco guest-types`) and the twin
//!   and the SDK type-checked (`tsc`) before the build.
//!
//! A twin is rebuilt only when a file it is built from is newer than it
//! (componentize is not incremental).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The pinned Python tools.
pub const PYTHON_TOOLS: [&str; 1] = ["componentize-py==0.25.1"];

/// The language of a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// componentize-py.
    Python,
    /// jco componentize (componentize-js), TypeScript.
    JavaScript,
}

/// One guest in Python or JavaScript.
#[derive(Clone, Copy, Debug)]
pub struct Guest {
    /// The component's name (`<name>.wasm`).
    pub name: &'static str,
    /// Its language.
    pub language: Language,
    /// Its folder, relative to the project root: `app.py` or `app.ts`.
    pub dir: &'static str,
    /// Where its component goes, relative to the project root.
    pub out: &'static str,
}

/// The example twins.
pub const TWINS: [Guest; 2] = [
    Guest {
        name: "demoapp-py",
        language: Language::Python,
        dir: "plugins/demoapp-py",
        out: "target/plugins-py",
    },
    Guest {
        name: "demoapp-js",
        language: Language::JavaScript,
        dir: "plugins/demoapp-js",
        out: "target/plugins-js",
    },
];

/// The test guests in Python and JavaScript.
pub const TEST_GUESTS: [Guest; 4] = [
    Guest {
        name: "noop-py",
        language: Language::Python,
        dir: "tests/plugins/noop-py",
        out: "target/test-plugins",
    },
    Guest {
        name: "noop-js",
        language: Language::JavaScript,
        dir: "tests/plugins/noop-js",
        out: "target/test-plugins",
    },
    Guest {
        name: "fault-py",
        language: Language::Python,
        dir: "tests/plugins/fault-py",
        out: "target/test-plugins",
    },
    Guest {
        name: "fault-js",
        language: Language::JavaScript,
        dir: "tests/plugins/fault-js",
        out: "target/test-plugins",
    },
];

/// The contract the guests are built against.
const WIT: &str = "wit/0.2.0";

/// Builds `guests` where stale; name → component.
pub fn build(root: &Path, guests: &[Guest]) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut built = BTreeMap::new();
    for guest in guests {
        let out = root.join(guest.out);
        std::fs::create_dir_all(&out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let dest = out.join(format!("{}.wasm", guest.name));
        // What it is built from and with (the tools' pins included).
        let sdk: &[&str] = match guest.language {
            Language::Python => &["guest-sdk/python"],
            Language::JavaScript => &[
                "guest-sdk/js/src",
                "guest-sdk/js/package-lock.json",
                "guest-sdk/js/tsconfig.json",
            ],
        };
        let mut sources = vec![root.join(guest.dir), root.join(WIT)];
        sources.extend(sdk.iter().map(|p| root.join(p)));
        if newest(&sources) < modified(&dest) {
            built.insert(guest.name.to_owned(), dest);
            continue;
        }
        let tmp = out.join(format!(".{}.{}.tmp.wasm", guest.name, std::process::id()));
        match guest.language {
            Language::Python => python(root, guest, &tmp)?,
            Language::JavaScript => javascript(root, guest, &tmp)?,
        }
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        built.insert(guest.name.to_owned(), dest);
    }
    Ok(built)
}

fn python(root: &Path, guest: &Guest, out: &Path) -> Result<(), String> {
    let venv = venv(
        root,
        "target/guest-tools/python",
        &PYTHON_TOOLS,
        "the Python guests",
    )?;
    let dir = root.join(guest.dir);
    let sdk = root.join("guest-sdk/python");
    run(
        Command::new(venv.join("bin/componentize-py"))
            .current_dir(&dir)
            .arg("-d")
            .arg(root.join(WIT))
            .args([
                "-w",
                "reconciler",
                // The contract's `types` and wasi:http's clash: named as
                // the SDK imports them.
                "--import-interface-name",
                "reconcile:plugin/types@0.2.0=types",
                "--import-interface-name",
                "wasi:http/types@0.2.12=http_types",
                "componentize",
                "app",
                "-p",
                ".",
                "-p",
            ])
            .arg(&sdk)
            .arg("-o")
            .arg(out),
        &format!("componentize-py for {}", guest.name),
    )
}

fn javascript(root: &Path, guest: &Guest, out: &Path) -> Result<(), String> {
    let sdk = root.join("guest-sdk/js");
    npm_ci(&sdk)?;
    let bin = sdk.join("node_modules/.bin");
    run(
        Command::new(bin.join("jco")).current_dir(&sdk).args([
            "guest-types",
            "../../wit/0.2.0",
            "--world-name",
            "reconciler",
            "-o",
            "types",
            "-q",
        ]),
        "jco guest-types",
    )?;
    run(
        Command::new(bin.join("tsc"))
            .current_dir(&sdk)
            .args(["-p", "tsconfig.json"]),
        &format!("tsc (type-checking {} and the SDK)", guest.name),
    )?;
    run(
        Command::new(bin.join("jco"))
            .current_dir(root)
            .arg("componentize")
            .arg(Path::new(guest.dir).join("app.ts"))
            .args([
                "--wit",
                WIT,
                "--world-name",
                "reconciler",
                "--bundle-config",
            ])
            .arg(sdk.join("rolldown.config.mjs"))
            .arg("-o")
            .arg(out),
        &format!("jco componentize for {}", guest.name),
    )
}

/// `npm ci` in `dir` unless its `node_modules` is as its lockfile says.
fn npm_ci(dir: &Path) -> Result<(), String> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    if modified(&lock) < modified(&installed) {
        return Ok(());
    }
    eprintln!(
        "installing the JavaScript guest tools into {}: npm ci",
        dir.join("node_modules").display()
    );
    run(
        Command::new("npm")
            .current_dir(dir)
            .args(["ci", "--no-audit", "--no-fund"]),
        "npm ci (the JavaScript guests need node and npm)",
    )
}

/// A virtualenv at `dir` (relative to `root`) with `tools`, made when
/// missing or when the pins changed; its path. `what` says what needs it.
pub fn venv(root: &Path, dir: &str, tools: &[&str], what: &str) -> Result<PathBuf, String> {
    let venv = root.join(dir);
    let marker = venv.join("installed.txt");
    let wanted = tools.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(venv);
    }
    eprintln!(
        "installing the tools for {what} into {}: {}",
        venv.display(),
        tools.join(", ")
    );
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        &format!("python3 -m venv (for {what}: python3 with venv, python3-venv)"),
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(tools),
        &format!("pip install {}", tools.join(" ")),
    )?;
    std::fs::write(&marker, wanted)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(venv)
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files under `paths`.
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let skip = path
                .file_name()
                .is_some_and(|n| n == "node_modules" || n == "__pycache__" || n == "types");
            if !skip && let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(t) = meta.modified() {
            newest = newest.max(Some(t));
        }
    }
    newest
}
