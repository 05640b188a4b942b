//! The runc-compatible OCI runtime command line's library half
//! (shared/DESIGN.md, "Runtime"; the `atoll-runtime` binary is a thin
//! clap front end): [`state`](mod@state) (the state directory and the OCI state
//! JSON) and [`lifecycle`] (create, start, state, kill, delete on a
//! bundle whose `root.path` is a plain rootfs directory).

pub mod lifecycle;
pub mod state;

pub use lifecycle::{CreateOptions, OciError};
pub use state::{OciState, StateRoot, Status, DEFAULT_ROOT};
