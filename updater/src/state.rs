//! The agent's persisted state on /var (`/var/lib/atoll/update/state.json`):
//! the trusted metadata (so rollback and freeze protection survive reboots),
//! when the repository was last checked, the release waiting for its first
//! good boot, the releases that rolled back, and a short history. Written
//! atomically: a temporary file, fsync, rename, fsync of the directory.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use atoll_common::bootstate::BootState;
use atoll_common::layout::{self, Slot};
use atoll_common::trial::TrialFailure;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::metadata::{SavedMetadata, Time, Version};
use crate::policy::BadReleases;

/// The agent's directory on DATA.
pub fn state_dir() -> PathBuf {
    Path::new(layout::VAR_STATE_DIR).join("update")
}

/// The state file in `dir`.
pub const STATE_FILE: &str = "state.json";
/// The install progress file in `dir` ([`crate::install::Progress`]).
pub const PROGRESS_FILE: &str = "progress.json";
/// History entries kept.
pub const HISTORY: usize = 50;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an update agent state")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Trusted metadata documents as they were fetched (JSON text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMetadata {
    pub root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_advanced: Option<Time>,
}

impl StoredMetadata {
    /// From what [`crate::metadata::Trusted::saved`] gives; `None` if a
    /// document is not UTF-8 (it parsed as JSON, so it always is).
    pub fn from_saved(saved: &SavedMetadata) -> Option<StoredMetadata> {
        let text = |b: &Vec<u8>| String::from_utf8(b.clone()).ok();
        let opt = |b: &Option<Vec<u8>>| match b {
            None => Some(None),
            Some(b) => text(b).map(Some),
        };
        Some(StoredMetadata {
            root: text(&saved.root)?,
            timestamp: opt(&saved.timestamp)?,
            snapshot: opt(&saved.snapshot)?,
            targets: opt(&saved.targets)?,
            timestamp_advanced: saved.timestamp_advanced,
        })
    }

    pub fn to_saved(&self) -> SavedMetadata {
        let opt = |s: &Option<String>| s.as_ref().map(|s| s.clone().into_bytes());
        SavedMetadata {
            root: self.root.clone().into_bytes(),
            timestamp: opt(&self.timestamp),
            snapshot: opt(&self.snapshot),
            targets: opt(&self.targets),
            timestamp_advanced: self.timestamp_advanced,
        }
    }
}

/// A release installed and offered to the boot loader, not yet booted good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: Version,
    pub slot: Slot,
    pub installed_at: Time,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) when it
    /// was installed: the same id means no reboot yet.
    pub boot_id: String,
    /// With the `window` strategy: when the reboot into it is due (the
    /// next maintenance window's start); `None` when it is due now or the
    /// strategy does not reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_at: Option<Time>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Time,
    pub what: String,
}

/// A payload being downloaded into the inactive slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub name: String,
    pub version: Version,
    pub slot: Slot,
    /// Payload bytes had (including any resumed prefix).
    pub done: u64,
    pub total: u64,
}

/// The release in each slot, as far as the agent knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<Version>,
}

