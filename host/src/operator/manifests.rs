//! Manifests for `dev --apply`: YAML or JSON files (several documents per
//! file, `kind: List` expanded), applied server-side, CRDs first.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde_json::Value;

/// One manifest document and where it came from.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// `file` or `file#n` for the n-th document.
    pub source: String,
    /// The object.
    pub object: Value,
}

/// A manifest could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A document is not valid YAML/JSON or not a Kubernetes object.
    #[error("{source_name} is not a valid manifest: {message}")]
    Invalid {
        /// File and document.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The API server refused it.
    #[error("cannot apply {source_name} ({kind} {name}): {message}")]
    Apply {
        /// File and document.
        source_name: String,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The server's message.
        message: String,
    },
}

fn files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read = |error| ManifestError::Read {
        path: path.to_owned(),
        error,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                files(&entry, out)?;
            } else if entry
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                && !is_kustomization(&entry)
            {
                out.push(entry);
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path).map_err(read)?;
        out.push(path.to_owned());
        Ok(())
    }
}

/// A kustomize file in a directory of manifests: kustomize's input, not
/// an object to apply.
fn is_kustomization(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        matches!(
            n,
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        )
    })
}

/// The documents of a YAML (or JSON) text, empty ones left out.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The first object of a YAML or JSON text, for `call --object`.
#[derive(Debug)]
pub struct FirstObject {
    /// The object.
    pub object: Value,
    /// Whether more documents followed it.
    pub more: bool,
}

/// The first object of a YAML or JSON text (of a `kind: List`, its first
/// item); `more` says whether others were left out.
pub fn first_object(text: &str) -> Result<FirstObject, String> {
    let mut documents = documents(text)?.into_iter();
    let first = documents.next().ok_or("it holds no object")?;
    let more = documents.next().is_some();
    if first["kind"] == "List" {
        let items = first["items"].as_array().cloned().unwrap_or_default();
        let mut items = items.into_iter();
        let object = items.next().ok_or("its List has no items")?;
        return Ok(FirstObject {
            object,
            more: more || items.next().is_some(),
        });
    }
    if !first.is_object() {
        return Err("its first document is not an object".into());
    }
    Ok(FirstObject {
        object: first,
        more,
    })
}

/// Reads every manifest under `paths` (files, or directories read in name order).
pub fn read(paths: &[PathBuf]) -> Result<Vec<Manifest>, ManifestError> {
    let mut all = Vec::new();
    for path in paths {
        let mut found = Vec::new();
        files(path, &mut found)?;
        for file in found {
            let text =
                crate::files::read_text(&file, crate::files::MAX_TEXT_BYTES).map_err(|error| {
                    ManifestError::Read {
                        path: file.clone(),
                        error,
                    }
                })?;
            let parsed = documents(&text).map_err(|message| ManifestError::Invalid {
                source_name: file.display().to_string(),
                message,
            })?;
            for (i, value) in parsed.into_iter().enumerate() {
                let source_name = format!("{}#{}", file.display(), i + 1);
                let invalid = |message: String| ManifestError::Invalid {
                    source_name: source_name.clone(),
                    message,
                };
                if value["kind"] == "List" {
                    for item in value["items"].as_array().cloned().unwrap_or_default() {
                        all.push(Manifest {
                            source: source_name.clone(),
                            object: item,
                        });
                    }
                    continue;
                }
                if value["apiVersion"].as_str().is_none()
                    || value["kind"].as_str().is_none()
                    || value["metadata"]["name"].as_str().is_none()
                {
                    return Err(invalid(
                        "apiVersion, kind and metadata.name are required".into(),
                    ));
                }
                all.push(Manifest {
                    source: source_name,
                    object: value,
                });
            }
        }
    }
    Ok(all)
}

fn is_crd(m: &Manifest) -> bool {
    m.object["kind"] == "CustomResourceDefinition"
}

/// Applies the manifests server-side as `reconcile-host`, CRDs first, and
/// returns `kind/name` of each.
pub async fn apply(
    client: &kube::Client,
    manifests: &[Manifest],
) -> Result<Vec<String>, ManifestError> {
    let (crds, rest): (Vec<&Manifest>, Vec<&Manifest>) = manifests.iter().partition(|m| is_crd(m));
    let mut applied = Vec::new();
    for group in [crds, rest] {
        // Discovery again after the CRDs: their types now exist.
        let discovery =
            Discovery::new(client.clone())
                .run()
                .await
                .map_err(|e| ManifestError::Apply {
                    source_name: "discovery".into(),
                    kind: String::new(),
                    name: String::new(),
                    message: e.to_string(),
                })?;
        for m in group {
            applied.push(apply_one(client, &discovery, m).await?);
        }
    }
    Ok(applied)
}

async fn apply_one(
    client: &kube::Client,
    discovery: &Discovery,
    m: &Manifest,
) -> Result<String, ManifestError> {
    let api_version = m.object["apiVersion"].as_str().unwrap_or_default();
    let kind = m.object["kind"].as_str().unwrap_or_default().to_owned();
    let name = m.object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let fail = |message: String| ManifestError::Apply {
        source_name: m.source.clone(),
        kind: kind.clone(),
        name: name.clone(),
        message,
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| fail(format!("the server has no type {api_version} {kind}")))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("reconcile-host").force(),
        &Patch::Apply(&m.object),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    Ok(format!("{}/{name}", kind.to_ascii_lowercase()))
}
