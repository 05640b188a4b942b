//! Marking the boot good in grubenv on the ESP, and repairing grubenv when
//! GRUB found it damaged (docs/boot.md, "Boot state").
//!
//! grubenv is rewritten in place: opened without truncation, 1024 bytes
//! written over the old ones, fsync'd, so the file keeps its blocks (GRUB's
//! `save_env` writes to those blocks and refuses a file that moved).
//! `grubenv.good` is then made equal to it. Nothing is written when nothing
//! changes (a good slot already first in ORDER).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use atoll_common::api::SlotStatus;
use atoll_common::bootstate::{BootState, SlotState};
use atoll_common::grubenv::Grubenv;
use atoll_common::layout::{self, Slot};
use nix::mount::{MntFlags, MsFlags};

/// Where stage 2 mounts the ESP while it updates grubenv.
pub const ESP_MOUNT: &str = "/run/atoll/esp";

#[derive(Debug, thiserror::Error)]
pub enum BootStateIoError {
    #[error("mounting the ESP {device} on {target}")]
    Mount {
        device: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serialising the boot state")]
    Serialise(#[source] atoll_common::grubenv::GrubenvError),
    #[error("recording the boot state")]
    State(#[from] atoll_common::bootstate::BootStateError),
}

/// The result of [`reconcile`]: what to write and what to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub state: BootState,
    /// The new grubenv block (1024 bytes).
    pub bytes: Vec<u8>,
    pub write_env: bool,
    pub write_good: bool,
    /// `ok`, `repaired from grubenv.good`, or `rebuilt from the booted slot (…)`.
    pub report: String,
}

fn parse(bytes: &std::io::Result<Vec<u8>>) -> Result<(Grubenv, BootState), String> {
    let bytes = bytes.as_ref().map_err(|e| e.to_string())?;
    let env = Grubenv::parse(bytes).map_err(|e| e.to_string())?;
    let state = BootState::from_env(&env).map_err(|e| e.to_string())?;
    Ok((env, state))
}

/// Decides the new boot state from what is on the ESP: `booted` reached
/// ready, so it becomes good and first. A damaged grubenv (unparsable, or
/// flagged by GRUB with `atoll.grubenv=damaged`) is rebuilt from
/// grubenv.good, or from the booted slot's facts if that is bad too.
pub fn reconcile(
    env: &std::io::Result<Vec<u8>>,
    good: &std::io::Result<Vec<u8>>,
    booted: Slot,
    verity: Option<&str>,
    flagged_damaged: bool,
) -> Result<Reconciled, BootStateIoError> {
    let env_parsed = parse(env);
    let good_parsed = parse(good);
    let (mut grubenv, mut state, report, env_damaged) = match (&env_parsed, flagged_damaged) {
        (Ok((g, s)), false) => (g.clone(), s.clone(), "ok".to_string(), false),
        _ => {
            let why = match &env_parsed {
                Err(e) => e.clone(),
                Ok(_) => "the boot loader could not load it".to_string(),
            };
            match &good_parsed {
                Ok((g, s)) => (
                    g.clone(),
                    s.clone(),
                    "repaired from grubenv.good".to_string(),
                    true,
                ),
                Err(good_err) => {
                    let mut state = BootState {
                        order: vec![booted, booted.other()],
                        a: SlotState {
                            good: false,
                            tries: 0,
                            verity: String::new(),
                        },
                        b: SlotState {
                            good: false,
                            tries: 0,
                            verity: String::new(),
                        },
                    };
                    state.slot_mut(booted).verity = verity.unwrap_or_default().to_string();
                    (
                        Grubenv::new(),
                        state,
                        format!("rebuilt from the booted slot (grubenv: {why}; grubenv.good: {good_err})"),
                        true,
                    )
                }
            }
        }
    };
    state.mark_good(booted);
    if let Some(v) = verity {
        if state.slot(booted).verity.is_empty() {
            state.slot_mut(booted).verity = v.to_string();
        }
    }
    state.to_env(&mut grubenv)?;
    let bytes = grubenv.to_bytes().map_err(BootStateIoError::Serialise)?;
    let write_env = env_damaged || env.as_ref().ok() != Some(&bytes);
    let write_good = good.as_ref().ok() != Some(&bytes);
    Ok(Reconciled {
        state,
        bytes,
        write_env,
        write_good,
        report,
    })
}

/// Overwrites `path` with `bytes` without truncating it first (creating it
/// if missing), then fsyncs.
pub fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), BootStateIoError> {
    let err = |source| BootStateIoError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Reads, reconciles and writes the grubenv pair under `root` (the ESP's
/// mount point).
pub fn update_dir(
    root: &Path,
    booted: Slot,
    verity: Option<&str>,
    flagged_damaged: bool,
) -> Result<Reconciled, BootStateIoError> {
    let env_path = root.join(layout::ESP_GRUBENV.trim_start_matches('/'));
    let good_path = root.join(layout::ESP_GRUBENV_GOOD.trim_start_matches('/'));
    let r = reconcile(
        &std::fs::read(&env_path),
        &std::fs::read(&good_path),
        booted,
        verity,
        flagged_damaged,
    )?;
    if r.write_env {
        write_in_place(&env_path, &r.bytes)?;
    }
    if r.write_good {
        write_in_place(&good_path, &r.bytes)?;
    }
    Ok(r)
}

/// Mounts the ESP, marks `booted` good, unmounts.
pub fn mark_good_on_esp(
    esp: &Path,
    booted: Slot,
    verity: Option<&str>,
    flagged_damaged: bool,
) -> Result<Reconciled, BootStateIoError> {
    let target = Path::new(ESP_MOUNT);
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(
        Some(esp),
        target,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| BootStateIoError::Mount {
        device: esp.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })?;
    let result = update_dir(target, booted, verity, flagged_damaged);
    if nix::mount::umount2(target, MntFlags::empty()).is_err() {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
    }
    result
}

/// The slots table of the status, from a boot state.
pub fn slot_table(
    state: &BootState,
    booted: Option<Slot>,
    booted_version: Option<&str>,
) -> Vec<SlotStatus> {
    Slot::ALL
        .iter()
        .map(|&s| {
            let st = state.slot(s);
            SlotStatus {
                slot: s,
                booted: booted == Some(s),
                good: st.good,
                tries_left: st.tries,
                priority: state
                    .order
                    .iter()
                    .position(|o| *o == s)
                    .unwrap_or(Slot::ALL.len()),
                verity: st.verity.clone(),
                version: if booted == Some(s) {
                    booted_version.map(str::to_string)
                } else {
                    None
                },
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;
    use std::os::unix::fs::MetadataExt;

    const VA: &str = "aaaa";
    const VB: &str = "bbbb";

    fn esp(dir: &Path, env: Option<&[u8]>, good: Option<&[u8]>) {
        std::fs::create_dir_all(dir.join("EFI/atoll")).unwrap();
        if let Some(b) = env {
            std::fs::write(dir.join("EFI/atoll/grubenv"), b).unwrap();
        }
        if let Some(b) = good {
            std::fs::write(dir.join("EFI/atoll/grubenv.good"), b).unwrap();
        }
    }

    fn bytes_of(state: &BootState) -> Vec<u8> {
        let mut env = Grubenv::new();
        state.to_env(&mut env).unwrap();
        env.to_bytes().unwrap()
    }

    fn read_state(path: &Path) -> BootState {
        BootState::from_env(&Grubenv::parse(&std::fs::read(path).unwrap()).unwrap()).unwrap()
    }

    fn fresh() -> BootState {
        let mut s = BootState::fresh(VA);
        s.b.verity = VB.into();
        s
    }

    #[test]
    fn good_boot_of_first_slot_writes_nothing() {
        let dir = TempDir::new("grubenv-nochange");
        let b = bytes_of(&fresh());
        esp(dir.path(), Some(&b), Some(&b));
        let before = std::fs::metadata(dir.path().join("EFI/atoll/grubenv")).unwrap();
        let r = update_dir(dir.path(), Slot::A, Some(VA), false).unwrap();
        assert_eq!(r.report, "ok");
        assert!(!r.write_env && !r.write_good);
        let after = std::fs::metadata(dir.path().join("EFI/atoll/grubenv")).unwrap();
        assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    }

    #[test]
    fn trial_boot_becomes_good_in_place() {
        let dir = TempDir::new("grubenv-trial");
        let mut st = fresh();
        st.order = vec![Slot::B, Slot::A];
        st.b.good = false;
        st.b.tries = 2; // GRUB counted one of three
        let old_good = bytes_of(&fresh());
        esp(dir.path(), Some(&bytes_of(&st)), Some(&old_good));
        let env_path = dir.path().join("EFI/atoll/grubenv");
        let ino = std::fs::metadata(&env_path).unwrap().ino();
        let r = update_dir(dir.path(), Slot::B, Some(VB), false).unwrap();
        assert_eq!(r.report, "ok");
        assert!(r.write_env && r.write_good);
        let now = read_state(&env_path);
        assert_eq!(now.order, vec![Slot::B, Slot::A]);
        assert!(now.b.good && now.b.tries == 0);
        assert_eq!(now.a, fresh().a);
        assert_eq!(
            std::fs::metadata(&env_path).unwrap().ino(),
            ino,
            "same file"
        );
        assert_eq!(std::fs::metadata(&env_path).unwrap().len(), 1024);
        assert_eq!(
            std::fs::read(&env_path).unwrap(),
            std::fs::read(dir.path().join("EFI/atoll/grubenv.good")).unwrap()
        );
        // A second run is a no-op.
        let r = update_dir(dir.path(), Slot::B, Some(VB), false).unwrap();
        assert!(!r.write_env && !r.write_good);
    }

    #[test]
    fn damaged_grubenv_is_repaired_from_the_good_copy() {
        let dir = TempDir::new("grubenv-damaged");
        let good = bytes_of(&fresh());
        let mut junk = good.clone();
        junk[..10].copy_from_slice(b"garbage!!!");
        esp(dir.path(), Some(&junk), Some(&good));
        let r = update_dir(dir.path(), Slot::A, Some(VA), false).unwrap();
        assert_eq!(r.report, "repaired from grubenv.good");
        assert!(r.write_env);
        assert_eq!(
            std::fs::read(dir.path().join("EFI/atoll/grubenv")).unwrap(),
            good
        );

        // GRUB's flag alone is enough, even if the block now parses.
        let dir = TempDir::new("grubenv-flagged");
        let mut other = fresh();
        other.a.tries = 5;
        esp(dir.path(), Some(&bytes_of(&other)), Some(&good));
        let r = update_dir(dir.path(), Slot::A, Some(VA), true).unwrap();
        assert_eq!(r.report, "repaired from grubenv.good");
        assert_eq!(
            std::fs::read(dir.path().join("EFI/atoll/grubenv")).unwrap(),
            good
        );
    }

    #[test]
    fn both_damaged_rebuilds_from_the_booted_slot() {
        let dir = TempDir::new("grubenv-rebuild");
        esp(dir.path(), Some(&[0u8; 1024]), None);
        let r = update_dir(dir.path(), Slot::B, Some(VB), true).unwrap();
        assert!(
            r.report.starts_with("rebuilt from the booted slot"),
            "{}",
            r.report
        );
        for f in ["grubenv", "grubenv.good"] {
            let st = read_state(&dir.path().join("EFI/atoll").join(f));
            assert_eq!(st.order, vec![Slot::B, Slot::A]);
            assert!(st.b.good);
            assert_eq!(st.b.verity, VB);
            assert!(!st.a.good && st.a.tries == 0);
        }
    }

    #[test]
    fn slot_table_reports_order_and_versions() {
        let mut st = fresh();
        st.mark_good(Slot::B);
        let t = slot_table(&st, Some(Slot::B), Some("1.2"));
        assert_eq!(t[0].slot, Slot::A);
        assert_eq!(
            (t[0].priority, t[0].booted, t[0].version.clone()),
            (1, false, None)
        );
        assert_eq!(
            (t[1].priority, t[1].booted, t[1].version.as_deref()),
            (0, true, Some("1.2"))
        );
    }
}
