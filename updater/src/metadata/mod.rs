//! Release metadata: the signed documents of an Atoll update repository
//! and the client-side checks, following The Update Framework (TUF 1.0).
//!
//! - [`role`]: the four roles as JSON documents
//!   `{"signed": {...}, "signatures": [{"keyid", "sig"}]}`: root (keys and
//!   thresholds), targets (the releases), snapshot (pins the targets
//!   version), timestamp (pins the snapshot version); parsing and signing.
//! - [`canonical`]: the canonical JSON that signatures cover.
//! - [`key`]: ed25519 keys, key ids (sha256 of the key's canonical JSON).
//! - [`client`]: the verification workflow over a [`client::Fetcher`], and
//!   [`client::TargetCheck`] for downloads; [`dir::DirFetcher`] reads a
//!   repository in a directory.
//! - [`time`], [`version`]: expiry times and release versions.
//!
//! `image-build keys` and `image-build release` write these documents;
//! docs/updates.md describes the repository and the rules.

pub mod canonical;
pub mod client;
pub mod dir;
pub mod key;
pub mod role;
pub mod time;
pub mod version;

#[cfg(test)]
mod tests;

pub use client::{
    Config, FetchError, Fetcher, Limits, SavedMetadata, TargetCheck, Trusted, UpdateError,
};
pub use dir::DirFetcher;
pub use role::{
    DocumentError, Hashes, MetaFile, Release, Role, RoleName, Rollout, Root, Snapshot, TargetFile,
    Targets, Timestamp,
};
pub use time::Time;
pub use version::Version;

/// Where the root of trust lives in a slot: the `root.json` of the keys
/// directory the image was built with.
pub const SHIPPED_ROOT: &str = "/usr/lib/atoll/update-root.json";