impl SlotVersions {
    pub fn get(&self, slot: Slot) -> Option<Version> {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub fn set(&mut self, slot: Slot, version: Option<Version>) {
        match slot {
            Slot::A => self.a = version,
            Slot::B => self.b = version,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<StoredMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Time>,
    /// The last check's failure, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub bad: BadReleases,
    #[serde(default)]
    pub history: VecDeque<Event>,
    /// The download under way or interrupted (it resumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
    #[serde(default)]
    pub slots: SlotVersions,
}

/// What the boot after an install came to ([`AgentState::after_boot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// Nothing was pending.
    Nothing,
    /// Installed, but the host has not rebooted yet.
    NotRebooted,
    /// Running the new release on trial: not yet marked good.
    Trial(Version),
    /// The new release booted good.
    Updated(Version),
    /// The host came back on the other slot: the release is now bad.
    RolledBack(Version),
}

impl AgentState {
    /// Reads the state; a missing file is a fresh state. A damaged file is
    /// an error (the caller moves it aside with [`AgentState::set_aside`]
    /// and starts fresh, and says so: the bad list is lost with it).
    pub fn load(path: &Path) -> Result<AgentState, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Renames a damaged state file to `NAME.damaged`.
    pub fn set_aside(path: &Path) -> Result<PathBuf, StateError> {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".damaged");
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|source| StateError::Write {
            path: aside.clone(),
            source,
        })?;
        Ok(aside)
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|source| StateError::Encode {
            path: path.to_owned(),
            source,
        })?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    /// Adds a history line, dropping the oldest past [`HISTORY`].
    pub fn record(&mut self, at: Time, what: impl Into<String>) {
        self.history.push_back(Event {
            at,
            what: what.into(),
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Settles a pending install once the host runs again: `booted` is the
    /// slot it runs from, `boot` the boot state in grubenv, `boot_id` this
    /// boot's id. A host back on the other slot means the release rolled
    /// back: it goes on the bad list and is never installed again by the
    /// agent on its own, with why in its reason: `trial`, what PID 1 left
    /// when it gave up on a trial boot, if it is about this release.
    pub fn after_boot(
        &mut self,
        booted: Slot,
        boot: &BootState,
        boot_id: &str,
        now: Time,
        trial: Option<&TrialFailure>,
    ) -> BootOutcome {
        let Some(pending) = self.pending.clone() else {
            return BootOutcome::Nothing;
        };
        if pending.boot_id == boot_id {
            return BootOutcome::NotRebooted;
        }
        let version = pending.version;
        if booted == pending.slot {
            if !boot.slot(booted).good {
                return BootOutcome::Trial(version);
            }
            self.pending = None;
            self.record(now, format!("{version} booted good in slot {booted}"));
            return BootOutcome::Updated(version);
        }
        self.pending = None;
        let why = match trial {
            Some(t) if t.slot == pending.slot && t.version == version.to_string() => {
                format!("its trial boot failed: {}", t.reason)
            }
            _ => "no trial boot of it got as far as PID 1's checks \
                  (a kernel panic, or a hang before /var was mounted)"
                .to_string(),
        };
        let reason = format!(
            "installed in slot {} at {}, but the host came back on slot {booted}: {why}",
            pending.slot, pending.installed_at
        );
        self.bad.add(version, now, reason.clone());
        self.record(now, format!("{version} rolled back: {reason}"));
        BootOutcome::RolledBack(version)
    }
}

impl AgentState {
    /// Forgets a download into `booted`, the slot the host runs from: it
    /// is over (a power cut after the slot was offered and before the
    /// state was saved boots the written slot with the download still
    /// recorded), and nothing is ever written into the booted slot.
    /// Whether there was one.
    pub fn forget_download_into(&mut self, booted: Slot) -> bool {
        if self.download.as_ref().is_some_and(|d| d.slot == booted) {
            self.download = None;
            return true;
        }
        false
    }
}

/// Writes `path` through `path.tmp`: write, fsync, rename, fsync the
/// directory. Creates the directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    atoll_common::fsutil::write_durably(path, bytes).map_err(|source| StateError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Removes `path` if it exists and fsyncs its directory.
pub fn remove_durably(path: &Path) -> Result<(), StateError> {
    atoll_common::fsutil::remove_durably(path).map_err(|source| StateError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time::parse(s).unwrap()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("update").join(STATE_FILE);
        assert_eq!(AgentState::load(&path).unwrap(), AgentState::default());
        let mut state = AgentState {
            metadata: Some(StoredMetadata {
                root: "{}".into(),
                timestamp: Some("{\"a\": 1}".into()),
                snapshot: None,
                targets: None,
                timestamp_advanced: Some(t("2026-01-01T00:00:00Z")),
            }),
            last_check: Some(t("2026-01-02T00:00:00Z")),
            ..AgentState::default()
        };
        state
            .bad
            .add(v("0.2.0"), t("2026-01-03T00:00:00Z"), "rolled back");
        state.record(t("2026-01-03T00:00:00Z"), "something");
        state.save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), state);
        assert!(!path.with_extension("json.tmp").exists());
        let saved = state.metadata.as_ref().unwrap().to_saved();
        assert_eq!(
            StoredMetadata::from_saved(&saved).as_ref(),
            state.metadata.as_ref()
        );
    }

    #[test]
    fn damaged_state_is_an_error_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            AgentState::load(&path),
            Err(StateError::Parse { .. })
        ));
        let aside = AgentState::set_aside(&path).unwrap();
        assert!(aside.exists());
        assert_eq!(AgentState::load(&path).unwrap(), AgentState::default());
    }

    #[test]
    fn history_is_capped() {
        let mut state = AgentState::default();
        for i in 0..(HISTORY + 5) {
            state.record(Time::from_unix(i as u64).unwrap(), format!("{i}"));
        }
        assert_eq!(state.history.len(), HISTORY);
        assert_eq!(state.history[0].what, "5");
    }

    fn pending_b() -> AgentState {
        AgentState {
            pending: Some(Pending {
                version: v("0.2.0"),
                slot: Slot::B,
                installed_at: t("2026-01-01T00:00:00Z"),
                boot_id: "boot-1".into(),
                reboot_at: None,
            }),
            ..AgentState::default()
        }
    }

    #[test]
    fn a_rollback_marks_the_release_bad() {
        let now = t("2026-01-01T01:00:00Z");
        let boot = BootState::fresh("ab");
        let mut state = pending_b();
        assert_eq!(
            state.after_boot(Slot::A, &boot, "boot-1", now, None),
            BootOutcome::NotRebooted
        );
        assert_eq!(
            state.after_boot(Slot::A, &boot, "boot-2", now, None),
            BootOutcome::RolledBack(v("0.2.0"))
        );
        assert!(state.bad.contains(v("0.2.0")));
        assert!(state.pending.is_none());
        assert_eq!(
            state.after_boot(Slot::A, &boot, "boot-3", now, None),
            BootOutcome::Nothing
        );
    }

    #[test]
    fn a_rollback_says_why_from_the_trial_record() {
        let now = t("2026-01-01T01:00:00Z");
        let boot = BootState::fresh("ab");
        let record = |slot, version: &str| TrialFailure {
            slot,
            version: version.into(),
            reason: "not ready after 20 s".into(),
        };
        let reason_with = |trial: Option<TrialFailure>| {
            let mut state = pending_b();
            state.after_boot(Slot::A, &boot, "boot-2", now, trial.as_ref());
            state.bad.get(v("0.2.0")).unwrap().reason.clone()
        };
        let r = reason_with(Some(record(Slot::B, "0.2.0")));
        assert!(
            r.contains("came back on slot A: its trial boot failed: not ready after 20 s"),
            "{r}"
        );
        // A record about another release or slot is not this one's.
        for other in [record(Slot::B, "0.1.9"), record(Slot::A, "0.2.0")] {
            let r = reason_with(Some(other));
            assert!(
                r.contains("no trial boot of it got as far as PID 1's checks"),
                "{r}"
            );
        }
        let r = reason_with(None);
        assert!(r.contains("came back on slot A: no trial boot"), "{r}");
    }

    #[test]
    fn a_download_into_the_booted_slot_is_forgotten() {
        let download = Download {
            name: "atoll-0.2.0.slot.zst".into(),
            version: v("0.2.0"),
            slot: Slot::B,
            done: 100,
            total: 100,
        };
        let mut state = AgentState {
            download: Some(download.clone()),
            ..AgentState::default()
        };
        // Still writing into B while A runs: kept.
        assert!(!state.forget_download_into(Slot::A));
        assert_eq!(state.download.as_ref(), Some(&download));
        // B runs: the download into it is over.
        assert!(state.forget_download_into(Slot::B));
        assert!(state.download.is_none());
        assert!(!state.forget_download_into(Slot::B));
    }

    #[test]
    fn pending_without_reboot_at_still_loads() {
        // A state written before `reboot_at` existed.
        let json = r#"{"pending": {"version": "0.2.0", "slot": "B",
            "installed_at": "2026-01-01T00:00:00Z", "boot_id": "b"}}"#;
        let state: AgentState = serde_json::from_str(json).unwrap();
        assert_eq!(state.pending.unwrap().reboot_at, None);
    }

    #[test]
    fn a_good_boot_clears_pending() {
        let now = t("2026-01-01T01:00:00Z");
        let mut boot = BootState::fresh("ab");
        boot.b.good = false;
        boot.b.tries = 2;
        let mut state = pending_b();
        assert_eq!(
            state.after_boot(Slot::B, &boot, "boot-2", now, None),
            BootOutcome::Trial(v("0.2.0"))
        );
        boot.mark_good(Slot::B);
        assert_eq!(
            state.after_boot(Slot::B, &boot, "boot-2", now, None),
            BootOutcome::Updated(v("0.2.0"))
        );
        assert!(state.pending.is_none());
        assert!(!state.bad.contains(v("0.2.0")));
    }
}
