//! `cargo xtask dist`: the host as one static binary (musl), for the
//! container image and for copying onto a machine as is.
//!
//! The binary is `target/dist/reconcile-host`, built for
//! `<arch>-unknown-linux-musl` (the target added with rustup if missing),
//! with the `release` profile unless `--profile` says otherwise. It is
//! checked to be static: an ELF without a program interpreter.
//!
//! The C parts of the dependencies (ring, mimalloc, zstd) need a C
//! compiler for musl; most machines have none. `zig cc` is one, with musl's
//! headers inside: `ziglang` and `cargo-zigbuild` (PyPI) are installed
//! into a virtualenv in `target/dist-tools`, and the build runs through
//! `cargo-zigbuild`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The musl target of this machine's architecture.
pub fn target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// Builds the static binary with `profile`; its path.
pub fn build(root: &Path, profile: &str) -> Result<PathBuf, String> {
    let target = target();
    crate::ensure_rust_target(root, &target, "the static binary")?;
    let tools = tools(root)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).map_err(|e| format!("cannot set PATH: {e}"))?;
    let status = Command::new(tools.join("bin/cargo-zigbuild"))
        .current_dir(root)
        .env("PATH", path)
        // A target directory of its own: a `cargo test` holding the
        // workspace's lock can run this (the dist test does).
        .env("CARGO_TARGET_DIR", root.join("target/dist-build"))
        .args([
            "build",
            "-p",
            "reconcile-host",
            "--bin",
            "reconcile-host",
            "--locked",
            "--target",
            &target,
            "--profile",
            profile,
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --target {target} failed"));
    }
    // Cargo's directory for the dev profile is `debug`.
    let dir = if profile == "dev" { "debug" } else { profile };
    let built = root
        .join("target/dist-build")
        .join(&target)
        .join(dir)
        .join("reconcile-host");
    let bytes =
        std::fs::read(&built).map_err(|e| format!("cannot read {}: {e}", built.display()))?;
    if !is_static_elf(&bytes) {
        return Err(format!(
            "{} is not a static executable (it has a program interpreter)",
            built.display()
        ));
    }
    let out_dir = root.join("target/dist");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let out = out_dir.join("reconcile-host");
    std::fs::copy(&built, &out).map_err(|e| format!("cannot copy to {}: {e}", out.display()))?;
    Ok(out)
}

/// The pinned C toolchain for musl.
const TOOLS: [&str; 2] = ["ziglang==0.17.1", "cargo-zigbuild==0.24.1"];

/// The virtualenv with `zig` and `cargo-zigbuild`, made when missing.
fn tools(root: &Path) -> Result<PathBuf, String> {
    crate::guests::venv(root, "target/dist-tools", &TOOLS, "the static build")
}

/// Whether `bytes` are a 64-bit little-endian ELF executable with no
/// `PT_INTERP` program header (no dynamic loader needed).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes.get(at..at + 8).and_then(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(a)).ok()
        })
    };
    // ELF magic, 64-bit, little-endian.
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|kind| kind != PT_INTERP))
}
