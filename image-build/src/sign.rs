//! `image-build sign-image`: image signatures for containers pinned to a
//! `signature_key` (runtime/README.md, "Signatures"; docs/containers.md,
//! "Signed images").
//!
//! - [`generate_key`] makes an ed25519 private key, PKCS#8 PEM, mode 0600
//!   (as [`crate::keys`] keeps update keys, so `openssl pkey` reads it).
//! - [`signature_archive`] signs the ASCII bytes of a manifest digest
//!   (`sha256:<hex>`) and writes the signature artifact as an OCI archive:
//!   an OCI image manifest whose config is the empty descriptor and whose
//!   one layer is the 64-byte signature, named `sha256-<hex>.sig` (cosign's
//!   tag convention), which `skopeo copy oci-archive:SIG.tar
//!   docker://REGISTRY/REPO:sha256-<hex>.sig` pushes next to the image.
//!
//! The format is defined by the runtime that checks it
//! (`atoll_runtime::signature`); its constants are repeated here, as
//! image-build does not link the runtime. The tests below check what this
//! writes against the documented format.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::keys::KeysError;

/// The media type of the signature layer.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.atoll.signature.v1+ed25519";
/// The artifact's config: OCI's empty descriptor.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Key(#[from] KeysError),
    #[error("{0:?} is not a manifest digest (sha256: and 64 lowercase hex digits)")]
    Digest(String),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The public key as the config's `signature_key` takes it (hex).
pub fn public_key_text(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

/// Makes a new private key at `path` (PKCS#8 PEM, 0600, never over an
/// existing file) and returns it.
pub fn generate_key(path: &Path) -> Result<SigningKey, KeysError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeysError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeysError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let write = |source| KeysError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeysError::Exists {
                    path: path.to_owned(),
                }
            } else {
                write(source)
            }
        })?;
    file.write_all(pem.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(key)
}

/// Reads a PKCS#8 PEM ed25519 private key (what [`generate_key`] and
/// `openssl genpkey -algorithm ed25519` write).
pub fn load_key(path: &Path) -> Result<SigningKey, KeysError> {
    let text = String::from_utf8(crate::keys::read(path)?).map_err(|e| KeysError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeysError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Checks `sha256:<64 lowercase hex>` and returns the hex.
fn digest_hex(digest: &str) -> Result<&str, SignError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| SignError::Digest(digest.to_owned()))
}

/// The signature over a manifest digest: ed25519 over its ASCII bytes.
pub fn sign_digest(key: &SigningKey, digest: &str) -> Result<[u8; 64], SignError> {
    digest_hex(digest)?;
    Ok(key.sign(digest.as_bytes()).to_bytes())
}

/// The tag the signature of `digest` goes under: `sha256-<hex>.sig`.
pub fn tag_for(digest: &str) -> Result<String, SignError> {
    Ok(format!("sha256-{}.sig", digest_hex(digest)?))
}

/// What [`signature_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureArtifact {
    /// The tag to push it under.
    pub tag: String,
    /// The artifact manifest's digest.
    pub manifest_digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Signs `digest` with `key` and writes the signature artifact as an OCI
/// archive at `out` (atomically; the same key and digest give the same
/// bytes, ed25519 being deterministic).
pub fn signature_archive(
    key: &SigningKey,
    digest: &str,
    out: &Path,
) -> Result<SignatureArtifact, SignError> {
    let tag = tag_for(digest)?;
    let signature = sign_digest(key, digest)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": sha256(EMPTY_CONFIG),
            "size": EMPTY_CONFIG.len(),
        },
        "layers": [{
            "mediaType": SIGNATURE_MEDIA_TYPE,
            "digest": sha256(&signature),
            "size": signature.len(),
        }],
    }))
    .map_err(|e| io(out)(e.into()))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }))
    .map_err(|e| io(out)(e.into()))?;

    let tmp = out.with_extension("tmp");
    let result = (|| {
        let file = fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let w = |e| io(&tmp)(e);
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(tar::EntryType::Directory, 0);
            tar.append_data(&mut h, dir, std::io::empty()).map_err(w)?;
        }
        let files: [(String, &[u8]); 5] = [
            (blob_name(&sha256(EMPTY_CONFIG)), EMPTY_CONFIG),
            (blob_name(&sha256(&signature)), &signature),
            (blob_name(&manifest_digest), &manifest),
            ("index.json".to_owned(), &index),
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            ),
        ];
        for (path, bytes) in files {
            let mut h = header(tar::EntryType::Regular, bytes.len() as u64);
            tar.append_data(&mut h, path, bytes).map_err(w)?;
        }
        let mut writer = tar.into_inner().map_err(w)?;
        writer.flush().map_err(w)?;
        let file = writer.into_inner().map_err(|e| w(e.into_error()))?;
        file.sync_all().map_err(w)?;
        fs::rename(&tmp, out).map_err(io(out))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(SignatureArtifact {
        tag,
        manifest_digest,
    })
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use ed25519_dalek::{Signature, Verifier};

    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn generated_keys_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/image.pem");
        let key = generate_key(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(load_key(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(public_key_text(&key).len(), 64);
        // Never over an existing key.
        assert!(matches!(
            generate_key(&path).unwrap_err(),
            KeysError::Exists { .. }
        ));
        fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        assert!(matches!(
            load_key(&dir.path().join("bad.pem")).unwrap_err(),
            KeysError::Pem { .. }
        ));
    }

    #[test]
    fn digests_are_checked() {
        let key = SigningKey::from_bytes(&[9; 32]);
        for bad in [
            "sha256:abc",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                matches!(sign_digest(&key, bad), Err(SignError::Digest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_archive_holds_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let out = dir.path().join("sig.tar");
        let written = signature_archive(&key, DIGEST, &out).unwrap();
        assert_eq!(written.tag, format!("sha256-{}.sig", &DIGEST[7..]));
        // Deterministic.
        let again = dir.path().join("again.tar");
        assert_eq!(signature_archive(&key, DIGEST, &again).unwrap(), written);
        assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());

        let mut files = BTreeMap::new();
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(sha256(&bytes), format!("sha256:{hex}"));
                }
            }
            files.insert(path, bytes);
        }
        let json = |p: &str| serde_json::from_slice::<serde_json::Value>(&files[p]).unwrap();
        let index = json("index.json");
        assert_eq!(index["manifests"][0]["digest"], written.manifest_digest);
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            written.tag
        );
        let manifest = json(&blob_name(&written.manifest_digest));
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(
            manifest["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(manifest["config"]["size"], 2);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], SIGNATURE_MEDIA_TYPE);
        assert_eq!(layers[0]["size"], 64);
        let sig = &files[&blob_name(layers[0]["digest"].as_str().unwrap())];
        let sig = Signature::from_slice(sig).unwrap();
        key.verifying_key()
            .verify(DIGEST.as_bytes(), &sig)
            .expect("the signature is over the digest string");
    }
}
