//! The state directory of the OCI command line: `--root` (default
//! [`DEFAULT_ROOT`]) holds one directory per container id with
//! `state.json` (written atomically: temp file, rename) and, while
//! the container is created but not started, the `exec.fifo` its init
//! waits on.
//!
//! `state.json` holds the OCI state (runtime-spec `runtime.md`, the keys
//! runc's `state` prints) plus what the runtime needs later: the init's
//! start time (so a reused pid is not taken for the container) and its
//! cgroup.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where runc-style state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/atoll-runtime";
/// The state file in a container's directory.
pub const STATE_FILE: &str = "state.json";
/// The FIFO a created container's init blocks on until `start`.
pub const EXEC_FIFO: &str = "exec.fifo";

/// Errors reading or writing container state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id format: {0:?}")]
    BadId(String),
    #[error("container does not exist")]
    NotExist,
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("creating {0:?}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("reading {0:?}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("parsing {0:?}")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("writing {0:?}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("removing {0:?}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// OCI container status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state, with runc's extra keys (`rootfs`, `created`, `owner`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 UTC.
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// What `state.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    #[serde(flatten)]
    pub oci: OciState,
    /// The init's start time (field 22 of /proc/PID/stat).
    pub init_start_time: u64,
    /// The container's cgroup directory, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Container ids as runc accepts them: `[A-Za-z0-9_+.-]+`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// The state root (`--root`).
#[derive(Clone, Debug)]
pub struct StateRoot {
    root: PathBuf,
}

impl StateRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateRoot { root: root.into() }
    }

    /// The directory of container `id` (the id is checked).
    pub fn dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Make the directory of a new container; fails if it exists.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir(id)?;
        std::fs::create_dir_all(&self.root)
            .map_err(|e| StateError::Create(self.root.clone(), e))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(StateError::Create(dir, e)),
        }
    }

    /// Read container `id`'s saved state.
    pub fn load(&self, id: &str) -> Result<SavedState, StateError> {
        let path = self.dir(id)?.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotExist),
            Err(e) => return Err(StateError::Read(path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::Parse(path, e))
    }

    /// Write container `id`'s state atomically.
    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let dir = self.dir(&state.oci.id)?;
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec(state).map_err(|e| StateError::Parse(path.clone(), e))?;
        // Atomic (a reader sees the old state or the new one), not
        // durable: the state lives in /run, like runc's, and means nothing
        // after a reboot, so no fsync (it cost milliseconds per step on a
        // disk-backed --root).
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| StateError::Write(path.clone(), e))
    }

    /// Remove container `id`'s directory (gone already is fine).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Remove(dir, e)),
        }
    }

    /// The ids of all containers with a state directory, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Read(self.root.clone(), e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// What /proc says about a pid: `None` if gone or a zombie, else its
/// start time.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Fields after the `(comm)`: state is the first, starttime the 20th.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the saved init is still alive (same pid, same start time).
pub fn init_alive(state: &SavedState) -> bool {
    state.oci.pid > 0 && process_start_time(state.oci.pid) == Some(state.init_start_time)
}

/// Now as RFC 3339 UTC with nanoseconds (`2024-05-01T12:00:00.123456789Z`).
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    atoll_common::time::format_utc_nanos(secs, Some(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-1", "x_y.z+1", "A9"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_714_565_045, 0), "2024-05-01T12:04:05.000000000Z");
    }

    #[test]
    fn stat_lines() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(987_654));
        let zombie = "42 (sh) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn save_load_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = StateRoot::new(dir.path().join("root"));
        assert!(matches!(root.load("c1"), Err(StateError::NotExist)));
        root.create_dir("c1").expect("create");
        assert!(matches!(root.create_dir("c1"), Err(StateError::Exists(_))));
        let state = SavedState {
            oci: OciState {
                oci_version: "1.0.2".into(),
                id: "c1".into(),
                pid: 7,
                status: Status::Created,
                bundle: "/b".into(),
                rootfs: "/b/rootfs".into(),
                created: rfc3339_now(),
                owner: String::new(),
                annotations: Default::default(),
            },
            init_start_time: 5,
            cgroup: None,
        };
        root.save(&state).expect("save");
        assert_eq!(root.load("c1").expect("load"), state);
        let json: serde_json::Value = serde_json::to_value(&state.oci).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "bundle",
                "created",
                "id",
                "ociVersion",
                "owner",
                "pid",
                "rootfs",
                "status"
            ]
        );
        assert_eq!(root.ids().expect("ids"), ["c1"]);
        root.remove("c1").expect("remove");
        assert!(matches!(root.load("c1"), Err(StateError::NotExist)));
        assert!(matches!(root.load("../x"), Err(StateError::BadId(_))));
    }
}
