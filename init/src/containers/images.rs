//! The image store as the host CLI sees it: `atollctl images`, `pull`,
//! `rmi`, `prune`. Blocking functions (run them on a worker thread); pulls
//! go through [`super::image::pull`] (an `atoll-runtime pull` child).

use std::collections::HashSet;
use std::path::Path;

use atoll_common::api::{ImageInfo, Response};
use atoll_common::config::Config;
use atoll_runtime::digest::Digest;
use atoll_runtime::store::Store;
use atoll_runtime::workload;

use super::image::{self, ImagePaths};

/// An image request from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    List,
    Pull(String),
    Remove(String),
    Prune,
    /// Import the archive at this path (an OCI archive or a `docker save`
    /// tar), naming an unnamed image so.
    Import {
        archive: std::path::PathBuf,
        name: Option<String>,
    },
}

/// Carries out `request`, answering with one response (an error or the
/// result). Store work runs on a worker thread; a pull is an
/// `atoll-runtime pull` child, as for the config's containers.
/// `running` holds the manifest digests running containers were started
/// from: a prune keeps their unpacked layers.
pub async fn serve(
    request: StoreRequest,
    paths: ImagePaths,
    config: Config,
    running: Vec<String>,
) -> Response {
    let error = |message: String| Response::Error { message };
    let message = |message: String| Response::Message { message };
    let blocking = |f: Box<dyn FnOnce() -> Response + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Response::Error {
                message: format!("image store worker: {e}"),
            })
    };
    match request {
        StoreRequest::List => {
            blocking(Box::new(move || match list(&paths.store, &config) {
                Ok(l) => Response::Images(l),
                Err(e) => error(e),
            }))
            .await
        }
        StoreRequest::Pull(reference) => {
            let name = match workload::canonical_image(&reference) {
                Ok(n) => n,
                Err(e) => return error(format!("{reference}: {e}")),
            };
            log::info!("pulling {name} (requested through the API)");
            match image::pull(&paths, &name, "pull").await {
                Ok(digest) => message(format!("{name}: pulled {digest}")),
                Err(e) => error(format!("pulling {name}: {e}")),
            }
        }
        StoreRequest::Import { archive, name } => {
            log::info!("importing an archive (sent through the API)");
            match image::import_archive(&paths, &archive, name.as_deref()).await {
                Ok(names) if names.is_empty() => error("the archive holds no image".into()),
                Ok(names) => message(
                    names
                        .iter()
                        .map(|n| format!("imported {n}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Err(e) => error(format!("importing the archive: {e}")),
            }
        }
        StoreRequest::Remove(reference) => {
            blocking(Box::new(move || {
                match remove(&paths.store, &config, &reference) {
                    Ok(name) => {
                        log::info!("image {name} removed (through the API)");
                        message(format!("{name}: removed (its blobs go at the next prune)"))
                    }
                    Err(e) => error(e),
                }
            }))
            .await
        }
        StoreRequest::Prune => {
            blocking(Box::new(move || {
                let keep: Vec<String> = used_by_config(&config)
                    .into_iter()
                    .map(|(name, _)| name)
                    .chain(running)
                    .collect();
                match prune(&paths.store, &keep) {
                    Ok(m) => {
                        log::info!("image store pruned: {m}");
                        message(m)
                    }
                    Err(e) => error(e),
                }
            }))
            .await
        }
    }
}

/// The canonical names of the images `config`'s containers and pods use.
pub fn used_by_config(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |name: &str, image: &str| {
        if let Ok(c) = workload::canonical_image(image) {
            out.push((c, name.to_string()));
        }
    };
    for c in &config.containers {
        add(&c.name, &c.image);
    }
    for p in &config.pods {
        for c in p.init_containers.iter().chain(&p.containers) {
            add(&format!("{}/{}", p.name, c.name), &c.image);
        }
    }
    if let Some(image) = config
        .admin
        .image
        .as_deref()
        .filter(|_| config.admin.enabled)
    {
        add(super::ADMIN_NAME, image);
    }
    out
}

/// Every image in the store, with its size and the config's users.
pub fn list(store_root: &Path, config: &Config) -> Result<Vec<ImageInfo>, String> {
    let store = Store::open(store_root).map_err(|e| format!("image store: {e}"))?;
    let used = used_by_config(config);
    let mut out = Vec::new();
    for (name, descriptor) in store.images().map_err(|e| format!("image store: {e}"))? {
        let size = store
            .image(&name)
            .map(|i| i.manifest.layers.iter().map(|l| l.size).sum::<u64>())
            .unwrap_or(0);
        out.push(ImageInfo {
            used_by: used
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, c)| c.clone())
                .collect(),
            name,
            digest: descriptor.digest.to_string(),
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes an image's name from the store (its blobs go at the next
/// prune). Refused while the config uses it.
pub fn remove(store_root: &Path, config: &Config, image: &str) -> Result<String, String> {
    let name = workload::canonical_image(image).map_err(|e| e.to_string())?;
    let users: Vec<String> = used_by_config(config)
        .into_iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, c)| c)
        .collect();
    if !users.is_empty() {
        return Err(format!(
            "{name} is used by {} in the config: change the config first",
            users.join(", ")
        ));
    }
    let store = Store::open(store_root).map_err(|e| format!("image store: {e}"))?;
    match store.untag(&name) {
        Ok(true) => Ok(name),
        Ok(false) => Err(format!("no image {name} in the store")),
        Err(e) => Err(format!("image store: {e}")),
    }
}

/// Garbage-collects the store: every blob and layer no image names, except
/// the unpacked layers of the images in `keep` (names, or the manifest
/// digests running containers were started from).
pub fn prune(store_root: &Path, keep: &[String]) -> Result<String, String> {
    let store = Store::open(store_root).map_err(|e| format!("image store: {e}"))?;
    let mut layers: HashSet<Digest> = HashSet::new();
    for name in keep {
        let image = match name.parse::<Digest>() {
            Ok(d) => store.image_by_digest(&d),
            Err(_) => store.image(name),
        };
        if let Ok(i) = image {
            layers.extend(i.config.rootfs.diff_ids.iter().copied());
        }
    }
    let r = store.gc(&layers).map_err(|e| format!("prune: {e}"))?;
    Ok(format!(
        "removed {} blobs and {} unpacked layers, {} bytes freed ({} leftovers of interrupted work)",
        r.blobs, r.layers, r.bytes, r.temp
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_users_and_refused_removal() {
        let cfg = atoll_common::config::builtin_default();
        let used = used_by_config(&cfg);
        assert_eq!(
            used,
            vec![(
                "localhost/atoll/busybox:latest".to_string(),
                "hello".to_string()
            )]
        );
        let dir = tempfile::tempdir().unwrap();
        let e = remove(dir.path(), &cfg, "localhost/atoll/busybox:latest").unwrap_err();
        assert!(e.contains("used by hello"), "{e}");
        let e = remove(dir.path(), &cfg, "nginx").unwrap_err();
        assert!(e.contains("no image docker.io/library/nginx:latest"), "{e}");
        assert!(list(dir.path(), &cfg).unwrap().is_empty());
        assert!(prune(dir.path(), &[])
            .unwrap()
            .starts_with("removed 0 blobs"));
    }
}
