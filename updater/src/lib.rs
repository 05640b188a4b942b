//! Atoll's update agent: signed A/B whole-system updates with automatic
//! rollback (shared/DESIGN.md, "Updates"; docs/updates.md).
//!
//! - [`metadata`]: the release metadata (TUF-style roles, their signing,
//!   and the client-side verification workflow), which `image-build
//!   release` writes and the agent checks;
//! - [`http`]: the repository over HTTP(S): metadata with length limits,
//!   payloads streamed with Range resume;
//! - [`install`]: a payload decompressed and verified straight into the
//!   inactive slot, resumable at zstd frame boundaries, then offered to
//!   the boot loader ([`bootenv`]) last;
//! - [`policy`]: which release (versions, `min_version`, phased rollout
//!   buckets, releases that rolled back) and when to check;
//! - [`state`]: what the agent keeps on /var across reboots;
//! - [`sha256state`]: a SHA-256 whose state can be saved, for resuming;
//! - [`agent`]: the loop over all of these (one check, the schedule, the
//!   reboot strategies, a manual rollback, the status), which the
//!   `atoll-updater` binary runs.
//!
//! Still to come: PID 1 running and supervising `atoll-updater run`, boot
//! assessment wiring, the host API and the `atollctl` commands.

// Tests unwrap freely: a panic there is a test failure with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod bootenv;
pub mod http;
pub mod install;
pub mod metadata;
pub mod policy;
pub mod sha256state;
pub mod state;
