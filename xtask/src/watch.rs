//! `cargo xtask dev --watch`: rebuilds the example plugins when their
//! sources change, while the host runs; the host, watching
//! `target/plugins`, reloads each plugin whose component changed.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};

/// Whether a changed path is a plugin source (not a build output).
fn is_source(path: &Path) -> bool {
    let built = path
        .components()
        .any(|c| c.as_os_str() == "target" || c.as_os_str() == ".git");
    let source = path
        .extension()
        .is_some_and(|e| e == "rs" || e == "toml" || e == "wit");
    !built && source
}

/// Whether an event is a change (cargo's own reads of the manifests are
/// reported too, as opens and closes).
fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Rebuilds `plugins/` after each change of its sources until `host` exits;
/// returns the host's exit status.
pub fn rebuild_on_change(root: &Path, host: &mut Child) -> std::io::Result<ExitStatus> {
    let (events, changes) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = match new_debouncer(Duration::from_millis(200), None, events) {
        Ok(debouncer) => Some(debouncer),
        Err(e) => {
            eprintln!(
                "xtask: cannot watch the plugin sources ({e}); the host runs without rebuilds"
            );
            None
        }
    };
    let sources = [root.join(xtask::PLUGINS.dir), root.join("guest-sdk/src")];
    if let Some(debouncer) = debouncer.as_mut() {
        for dir in &sources {
            if let Err(e) = debouncer.watch(dir, RecursiveMode::Recursive) {
                eprintln!("xtask: cannot watch {} ({e})", dir.display());
            }
        }
        eprintln!(
            "xtask: watching {} and {}: a saved change rebuilds the plugins, and the host reloads them",
            sources[0].display(),
            sources[1].display()
        );
    }
    loop {
        if let Some(status) = host.try_wait()? {
            return Ok(status);
        }
        let changed = match changes.recv_timeout(Duration::from_millis(250)) {
            Ok(Ok(events)) => events
                .iter()
                .any(|e| is_change(&e.event) && e.paths.iter().any(|p| is_source(p))),
            Ok(Err(errors)) => {
                for e in errors {
                    eprintln!("xtask: watching the plugin sources: {e}");
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return host.wait();
            }
        };
        if !changed {
            continue;
        }
        eprintln!("xtask: plugin sources changed: rebuilding");
        match xtask::build(root, xtask::PLUGINS) {
            Ok(built) => {
                let names: Vec<&str> = built.keys().map(String::as_str).collect();
                eprintln!(
                    "xtask: built {} into {}; the host reloads what changed",
                    names.join(", "),
                    xtask::PLUGINS.out
                );
            }
            Err(e) => eprintln!("xtask: {e}\nxtask: the host keeps running the last good build"),
        }
    }
}
