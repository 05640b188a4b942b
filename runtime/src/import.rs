//! Offline import of image archives into the store: OCI archives (a tar of
//! an OCI image layout, as `skopeo copy … oci-archive:` or `docker buildx
//! --output type=oci` write) and `docker save` tars (the legacy
//! `manifest.json` form, and the newer one that also carries an OCI
//! layout).
//!
//! The archive is read once, as a stream: every regular file is stored as
//! a blob under its own digest (computed while storing), and the images are
//! then assembled from `index.json` or `manifest.json`. A blob that an OCI
//! layout names `blobs/sha256/HEX` must hash to HEX. Only what the images
//! reference stays after the next GC.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path};

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{
    Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest, Platform, ANNOTATION_REF_NAME,
    CONFIG_MAX, DOCKER_CONFIG, DOCKER_LAYER_TAR, DOCKER_MANIFEST, MANIFEST_MAX,
};
use crate::reference::{Reference, ReferenceError};
use crate::store::{Store, StoreError};

/// The largest single file accepted in an archive.
pub const FILE_MAX: u64 = 16 << 30;

/// Errors from importing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the archive")]
    Read(#[source] std::io::Error),
    #[error("storing archive entry {entry:?}")]
    Store {
        entry: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("archive entry {entry:?} should hash to {expected} but hashes to {actual}")]
    DigestMismatch {
        entry: String,
        expected: String,
        actual: Digest,
    },
    #[error("the archive has neither index.json nor manifest.json")]
    NotAnImageArchive,
    #[error("the archive does not contain {path:?}, which {by} names")]
    Missing { path: String, by: String },
    #[error("{what}: invalid JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image name {name:?} in the archive")]
    Name {
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("the archive holds no image to name (give a name)")]
    Unnamed,
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    StoreOp(Box<StoreError>),
}

impl From<StoreError> for ImportError {
    fn from(e: StoreError) -> Self {
        Self::StoreOp(Box::new(e))
    }
}

