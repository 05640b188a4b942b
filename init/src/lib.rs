//! Atoll's PID 1, in two stages (docs/boot.md):
//!
//! - [`stage1`] runs from the initramfs: drivers, dm-verity, switch root;
//! - [`stage2`] runs from the verified root as the host's PID 1: mounts,
//!   DATA on /var, /etc, logs, the host API, shutdown.
//!
//! The same binary holds both; `bin/init.rs` picks the stage. [`modules`]
//! (modalias coldplug), [`dm`] (device-mapper ioctls) and [`sysblock`]
//! (partitions by GPT name) serve both stages.
//! [`updates`] runs the update agent under stage 2 and answers the API's
//! update actions. `atollctl` (`bin/atollctl.rs`) is the client of the host API.

pub mod clock;
pub mod cmdline;
pub mod containers;
pub mod ctl;
pub mod dm;
pub mod elf;
mod le;
pub mod modules;
pub mod net;
pub mod pcidefer;
pub mod provision;
pub mod stage1;
pub mod stage2;
pub mod superblock;
pub mod switch_root;
pub mod sysblock;
pub mod updates;
pub mod utf8;
