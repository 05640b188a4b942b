//! Pulling images into the store: from a registry over the OCI
//! distribution protocol ([`pull`]), or as an OCI archive (or `docker save`
//! tar) from an HTTPS URL ([`pull_archive`]), for registry-free
//! distribution.
//!
//! A registry pull resolves the reference to a manifest (following an OCI
//! index or Docker manifest list to the platform's manifest), fetches the
//! config, downloads the layers (up to [`PARALLEL_DOWNLOADS`] at once) and
//! names the image in index.json. Nothing is used before its sha256 is
//! checked: manifests against the digest asked for (and the index entry's
//! size), configs and layers against their descriptors' digest and size.
//!
//! A layer is downloaded into the store's `ingest/DIGEST` file, hashed as
//! it is written. A download cut short keeps the file: the next attempt
//! (there are [`ATTEMPTS`] per endpoint, and the next `pull`) rehashes what
//! is there and asks for the rest with `Range`. A complete file whose
//! digest and size match is fsynced and renamed into `blobs/sha256/`; one
//! that does not is deleted. Two pulls of the same layer take turns on the
//! ingest file's lock.
//!
//! Each endpoint ([`registry::endpoints`]: mirrors, then the registry) is
//! tried in turn for each manifest and blob; a mirror's failure is logged
//! and the next endpoint tried, the registry's is returned.

use std::fs;
use std::io::{self, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atoll_common::config::Registries;
use atoll_common::error::error_chain;
use futures_util::{StreamExt, TryStreamExt};
use rustix::fs::FlockOperation;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::digest::{Digest, Hasher};
use crate::import::{self, ImportError, FILE_MAX};
use crate::manifest::{
    Descriptor, ImageConfig, ImageManifest, Manifest, ManifestError, Platform, CONFIG_MAX,
};
use crate::reference::Reference;
use crate::registry::{self, Endpoint, RegistryClient, RegistryError};
use crate::store::{Store, StoreError};

/// How many layers are downloaded at once.
pub const PARALLEL_DOWNLOADS: usize = 3;
/// How often an interrupted blob download is resumed from one endpoint
/// before the next endpoint is tried.
pub const ATTEMPTS: usize = 3;
/// How deep indexes may nest before the image manifest.
const INDEX_DEPTH_MAX: usize = 4;

/// Errors from pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} from {url}: the content hashes to {actual}")]
    DigestMismatch {
        digest: Digest,
        url: String,
        actual: Digest,
    },
    #[error("{what}: indexes nested more than {INDEX_DEPTH_MAX} deep")]
    IndexTooDeep { what: String },
    #[error("{url}: not an http:// or https:// URL")]
    NotHttp { url: String },
    #[error("importing the archive from {url}")]
    Import {
        url: String,
        #[source]
        source: ImportError,
    },
}