/// One image of a legacy `docker save` manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn clean(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Imports every image of the archive read from `archive` and returns the
/// names it gave them (canonical references). `name` names an image the
/// archive leaves unnamed (or, for an archive of one image, overrides its
/// name); `platform` picks from an index.
pub fn import_archive(
    store: &Store,
    archive: impl Read,
    name: Option<&Reference>,
    platform: &Platform,
) -> Result<Vec<String>, ImportError> {
    let _lock = store.lock_shared()?;
    let mut files: HashMap<String, (Digest, u64)> = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(ImportError::Read)? {
        let entry = entry.map_err(ImportError::Read)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let (digest, size) = store
            .put_blob_unverified(entry, FILE_MAX)
            .map_err(|source| ImportError::Store {
                entry: path.clone(),
                source: Box::new(source),
            })?;
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            if digest.hex() != hex {
                return Err(ImportError::DigestMismatch {
                    expected: format!("sha256:{hex}"),
                    entry: path.clone(),
                    actual: digest,
                });
            }
        }
        files.insert(path, (digest, size));
    }
    let read_json = |path: &str, by: &str, max: u64| -> Result<Vec<u8>, ImportError> {
        let (digest, _) = files.get(path).ok_or_else(|| ImportError::Missing {
            path: path.to_owned(),
            by: by.to_owned(),
        })?;
        Ok(store.read_blob(digest, max)?)
    };

    let mut images: Vec<(Option<String>, Descriptor)> = Vec::new();
    if files.contains_key("index.json") {
        let bytes = read_json("index.json", "the OCI layout", MANIFEST_MAX)?;
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
                what: "index.json".to_owned(),
                source,
            })?;
        for mut d in index.manifests {
            let ref_name = d
                .annotations
                .get(ANNOTATION_REF_NAME)
                .cloned()
                .or_else(|| d.annotations.get("io.containerd.image.name").cloned());
            // Follow indexes down to the platform's manifest.
            for _ in 0..4 {
                if !d.is_index() {
                    break;
                }
                let bytes = store.read_blob(&d.digest, MANIFEST_MAX)?;
                match Manifest::parse(Some(&d.media_type), &bytes, &d.digest.to_string())? {
                    Manifest::Index(i) => d = i.select(platform, &d.digest.to_string())?.clone(),
                    Manifest::Image(_) => break,
                }
            }
            d.annotations.clear();
            images.push((ref_name, d));
        }
    } else if files.contains_key("manifest.json") {
        let bytes = read_json("manifest.json", "docker save", MANIFEST_MAX)?;
        let entries: Vec<DockerSaveEntry> =
            serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
                what: "manifest.json".to_owned(),
                source,
            })?;
        for e in entries {
            let by = "manifest.json".to_owned();
            let find = |p: &str| {
                files
                    .get(&clean(p))
                    .copied()
                    .ok_or_else(|| ImportError::Missing {
                        path: p.to_owned(),
                        by: by.clone(),
                    })
            };
            let (config_digest, config_size) = find(&e.config)?;
            let layers = e
                .layers
                .iter()
                .map(|l| find(l).map(|(d, s)| Descriptor::new(DOCKER_LAYER_TAR, d, s)))
                .collect::<Result<Vec<_>, _>>()?;
            // The config must list these layers (uncompressed: digest = diff_id).
            let config = store.read_blob(&config_digest, CONFIG_MAX)?;
            ImageConfig::parse(&config, layers.len(), &e.config)?;
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: Some(DOCKER_MANIFEST.to_owned()),
                artifact_type: None,
                config: Descriptor::new(DOCKER_CONFIG, config_digest, config_size),
                layers,
                subject: None,
                annotations: Default::default(),
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|source| ImportError::Json {
                what: "the manifest made for manifest.json".to_owned(),
                source,
            })?;
            let digest = store.put_blob_bytes(&bytes)?;
            let d = Descriptor::new(DOCKER_MANIFEST, digest, bytes.len() as u64);
            match e.repo_tags.filter(|t| !t.is_empty()) {
                Some(tags) => images.extend(tags.into_iter().map(|t| (Some(t), d.clone()))),
                None => images.push((None, d)),
            }
        }
    } else {
        return Err(ImportError::NotAnImageArchive);
    }

    let single = images.len() == 1;
    let mut names = Vec::new();
    for (ref_name, descriptor) in images {
        let full = match (name, ref_name) {
            (Some(n), _) if single => n.clone(),
            (_, Some(r)) => {
                // OCI archives often name by tag only ("3.19"): then the
                // given name's repository, else keep the tag alone.
                let parsed = if !r.contains(['/', ':', '@']) {
                    match name {
                        Some(n) => Reference::parse(&format!("{}:{r}", n.name())),
                        None => Reference::parse(&r),
                    }
                } else {
                    Reference::parse(&r)
                };
                parsed.map_err(|source| ImportError::Name { name: r, source })?
            }
            (Some(n), None) => n.clone(),
            (None, None) => return Err(ImportError::Unnamed),
        };
        let full = full.to_string();
        store.tag(&full, &descriptor)?;
        names.push(full);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::unpack::tests::{tar_of, E};
    use crate::unpack::UnpackOptions;

    fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/app"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap()
    }

    #[test]
    fn docker_save_legacy() {
        let layer = tar_of(&[E::File("app", b"app")]);
        let config = config_for(&[&layer]);
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let manifest = serde_json::json!([{
            "Config": config_name, "RepoTags": ["app:1", "registry.example.com/app:1"],
            "Layers": ["0123abcd/layer.tar"]
        }]);
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "0123abcd/layer.tar", &layer);
        append(&mut b, "0123abcd/VERSION", b"1.0");
        append(&mut b, &config_name, &config);
        append(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        append(&mut b, "repositories", b"{}");
        let archive = b.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let names = import_archive(&store, &archive[..], None, &Platform::default()).unwrap();
        assert_eq!(
            names,
            ["docker.io/library/app:1", "registry.example.com/app:1"]
        );
        let image = store.image("docker.io/library/app:1").unwrap();
        assert_eq!(image.config.config.unwrap().cmd.unwrap(), ["/app"]);
        let dirs = store
            .unpack_image(&store.image(&names[1]).unwrap(), &UnpackOptions::default())
            .unwrap();
        assert_eq!(fs::read(dirs[0].join("app")).unwrap(), b"app");

        // A manifest.json naming a file the archive lacks.
        let mut b = tar::Builder::new(Vec::new());
        append(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        let e = import_archive(
            &store,
            &b.into_inner().unwrap()[..],
            None,
            &Platform::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ImportError::Missing { .. }), "{e}");
        assert!(matches!(
            import_archive(
                &store,
                &tar_of(&[E::File("x", b"x")])[..],
                None,
                &Platform::default()
            )
            .unwrap_err(),
            ImportError::NotAnImageArchive
        ));
    }

    /// An OCI archive made by tarring a store's layout, named by tag only.
    #[test]
    fn oci_archive() {
        let src = tempfile::tempdir().unwrap();
        let source = Store::open(src.path()).unwrap();
        let layer = tar_of(&[E::File("hello", b"hello")]);
        let layer_digest = source.put_blob_bytes(&layer).unwrap();
        let config = config_for(&[&layer]);
        let config_digest = source.put_blob_bytes(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": crate::manifest::OCI_MANIFEST,
            "config": {"mediaType": crate::manifest::OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": crate::manifest::OCI_LAYER_TAR, "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let md = source.put_blob_bytes(&manifest).unwrap();
        source
            .tag(
                "3.19",
                &Descriptor::new(crate::manifest::OCI_MANIFEST, md, manifest.len() as u64),
            )
            .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for f in ["oci-layout", "index.json"] {
            append(&mut b, f, &fs::read(src.path().join(f)).unwrap());
        }
        for d in [layer_digest, config_digest, md] {
            append(
                &mut b,
                &format!("blobs/sha256/{}", d.hex()),
                &fs::read(source.blob_path(&d)).unwrap(),
            );
        }
        let archive = b.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = Reference::parse("alpine").unwrap();
        let names =
            import_archive(&store, &archive[..], Some(&name), &Platform::default()).unwrap();
        assert_eq!(names, ["docker.io/library/alpine:latest"]);
        // Without a name the tag alone is a (Docker Hub) reference.
        let names = import_archive(&store, &archive[..], None, &Platform::default()).unwrap();
        assert_eq!(names, ["docker.io/library/3.19:latest"]);
        let dirs = store
            .unpack_image(
                &store.image("docker.io/library/alpine:latest").unwrap(),
                &UnpackOptions::default(),
            )
            .unwrap();
        assert_eq!(fs::read(dirs[0].join("hello")).unwrap(), b"hello");

        // A blob that does not hash to its name is refused.
        let mut b = tar::Builder::new(Vec::new());
        append(
            &mut b,
            &format!("blobs/sha256/{}", layer_digest.hex()),
            b"tampered",
        );
        let e = import_archive(
            &store,
            &b.into_inner().unwrap()[..],
            None,
            &Platform::default(),
        )
        .unwrap_err();
        assert!(matches!(e, ImportError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&layer_digest.hex()), "{e}");
    }
}
