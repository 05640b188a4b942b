//! An update repository holding a newer release of the image the tests
//! boot, for the update tests (docs/updates.md): a working one, or one
//! built to fail its trial boots ([`Flavour`]).
//!
//! The release is cut the way an operator cuts one: `image-build disk
//! --os-version V` builds a slot from the same binaries that says it is
//! version V (os-release, so the agent and the ready line see V after the
//! update), and `image-build release --keys target/atoll/keys` signs it with
//! the development keys the base image trusts. Both are slow, so the
//! result is kept in `test-update/` (`test-update-<flavour>/` for the
//! failing ones) next to the base image (`target/atoll/test-update/`) and
//! reused while the base image's build.json is unchanged. Each test serves its own copy
//! ([`UpdateRepo::copy_to`]) so that it can tamper with it.
//!
//! The key and re-signing commands an operator runs are here too
//! ([`resign`], [`init_keys`], [`rotate_key`]), for tests that show a host
//! repositories signed in other ways: by foreign keys, expiring at once,
//! after a key rotation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::disk;

/// The version the test release claims.
pub const NEXT_VERSION: &str = "0.2.0";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Tool {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{path}: {why}")]
    Metadata { path: PathBuf, why: String },
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RepoError {
    let what = what.into();
    move |source| RepoError::Io { what, source }
}

/// What a test release does on its trial boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Boots to ready: the base image's binaries, version [`NEXT_VERSION`].
    Working,
    /// Its init is the wrong binary (`image-build disk --init
    /// target/release/atollctl`), which exits at once with a usage error:
    /// the kernel panics ("Attempted to kill init!") and reboots after
    /// `panic=10`.
    KernelPanic,
    /// Its PID 1 stops short of ready (`image-build disk --test-fault
    /// never-ready`), so only the trial-boot watchdog reboots it.
    NeverReady,
}

impl Flavour {
    /// Its cache directory next to the base image.
    fn dir_name(self) -> &'static str {
        match self {
            Flavour::Working => "test-update",
            Flavour::KernelPanic => "test-update-kernel-panic",
            Flavour::NeverReady => "test-update-never-ready",
        }
    }

    /// Its arguments to `image-build disk`.
    fn disk_args(self) -> &'static [&'static str] {
        match self {
            Flavour::Working => &[],
            Flavour::KernelPanic => &["--init", "target/release/atollctl"],
            Flavour::NeverReady => &["--test-fault", "never-ready"],
        }
    }
}

/// A signed repository with [`NEXT_VERSION`] in it (a pristine copy).
#[derive(Debug, Clone)]
pub struct UpdateRepo {
    pub dir: PathBuf,
    pub version: String,
}

static BUILT: Mutex<Vec<(Flavour, UpdateRepo)>> = Mutex::new(Vec::new());

/// The repository with the working release, built on first use (minutes)
/// and reused.
pub fn next_release() -> Result<UpdateRepo, RepoError> {
    release(Flavour::Working)
}

/// The repository with a release of `flavour`, built on first use
/// (minutes) and reused.
pub fn release(flavour: Flavour) -> Result<UpdateRepo, RepoError> {
    let mut guard = match BUILT.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some((_, r)) = guard.iter().find(|(f, _)| *f == flavour) {
        return Ok(r.clone());
    }
    let r = build(flavour)?;
    guard.push((flavour, r.clone()));
    Ok(r)
}

