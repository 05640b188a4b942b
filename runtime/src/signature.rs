//! Image signatures: a container whose config names a `signature_key`
//! runs only if its image's manifest digest carries a valid detached
//! ed25519 signature by that key (runtime/README.md, "Signatures").
//!
//! - What is signed: the ASCII bytes of the manifest digest string
//!   (`sha256:<64 hex>`), the digest the store names the image by (for a
//!   multi-platform image, the platform's manifest, not the index). The
//!   signature is the 64 raw bytes of an ed25519 signature, checked with
//!   `verify_strict` (no small-order keys, no malleable signatures).
//! - In the registry: an OCI artifact under the tag `sha256-<hex>.sig` in
//!   the image's repository (cosign's tag convention): an OCI image
//!   manifest whose config is the empty descriptor ([`EMPTY_MEDIA_TYPE`],
//!   [`EMPTY_DIGEST`], 2 bytes `{}`) and whose single layer is the
//!   signature ([`SIGNATURE_MEDIA_TYPE`], 64 bytes).
//! - In the store: `signatures/sha256/<hex>` next to `blobs/`, written
//!   after it verified (through `tmp/` and a rename, under the store's
//!   shared lock), so a host checks it again at every start without the
//!   network. [`Store::gc`] does not look there; [`prune`] removes the
//!   signatures of manifests that are no longer in the store.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signature, VerifyingKey};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// The media type of the signature layer.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.atoll.signature.v1+ed25519";
/// The media type of the artifact's empty config (OCI image spec 1.1).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's content, and its digest.
pub const EMPTY_CONFIG: &[u8] = b"{}";
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// An ed25519 signature's length.
pub const SIGNATURE_LEN: usize = 64;
/// Where the store keeps signatures, under its root.
pub const STORE_DIR: &str = "signatures/sha256";