impl From<StoreError> for PullError {
    fn from(e: StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PullError + 'a {
    move |source| PullError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a pull is doing, for a progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The image manifest is known: `layers` blobs of `size` bytes in all.
    Resolved {
        manifest: Digest,
        layers: usize,
        size: u64,
    },
    /// `downloaded` of a layer's `size` bytes are in (a resumed download
    /// starts at what was there).
    Layer {
        digest: Digest,
        downloaded: u64,
        size: u64,
    },
    /// A layer is in the store; `cached` if it was there before the pull.
    LayerDone {
        digest: Digest,
        size: u64,
        cached: bool,
    },
    /// `downloaded` bytes of an archive whose size the server may tell.
    Archive { downloaded: u64, size: Option<u64> },
}

/// The progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// Whether `source` is an archive URL for [`pull_archive`] rather than an
/// image reference for [`pull`].
pub fn is_archive_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// Pulls `reference` for `platform` into `store` and names it there by its
/// full reference (`docker.io/library/alpine:3.19`). Returns the digest of
/// the image manifest. Holds the store lock shared throughout.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    config: &Registries,
    platform: &Platform,
    progress: ProgressFn<'_>,
) -> Result<Digest, PullError> {
    let _lock = store.lock_shared()?;
    let puller = Puller {
        store,
        client: RegistryClient::new(config)?,
        endpoints: registry::endpoints(reference, config),
        repository: reference.repository(),
        progress,
    };
    let name = reference.to_string();

    // The manifest, through indexes.
    let mut fetched = puller.manifest(&reference.manifest_ref()).await?;
    let mut media_type = fetched.content_type.clone();
    let mut chosen_platform = None;
    let mut what = name.clone();
    let mut depth = 0;
    let image: ImageManifest = loop {
        match Manifest::parse(media_type.as_deref(), &fetched.bytes, &what)? {
            Manifest::Image(m) => break *m,
            Manifest::Index(index) => {
                depth += 1;
                if depth > INDEX_DEPTH_MAX {
                    return Err(PullError::IndexTooDeep { what });
                }
                let d = index.select(platform, &what)?.clone();
                log::debug!("{what}: {platform} is {}", d.digest);
                what = format!("{name} ({})", d.digest);
                fetched = puller.manifest(&d.digest.to_string()).await?;
                if fetched.bytes.len() as u64 != d.size {
                    return Err(PullError::SizeMismatch {
                        what,
                        expected: d.size,
                        actual: fetched.bytes.len() as u64,
                    });
                }
                media_type = Some(d.media_type.clone());
                chosen_platform = d.platform.clone();
            }
        }
    };
    let manifest_digest = fetched.digest;
    progress(&Progress::Resolved {
        manifest: manifest_digest,
        layers: image.layers.len(),
        size: image.layers.iter().map(|l| l.size).sum(),
    });

    // The config: small, checked and parsed before any layer is fetched.
    if !store.has_blob(&image.config.digest) {
        let bytes = puller.config(&image.config).await?;
        ImageConfig::parse(&bytes, image.layers.len(), &what)?;
        store.put_blob(&bytes[..], &image.config.digest, Some(image.config.size))?;
    }

    // The layers, each once even if the manifest repeats one.
    let mut layers: Vec<&Descriptor> = Vec::new();
    for layer in &image.layers {
        if !layers.iter().any(|l| l.digest == layer.digest) {
            layers.push(layer);
        }
    }
    futures_util::stream::iter(layers.into_iter().map(|l| puller.layer(l)))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;

    store.put_blob(
        &fetched.bytes[..],
        &manifest_digest,
        Some(fetched.bytes.len() as u64),
    )?;
    let mut descriptor = Descriptor::new(
        image.media_type(),
        manifest_digest,
        fetched.bytes.len() as u64,
    );
    descriptor.platform = chosen_platform;
    store.tag(&name, &descriptor)?;
    log::info!("pulled {name} ({manifest_digest})");
    Ok(manifest_digest)
}

/// One registry pull's state.
struct Puller<'a> {
    store: &'a Store,
    client: RegistryClient,
    endpoints: Vec<Endpoint>,
    repository: &'a str,
    progress: ProgressFn<'a>,
}

/// How one download attempt ended, when it did not succeed.
enum Attempt {
    /// Cut short: try again from where it stopped.
    Resume(PullError),
    /// Failed at this endpoint: try the next.
    Fail(PullError),
}

