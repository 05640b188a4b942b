//! The image store on /var: an OCI image layout (so `skopeo` and other
//! tools read it) plus unpacked layers shared by every image that has
//! them. Layout (runtime/README.md):
//!
//! ```text
//! ROOT/oci-layout                 {"imageLayoutVersion": "1.0.0"}
//! ROOT/index.json                 the images: manifest descriptors named by
//!                                 org.opencontainers.image.ref.name
//! ROOT/blobs/sha256/HEX           manifests, configs, layer blobs
//! ROOT/layers/sha256/DIFFID_HEX/  a layer unpacked, an overlayfs lower dir
//! ROOT/ingest/HEX                 partial downloads (kept for resume)
//! ROOT/tmp/                       blobs being verified, layers being unpacked
//! ROOT/lock                       flock: shared for writers, exclusive for GC
//! ROOT/index.lock                 flock: exclusive while index.json is read,
//!                                 changed and written back
//! ```
//!
//! Crash safety: every file is written under `tmp/`, fsynced, checked and
//! then renamed into place, and the directory fsynced; a layer is unpacked
//! into `tmp/`, synced with `syncfs` and renamed whole. `index.json` is
//! replaced the same way, and only after everything it names is in place;
//! each change to it holds `index.lock`, so pulls in separate processes
//! do not drop each other's names.
//! So a power cut at any point leaves the last index.json, complete blobs
//! and layers, and garbage under `tmp/` and `ingest/` that [`Store::gc`]
//! removes; never a half blob or half layer under its final name.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{
    Descriptor, ImageConfig, ImageIndex, ImageManifest, Manifest, ManifestError,
    ANNOTATION_REF_NAME, CONFIG_MAX, MANIFEST_MAX, OCI_INDEX,
};
use crate::unpack::{self, UnpackError, UnpackOptions};

/// Errors from the image store; each names the path or digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {expected}: received content has digest {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {digest}: received {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is not in the store")]
    MissingBlob { digest: Digest },
    #[error("blob {digest} is {size} bytes, more than the {max} allowed here")]
    TooLarge { digest: Digest, size: u64, max: u64 },
    #[error("blob {digest} in the store is corrupt (its content hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("{path}: invalid store metadata")]
    Metadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not an OCI image layout version 1.0.0")]
    LayoutVersion { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("unpacking layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image {name:?} is not in the store")]
    NoImage { name: String },
    #[error("{digest} is an index, not an image manifest")]
    NotAnImage { digest: Digest },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    pub layers: usize,
    pub temp: usize,
    pub bytes: u64,
}

/// An image in the store, resolved.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
}

