//! Atoll's update agent: signed A/B whole-system updates with automatic
//! rollback (shared/DESIGN.md, "Updates"; docs/updates.md).
//!
//! Built so far: [`metadata`], the release metadata (TUF-style roles, their
//! signing, and the client-side verification workflow), which `image-build
//! release` writes and the agent will check. The agent that polls, streams
//! the image into the inactive slot and flips the boot state
//! (`atoll_common::bootstate`) comes next.

// Tests unwrap freely: a panic there is a test failure with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod metadata;