impl Puller<'_> {
    /// A manifest by tag or digest, from the first endpoint that has it.
    async fn manifest(&self, reference: &str) -> Result<registry::FetchedManifest, PullError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self
                .client
                .manifest(endpoint, self.repository, reference)
                .await
            {
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.warn(endpoint, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(|| unreachable_no_endpoint(reference), PullError::from))
    }

    /// The config blob's bytes, checked.
    async fn config(&self, config: &Descriptor) -> Result<Vec<u8>, PullError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self
                .client
                .blob_bytes(endpoint, self.repository, &config.digest, CONFIG_MAX)
                .await
            {
                Ok(bytes) if bytes.len() as u64 == config.size => return Ok(bytes),
                Ok(bytes) => {
                    return Err(PullError::SizeMismatch {
                        what: format!("config {}", config.digest),
                        expected: config.size,
                        actual: bytes.len() as u64,
                    })
                }
                Err(e) => {
                    self.warn(endpoint, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(
            || unreachable_no_endpoint(&config.digest.to_string()),
            PullError::from,
        ))
    }

    fn warn(&self, endpoint: &Endpoint, e: &dyn std::error::Error) {
        if endpoint.mirror {
            log::warn!(
                "mirror {} failed, trying the next: {}",
                endpoint.base,
                error_chain(e)
            );
        }
    }

    /// Puts a layer blob into the store, downloading what is missing.
    async fn layer(&self, layer: &Descriptor) -> Result<(), PullError> {
        let digest = layer.digest;
        let done = |cached| {
            (self.progress)(&Progress::LayerDone {
                digest,
                size: layer.size,
                cached,
            })
        };
        if self.store.has_blob(&digest) {
            done(true);
            return Ok(());
        }
        let path = self.store.ingest_path(&digest);
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(io_err("opening", &path))?;
        lock_file(&file, &path).await?;
        // Another pull may have finished it while we waited.
        if self.store.has_blob(&digest) {
            done(true);
            return Ok(());
        }
        let mut last = None;
        'endpoints: for endpoint in &self.endpoints {
            for attempt in 1..=ATTEMPTS {
                match self.download(endpoint, layer, &mut file, &path).await {
                    Ok(()) => {
                        commit(self.store, &file, &path, &digest).await?;
                        done(false);
                        return Ok(());
                    }
                    Err(Attempt::Resume(e)) => {
                        log::warn!(
                            "layer {digest}: attempt {attempt} of {ATTEMPTS} at {} cut short: {}",
                            endpoint.base,
                            error_chain(&e)
                        );
                        last = Some(e);
                    }
                    Err(Attempt::Fail(e)) => {
                        self.warn(endpoint, &e);
                        last = Some(e);
                        continue 'endpoints;
                    }
                }
                // A short pause before resuming.
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
        }
        Err(last.unwrap_or_else(|| unreachable_no_endpoint(&digest.to_string())))
    }

    /// One attempt at completing the ingest file from `endpoint`.
    async fn download(
        &self,
        endpoint: &Endpoint,
        layer: &Descriptor,
        file: &mut tokio::fs::File,
        path: &Path,
    ) -> Result<(), Attempt> {
        let fail = |e: PullError| Attempt::Fail(e);
        let digest = layer.digest;
        // What is there already, rehashed: it is only trusted through the
        // digest of the whole.
        let (mut hasher, have) = rehash(file, path, layer.size).await.map_err(fail)?;
        if have == layer.size {
            if hasher.finish() == digest {
                return Ok(());
            }
            truncate(file, path).await.map_err(fail)?;
            hasher = Hasher::new();
        }
        let mut stream = match self
            .client
            .blob(endpoint, self.repository, &digest, hasher.len())
            .await
        {
            Ok(s) => s,
            Err(RegistryError::RangeNotSatisfiable { .. }) => {
                truncate(file, path).await.map_err(fail)?;
                return Err(Attempt::Resume(PullError::SizeMismatch {
                    what: format!("the partial download of {digest}"),
                    expected: layer.size,
                    actual: have,
                }));
            }
            Err(e) => return Err(fail(e.into())),
        };
        let started_at = stream.offset();
        if started_at != hasher.len() {
            // The server sent the whole blob.
            truncate(file, path).await.map_err(fail)?;
            hasher = Hasher::new();
        }
        file.seek(SeekFrom::Start(started_at))
            .await
            .map_err(|e| fail(io_err("seeking in", path)(e)))?;
        loop {
            let chunk = match stream.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    file.flush()
                        .await
                        .map_err(|e| fail(io_err("writing", path)(e)))?;
                    return Err(Attempt::Resume(e.into()));
                }
            };
            if hasher.len() + chunk.len() as u64 > layer.size {
                truncate(file, path).await.map_err(fail)?;
                return Err(fail(PullError::SizeMismatch {
                    what: format!("blob {digest} from {}", stream.url()),
                    expected: layer.size,
                    actual: hasher.len() + chunk.len() as u64,
                }));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(io_err("writing", path)(e)))?;
            hasher.update(&chunk);
            (self.progress)(&Progress::Layer {
                digest,
                downloaded: hasher.len(),
                size: layer.size,
            });
        }
        file.flush()
            .await
            .map_err(|e| fail(io_err("writing", path)(e)))?;
        if hasher.len() < layer.size {
            // The connection ended early without an error.
            return Err(Attempt::Resume(PullError::SizeMismatch {
                what: format!("blob {digest} from {}", stream.url()),
                expected: layer.size,
                actual: hasher.len(),
            }));
        }
        let actual = hasher.finish();
        if actual != digest {
            truncate(file, path).await.map_err(fail)?;
            let e = PullError::DigestMismatch {
                digest,
                url: stream.url().to_owned(),
                actual,
            };
            // A resumed download may have kept a bad prefix: once more
            // from the start.
            return Err(if started_at > 0 {
                Attempt::Resume(e)
            } else {
                Attempt::Fail(e)
            });
        }
        Ok(())
    }
}