fn run(cmd: &mut Command) -> Result<(), RepoError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("starting {command}")))?;
    if !out.status.success() {
        return Err(RepoError::Tool {
            command,
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

fn build(flavour: Flavour) -> Result<UpdateRepo, RepoError> {
    let root = disk::workspace_root();
    let base = disk::base_image()?;
    let base_json = base.with_file_name("build.json");
    let stamp = std::fs::read(&base_json).map_err(io(base_json.display().to_string()))?;
    // Next to the base image, so that work on two images never shares it.
    let dir = base
        .parent()
        .map_or_else(|| root.join("target/atoll"), Path::to_path_buf)
        .join(flavour.dir_name());
    let repo = dir.join("repo");
    let stamp_file = dir.join("built-from.json");
    if repo.is_dir() && std::fs::read(&stamp_file).ok().as_deref() == Some(&stamp[..]) {
        return Ok(UpdateRepo {
            dir: repo,
            version: NEXT_VERSION.into(),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    let image_build = image_build();
    let keys = dev_keys();
    let out = dir.join("v2");
    run(Command::new(&image_build)
        .current_dir(&root)
        .arg("disk")
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(root.join("target/atoll/cache"))
        .arg("--update-root")
        .arg(keys.join("root.json"))
        .arg("--os-version")
        .arg(NEXT_VERSION)
        .args(flavour.disk_args()))?;
    let tmp = dir.join("repo.tmp");
    run(Command::new(&image_build)
        .current_dir(&root)
        .arg("release")
        .arg("--keys")
        .arg(&keys)
        .arg("--repo")
        .arg(&tmp)
        .arg("--slot")
        .arg(out.join("work/slot.img"))
        .arg("--build-json")
        .arg(out.join("build.json"))
        .arg("--version")
        .arg(NEXT_VERSION))?;
    std::fs::rename(&tmp, &repo).map_err(io(repo.display().to_string()))?;
    // Only the repository is needed from here on.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(&stamp_file, &stamp).map_err(io(stamp_file.display().to_string()))?;
    Ok(UpdateRepo {
        dir: repo,
        version: NEXT_VERSION.into(),
    })
}

/// The `image-build` binary of this workspace.
pub fn image_build() -> PathBuf {
    disk::workspace_root().join("target/release/image-build")
}

/// The development keys the base image trusts (`target/atoll/keys`, made
/// by its build; the test release is signed with them).
pub fn dev_keys() -> PathBuf {
    disk::workspace_root().join("target/atoll/keys")
}

fn image_build_cmd() -> Command {
    let mut cmd = Command::new(image_build());
    cmd.current_dir(disk::workspace_root());
    cmd
}

/// `image-build resign`: re-signs `repo`'s targets, snapshot and timestamp
/// with the keys in `keys` (versions + 1), targets and snapshot expiring
/// after `expires` and the timestamp after `timestamp_expires` (spans such
/// as `1s`, `7d`), and publishes the keys' root versions.
pub fn resign(
    keys: &Path,
    repo: &Path,
    expires: &str,
    timestamp_expires: &str,
) -> Result<(), RepoError> {
    run(image_build_cmd()
        .arg("resign")
        .arg("--keys")
        .arg(keys)
        .arg("--repo")
        .arg(repo)
        .arg("--expires")
        .arg(expires)
        .arg("--timestamp-expires")
        .arg(timestamp_expires))
}

/// `image-build keys init`: a new key set (one key per role, root
/// version 1) in `dir`, which must not hold one yet.
pub fn init_keys(dir: &Path) -> Result<(), RepoError> {
    run(image_build_cmd().args(["keys", "init", "--dir"]).arg(dir))
}

/// `image-build keys rotate`: a new key for `role`, taking `revoke` off it
/// if given, in root version N+1 (`dir/roots/N+1.root.json`).
pub fn rotate_key(dir: &Path, role: &str, revoke: Option<&str>) -> Result<(), RepoError> {
    let mut cmd = image_build_cmd();
    cmd.args(["keys", "rotate", "--dir"])
        .arg(dir)
        .args(["--role", role]);
    if let Some(id) = revoke {
        cmd.args(["--revoke", id]);
    }
    run(&mut cmd)
}

/// The `signed` part of a metadata document (unverified).
fn signed_part(path: &Path) -> Result<serde_json::Value, RepoError> {
    let bytes = std::fs::read(path).map_err(io(path.display().to_string()))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| RepoError::Metadata {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    doc.get("signed")
        .cloned()
        .ok_or_else(|| RepoError::Metadata {
            path: path.to_path_buf(),
            why: "no `signed`".into(),
        })
}

/// The key ids a root document (`keys/root.json`) gives `role`.
pub fn role_keyids(root: &Path, role: &str) -> Result<Vec<String>, RepoError> {
    let signed = signed_part(root)?;
    let ids = signed
        .pointer(&format!("/roles/{role}/keyids"))
        .and_then(|v| v.as_array())
        .ok_or_else(|| RepoError::Metadata {
            path: root.to_path_buf(),
            why: format!("no key ids for the {role} role"),
        })?;
    Ok(ids
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// The version of a metadata document (`repo/timestamp.json`).
pub fn metadata_version(path: &Path) -> Result<u64, RepoError> {
    signed_part(path)?
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| RepoError::Metadata {
            path: path.to_path_buf(),
            why: "no version".into(),
        })
}

/// A copy of the directory tree `from` at `to` (made).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), RepoError> {
    copy_dir(from, to)
}

impl UpdateRepo {
    /// A copy of the repository under `dest` (made), to serve and tamper with.
    pub fn copy_to(&self, dest: &Path) -> Result<PathBuf, RepoError> {
        copy_dir(&self.dir, dest)?;
        Ok(dest.to_path_buf())
    }

    /// The payload's name in `targets/`.
    pub fn target_name(&self) -> String {
        format!("atoll-{}.slot.zst", self.version)
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), RepoError> {
    std::fs::create_dir_all(to).map_err(io(to.display().to_string()))?;
    for entry in std::fs::read_dir(from).map_err(io(from.display().to_string()))? {
        let entry = entry.map_err(io(from.display().to_string()))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(src.display().to_string()))?;
        }
    }
    Ok(())
}
