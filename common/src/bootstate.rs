//! The A/B boot state kept in grubenv (RAUC-style), and the slot choice that
//! grub.cfg makes from it. grub.cfg cannot call Rust, so it implements
//! [`BootState::choose`] in GRUB script; this type is the reference that
//! `image-build` writes, PID 1 updates when a boot is good, and the updater
//! flips after installing a slot.
//!
//! Variables:
//! - `ORDER`: slots by preference, e.g. `A B`;
//! - `A_OK`/`B_OK`: `1` when the slot has booted to ready (known good);
//! - `A_TRY`/`B_TRY`: boot attempts left for a slot that is not yet good;
//! - `A_VERITY`/`B_VERITY`: the slot's dm-verity root hash.

use crate::grubenv::{Grubenv, GrubenvError};
use crate::layout::Slot;

/// Most tries a slot may be given: grub.cfg counts down with a fixed table.
pub const MAX_TRIES: u8 = 9;
/// Tries given to a freshly installed slot.
pub const DEFAULT_TRIES: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BootStateError {
    #[error(transparent)]
    Grubenv(#[from] GrubenvError),
    #[error("{key} is {value:?}, expected {expected}")]
    Value {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// One slot's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotState {
    /// Booted to ready at least once since it was installed.
    pub good: bool,
    /// Attempts left while not yet good.
    pub tries: u8,
    /// dm-verity root hash (hex); empty when the slot holds nothing.
    pub verity: String,
}

/// The whole boot state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootState {
    pub order: Vec<Slot>,
    pub a: SlotState,
    pub b: SlotState,
}

/// What the boot loader does with a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Boot a good slot; nothing is counted.
    Good(Slot),
    /// Boot a slot on trial; one try has been used.
    Trial(Slot),
    /// No slot is good or has tries left: boot the first in ORDER anyway
    /// rather than leave the host dead.
    LastResort(Slot),
}

impl Choice {
    pub fn slot(self) -> Slot {
        match self {
            Choice::Good(s) | Choice::Trial(s) | Choice::LastResort(s) => s,
        }
    }
}

