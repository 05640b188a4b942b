//! The updater's two changes to the boot state in grubenv on the ESP
//! (`atoll_common::bootstate`): before a slot is written it is made
//! unbootable, and only after the written slot is fully verified is it
//! offered to the boot loader for a trial boot.
//!
//! grubenv is rewritten in place, as PID 1 does when it marks a boot good
//! (init/src/stage2/bootstate.rs): the 1024 bytes are written over the old
//! ones without truncating and fsync'd, so the file keeps its blocks (GRUB's
//! `save_env` writes to those blocks and refuses a file that moved). The
//! block is two sectors; the variables the updater changes are written in
//! one `write`, and a block GRUB cannot load makes it fall back to
//! `grubenv.good`, which is why that copy is made to agree that the slot
//! being written cannot boot as well.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use atoll_common::bootstate::{BootState, BootStateError, DEFAULT_TRIES, MAX_TRIES};
use atoll_common::grubenv::{Grubenv, GrubenvError};
use atoll_common::layout::{self, Slot};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BootEnvError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable GRUB environment block")]
    Parse {
        path: PathBuf,
        #[source]
        source: GrubenvError,
    },
    #[error("{path}: bad boot state")]
    State {
        path: PathBuf,
        #[source]
        source: BootStateError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("verity root hash {0:?} is not 64 lower-case hex digits")]
    Verity(String),
    #[error("slot {0} is not marked good (or has no verity hash) in grubenv")]
    NotGood(Slot),
}

/// The grubenv pair on a mounted ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEnv {
    /// The live block GRUB loads and `save_env`s.
    pub env: PathBuf,
    /// The copy of the last good boot's state, which GRUB loads when the
    /// live block is damaged; `None` when there is none.
    pub good: Option<PathBuf>,
    /// Tries an offered slot gets (`[update] tries`, 1 to
    /// [`MAX_TRIES`]; [`DEFAULT_TRIES`] unless the config says otherwise).
    pub tries: u8,
}

impl BootEnv {
    /// The pair on the ESP mounted at `esp`.
    pub fn on_esp(esp: &Path) -> BootEnv {
        BootEnv {
            env: esp.join(layout::ESP_GRUBENV.trim_start_matches('/')),
            good: Some(esp.join(layout::ESP_GRUBENV_GOOD.trim_start_matches('/'))),
            tries: DEFAULT_TRIES,
        }
    }

    /// The live boot state.
    pub fn state(&self) -> Result<BootState, BootEnvError> {
        Ok(read(&self.env)?.1)
    }

    /// Makes `slot` unbootable before it is overwritten: not good, no
    /// tries, no verity hash, last in ORDER, in the live block and in the
    /// good copy (a damaged copy is left alone: GRUB will not use it
    /// either). Writes nothing when that is already so.
    pub fn mark_unbootable(&self, slot: Slot) -> Result<(), BootEnvError> {
        change(&self.env, |state| unbootable(state, slot))?;
        if let Some(good) = &self.good {
            match read(good) {
                Ok(_) => {
                    change(good, |state| unbootable(state, slot))?;
                }
                Err(e) => log::warn!("leaving {} as it is: {e}", good.display()),
            }
        }
        Ok(())
    }

    /// Offers the verified `slot` for a trial boot: its verity root hash,
    /// [`BootEnv::tries`] tries (kept within 1 to [`MAX_TRIES`]), not yet
    /// good, first in ORDER. Only the live
    /// block changes: the good copy keeps the running slot first, so a
    /// damaged block falls back to what runs now. Returns the new state.
    pub fn offer(&self, slot: Slot, verity: &str) -> Result<BootState, BootEnvError> {
        if verity.len() != 64
            || !verity
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(BootEnvError::Verity(verity.to_owned()));
        }
        let tries = self.tries.clamp(1, MAX_TRIES);
        change(&self.env, |state| {
            let st = state.slot_mut(slot);
            st.good = false;
            st.tries = tries;
            st.verity = verity.to_owned();
            state.order.retain(|s| *s != slot);
            state.order.insert(0, slot);
        })
    }
    /// Puts the good `slot` first in ORDER (a manual rollback to the
    /// other slot), in the live block and in the good copy, so that a
    /// damaged live block falls back to the same choice. Refuses a slot
    /// that is not marked good or has no verity hash. Returns the new
    /// live state.
    pub fn prefer(&self, slot: Slot) -> Result<BootState, BootEnvError> {
        let state = self.state()?;
        let st = state.slot(slot);
        if !st.good || st.verity.is_empty() {
            return Err(BootEnvError::NotGood(slot));
        }
        let first = |state: &mut BootState| {
            state.order.retain(|s| *s != slot);
            state.order.insert(0, slot);
        };
        let live = change(&self.env, first)?;
        if let Some(good) = &self.good {
            match read(good) {
                Ok((_, g)) if g.slot(slot).good => {
                    change(good, first)?;
                }
                Ok(_) => log::warn!(
                    "leaving {} as it is: slot {slot} is not good there",
                    good.display()
                ),
                Err(e) => log::warn!("leaving {} as it is: {e}", good.display()),
            }
        }
        Ok(live)
    }
}

fn unbootable(state: &mut BootState, slot: Slot) {
    let st = state.slot_mut(slot);
    st.good = false;
    st.tries = 0;
    st.verity.clear();
    state.order.retain(|s| *s != slot);
    state.order.push(slot);
}

