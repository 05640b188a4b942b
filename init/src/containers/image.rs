//! Getting a container's image into the store: already there, imported
//! from the images the slot ships (`/usr/share/atoll/images`), or pulled by
//! an `atoll-runtime pull` child process (so the TLS stack and registry
//! replies are never handled by PID 1 itself).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use atoll_runtime::manifest::Platform;
use atoll_runtime::reference::Reference;
use atoll_runtime::store::Store;
use atoll_runtime::workload;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;

use crate::stage2::reaper;

/// The longest a pull may take before it is killed and tried again.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where things are (the real paths in PID 1; temp dirs in tests).
#[derive(Debug, Clone)]
pub struct ImagePaths {
    pub store: PathBuf,
    /// Preloaded archives and their `images.json`.
    pub preloaded: PathBuf,
    /// The `atoll-runtime` binary that pulls.
    pub runtime: PathBuf,
    /// The effective config, for `[registries]`.
    pub config: PathBuf,
}

/// One entry of `images.json`.
#[derive(Debug, Clone, Deserialize)]
struct Preloaded {
    archive: String,
    manifest: String,
}

/// What [`local`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// In the store already.
    Present,
    /// Imported from the slot's preloaded archive.
    Imported,
    /// Neither: it must be pulled.
    Missing,
}

fn preloaded_index(dir: &Path) -> BTreeMap<String, Preloaded> {
    let path = dir.join("images.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("{}: {e}; preloaded images ignored", path.display());
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Looks for `image` in the store, importing the slot's preloaded copy if
/// the store lacks it or holds an older one (an update brought a new one).
/// Blocking.
pub fn local(paths: &ImagePaths, image: &str) -> Result<Local, String> {
    let name = workload::canonical_image(image).map_err(|e| e.to_string())?;
    let store = Store::open(&paths.store).map_err(|e| format!("image store: {e}"))?;
    let held = store
        .images()
        .map_err(|e| format!("image store: {e}"))?
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d.digest.to_string());
    let preloaded = preloaded_index(&paths.preloaded).remove(&name);
    match (held, preloaded) {
        (Some(d), Some(p)) if d != p.manifest => import(&store, paths, &name, &p),
        (Some(_), _) => Ok(Local::Present),
        (None, Some(p)) => import(&store, paths, &name, &p),
        (None, None) => Ok(Local::Missing),
    }
}

fn import(store: &Store, paths: &ImagePaths, name: &str, p: &Preloaded) -> Result<Local, String> {
    let archive = paths.preloaded.join(&p.archive);
    let file = std::fs::File::open(&archive)
        .map_err(|e| format!("preloaded image {}: {e}", archive.display()))?;
    let reference = Reference::parse(name).map_err(|e| e.to_string())?;
    atoll_runtime::import::import_archive(
        store,
        BufReader::new(file),
        Some(&reference),
        &Platform::default(),
    )
    .map_err(|e| format!("importing {}: {e}", archive.display()))?;
    Ok(Local::Imported)
}

/// Pulls `image` with `atoll-runtime pull`, logging its progress lines
/// after `who` (`container NAME`). Returns the manifest digest pulled; the
/// error is the pull's last error line.
pub async fn pull(paths: &ImagePaths, image: &str, who: &str) -> Result<String, String> {
    let lines = runtime_child(paths, "pull", &[image], who, true, PULL_TIMEOUT).await?;
    // `IMAGE: pulled sha256:…`
    Ok(lines
        .iter()
        .rev()
        .find_map(|l| {
            l.rsplit_once(": pulled ")
                .map(|(_, d)| d.trim().to_string())
        })
        .unwrap_or_default())
}

/// Imports the OCI archive or `docker save` tar at `archive` with
/// `atoll-runtime import` (a child, as for pulls: PID 1 parses no
/// archive); returns the names imported.
pub async fn import_archive(
    paths: &ImagePaths,
    archive: &Path,
    name: Option<&str>,
) -> Result<Vec<String>, String> {
    let archive = archive.to_string_lossy();
    let mut args = Vec::new();
    if let Some(n) = name {
        args.extend(["--name", n]);
    }
    args.push(&archive);
    runtime_child(paths, "import", &args, "import", false, IMPORT_TIMEOUT).await
}

/// How long an import may take (an archive is on /var already).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Checks `image`'s signature with `atoll-runtime verify` (the stored one,
/// else the registry's) against `key` (the config's text); returns the
/// manifest digest it verified.
pub async fn verify(
    paths: &ImagePaths,
    image: &str,
    key: &str,
    container: &str,
) -> Result<String, String> {
    let lines = runtime_child(
        paths,
        "verify",
        &["--key", key, image],
        &format!("container {container}"),
        true,
        Duration::from_secs(5 * 60),
    )
    .await?;
    // `IMAGE: sha256:… verified with key HEX (…)`
    lines
        .iter()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            let digest = rest.split_whitespace().next()?;
            digest.starts_with("sha256:").then(|| digest.to_string())
        })
        .ok_or_else(|| format!("signature check: no digest in its output {lines:?}"))
}