/// A held store lock (shared or exclusive); released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// An OCI image layout with unpacked layers, rooted at a directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens the store at `root`, creating the layout if it is not there.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in ["blobs/sha256", "layers/sha256", "ingest", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
        }
        let store = Self {
            root: root.to_owned(),
        };
        let layout = root.join("oci-layout");
        match fs::read(&layout) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Metadata {
                        path: layout.clone(),
                        source,
                    })?;
                if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
                    return Err(StoreError::LayoutVersion { path: layout });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                store.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            Err(e) => return Err(io_err("reading", &layout)(e)),
        }
        let _index = store.lock_file("index.lock", FlockOperation::LockExclusive)?;
        if !root.join("index.json").exists() {
            store.write_index(&ImageIndex {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_owned()),
                manifests: Vec::new(),
                annotations: Default::default(),
            })?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock shared: hold it across a pull or an import so
    /// that a GC does not sweep blobs that are not yet in index.json.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock_file("lock", FlockOperation::LockShared)
    }

    /// Takes the store lock exclusively (GC does).
    pub fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock_file("lock", FlockOperation::LockExclusive)
    }

    /// Takes `flock` `op` on `ROOT/name`.
    fn lock_file(&self, name: &str, op: FlockOperation) -> Result<StoreLock, StoreError> {
        let path = self.root.join(name);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        rustix::fs::flock(file.as_fd(), op).map_err(|e| io_err("locking", &path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// Where a partial download of `digest` is kept between attempts.
    pub fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn sync_dir(path: &Path) -> Result<(), StoreError> {
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", path))
    }

    /// Writes `bytes` to `path` through a synced temp file and a rename.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.temp_path("write");
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        Self::sync_dir(path.parent().unwrap_or(&self.root))
    }

    /// Stores a blob read from `reader`, checking its digest and, when
    /// given, its size before it gets its name. Returns the blob's path.
    /// A blob already present is not read again.
    pub fn put_blob(
        &self,
        reader: impl Read,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.blob_path(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp = self.temp_path("blob");
        let result = self.put_blob_at(reader, digest, size, &tmp, &dest);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| dest)
    }

    fn put_blob_at(
        &self,
        reader: impl Read,
        digest: &Digest,
        size: Option<u64>,
        tmp: &Path,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let file = File::create(tmp).map_err(io_err("creating", tmp))?;
        let mut w = HashingWriter::new(file);
        // One byte more than declared shows an oversize blob.
        let limit = size.map_or(u64::MAX, |s| s.saturating_add(1));
        io::copy(&mut reader.take(limit), &mut w).map_err(io_err("writing", tmp))?;
        let (file, actual, len) = w.finish();
        if let Some(expected) = size {
            if len != expected {
                return Err(StoreError::SizeMismatch {
                    digest: *digest,
                    expected,
                    actual: len,
                });
            }
        }
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                actual,
                size: len,
            });
        }
        file.sync_all().map_err(io_err("syncing", tmp))?;
        drop(file);
        fs::rename(tmp, dest).map_err(io_err("renaming into place", dest))?;
        Self::sync_dir(&self.root.join("blobs/sha256"))
    }

    /// Stores a blob whose digest is not known in advance (a file of an
    /// archive being imported) and returns its digest and size.
    pub fn put_blob_unverified(
        &self,
        reader: impl Read,
        max: u64,
    ) -> Result<(Digest, u64), StoreError> {
        let tmp = self.temp_path("import");
        let result = (|| {
            let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut w = HashingWriter::new(file);
            io::copy(&mut reader.take(max.saturating_add(1)), &mut w)
                .map_err(io_err("writing", &tmp))?;
            let (file, digest, len) = w.finish();
            if len > max {
                return Err(StoreError::TooLarge {
                    digest,
                    size: len,
                    max,
                });
            }
            let dest = self.blob_path(&digest);
            if dest.is_file() {
                let _ = fs::remove_file(&tmp);
                return Ok((digest, len));
            }
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            drop(file);
            fs::rename(&tmp, &dest).map_err(io_err("renaming into place", &dest))?;
            Self::sync_dir(&self.root.join("blobs/sha256"))?;
            Ok((digest, len))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Stores a blob from memory and returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        self.put_blob(bytes, &digest, Some(bytes.len() as u64))?;
        Ok(digest)
    }

    /// Reads a small blob (a manifest or config) whole, checking its
    /// digest: a store on a failing disk does not hand out bad JSON.
    pub fn read_blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob { digest: *digest })
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        if bytes.len() as u64 > max {
            return Err(StoreError::TooLarge {
                digest: *digest,
                size: bytes.len() as u64,
                max,
            });
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// The images index.json lists.
    pub fn index(&self) -> Result<ImageIndex, StoreError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        match Manifest::parse(None, &bytes, "index.json") {
            Ok(Manifest::Index(index)) => Ok(index),
            Ok(Manifest::Image(_)) | Err(_) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Metadata { path, source }),
        }
    }

    /// Reads index.json, lets `change` edit it and writes it back if it
    /// says it changed something; all under `index.lock`. Returns what
    /// `change` said.
    fn update_index(
        &self,
        change: impl FnOnce(&mut ImageIndex) -> bool,
    ) -> Result<bool, StoreError> {
        let _lock = self.lock_file("index.lock", FlockOperation::LockExclusive)?;
        let mut index = self.index()?;
        if !change(&mut index) {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let path = self.root.join("index.json");
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| StoreError::Metadata {
            path: path.clone(),
            source,
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// Image names (the ref.name annotations) and their descriptors.
    pub fn images(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter_map(|d| Some((d.annotations.get(ANNOTATION_REF_NAME)?.clone(), d)))
            .collect())
    }

    /// Names `descriptor` (an image manifest already stored, with its
    /// config and layer blobs) as `name` in index.json, replacing what had
    /// that name.
    pub fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<(), StoreError> {
        // Everything the name will point to must be in place first.
        let image = self.resolve(name, descriptor)?;
        for blob in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
            if !self.has_blob(&blob.digest) {
                return Err(StoreError::MissingBlob {
                    digest: blob.digest,
                });
            }
        }
        let mut entry = Descriptor::new(&descriptor.media_type, descriptor.digest, descriptor.size);
        entry.platform = descriptor.platform.clone();
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), name.to_owned());
        self.update_index(|index| {
            index.manifests.retain(|d| {
                d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name)
            });
            index.manifests.push(entry);
            true
        })
        .map(|_| ())
    }

    /// Removes the name; the content stays until [`Store::gc`].
    pub fn untag(&self, name: &str) -> Result<bool, StoreError> {
        self.update_index(|index| {
            let before = index.manifests.len();
            index.manifests.retain(|d| {
                d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name)
            });
            index.manifests.len() != before
        })
    }

    /// The image named `name`, with its manifest and config read and
    /// checked.
    pub fn image(&self, name: &str) -> Result<Image, StoreError> {
        let descriptor = self
            .images()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| StoreError::NoImage {
                name: name.to_owned(),
            })?;
        self.resolve(name, &descriptor)
    }

    /// The image whose manifest is `digest`, named or not (a running
    /// container's, after its name moved on), if its blobs are still here.
    pub fn image_by_digest(&self, digest: &Digest) -> Result<Image, StoreError> {
        let size = std::fs::metadata(self.blob_path(digest))
            .map(|m| m.len())
            .unwrap_or(0);
        let descriptor = Descriptor::new("", *digest, size);
        self.resolve(&digest.to_string(), &descriptor)
    }

    fn resolve(&self, name: &str, descriptor: &Descriptor) -> Result<Image, StoreError> {
        let digest = descriptor.digest;
        let bytes = self.read_blob(&digest, MANIFEST_MAX)?;
        let what = format!("{name} ({digest})");
        let manifest = match Manifest::parse(Some(&descriptor.media_type), &bytes, &what)? {
            Manifest::Image(m) => *m,
            Manifest::Index(_) => return Err(StoreError::NotAnImage { digest }),
        };
        let config_bytes = self.read_blob(&manifest.config.digest, CONFIG_MAX)?;
        let config = ImageConfig::parse(&config_bytes, manifest.layers.len(), &what)?;
        Ok(Image {
            name: name.to_owned(),
            descriptor: descriptor.clone(),
            manifest,
            config,
        })
    }

    /// Unpacks one layer blob (if not unpacked yet) and returns its
    /// directory, `layers/sha256/DIFFID`. The blob is verified against
    /// `layer.digest` and the tar against `diff_id` while unpacking, into a
    /// temp dir that is synced and renamed into place only when complete.
    pub fn unpack_layer(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        options: &UnpackOptions,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let blob = self.blob_path(&layer.digest);
        let file = match File::open(&blob) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    digest: layer.digest,
                })
            }
            Err(e) => return Err(io_err("opening", &blob)(e)),
        };
        let tmp = self.temp_path("layer");
        fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
        let options = UnpackOptions {
            digest: Some(layer.digest),
            diff_id: Some(*diff_id),
            ..options.clone()
        };
        let result = unpack::unpack_layer(io::BufReader::new(file), &tmp, &options)
            .map_err(|source| StoreError::Unpack {
                digest: layer.digest,
                source,
            })
            .and_then(|_| {
                let dir = File::open(&tmp).map_err(io_err("opening", &tmp))?;
                rustix::fs::syncfs(dir.as_fd()).map_err(|e| io_err("syncing", &tmp)(e.into()))?;
                match fs::rename(&tmp, &dest) {
                    Ok(()) => Ok(()),
                    // Another unpack of the same layer won the race.
                    Err(_) if dest.is_dir() => {
                        let _ = fs::remove_dir_all(&tmp);
                        Ok(())
                    }
                    Err(e) => Err(io_err("renaming into place", &dest)(e)),
                }
            });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        Self::sync_dir(&self.root.join("layers/sha256"))?;
        Ok(dest)
    }

    /// Unpacks every layer of an image and returns their directories,
    /// bottom layer first (overlayfs wants `lowerdir` top first: reverse).
    pub fn unpack_image(
        &self,
        image: &Image,
        options: &UnpackOptions,
    ) -> Result<Vec<PathBuf>, StoreError> {
        image
            .manifest
            .layers
            .iter()
            .zip(&image.config.rootfs.diff_ids)
            .map(|(layer, diff_id)| self.unpack_layer(layer, diff_id, options))
            .collect()
    }

    /// Removes blobs and unpacked layers that no image in index.json
    /// references (nor `keep_layers`, the layers of running containers),
    /// and everything under `tmp/` and `ingest/`. Takes the store lock
    /// exclusively, so it waits for pulls in progress.
    ///
    /// Marking fails (and nothing is removed) if a referenced manifest or
    /// config cannot be read: sweeping on half the picture could delete
    /// what an image needs.
    pub fn gc(&self, keep_layers: &HashSet<Digest>) -> Result<GcReport, StoreError> {
        let _lock = self.lock_exclusive()?;
        let mut blobs = HashSet::new();
        let mut layers = keep_layers.clone();
        for descriptor in self.index()?.manifests {
            self.mark(&descriptor, &mut blobs, &mut layers, 0)?;
        }
        let mut report = GcReport::default();
        for (dir, keep, is_layer) in [
            ("blobs/sha256", &blobs, false),
            ("layers/sha256", &layers, true),
        ] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let entry = entry.map_err(io_err("listing", &dir))?;
                let name = entry.file_name();
                let keep_it = name
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                    .is_some_and(|d| keep.contains(&d));
                if keep_it {
                    continue;
                }
                let path = entry.path();
                if is_layer {
                    // Move it out of its name first, so a crash mid-removal
                    // leaves garbage in tmp/, not a half layer.
                    let tmp = self.temp_path("gc-layer");
                    fs::rename(&path, &tmp).map_err(io_err("moving out", &path))?;
                    fs::remove_dir_all(&tmp).map_err(io_err("removing", &tmp))?;
                    report.layers += 1;
                } else {
                    report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(io_err("removing", &path))?;
                    report.blobs += 1;
                }
            }
        }
        for dir in ["tmp", "ingest"] {
            let dir = self.root.join(dir);
            for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let path = entry.map_err(io_err("listing", &dir))?.path();
                let removed = if path.is_dir() && !path.is_symlink() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(io_err("removing", &path))?;
                report.temp += 1;
            }
        }
        Self::sync_dir(&self.root.join("blobs/sha256"))?;
        Self::sync_dir(&self.root.join("layers/sha256"))?;
        Ok(report)
    }

    fn mark(
        &self,
        descriptor: &Descriptor,
        blobs: &mut HashSet<Digest>,
        layers: &mut HashSet<Digest>,
        depth: u32,
    ) -> Result<(), StoreError> {
        if !blobs.insert(descriptor.digest) || depth > 4 {
            return Ok(());
        }
        if !descriptor.is_index() && !descriptor.is_manifest() {
            return Ok(());
        }
        let bytes = match self.read_blob(&descriptor.digest, MANIFEST_MAX) {
            // An index may list platforms that were never pulled.
            Err(StoreError::MissingBlob { .. }) if depth > 0 => return Ok(()),
            other => other?,
        };
        let what = descriptor.digest.to_string();
        match Manifest::parse(Some(&descriptor.media_type), &bytes, &what)? {
            Manifest::Index(index) => {
                for child in &index.manifests {
                    self.mark(child, blobs, layers, depth + 1)?;
                }
            }
            Manifest::Image(manifest) => {
                blobs.insert(manifest.config.digest);
                blobs.extend(manifest.layers.iter().map(|l| l.digest));
                let config = self.read_blob(&manifest.config.digest, CONFIG_MAX)?;
                let config = ImageConfig::parse(&config, manifest.layers.len(), &what)?;
                layers.extend(config.rootfs.diff_ids);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::Command;

    use super::*;
    use crate::manifest::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
    use crate::unpack::tests::{tar_of, E};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// Stores an image of the given layers (each a tar) and names it.
    fn add_image(store: &Store, name: &str, layers: &[Vec<u8>]) -> Descriptor {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            let blob = gzip(tar);
            let digest = store.put_blob_bytes(&blob).unwrap();
            descriptors.push(Descriptor::new(OCI_LAYER_GZIP, digest, blob.len() as u64));
            diff_ids.push(Digest::of(tar));
        }
        let config = serde_json::to_vec(&ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: crate::manifest::RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            ..Default::default()
        })
        .unwrap();
        let config_digest = store.put_blob_bytes(&config).unwrap();
        let manifest = serde_json::to_vec(&ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(OCI_CONFIG, config_digest, config.len() as u64),
            layers: descriptors,
            subject: None,
            annotations: Default::default(),
        })
        .unwrap();
        let digest = store.put_blob_bytes(&manifest).unwrap();
        let descriptor = Descriptor::new(OCI_MANIFEST, digest, manifest.len() as u64);
        store.tag(name, &descriptor).unwrap();
        descriptor
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn layout_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        assert!(store.index().unwrap().manifests.is_empty());

        let digest = Digest::of(b"hello");
        let path = store.put_blob(&b"hello"[..], &digest, Some(5)).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"hello");
        assert_eq!(store.read_blob(&digest, 10).unwrap(), b"hello");
        assert!(matches!(
            store.read_blob(&digest, 4).unwrap_err(),
            StoreError::TooLarge { .. }
        ));

        // Wrong content or size never gets a name, and leaves no temp file.
        let other = Digest::of(b"other");
        let e = store.put_blob(&b"tampered"[..], &other, None).unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains(&other.to_string()));
        let e = store.put_blob(&b"other!"[..], &other, Some(5)).unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
        let e = store.put_blob(&b"othe"[..], &other, Some(5)).unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
        assert!(!store.has_blob(&other));
        assert_eq!(count(&dir.path().join("tmp")), 0);
        assert!(matches!(
            store.read_blob(&other, 10).unwrap_err(),
            StoreError::MissingBlob { .. }
        ));

        // A blob corrupted on disk is caught when read.
        fs::write(store.blob_path(&digest), b"jello").unwrap();
        assert!(matches!(
            store.read_blob(&digest, 10).unwrap_err(),
            StoreError::Corrupt { .. }
        ));

        // Reopening keeps everything; a foreign layout version is refused.
        drop(store);
        Store::open(dir.path()).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"2.0.0"}"#,
        )
        .unwrap();
        assert!(matches!(
            Store::open(dir.path()).unwrap_err(),
            StoreError::LayoutVersion { .. }
        ));
    }

    #[test]
    fn images_unpack_and_share_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let base = tar_of(&[E::Dir("etc"), E::File("etc/os-release", b"ID=atoll\n")]);
        let app = tar_of(&[E::File("app", b"app")]);
        let d = add_image(&store, "docker.io/library/app:1", &[base.clone(), app]);
        let other = tar_of(&[E::File("other", b"other")]);
        add_image(&store, "docker.io/library/other:1", &[base.clone(), other]);
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            ["docker.io/library/app:1", "docker.io/library/other:1"]
        );

        let image = store.image("docker.io/library/app:1").unwrap();
        assert_eq!(image.descriptor.digest, d.digest);
        let dirs = store
            .unpack_image(&image, &UnpackOptions::default())
            .unwrap();
        assert_eq!(dirs[0], store.layer_path(&Digest::of(&base)));
        assert_eq!(
            fs::read(dirs[0].join("etc/os-release")).unwrap(),
            b"ID=atoll\n"
        );
        assert_eq!(fs::read(dirs[1].join("app")).unwrap(), b"app");
        let other = store.image("docker.io/library/other:1").unwrap();
        let other_dirs = store
            .unpack_image(&other, &UnpackOptions::default())
            .unwrap();
        assert_eq!(
            other_dirs[0], dirs[0],
            "the base layer is unpacked once and shared"
        );
        assert_eq!(count(&dir.path().join("layers/sha256")), 3);

        // Re-tagging replaces; a missing name is an error naming it.
        store.tag("docker.io/library/app:1", &d).unwrap();
        assert_eq!(store.images().unwrap().len(), 2);
        let e = store.image("docker.io/library/nope:1").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn concurrent_tags_keep_every_name() {
        // As pulls in separate processes tag at once: none may drop
        // another's name by writing back an index.json it read before.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = add_image(&store, "base", &[tar_of(&[E::File("x", b"x")])]);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (store, d) = (&store, &d);
                s.spawn(move || {
                    for i in 0..10 {
                        store.tag(&format!("t{t}:{i}"), d).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.images().unwrap().len(), 81);
        assert!(store.untag("t0:0").unwrap());
        assert_eq!(store.images().unwrap().len(), 80);
    }

    #[test]
    fn tag_refuses_incomplete_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = add_image(&store, "a", &[tar_of(&[E::File("x", b"x")])]);
        let image = store.image("a").unwrap();
        fs::remove_file(store.blob_path(&image.manifest.layers[0].digest)).unwrap();
        assert!(matches!(
            store.tag("b", &d).unwrap_err(),
            StoreError::MissingBlob { .. }
        ));
        assert_eq!(store.images().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_layer_leaves_nothing_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add_image(
            &store,
            "a",
            &[tar_of(&[E::File("ok", b"1"), E::File("../escape", b"x")])],
        );
        let image = store.image("a").unwrap();
        let e = store
            .unpack_image(&image, &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(e, StoreError::Unpack { .. }), "{e}");
        assert_eq!(count(&dir.path().join("layers/sha256")), 0);
        assert_eq!(count(&dir.path().join("tmp")), 0);
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn gc_sweeps_unreferenced_content_and_crash_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let base = tar_of(&[E::File("base", b"base")]);
        add_image(&store, "a", &[base.clone(), tar_of(&[E::File("a", b"a")])]);
        add_image(&store, "b", &[base.clone(), tar_of(&[E::File("b", b"b")])]);
        for name in ["a", "b"] {
            let image = store.image(name).unwrap();
            store
                .unpack_image(&image, &UnpackOptions::default())
                .unwrap();
        }
        // What a power cut mid-pull leaves: a half-written blob, a partial
        // download, a half-unpacked layer.
        fs::write(dir.path().join("tmp/blob-1-0"), b"half").unwrap();
        fs::write(
            dir.path().join("ingest").join(Digest::of(b"x").hex()),
            b"part",
        )
        .unwrap();
        fs::create_dir_all(dir.path().join("tmp/layer-1-1/usr/bin")).unwrap();
        // And a stray blob nothing names.
        store.put_blob_bytes(b"stray").unwrap();

        let report = store.gc(&HashSet::new()).unwrap();
        assert_eq!(
            report,
            GcReport {
                blobs: 1,
                layers: 0,
                temp: 3,
                bytes: 5
            }
        );
        // a: manifest, config, base, a; b: manifest, config, b (base shared).
        assert_eq!(count(&dir.path().join("blobs/sha256")), 7);

        assert!(store.untag("b").unwrap());
        assert!(!store.untag("b").unwrap());
        let b_layer = Digest::of(&tar_of(&[E::File("b", b"b")]));
        // A layer a running container uses stays.
        let report = store.gc(&HashSet::from([b_layer])).unwrap();
        assert_eq!((report.blobs, report.layers), (3, 0));
        assert!(store.layer_path(&b_layer).is_dir());
        let report = store.gc(&HashSet::new()).unwrap();
        assert_eq!((report.blobs, report.layers), (0, 1));
        assert!(
            store.layer_path(&Digest::of(&base)).is_dir(),
            "a's layers stay"
        );
        assert_eq!(count(&dir.path().join("layers/sha256")), 2);
        assert_eq!(count(&dir.path().join("blobs/sha256")), 4);
        store.image("a").unwrap();

        // Marking refuses to sweep on a broken picture.
        let a = store.image("a").unwrap();
        fs::write(store.blob_path(&a.manifest.config.digest), b"broken").unwrap();
        assert!(store.gc(&HashSet::new()).is_err());
        assert_eq!(count(&dir.path().join("blobs/sha256")), 4);
    }

    /// skopeo reads the layout and copies into it. Skipped (with a
    /// reason) where skopeo is not installed.
    #[test]
    fn skopeo_reads_and_writes_the_layout() {
        if Command::new("skopeo").arg("--version").output().is_err() {
            eprintln!("skipped: skopeo is not installed (Debian package skopeo)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        let store = Store::open(&store_dir).unwrap();
        let name = "localhost:5000/team/app:1.0";
        let d = add_image(&store, name, &[tar_of(&[E::File("hello", b"hello")])]);
        let skopeo = |args: &[&str]| {
            let out = Command::new("skopeo")
                .args(["--insecure-policy"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "skopeo {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let store_ref = format!("oci:{}:{name}", store_dir.display());
        let inspect: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", &store_ref])).unwrap();
        assert_eq!(inspect["Digest"], d.digest.to_string());
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);

        // skopeo copies out of the store, and back in under another name.
        let copy_dir = dir.path().join("copy");
        skopeo(&[
            "copy",
            &store_ref,
            &format!("oci:{}:copied", copy_dir.display()),
        ]);
        skopeo(&[
            "copy",
            &format!("oci:{}:copied", copy_dir.display()),
            &format!("oci:{}:docker.io/library/copied:2", store_dir.display()),
        ]);
        let store = Store::open(&store_dir).unwrap();
        let image = store.image("docker.io/library/copied:2").unwrap();
        let dirs = store
            .unpack_image(&image, &UnpackOptions::default())
            .unwrap();
        assert_eq!(fs::read(dirs[0].join("hello")).unwrap(), b"hello");
        store.gc(&HashSet::new()).unwrap();
        assert!(store.image(name).is_ok() && store.image("docker.io/library/copied:2").is_ok());
        skopeo(&["inspect", &store_ref]);
    }
}