fn read(path: &Path) -> Result<(Grubenv, BootState), BootEnvError> {
    let bytes = std::fs::read(path).map_err(|source| BootEnvError::Read {
        path: path.to_owned(),
        source,
    })?;
    let env = Grubenv::parse(&bytes).map_err(|source| BootEnvError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let state = BootState::from_env(&env).map_err(|source| BootEnvError::State {
        path: path.to_owned(),
        source,
    })?;
    Ok((env, state))
}

/// Reads the block at `path`, applies `f` to its state and writes it back
/// in place if anything changed.
fn change(path: &Path, f: impl FnOnce(&mut BootState)) -> Result<BootState, BootEnvError> {
    let (mut env, mut state) = read(path)?;
    let before = env.clone();
    f(&mut state);
    state
        .to_env(&mut env)
        .map_err(|source| BootEnvError::State {
            path: path.to_owned(),
            source,
        })?;
    if env == before {
        return Ok(state);
    }
    let bytes = env.to_bytes().map_err(|source| BootEnvError::Parse {
        path: path.to_owned(),
        source,
    })?;
    write_in_place(path, &bytes)?;
    Ok(state)
}

/// Overwrites the start of the existing file `path` with `bytes` without
/// truncating it, then fsyncs.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), BootEnvError> {
    let err = |source| BootEnvError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn esp(state: &BootState) -> (tempfile::TempDir, BootEnv) {
        let dir = tempfile::tempdir().unwrap();
        let boot = BootEnv::on_esp(dir.path());
        std::fs::create_dir_all(boot.env.parent().unwrap()).unwrap();
        let mut env = Grubenv::new();
        state.to_env(&mut env).unwrap();
        let bytes = env.to_bytes().unwrap();
        std::fs::write(&boot.env, &bytes).unwrap();
        std::fs::write(boot.good.as_ref().unwrap(), &bytes).unwrap();
        (dir, boot)
    }

    fn state_of(path: &Path) -> BootState {
        read(path).unwrap().1
    }

    #[test]
    fn unbootable_then_offered() {
        let (_dir, boot) = esp(&BootState::fresh(&"ab".repeat(32)));
        let inode = std::fs::metadata(&boot.env).unwrap().ino();
        boot.mark_unbootable(Slot::B).unwrap();
        for path in [&boot.env, boot.good.as_ref().unwrap()] {
            let st = state_of(path);
            assert_eq!(st.order, vec![Slot::A, Slot::B]);
            assert!(!st.b.good);
            assert_eq!(st.b.tries, 0);
            assert_eq!(st.b.verity, "");
            assert!(st.a.good);
        }
        let verity = "cd".repeat(32);
        let st = boot.offer(Slot::B, &verity).unwrap();
        assert_eq!(st, state_of(&boot.env));
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
        assert_eq!((st.b.good, st.b.tries), (false, DEFAULT_TRIES));
        assert_eq!(st.b.verity, verity);
        // The good copy still boots A; the file kept its inode and size.
        assert_eq!(state_of(boot.good.as_ref().unwrap()).order[0], Slot::A);
        let meta = std::fs::metadata(&boot.env).unwrap();
        assert_eq!((meta.ino(), meta.len()), (inode, 1024));
        // The boot loader tries B, then falls back to A.
        let (choice, _) = st.choose();
        assert_eq!(choice, atoll_common::bootstate::Choice::Trial(Slot::B));
    }

    #[test]
    fn offered_with_the_configured_tries() {
        let (_dir, mut boot) = esp(&BootState::fresh(&"ab".repeat(32)));
        for (asked, given) in [
            (1, 1),
            (5, 5),
            (MAX_TRIES, MAX_TRIES),
            (0, 1),
            (200, MAX_TRIES),
        ] {
            boot.tries = asked;
            boot.mark_unbootable(Slot::B).unwrap();
            let st = boot.offer(Slot::B, &"cd".repeat(32)).unwrap();
            assert_eq!((st.b.good, st.b.tries), (false, given), "asked {asked}");
        }
    }

    #[test]
    fn a_slot_first_in_order_goes_last() {
        let mut state = BootState::fresh(&"ab".repeat(32));
        state.order = vec![Slot::B, Slot::A];
        let (_dir, boot) = esp(&state);
        boot.mark_unbootable(Slot::B).unwrap();
        assert_eq!(state_of(&boot.env).order, vec![Slot::A, Slot::B]);
    }

    #[test]
    fn bad_verity_is_refused() {
        let (_dir, boot) = esp(&BootState::fresh(&"ab".repeat(32)));
        for bad in ["", "ab", &"AB".repeat(32), &format!("{} x", "a".repeat(62))] {
            assert!(matches!(
                boot.offer(Slot::B, bad),
                Err(BootEnvError::Verity(_))
            ));
        }
    }

    #[test]
    fn prefer_puts_a_good_slot_first() {
        let mut state = BootState::fresh(&"ab".repeat(32));
        state.b.good = true;
        state.b.verity = "cd".repeat(32);
        let (_dir, boot) = esp(&state);
        assert_eq!(boot.prefer(Slot::B).unwrap().order, vec![Slot::B, Slot::A]);
        for path in [&boot.env, boot.good.as_ref().unwrap()] {
            assert_eq!(state_of(path).order, vec![Slot::B, Slot::A]);
        }
        boot.mark_unbootable(Slot::A).unwrap();
        assert!(matches!(
            boot.prefer(Slot::A),
            Err(BootEnvError::NotGood(Slot::A))
        ));
    }

    #[test]
    fn damaged_good_copy_is_left_alone() {
        let (_dir, boot) = esp(&BootState::fresh(&"ab".repeat(32)));
        std::fs::write(boot.good.as_ref().unwrap(), b"junk").unwrap();
        boot.mark_unbootable(Slot::B).unwrap();
        assert_eq!(std::fs::read(boot.good.as_ref().unwrap()).unwrap(), b"junk");
    }
}