impl BootState {
    /// The state of a freshly built disk: both slots hold the same good build.
    pub fn fresh(verity: &str) -> Self {
        let slot = SlotState {
            good: true,
            tries: 0,
            verity: verity.to_string(),
        };
        Self {
            order: vec![Slot::A, Slot::B],
            a: slot.clone(),
            b: slot,
        }
    }

    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    pub fn slot_mut(&mut self, s: Slot) -> &mut SlotState {
        match s {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// Reads the state from grubenv variables. Missing variables take safe
    /// defaults (not good, no tries); values that are present must be valid.
    pub fn from_env(env: &Grubenv) -> Result<Self, BootStateError> {
        let order = match env.get("ORDER") {
            None => vec![Slot::A, Slot::B],
            Some(v) => {
                let mut order = Vec::new();
                for word in v.split_whitespace() {
                    let s = Slot::parse(word).ok_or_else(|| BootStateError::Value {
                        key: "ORDER".into(),
                        value: v.into(),
                        expected: "slot letters A and B separated by spaces",
                    })?;
                    if !order.contains(&s) {
                        order.push(s);
                    }
                }
                for s in Slot::ALL {
                    if !order.contains(&s) {
                        order.push(s);
                    }
                }
                order
            }
        };
        let slot = |s: Slot| -> Result<SlotState, BootStateError> {
            let key = |k: &str| format!("{}_{k}", s.letter());
            let good = match env.get(&key("OK")) {
                None | Some("0") | Some("") => false,
                Some("1") => true,
                Some(v) => {
                    return Err(BootStateError::Value {
                        key: key("OK"),
                        value: v.into(),
                        expected: "0 or 1",
                    })
                }
            };
            let tries = match env.get(&key("TRY")) {
                None | Some("") => 0,
                Some(v) => v
                    .parse::<u8>()
                    .ok()
                    .filter(|t| *t <= MAX_TRIES)
                    .ok_or_else(|| BootStateError::Value {
                        key: key("TRY"),
                        value: v.into(),
                        expected: "a number from 0 to 9",
                    })?,
            };
            Ok(SlotState {
                good,
                tries,
                verity: env.get(&key("VERITY")).unwrap_or_default().to_string(),
            })
        };
        Ok(Self {
            order,
            a: slot(Slot::A)?,
            b: slot(Slot::B)?,
        })
    }

    /// Writes the state into `env`, keeping any other variables there.
    pub fn to_env(&self, env: &mut Grubenv) -> Result<(), BootStateError> {
        let order: Vec<&str> = self.order.iter().map(|s| s.letter()).collect();
        env.set("ORDER", order.join(" "))?;
        for s in Slot::ALL {
            let st = self.slot(s);
            let l = s.letter();
            env.set(&format!("{l}_OK"), if st.good { "1" } else { "0" })?;
            env.set(&format!("{l}_TRY"), st.tries.min(MAX_TRIES).to_string())?;
            env.set(&format!("{l}_VERITY"), st.verity.clone())?;
        }
        Ok(())
    }

    /// The slot the boot loader picks, and the state it saves before booting.
    /// Mirrors grub.cfg exactly.
    pub fn choose(&self) -> (Choice, BootState) {
        let mut next = self.clone();
        for &s in &self.order {
            let st = self.slot(s);
            if st.good {
                return (Choice::Good(s), next);
            }
            if st.tries > 0 {
                next.slot_mut(s).tries -= 1;
                return (Choice::Trial(s), next);
            }
        }
        (Choice::LastResort(self.order[0]), next)
    }

    /// Records that `slot` booted to ready: it becomes good and first in ORDER.
    pub fn mark_good(&mut self, slot: Slot) {
        let st = self.slot_mut(slot);
        st.good = true;
        st.tries = 0;
        self.order.retain(|s| *s != slot);
        self.order.insert(0, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(state: &BootState) -> Grubenv {
        let mut env = Grubenv::new();
        state.to_env(&mut env).unwrap();
        env
    }

    #[test]
    fn fresh_boots_a() {
        let st = BootState::fresh("ab");
        assert_eq!(st.choose().0, Choice::Good(Slot::A));
        assert_eq!(BootState::from_env(&env_of(&st)).unwrap(), st);
    }

    #[test]
    fn trial_counts_down_then_falls_back() {
        let mut st = BootState::fresh("ab");
        st.order = vec![Slot::B, Slot::A];
        st.b = SlotState {
            good: false,
            tries: DEFAULT_TRIES,
            verity: "cd".into(),
        };
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (choice, next) = st.choose();
            seen.push(choice);
            st = next;
        }
        assert_eq!(
            seen,
            vec![
                Choice::Trial(Slot::B),
                Choice::Trial(Slot::B),
                Choice::Trial(Slot::B),
                Choice::Good(Slot::A),
                Choice::Good(Slot::A)
            ]
        );
    }

    #[test]
    fn mark_good_moves_slot_first() {
        let mut st = BootState::fresh("ab");
        st.b.good = false;
        st.b.tries = 2;
        st.mark_good(Slot::B);
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
        assert!(st.b.good);
        assert_eq!(st.b.tries, 0);
    }

    #[test]
    fn nothing_bootable_is_last_resort() {
        let mut st = BootState::fresh("ab");
        st.a.good = false;
        st.b.good = false;
        assert_eq!(st.choose().0, Choice::LastResort(Slot::A));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut env = Grubenv::new();
        env.set("ORDER", "A C").unwrap();
        assert!(BootState::from_env(&env).is_err());
        let mut env = Grubenv::new();
        env.set("A_TRY", "12").unwrap();
        assert!(BootState::from_env(&env).is_err());
        let mut env = Grubenv::new();
        env.set("B_OK", "yes").unwrap();
        assert!(BootState::from_env(&env).is_err());
    }

    #[test]
    fn partial_order_is_completed() {
        let mut env = Grubenv::new();
        env.set("ORDER", "B").unwrap();
        let st = BootState::from_env(&env).unwrap();
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
    }
}
