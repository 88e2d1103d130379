//! `cargo xtask new-plugin NAME [--dir DIR]`: a plugin crate to start
//! from, with a CRD type, a test written with the harness, a grant file,
//! the CRD and an example object. It is a workspace of its own and
//! depends on this checkout's SDK and harness by path.

use std::path::{Path, PathBuf};

const FILES: [(&str, &str); 7] = [
    (
        "Cargo.toml",
        include_str!("../templates/plugin/Cargo.toml.in"),
    ),
    ("src/lib.rs", include_str!("../templates/plugin/lib.rs.in")),
    (
        "tests/reconcile.rs",
        include_str!("../templates/plugin/test.rs.in"),
    ),
    (
        "{{name}}.grants.toml",
        include_str!("../templates/plugin/grants.toml.in"),
    ),
    (
        "deploy/crd.yaml",
        include_str!("../templates/plugin/crd.yaml.in"),
    ),
    (
        "deploy/example.yaml",
        include_str!("../templates/plugin/example.yaml.in"),
    ),
    (
        "README.md",
        include_str!("../templates/plugin/README.md.in"),
    ),
];

/// Names the generated crate could not use: crates it depends on, names
/// cargo or Rust reserve, and kinds that clash with what it imports.
const TAKEN: [&str; 16] = [
    "kube",
    "serde",
    "serde-json",
    "schemars",
    "tokio",
    "k8s-openapi",
    "reconcile-sdk",
    "reconcile-test",
    "test",
    "self",
    "std",
    "core",
    "alloc",
    "config-map",
    "api",
    "request",
];

/// Whether `name` can name a plugin crate: lower-case letters, digits and
/// hyphens, starting with a letter, at most 40 characters, and not taken.
fn valid(name: &str) -> bool {
    !TAKEN.contains(&name)
        && !["result", "action", "metadata", "verb", "error", "reason"].contains(&name)
        && !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `my-plugin` → `MyPlugin`.
fn kind_of(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Writes the crate for plugin `name` into `dir` (which must not exist).
/// `root` is this checkout (for the path dependencies; its `Cargo.lock`
/// is copied so that the crate builds with the same versions).
pub fn create(name: &str, dir: &Path, root: &Path) -> Result<PathBuf, String> {
    if !valid(name) {
        return Err(format!(
            "{name:?} cannot name a plugin: use lower-case letters, digits and hyphens, starting with a letter (my-plugin)"
        ));
    }
    if dir.exists() {
        return Err(format!(
            "{} exists already: choose another --dir",
            dir.display()
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    let root_text = root.display().to_string();
    if root_text.contains(['"', '\\']) {
        return Err(format!(
            "the checkout's path {root_text} has a quote or a backslash, which the crate's Cargo.toml cannot hold"
        ));
    }
    let kind = kind_of(name);
    let singular = kind.to_ascii_lowercase();
    let vars = [
        ("{{name}}", name.to_owned()),
        ("{{lib}}", name.replace('-', "_")),
        ("{{Kind}}", kind),
        ("{{plural}}", format!("{singular}s")),
        ("{{singular}}", singular),
        ("{{root}}", root.display().to_string()),
    ];
    let fill = |text: &str| {
        vars.iter()
            .fold(text.to_owned(), |t, (k, v)| t.replace(k, v))
    };
    let write = || -> Result<(), String> {
        for (path, text) in FILES {
            let path = dir.join(fill(path));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&path, fill(text))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let lock = root.join("Cargo.lock");
        if lock.is_file() {
            std::fs::copy(&lock, dir.join("Cargo.lock"))
                .map_err(|e| format!("cannot copy {}: {e}", lock.display()))?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        // Nothing half-made left behind to be refused next time.
        let _ = std::fs::remove_dir_all(dir);
        return Err(e);
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds() {
        assert!(valid("my-plugin") && valid("a1"));
        for bad in [
            "",
            "My",
            "1a",
            "a_b",
            "a-",
            "a/b",
            "kube",
            "test",
            "config-map",
            "result",
        ] {
            assert!(!valid(bad), "{bad}");
        }
        assert_eq!(kind_of("my-plugin"), "MyPlugin");
        assert_eq!(kind_of("web2"), "Web2");
    }
}