fn unreachable_no_endpoint(what: &str) -> PullError {
    // `registry::endpoints` always ends with the registry itself.
    PullError::Io {
        op: "finding an endpoint for",
        path: PathBuf::from(what),
        source: io::Error::other("no endpoint"),
    }
}

/// Takes the ingest file's lock, waiting for another pull that holds it.
async fn lock_file(file: &tokio::fs::File, path: &Path) -> Result<(), PullError> {
    loop {
        match rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(io_err("locking", path)(e.into())),
        }
    }
}

/// Hashes the first bytes of a partial download (at most `size`; a longer
/// file is emptied) and returns the hasher and how many bytes there are.
async fn rehash(
    file: &mut tokio::fs::File,
    path: &Path,
    size: u64,
) -> Result<(Hasher, u64), PullError> {
    let len = file
        .metadata()
        .await
        .map_err(io_err("reading", path))?
        .len();
    let mut hasher = Hasher::new();
    if len > size {
        truncate(file, path).await?;
        return Ok((hasher, 0));
    }
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(io_err("seeking in", path))?;
    let mut buf = vec![0u8; 64 << 10];
    while hasher.len() < len {
        let n = file.read(&mut buf).await.map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let have = hasher.len();
    Ok((hasher, have))
}

async fn truncate(file: &mut tokio::fs::File, path: &Path) -> Result<(), PullError> {
    file.set_len(0).await.map_err(io_err("truncating", path))?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(io_err("seeking in", path))?;
    Ok(())
}

/// Moves a complete, verified ingest file into `blobs/sha256/`.
async fn commit(
    store: &Store,
    file: &tokio::fs::File,
    path: &Path,
    digest: &Digest,
) -> Result<(), PullError> {
    file.sync_all().await.map_err(io_err("syncing", path))?;
    let dest = store.blob_path(digest);
    tokio::fs::rename(path, &dest)
        .await
        .map_err(io_err("renaming into place", &dest))?;
    let dir = dest.parent().unwrap_or(store.root());
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Downloads an OCI archive or `docker save` tar from `url` into the
/// store's `ingest/` and imports it ([`import::import_archive`]; `name`
/// and `platform` as there). Returns the names the images got.
pub async fn pull_archive(
    store: &Store,
    url: &str,
    name: Option<&Reference>,
    platform: &Platform,
    progress: ProgressFn<'_>,
) -> Result<Vec<String>, PullError> {
    if !is_archive_url(url) {
        return Err(PullError::NotHttp {
            url: url.to_owned(),
        });
    }
    let _lock = store.lock_shared()?;
    let client = registry::http_client()?;
    let path = store
        .root()
        .join("ingest")
        .join(format!("archive-{}", Digest::of(url.as_bytes()).hex()));
    let result = download_archive(&client, url, &path, progress).await;
    let result = match result {
        Ok(()) => fs::File::open(&path)
            .map_err(io_err("opening", &path))
            .and_then(|f| {
                import::import_archive(store, io::BufReader::new(f), name, platform).map_err(
                    |source| PullError::Import {
                        url: url.to_owned(),
                        source,
                    },
                )
            }),
        Err(e) => Err(e),
    };
    let _ = fs::remove_file(&path);
    result
}

async fn download_archive(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
    progress: ProgressFn<'_>,
) -> Result<(), PullError> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|source| RegistryError::Http {
            url: url.to_owned(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(registry::status_error(url, response).await.into());
    }
    let size = response.content_length();
    let mut response = response;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(io_err("creating", path))?;
    let mut downloaded = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| RegistryError::Http {
            url: url.to_owned(),
            source,
        })?
    {
        downloaded += chunk.len() as u64;
        if downloaded > FILE_MAX {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                max: FILE_MAX,
            }
            .into());
        }
        file.write_all(&chunk)
            .await
            .map_err(io_err("writing", path))?;
        progress(&Progress::Archive { downloaded, size });
    }
    file.flush().await.map_err(io_err("writing", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Against the real registry (Debian's `docker-registry`, the CNCF
    //! distribution registry): the test pushes an image over the API itself
    //! and pulls it back.

    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use qemu_tests::registry::{Registry as TestRegistry, RegistryError as StartError};

    use super::*;
    use crate::manifest::{
        Compression, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
        OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
    };
    use crate::unpack::UnpackOptions;

    /// Debian's `docker-registry` on a free loopback port (the harness's
    /// starter, shared with the QEMU tests); `None`, with a note, where it
    /// is not installed.
    fn start_registry() -> Option<TestRegistry> {
        match TestRegistry::start() {
            Ok(r) => Some(r),
            Err(StartError::Missing) => {
                eprintln!("skipping: {}", StartError::Missing);
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn base(registry: &TestRegistry) -> String {
        format!("http://{}", registry.host())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Pushes a blob: `POST …/blobs/uploads/`, then a monolithic `PUT`.
    async fn push_blob(http: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let start = format!("{base}/v2/{repo}/blobs/uploads/");
        let r = http.post(&start).send().await.unwrap();
        assert_eq!(r.status(), 202, "POST {start}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let mut url = reqwest::Url::parse(&start)
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let r = http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "PUT blob {digest}");
        digest
    }

    async fn push_manifest(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) {
        let r = http
            .put(format!("{base}/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 201, "PUT manifest: {}", r.text().await.unwrap());
    }

    /// An image to push: its layers (as pushed), their tars, and the
    /// manifest.
    struct TestImage {
        layers: Vec<(Vec<u8>, Descriptor)>,
        config: Vec<u8>,
        manifest_media_type: &'static str,
        manifest: Vec<u8>,
    }

    impl TestImage {
        fn new(
            manifest_media_type: &'static str,
            config_media_type: &'static str,
            arch: &str,
            layers: Vec<(&'static str, Vec<u8>)>,
        ) -> Self {
            let mut diff_ids = Vec::new();
            let mut pushed = Vec::new();
            for (media_type, tar) in layers {
                diff_ids.push(Digest::of(&tar).to_string());
                let blob = match Compression::of_media_type(media_type) {
                    Some(Compression::Gzip) => {
                        let mut gz =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        gz.write_all(&tar).unwrap();
                        gz.finish().unwrap()
                    }
                    Some(Compression::Zstd) => zstd::encode_all(&tar[..], 1).unwrap(),
                    _ => tar,
                };
                let d = Descriptor::new(media_type, Digest::of(&blob), blob.len() as u64);
                pushed.push((blob, d));
            }
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": arch, "os": "linux",
                "config": {"Cmd": ["/hello"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids}
            }))
            .unwrap();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": manifest_media_type,
                "config": Descriptor::new(config_media_type, Digest::of(&config), config.len() as u64),
                "layers": pushed.iter().map(|(_, d)| d).collect::<Vec<_>>(),
            }))
            .unwrap();
            Self {
                layers: pushed,
                config,
                manifest_media_type,
                manifest,
            }
        }

        fn digest(&self) -> Digest {
            Digest::of(&self.manifest)
        }

        fn layer(&self, i: usize) -> &Descriptor {
            &self.layers[i].1
        }

        /// Pushes blobs and the manifest (by `reference`, a tag or digest).
        async fn push(&self, http: &reqwest::Client, base: &str, repo: &str, reference: &str) {
            assert_eq!(
                push_blob(http, base, repo, &self.config).await,
                Digest::of(&self.config)
            );
            for (blob, _) in &self.layers {
                push_blob(http, base, repo, blob).await;
            }
            push_manifest(
                http,
                base,
                repo,
                reference,
                self.manifest_media_type,
                &self.manifest,
            )
            .await;
        }
    }

    /// A layer tar of one file, made with the `tar` crate.
    fn layer_tar(path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    /// Bytes that do not compress.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn config_for(registry: &TestRegistry, mirrors: &[String]) -> Registries {
        let mut c = Registries::default();
        c.mirrors.insert(registry.host(), mirrors.to_vec());
        c
    }

    type Events = Mutex<Vec<Progress>>;

    fn record(events: &Events) -> impl Fn(&Progress) + Sync + '_ {
        move |p| events.lock().unwrap().push(p.clone())
    }

    fn read_layer_file(store: &Store, name: &str, layer: usize, file: &str) -> Vec<u8> {
        let image = store.image(name).unwrap();
        let dirs = store
            .unpack_image(&image, &UnpackOptions::default())
            .unwrap();
        fs::read(dirs[layer].join(file)).unwrap()
    }

    #[test]
    fn pull_from_a_real_registry() {
        let Some(registry) = start_registry() else {
            return;
        };
        let base = base(&registry);
        let amd64 = TestImage::new(
            OCI_MANIFEST,
            OCI_CONFIG,
            "amd64",
            vec![
                (
                    OCI_LAYER_GZIP,
                    layer_tar("hello", b"hello from a gzip layer"),
                ),
                (
                    OCI_LAYER_ZSTD,
                    layer_tar("greeting", b"hello from a zstd layer"),
                ),
            ],
        );
        let arm64 = TestImage::new(
            DOCKER_MANIFEST,
            DOCKER_CONFIG,
            "arm64",
            vec![(DOCKER_LAYER_GZIP, layer_tar("hello", b"hello from arm64"))],
        );
        let list = |media_type: &str| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": media_type,
                "manifests": [
                    {"mediaType": OCI_MANIFEST, "digest": amd64.digest(), "size": amd64.manifest.len(),
                     "platform": {"os": "linux", "architecture": "amd64"}},
                    {"mediaType": DOCKER_MANIFEST, "digest": arm64.digest(), "size": arm64.manifest.len(),
                     "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                ]
            }))
            .unwrap()
        };
        let rt = runtime();
        rt.block_on(async {
            let http = registry::http_client().unwrap();
            amd64.push(&http, &base, "test/app", "v1").await;
            arm64
                .push(&http, &base, "test/app", &arm64.digest().to_string())
                .await;
            push_manifest(
                &http,
                &base,
                "test/app",
                "oci-index",
                OCI_INDEX,
                &list(OCI_INDEX),
            )
            .await;
            push_manifest(
                &http,
                &base,
                "test/app",
                "docker-list",
                DOCKER_MANIFEST_LIST,
                &list(DOCKER_MANIFEST_LIST),
            )
            .await;
        });

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A dead mirror first: the pull falls back to the registry.
        let dead = format!("http://127.0.0.1:{}", free_port());
        let config = config_for(&registry, &[dead]);
        let events = Events::default();
        let name = format!("{}/test/app:v1", registry.host());
        let reference = Reference::parse(&name).unwrap();
        let digest = rt
            .block_on(pull(
                &store,
                &reference,
                &config,
                &Platform::default(),
                &record(&events),
            ))
            .unwrap();
        assert_eq!(digest, amd64.digest());
        assert_eq!(
            read_layer_file(&store, &name, 0, "hello"),
            b"hello from a gzip layer"
        );
        assert_eq!(
            read_layer_file(&store, &name, 1, "greeting"),
            b"hello from a zstd layer"
        );
        {
            let events = events.lock().unwrap();
            assert_eq!(
                events[0],
                Progress::Resolved {
                    manifest: digest,
                    layers: 2,
                    size: amd64.layer(0).size + amd64.layer(1).size
                }
            );
            for i in 0..2 {
                let l = amd64.layer(i);
                assert!(events.contains(&Progress::Layer {
                    digest: l.digest,
                    downloaded: l.size,
                    size: l.size
                }));
                assert!(events.contains(&Progress::LayerDone {
                    digest: l.digest,
                    size: l.size,
                    cached: false
                }));
            }
        }

        // Again: the layers are there already.
        let events = Events::default();
        rt.block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &record(&events),
        ))
        .unwrap();
        assert!(events.lock().unwrap().contains(&Progress::LayerDone {
            digest: amd64.layer(0).digest,
            size: amd64.layer(0).size,
            cached: true
        }));

        // An OCI index and a Docker manifest list, with platform selection.
        let arm = Platform::parse("linux/arm64").unwrap();
        for tag in ["oci-index", "docker-list"] {
            let name = format!("{}/test/app:{tag}", registry.host());
            let r = Reference::parse(&name).unwrap();
            let d = rt
                .block_on(pull(&store, &r, &config, &arm, &|_| {}))
                .unwrap();
            assert_eq!(d, arm64.digest(), "{tag}");
            assert_eq!(
                read_layer_file(&store, &name, 0, "hello"),
                b"hello from arm64"
            );
            let image = store.image(&name).unwrap();
            assert_eq!(image.descriptor.media_type, DOCKER_MANIFEST);
            let d = rt
                .block_on(pull(&store, &r, &config, &Platform::default(), &|_| {}))
                .unwrap();
            assert_eq!(d, amd64.digest(), "{tag}");
        }

        // By digest.
        let name = format!("{}/test/app@{}", registry.host(), amd64.digest());
        let r = Reference::parse(&name).unwrap();
        let d = rt
            .block_on(pull(&store, &r, &config, &Platform::default(), &|_| {}))
            .unwrap();
        assert_eq!(d, amd64.digest());
        assert!(store.image(&name).is_ok());

        // A tag the registry does not have.
        let r = Reference::parse(&format!("{}/test/app:nope", registry.host())).unwrap();
        let e = rt
            .block_on(pull(&store, &r, &config, &Platform::default(), &|_| {}))
            .unwrap_err();
        assert!(
            matches!(e, PullError::Registry(RegistryError::NotFound { .. })),
            "{e}"
        );
        // A platform no entry has.
        let r = Reference::parse(&format!("{}/test/app:oci-index", registry.host())).unwrap();
        let e = rt
            .block_on(pull(
                &store,
                &r,
                &config,
                &Platform::parse("linux/s390x").unwrap(),
                &|_| {},
            ))
            .unwrap_err();
        assert!(matches!(e, PullError::Manifest(_)), "{e}");
    }

    /// A TCP proxy in front of the registry that records what clients send
    /// and, once, cuts the response to a request naming `cut` after
    /// `cut_after` bytes.
    struct Proxy {
        port: u16,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    impl Proxy {
        fn start(upstream: u16, cut: Option<(String, usize)>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let sent = Arc::new(Mutex::new(Vec::new()));
            let cut_used = Arc::new(AtomicBool::new(cut.is_none()));
            let log = sent.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(client) = conn else { break };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let armed = Arc::new(AtomicBool::new(false));
                    let (mut c_in, mut s_out) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (log, cut_used2, armed2, cut2) =
                        (log.clone(), cut_used.clone(), armed.clone(), cut.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n) = c_in.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                            if let Some((path, _)) = &cut2 {
                                let text = String::from_utf8_lossy(&buf[..n]);
                                if text.contains(path.as_str())
                                    && !cut_used2.swap(true, Ordering::SeqCst)
                                {
                                    armed2.store(true, Ordering::SeqCst);
                                }
                            }
                            if s_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = s_out.shutdown(Shutdown::Write);
                    });
                    let cut_after = cut.as_ref().map_or(usize::MAX, |(_, n)| *n);
                    let (mut s_in, mut c_out) = (server, client);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        let mut since_armed = 0usize;
                        while let Ok(n) = s_in.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if armed.load(Ordering::SeqCst) {
                                if since_armed + n >= cut_after {
                                    let _ = c_out.write_all(&buf[..cut_after - since_armed]);
                                    let _ = c_out.shutdown(Shutdown::Both);
                                    let _ = s_in.shutdown(Shutdown::Both);
                                    return;
                                }
                                since_armed += n;
                            }
                            if c_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = c_out.shutdown(Shutdown::Write);
                    });
                }
            });
            Self { port, sent }
        }

        fn url(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        fn requests(&self) -> String {
            String::from_utf8_lossy(&self.sent.lock().unwrap()).to_ascii_lowercase()
        }
    }

    #[test]
    fn interrupted_and_partial_downloads_resume() {
        let Some(registry) = start_registry() else {
            return;
        };
        let image = TestImage::new(
            OCI_MANIFEST,
            OCI_CONFIG,
            "amd64",
            vec![(OCI_LAYER_GZIP, layer_tar("big", &noise(1 << 20)))],
        );
        let rt = runtime();
        rt.block_on(async {
            let http = registry::http_client().unwrap();
            image.push(&http, &base(&registry), "test/big", "v1").await;
        });
        let layer = image.layer(0).clone();
        let name = format!("{}/test/big:v1", registry.host());
        let reference = Reference::parse(&name).unwrap();

        // The connection is cut 300 KB into the layer: the pull resumes.
        let proxy = Proxy::start(registry.port(), Some((layer.digest.to_string(), 300_000)));
        let config = config_for(&registry, &[proxy.url()]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = rt
            .block_on(pull(
                &store,
                &reference,
                &config,
                &Platform::default(),
                &|_| {},
            ))
            .unwrap();
        assert_eq!(d, image.digest());
        let requests = proxy.requests();
        assert!(requests.contains("range: bytes="), "{requests}");
        assert_eq!(
            read_layer_file(&store, &name, 0, "big"),
            noise(1 << 20),
            "resumed layer content"
        );
        assert!(!store.ingest_path(&layer.digest).exists());

        // A partial download left by an earlier pull is continued.
        let proxy = Proxy::start(registry.port(), None);
        let config = config_for(&registry, &[proxy.url()]);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = &image.layers[0].0;
        fs::write(store.ingest_path(&layer.digest), &blob[..12345]).unwrap();
        rt.block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &|_| {},
        ))
        .unwrap();
        assert!(proxy.requests().contains("range: bytes=12345-"));
        assert_eq!(fs::read(store.blob_path(&layer.digest)).unwrap(), *blob);

        // A partial download with bad bytes: the resumed whole does not
        // verify, and the blob is fetched again from the start.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.ingest_path(&layer.digest), vec![0u8; 5000]).unwrap();
        rt.block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &|_| {},
        ))
        .unwrap();
        assert_eq!(fs::read(store.blob_path(&layer.digest)).unwrap(), *blob);

        // A complete, correct ingest file is not downloaded again.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.ingest_path(&layer.digest), blob).unwrap();
        let proxy = Proxy::start(registry.port(), None);
        let config = config_for(&registry, &[proxy.url()]);
        rt.block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &|_| {},
        ))
        .unwrap();
        assert!(!proxy.requests().contains(&layer.digest.hex()));
    }

    #[test]
    fn a_corrupt_blob_is_refused() {
        let Some(registry) = start_registry() else {
            return;
        };
        let image = TestImage::new(
            OCI_MANIFEST,
            OCI_CONFIG,
            "amd64",
            vec![(OCI_LAYER_GZIP, layer_tar("f", &noise(50_000)))],
        );
        let rt = runtime();
        rt.block_on(async {
            let http = registry::http_client().unwrap();
            image.push(&http, &base(&registry), "test/bad", "v1").await;
        });
        let layer = image.layer(0).clone();
        let path = registry.blob_path(&layer.digest.to_string());
        let mut bytes = fs::read(&path).unwrap();
        bytes[20_000] ^= 0xff;
        fs::write(&path, &bytes).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let reference = Reference::parse(&format!("{}/test/bad:v1", registry.host())).unwrap();
        let e = rt
            .block_on(pull(
                &store,
                &reference,
                &Registries::default(),
                &Platform::default(),
                &|_| {},
            ))
            .unwrap_err();
        match &e {
            PullError::DigestMismatch { digest, actual, .. } => {
                assert_eq!(*digest, layer.digest);
                assert_eq!(*actual, Digest::of(&bytes));
            }
            _ => panic!("expected a digest mismatch, got {e}"),
        }
        assert!(!store.has_blob(&layer.digest));
        assert!(fs::metadata(store.ingest_path(&layer.digest)).map_or(true, |m| m.len() == 0));
        assert!(store.images().unwrap().is_empty());

        // A corrupt config is refused too (in a new store: the first one
        // has the config already).
        let config_digest = Digest::of(&image.config);
        let path = registry.blob_path(&config_digest.to_string());
        let mut bytes = fs::read(&path).unwrap();
        bytes[5] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = rt
            .block_on(pull(
                &store,
                &reference,
                &Registries::default(),
                &Platform::default(),
                &|_| {},
            ))
            .unwrap_err();
        assert!(
            matches!(e, PullError::Registry(RegistryError::DigestMismatch { .. })),
            "{e}"
        );
    }

    #[test]
    fn archive_urls() {
        assert!(is_archive_url("https://example.com/app.tar"));
        assert!(is_archive_url("http://10.0.0.1/app.tar"));
        assert!(!is_archive_url("alpine:3.19"));
        assert!(!is_archive_url("localhost:5000/app"));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = runtime()
            .block_on(pull_archive(
                &store,
                "ftp://x/y.tar",
                None,
                &Platform::default(),
                &|_| {},
            ))
            .unwrap_err();
        assert!(matches!(e, PullError::NotHttp { .. }), "{e}");
    }
}
