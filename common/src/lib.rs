//! Types shared by Atoll's crates, each with one home:
//!
//! - [`layout`]: the disk layout (partition labels and type GUIDs), the paths
//!   inside the ESP and the slot, and the kernel command line keys, so that
//!   `image-build`, `init` and the updater agree on them;
//! - [`grubenv`]: the GRUB environment block that holds the A/B boot state;
//! - [`bootstate`]: the slot-choice logic on top of grubenv (the same rules
//!   grub.cfg follows), used by PID 1 and the updater;
//! - [`api`]: the host API protocol spoken by PID 1 and `atollctl`;
//! - [`error`]: an error and its causes as one line, for every crate's logs
//!   and messages.

pub mod api;
pub mod bootstate;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod grubenv;
pub mod layout;
pub mod time;
pub mod trial;

/// The Atoll version, the same for every binary of one build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
