//! The Atoll keys of the kernel command line (`atoll_common::layout::cmdline`).

use atoll_common::api::BootMode;
use atoll_common::layout::{cmdline as key, Slot};

/// What grub.cfg told the kernel about this boot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootArgs {
    pub slot: Option<Slot>,
    /// The slot's dm-verity root hash, lower-case hex.
    pub verity: Option<String>,
    pub mode: Option<BootMode>,
    /// GRUB could not read grubenv and used grubenv.good.
    pub grubenv_damaged: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("{key}={value:?} is not a slot (A or B)")]
    Slot { key: &'static str, value: String },
    #[error("{key}={value:?} is not a sha256 hex digest")]
    Verity { key: &'static str, value: String },
}

impl BootArgs {
    /// Reads /proc/cmdline.
    pub fn from_proc() -> std::io::Result<Result<Self, CmdlineError>> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/cmdline")?))
    }

    /// Parses a kernel command line. Unknown words are ignored; Atoll's own
    /// keys must be well-formed.
    pub fn parse(line: &str) -> Result<Self, CmdlineError> {
        let mut args = BootArgs::default();
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            match k {
                key::SLOT => {
                    args.slot = Some(Slot::parse(v).ok_or_else(|| CmdlineError::Slot {
                        key: key::SLOT,
                        value: v.to_string(),
                    })?)
                }
                key::VERITY => {
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(CmdlineError::Verity {
                            key: key::VERITY,
                            value: v.to_string(),
                        });
                    }
                    args.verity = Some(v.to_ascii_lowercase());
                }
                key::MODE => {
                    args.mode = Some(match v {
                        "good" => BootMode::Good,
                        "trial" => BootMode::Trial,
                        "last-resort" => BootMode::LastResort,
                        _ => BootMode::Unknown,
                    })
                }
                key::GRUBENV => args.grubenv_damaged = v == "damaged",
                _ => {}
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF";

    #[test]
    fn parses_grub_line() {
        let line = format!(
            "BOOT_IMAGE=/boot/vmlinuz console=ttyS0,115200 quiet atoll.slot=B atoll.verity={HASH} atoll.mode=trial"
        );
        let a = BootArgs::parse(&line).unwrap();
        assert_eq!(a.slot, Some(Slot::B));
        assert_eq!(
            a.verity.as_deref(),
            Some(HASH.to_ascii_lowercase().as_str())
        );
        assert_eq!(a.mode, Some(BootMode::Trial));
        assert!(!a.grubenv_damaged);
    }

    #[test]
    fn refuses_bad_values() {
        assert!(matches!(
            BootArgs::parse("atoll.slot=C"),
            Err(CmdlineError::Slot { .. })
        ));
        assert!(matches!(
            BootArgs::parse("atoll.verity=abc"),
            Err(CmdlineError::Verity { .. })
        ));
    }

    #[test]
    fn damaged_grubenv_flag() {
        assert!(
            BootArgs::parse("atoll.grubenv=damaged")
                .unwrap()
                .grubenv_damaged
        );
        assert_eq!(BootArgs::parse("").unwrap(), BootArgs::default());
    }
}
