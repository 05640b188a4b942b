//! A one-layer OCI image of Debian's static busybox, written as an OCI
//! archive (a tar of an OCI image layout), byte for byte the same from the
//! same busybox binary.
//!
//! The slot ships one as the preloaded image `localhost/atoll/busybox`
//! (`/usr/share/atoll/images/`), so a host runs its first container with
//! no registry; qemu-tests build their test images the same way and push
//! them to a local registry with skopeo.
//!
//! The layer holds `/bin/busybox`, one symlink per applet it lists
//! (`busybox --list`), `/etc/passwd` and `/etc/group` (root, nobody),
//! and empty `/tmp` (1777), `/root`, `/var/www`. Every entry is owned by
//! root and dated 0; the layer is an uncompressed tar, so its digest is
//! its diff_id.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The preloaded image's name.
pub const PRELOADED_NAME: &str = "localhost/atoll/busybox:latest";
/// Where the slot keeps preloaded images (archives and `images.json`).
pub const PRELOADED_DIR: &str = "usr/share/atoll/images";

#[derive(Debug, thiserror::Error)]
pub enum OciImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{busybox} --list` failed: {reason}")]
    List { busybox: PathBuf, reason: String },
    #[error("`{0}` is not a usable image name (expected registry/repository:tag)")]
    Name(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciImageError + '_ {
    move |source| OciImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the image runs when the container names no command.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Full name with tag (`localhost/atoll/busybox:latest`).
    pub name: String,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    /// Docker's `ExposedPorts` (`80/tcp`).
    pub exposed: Vec<String>,
}

impl ImageOptions {
    pub fn busybox(name: &str) -> Self {
        Self {
            name: name.to_string(),
            cmd: vec!["sh".to_string()],
            entrypoint: Vec::new(),
            exposed: Vec::new(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub name: String,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    pub size: u64,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn applets(busybox: &Path) -> Result<Vec<String>, OciImageError> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| OciImageError::List {
            busybox: busybox.to_path_buf(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(OciImageError::List {
            busybox: busybox.to_path_buf(),
            reason: format!("{} {}", out.status, String::from_utf8_lossy(&out.stderr)),
        });
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_string)
        .collect();
    list.sort();
    list.dedup();
    Ok(list)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// The layer tar (uncompressed).
fn layer(busybox: &Path) -> Result<Vec<u8>, OciImageError> {
    let binary = std::fs::read(busybox).map_err(io(busybox))?;
    let applets = applets(busybox)?;
    let mut tar = tar::Builder::new(Vec::new());
    let w = |e| io(busybox)(e);
    for (dir, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("root/", 0o700),
        ("tmp/", 0o1777),
        ("var/", 0o755),
        ("var/www/", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty()).map_err(w)?;
    }
    append_file(&mut tar, "bin/busybox", 0o755, &binary).map_err(w)?;
    for a in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{a}"), "busybox")
            .map_err(w)?;
    }
    append_file(
        &mut tar,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )
    .map_err(w)?;
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .map_err(w)?;
    tar.into_inner().map_err(w)
}

/// Writes the OCI archive of a busybox image to `out` (atomically).
pub fn write_busybox_archive(
    busybox: &Path,
    options: &ImageOptions,
    out: &Path,
) -> Result<Written, OciImageError> {
    let tag_ok = options
        .name
        .rsplit_once(':')
        .is_some_and(|(repo, tag)| repo.contains('/') && !tag.is_empty() && !tag.contains('/'));
    if !tag_ok {
        return Err(OciImageError::Name(options.name.clone()));
    }
    let layer = layer(busybox)?;
    let layer_digest = sha256(&layer);
    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": options.cmd,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "image-build: Debian busybox-static"}],
    });
    if !options.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = serde_json::json!(options.entrypoint);
    }
    if !options.exposed.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = options
            .exposed
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        config["config"]["ExposedPorts"] = serde_json::Value::Object(ports);
    }
    let config = serde_json::to_vec(&config).map_err(|e| io(out)(e.into()))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .map_err(|e| io(out)(e.into()))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": options.name},
        }],
    }))
    .map_err(|e| io(out)(e.into()))?;

    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let w = |e| io(&tmp)(e);
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, "blobs/", std::io::empty())
        .map_err(w)?;
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, "blobs/sha256/", std::io::empty())
        .map_err(w)?;
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        append_file(&mut tar, &format!("blobs/sha256/{hex}"), 0o644, bytes).map_err(w)?;
    }
    append_file(&mut tar, "index.json", 0o644, &index).map_err(w)?;
    append_file(
        &mut tar,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(w)?;
    let mut writer = tar.into_inner().map_err(w)?;
    writer.flush().map_err(w)?;
    let file = writer.into_inner().map_err(|e| w(e.into_error()))?;
    file.sync_all().map_err(w)?;
    let size = file.metadata().map_err(w)?.len();
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(Written {
        name: options.name.clone(),
        manifest_digest,
        size,
    })
}

/// `images.json` of the preloaded directory: name → archive file and
/// manifest digest, which PID 1 reads to import what the store lacks.
pub fn preloaded_index(images: &[(Written, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = images
        .iter()
        .map(|(w, file)| {
            (
                w.name.clone(),
                serde_json::json!({"archive": file, "manifest": w.manifest_digest}),
            )
        })
        .collect();
    let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(map)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BUSYBOX: &str = "/bin/busybox";

    #[test]
    fn archive_is_reproducible_and_named() {
        if !Path::new(BUSYBOX).exists() {
            eprintln!("skipped: {BUSYBOX} missing (apt-get install busybox-static)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let opts = ImageOptions::busybox(PRELOADED_NAME);
        let wa = write_busybox_archive(Path::new(BUSYBOX), &opts, &a).unwrap();
        let wb = write_busybox_archive(Path::new(BUSYBOX), &opts, &b).unwrap();
        assert_eq!(wa, wb);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // The archive's layout: index names the image, blobs hash to their names.
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(std::fs::File::open(&a).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(sha256(&bytes), format!("sha256:{hex}"));
                }
            }
            if path == "index.json" {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    v["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
                    PRELOADED_NAME
                );
                assert_eq!(v["manifests"][0]["digest"], wa.manifest_digest.as_str());
            }
            names.push(path);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        let idx = preloaded_index(&[(wa, "busybox.tar".into())]);
        assert!(idx.contains("\"archive\": \"busybox.tar\""), "{idx}");
    }

    #[test]
    fn bad_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_busybox_archive(
            Path::new(BUSYBOX),
            &ImageOptions::busybox("notag"),
            &dir.path().join("x.tar"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("notag"), "{e}");
    }
}
