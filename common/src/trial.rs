//! Why a trial boot failed: PID 1 leaves a [`TrialFailure`] on /var
//! ([`crate::layout::VAR_TRIAL_FAILURE`]) before it gives up on a trial
//! boot, and the update agent, once the host is back on the old slot, puts
//! it into the reason the release went on the bad list. A trial boot that
//! never gets as far as PID 1's checks (a kernel panic, a hang before /var
//! is mounted) leaves none, which says something too.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layout::Slot;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialFailure {
    /// The slot on trial.
    pub slot: Slot,
    /// The version it runs (its os-release).
    pub version: String,
    /// In words, e.g. `not ready after 120 s` or `web: unhealthy (…)`.
    pub reason: String,
}

impl TrialFailure {
    /// Writes it durably to `path` (replacing an older one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_durably(path, &json)
    }

    /// The record at `path`; `None` when there is none or it does not parse.
    pub fn load(path: &Path) -> Option<TrialFailure> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trial-failure.json");
        assert_eq!(TrialFailure::load(&path), None);
        let t = TrialFailure {
            slot: Slot::B,
            version: "0.2.0".into(),
            reason: "not ready after 20 s".into(),
        };
        t.save(&path).unwrap();
        assert_eq!(TrialFailure::load(&path), Some(t));
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(TrialFailure::load(&path), None);
    }
}