/// Errors from checking a signature; each names the digest (and, wrapped
/// in [`SignatureError::Image`], the image) and why.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature over {digest} is {len} bytes, not the {SIGNATURE_LEN} of an ed25519 signature")]
    Length { digest: Digest, len: usize },
    #[error("{key} is not a usable ed25519 public key")]
    Key { key: String },
    #[error("the signature over {digest} does not verify with key {key}")]
    Mismatch { digest: Digest, key: String },
    #[error("the stored signature over {digest} does not verify with key {key}, and the registry gave none that does")]
    StoredMismatch {
        digest: Digest,
        key: String,
        #[source]
        source: Box<SignatureError>,
    },
    #[error("no signature for {digest} in the registry (no tag {tag} in {repository})")]
    #[cfg(feature = "pull")]
    NotInRegistry {
        digest: Digest,
        tag: String,
        repository: String,
        #[source]
        source: Box<crate::registry::RegistryError>,
    },
    #[error("fetching the signature for {digest} (tag {tag} of {repository})")]
    #[cfg(feature = "pull")]
    Registry {
        digest: Digest,
        tag: String,
        repository: String,
        #[source]
        source: Box<crate::registry::RegistryError>,
    },
    #[error("the signature artifact for {digest} (tag {tag}) is malformed: {reason}")]
    Artifact {
        digest: Digest,
        tag: String,
        reason: String,
    },
    #[error("no stored signature for {digest} ({path})")]
    NotStored { digest: Digest, path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {image}")]
    Image {
        image: String,
        #[source]
        source: Box<SignatureError>,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SignatureError + 'a {
    move |source| SignatureError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The tag the signature of `digest` is pushed under: `sha256-<hex>.sig`.
pub fn tag_for(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// How keys are named in messages: hex, one of the forms the config takes.
pub fn key_text(key: &[u8; 32]) -> String {
    hex::encode(key)
}

/// Checks that `sig` is an ed25519 signature by `key` over the ASCII bytes
/// of `manifest_digest` (`sha256:<hex>`).
pub fn verify(key: &[u8; 32], manifest_digest: &Digest, sig: &[u8]) -> Result<(), SignatureError> {
    let sig: &[u8; SIGNATURE_LEN] = sig.try_into().map_err(|_| SignatureError::Length {
        digest: *manifest_digest,
        len: sig.len(),
    })?;
    let verifying =
        VerifyingKey::from_bytes(key).map_err(|_| SignatureError::Key { key: key_text(key) })?;
    let message = manifest_digest.to_string();
    verifying
        .verify_strict(message.as_bytes(), &Signature::from_bytes(sig))
        .map_err(|_| SignatureError::Mismatch {
            digest: *manifest_digest,
            key: key_text(key),
        })
}

/// Where the store keeps the signature of `digest`.
pub fn stored_path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join(STORE_DIR).join(digest.hex())
}

/// The stored signature of `digest`, if there is one.
pub fn load(store: &Store, digest: &Digest) -> Result<Option<Vec<u8>>, SignatureError> {
    let path = stored_path(store, digest);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", &path)(e)),
    };
    // One byte more than a signature shows a bad file; verify says so.
    let mut bytes = Vec::new();
    file.take(SIGNATURE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", &path))?;
    Ok(Some(bytes))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Stores the signature of `digest` (crash-safe: a synced temp file under
/// `tmp/` renamed into place, the directory synced), holding the store
/// lock shared so a GC does not sweep the temp file.
pub fn save(store: &Store, digest: &Digest, sig: &[u8]) -> Result<(), SignatureError> {
    let _lock = store.lock_shared()?;
    let dir = store.root().join(STORE_DIR);
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = store
        .root()
        .join("tmp")
        .join(format!("signature-{}-{n}", std::process::id()));
    let dest = dir.join(digest.hex());
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(sig)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &tmp))?;
        drop(f);
        fs::rename(&tmp, &dest).map_err(io_err("renaming into place", &dest))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the signatures of manifests that are no longer in the store
/// (run after [`Store::gc`]); returns how many. Holds the store lock
/// exclusively, as GC does.
pub fn prune(store: &Store) -> Result<usize, SignatureError> {
    let _lock = store.lock_exclusive()?;
    let dir = store.root().join(STORE_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("listing", &dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", &dir))?;
        let keep = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
            .is_some_and(|d| store.has_blob(&d));
        if !keep {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The image `name`'s manifest digest in the store.
fn stored_digest(store: &Store, name: &str) -> Result<Digest, SignatureError> {
    Ok(store.image(name)?.descriptor.digest)
}

/// Checks the image `name` in the store against its stored signature, with
/// no network (what a host without the `pull` feature can do). Returns
/// the manifest digest that verified.
pub fn verify_stored(store: &Store, name: &str, key: &[u8; 32]) -> Result<Digest, SignatureError> {
    let wrap = |e| SignatureError::Image {
        image: name.to_owned(),
        source: Box::new(e),
    };
    let digest = stored_digest(store, name).map_err(wrap)?;
    match load(store, &digest).map_err(wrap)? {
        Some(sig) => verify(key, &digest, &sig).map_err(wrap)?,
        None => {
            return Err(wrap(SignatureError::NotStored {
                digest,
                path: stored_path(store, &digest),
            }))
        }
    }
    Ok(digest)
}

/// Checks the signature artifact's manifest and returns the descriptor of
/// its signature layer. `content_type` is the registry's Content-Type.
pub fn parse_artifact(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<crate::manifest::Descriptor, String> {
    use crate::manifest::{ImageManifest, OCI_MANIFEST};
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image manifest: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!("schemaVersion {}", manifest.schema_version));
    }
    let declared = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json");
    for media_type in [declared, manifest.media_type.as_deref()]
        .into_iter()
        .flatten()
    {
        if media_type != OCI_MANIFEST {
            return Err(format!(
                "media type {media_type:?}, expected {OCI_MANIFEST}"
            ));
        }
    }
    let config = &manifest.config;
    if config.media_type != EMPTY_MEDIA_TYPE
        || config.digest.to_string() != EMPTY_DIGEST
        || config.size != EMPTY_CONFIG.len() as u64
    {
        return Err(format!(
            "its config is {} {} ({} bytes), not the empty descriptor",
            config.media_type, config.digest, config.size
        ));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(format!(
            "{} layers, expected one (the signature)",
            manifest.layers.len()
        ));
    };
    if layer.media_type != SIGNATURE_MEDIA_TYPE {
        return Err(format!(
            "its layer is {:?}, expected {SIGNATURE_MEDIA_TYPE}",
            layer.media_type
        ));
    }
    if layer.size != SIGNATURE_LEN as u64 {
        return Err(format!(
            "its signature layer is {} bytes, expected {SIGNATURE_LEN}",
            layer.size
        ));
    }
    Ok(layer.clone())
}

/// Where a checked signature came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Store,
    Registry,
}

/// Fetches the signature of `digest` from the registry: the artifact
/// tagged [`tag_for`] in `reference`'s repository, through the config's
/// mirrors then the registry (a mirror's failure is logged and the next
/// endpoint tried). The signature is not verified here.
#[cfg(feature = "pull")]
pub async fn fetch(
    reference: &crate::reference::Reference,
    registries: &atoll_common::config::Registries,
    digest: &Digest,
) -> Result<Vec<u8>, SignatureError> {
    use crate::registry::{self, RegistryClient, RegistryError};

    let tag = tag_for(digest);
    let repository = reference.repository().to_owned();
    let registry_err = |source| SignatureError::Registry {
        digest: *digest,
        tag: tag.clone(),
        repository: repository.clone(),
        source: Box::new(source),
    };
    let client = RegistryClient::new(registries).map_err(registry_err)?;
    let endpoints = registry::endpoints(reference, registries);
    let mut last = None;
    for endpoint in &endpoints {
        let attempt =
            async {
                let fetched = client
                    .manifest(endpoint, &repository, &tag)
                    .await
                    .map_err(|e| match e {
                        RegistryError::NotFound { .. } => SignatureError::NotInRegistry {
                            digest: *digest,
                            tag: tag.clone(),
                            repository: repository.clone(),
                            source: Box::new(e),
                        },
                        e => registry_err(e),
                    })?;
                let layer = parse_artifact(fetched.content_type.as_deref(), &fetched.bytes)
                    .map_err(|reason| SignatureError::Artifact {
                        digest: *digest,
                        tag: tag.clone(),
                        reason,
                    })?;
                client
                    .blob_bytes(endpoint, &repository, &layer.digest, SIGNATURE_LEN as u64)
                    .await
                    .map_err(registry_err)
            };
        match attempt.await {
            Ok(sig) => return Ok(sig),
            Err(e) => {
                if endpoint.mirror {
                    log::warn!("mirror {}: {e}", endpoint.base);
                }
                last = Some(e);
            }
        }
    }
    // endpoints() always ends with the registry itself.
    Err(last.unwrap_or_else(|| SignatureError::Artifact {
        digest: *digest,
        tag,
        reason: "no endpoint to fetch it from".to_owned(),
    }))
}

/// Checks the image `reference` (by its full name in the store) against
/// `key`: the stored signature if it verifies, else the registry's (with
/// `registries`' mirrors and credentials), which is stored once it
/// verifies. Returns the manifest digest and where the signature came from.
#[cfg(feature = "pull")]
pub async fn verify_image(
    store: &Store,
    reference: &crate::reference::Reference,
    registries: &atoll_common::config::Registries,
    key: &[u8; 32],
) -> Result<(Digest, Source), SignatureError> {
    let name = reference.to_string();
    let wrap = |e| SignatureError::Image {
        image: name.clone(),
        source: Box::new(e),
    };
    let digest = stored_digest(store, &name).map_err(|e| match e {
        // It names the image already.
        SignatureError::Store(StoreError::NoImage { .. }) => e,
        e => wrap(e),
    })?;
    let stored = match load(store, &digest).map_err(wrap)? {
        Some(sig) => match verify(key, &digest, &sig) {
            Ok(()) => return Ok((digest, Source::Store)),
            Err(e) => Some(e),
        },
        None => None,
    };
    let fetched = async {
        let sig = fetch(reference, registries, &digest).await?;
        verify(key, &digest, &sig)?;
        Ok(sig)
    }
    .await;
    let sig = match (fetched, stored) {
        (Ok(sig), _) => sig,
        // The registry has the same wrong signature: say it once.
        (Err(e @ SignatureError::Mismatch { .. }), Some(_)) => return Err(wrap(e)),
        (Err(e), Some(_)) => {
            return Err(wrap(SignatureError::StoredMismatch {
                digest,
                key: key_text(key),
                source: Box::new(e),
            }))
        }
        (Err(e), None) => return Err(wrap(e)),
    };
    save(store, &digest, &sig).map_err(wrap)?;
    Ok((digest, Source::Registry))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sign(key: &SigningKey, digest: &Digest) -> Vec<u8> {
        key.sign(digest.to_string().as_bytes()).to_bytes().to_vec()
    }

    #[test]
    fn a_good_signature_verifies() {
        let k = key(1);
        let d = Digest::of(b"manifest");
        verify(&k.verifying_key().to_bytes(), &d, &sign(&k, &d)).unwrap();
    }

    #[test]
    fn the_message_is_the_digest_string() {
        // Signed elsewhere over "sha256:<hex>" (what image-build and
        // `openssl pkeyutl -rawin` sign): the same bytes.
        let k = key(2);
        let d = Digest::of(b"m");
        let message = format!("sha256:{}", d.hex());
        let sig = k.sign(message.as_bytes()).to_bytes();
        verify(&k.verifying_key().to_bytes(), &d, &sig).unwrap();
    }

    #[test]
    fn a_wrong_key_is_refused_by_name() {
        let (k, other) = (key(1), key(3));
        let d = Digest::of(b"manifest");
        let other_pub = other.verifying_key().to_bytes();
        let e = verify(&other_pub, &d, &sign(&k, &d)).unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&hex::encode(other_pub)), "{msg}");
        assert!(msg.contains(&d.to_string()), "{msg}");
    }

    #[test]
    fn a_wrong_digest_is_refused() {
        let k = key(1);
        let d = Digest::of(b"manifest");
        let e = verify(
            &k.verifying_key().to_bytes(),
            &Digest::of(b"another"),
            &sign(&k, &d),
        )
        .unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn truncated_or_long_signatures_are_refused() {
        let k = key(1);
        let d = Digest::of(b"manifest");
        let sig = sign(&k, &d);
        for bad in [&sig[..63], &[][..], &[sig.clone(), vec![0]].concat()[..]] {
            let e = verify(&k.verifying_key().to_bytes(), &d, bad).unwrap_err();
            assert!(
                matches!(e, SignatureError::Length { len, .. } if len == bad.len()),
                "{e}"
            );
        }
        // Flipped bits: right length, wrong signature.
        let mut flipped = sig;
        flipped[10] ^= 1;
        assert!(matches!(
            verify(&k.verifying_key().to_bytes(), &d, &flipped).unwrap_err(),
            SignatureError::Mismatch { .. }
        ));
    }

    #[test]
    fn tag_and_empty_config() {
        let d = Digest::of(b"x");
        assert_eq!(tag_for(&d), format!("sha256-{}.sig", d.hex()));
        assert_eq!(Digest::of(EMPTY_CONFIG).to_string(), EMPTY_DIGEST);
    }

    #[test]
    fn stored_signatures_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = key(4);
        let manifest = store.put_blob_bytes(b"a manifest").unwrap();
        assert_eq!(load(&store, &manifest).unwrap(), None);
        let sig = sign(&k, &manifest);
        save(&store, &manifest, &sig).unwrap();
        assert_eq!(load(&store, &manifest).unwrap().unwrap(), sig);
        assert_eq!(
            stored_path(&store, &manifest),
            dir.path().join("signatures/sha256").join(manifest.hex())
        );
        // GC leaves signatures alone; prune drops those of gone manifests.
        let gone = Digest::of(b"gone");
        save(&store, &gone, &sign(&k, &gone)).unwrap();
        store.gc(&Default::default()).unwrap();
        assert!(stored_path(&store, &gone).exists());
        assert!(stored_path(&store, &manifest).exists());
        // (GC swept the untagged manifest blob; put it back.)
        store.put_blob_bytes(b"a manifest").unwrap();
        assert_eq!(prune(&store).unwrap(), 1);
        assert!(!stored_path(&store, &gone).exists());
        assert_eq!(load(&store, &manifest).unwrap().unwrap(), sig);
        assert!(fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    fn artifact(config: serde_json::Value, layers: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::manifest::OCI_MANIFEST,
            "config": config,
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn artifact_shape() {
        let empty =
            serde_json::json!({"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_DIGEST, "size": 2});
        let sig = Digest::of(&[0u8; 64]);
        let layer =
            serde_json::json!([{"mediaType": SIGNATURE_MEDIA_TYPE, "digest": sig, "size": 64}]);
        let ct = Some(crate::manifest::OCI_MANIFEST);
        let d = parse_artifact(ct, &artifact(empty.clone(), layer.clone())).unwrap();
        assert_eq!(d.digest, sig);
        // Registries send it with its type; a Docker manifest is refused.
        let e = parse_artifact(
            Some(crate::manifest::DOCKER_MANIFEST),
            &artifact(empty.clone(), layer.clone()),
        )
        .unwrap_err();
        assert!(e.contains("media type"), "{e}");
        let e = parse_artifact(ct, &artifact(empty.clone(), serde_json::json!([]))).unwrap_err();
        assert!(e.contains("0 layers"), "{e}");
        let wrong_size =
            serde_json::json!([{"mediaType": SIGNATURE_MEDIA_TYPE, "digest": sig, "size": 63}]);
        assert!(parse_artifact(ct, &artifact(empty.clone(), wrong_size)).is_err());
        let tar = serde_json::json!([{"mediaType": crate::manifest::OCI_LAYER_TAR, "digest": sig, "size": 64}]);
        assert!(parse_artifact(ct, &artifact(empty, tar)).is_err());
        let image_config = serde_json::json!({"mediaType": crate::manifest::OCI_CONFIG, "digest": EMPTY_DIGEST, "size": 2});
        assert!(parse_artifact(ct, &artifact(image_config, layer)).is_err());
        assert!(parse_artifact(ct, b"<html>").is_err());
    }
}