/// Runs `atoll-runtime COMMAND --store … [--config …] ARGS`, logging its
/// stdout lines after `who`; returns them, or its last error line. A
/// command that talks to `registries` gets the config (`[registries]`).
async fn runtime_child(
    paths: &ImagePaths,
    command: &str,
    args: &[&str],
    who: &str,
    registries: bool,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut cmd = Command::new(&paths.runtime);
    cmd.arg(command).arg("--store").arg(&paths.store);
    if registries && paths.config.exists() {
        cmd.arg("--config").arg(&paths.config);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = reaper::spawn(&mut cmd)
        .map_err(|e| format!("starting {}: {e}", paths.runtime.display()))?;
    let pid = child.pid;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let name = who.to_string();
    let progress = async move {
        let mut all = Vec::new();
        if let Some(out) = out.and_then(|o| tokio_pipe(o.into()).ok()) {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log::info!("{name}: {line}");
                all.push(line);
            }
        }
        all
    };
    let errors = async move {
        let mut last = String::new();
        if let Some(err) = err.and_then(|e| tokio_pipe(e.into()).ok()) {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                last = line;
            }
        }
        last
    };
    let work = async { tokio::join!(progress, errors, child.wait()) };
    match tokio::time::timeout(timeout, work).await {
        Ok((lines, _, Some(exit))) if exit.success() => Ok(lines),
        Ok((_, last, exit)) => {
            let how = exit.map_or("vanished".to_string(), |e| e.to_string());
            Err(format!("{command} failed ({how}): {}", runc_message(&last)))
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!(
                "{command} did not finish in {} minutes",
                timeout.as_secs() / 60
            ))
        }
    }
}

/// The `msg="…"` of a logrus-style error line, or the line.
fn runc_message(line: &str) -> String {
    match line.split_once("msg=\"") {
        Some((_, rest)) => rest.strip_suffix('"').unwrap_or(rest).replace("\\\"", "\""),
        None => line.to_string(),
    }
}

/// A pipe's read end as a tokio reader (non-blocking).
pub fn tokio_pipe(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runc_messages_unwrapped() {
        assert_eq!(
            runc_message(r#"time="x" level=error msg="pulling a: GET \"b\": refused""#),
            r#"pulling a: GET "b": refused"#
        );
        assert_eq!(runc_message("plain"), "plain");
    }

    #[test]
    fn missing_without_preloaded() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ImagePaths {
            store: dir.path().join("store"),
            preloaded: dir.path().join("none"),
            runtime: PathBuf::from("/nonexistent"),
            config: PathBuf::from("/nonexistent"),
        };
        assert_eq!(local(&paths, "busybox").unwrap(), Local::Missing);
        assert!(local(&paths, "Bad/Name").unwrap_err().contains("Bad/Name"));
    }
}
