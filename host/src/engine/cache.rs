//! The on-disk cache of compiled components, keyed by the sha256 of the
//! `.wasm` and the engine's compatibility hash.
//!
//! The cache directory must be writable by the host only: its files are
//! native code that is loaded without further checks.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

/// A directory of precompiled components.
#[derive(Clone, Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, engine: &wasmtime::Engine) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The cached component, if there is a usable one.
    pub(crate) fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let bytes = std::fs::read(self.path(digest)).ok()?;
        // SAFETY: the file was written by `store` below from a component
        // this engine compiled, under a name that includes the engine's
        // compatibility hash; wasmtime also checks the header and engine
        // settings. The cache directory is the host's own (see module docs).
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(digest, %error, "ignoring an unusable compiled-plugin cache entry");
                None
            }
        }
    }

    /// Stores a compiled component; a failure only costs a recompile later.
    pub(crate) fn store(&self, digest: &str, component: &Component) {
        if let Err(error) = self.try_store(digest, component) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot write the compiled-plugin cache");
        }
    }

    fn try_store(&self, digest: &str, component: &Component) -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let path = self.path(digest);
        let tmp = tmp_path(&path);
        std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}
