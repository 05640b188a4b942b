//! Atoll's container runtime: image pull and store, containers and pods
//! (shared/DESIGN.md, "Runtime").
//!
//! Built so far, the image half:
//! - [`reference`]: image references parsed and normalised as Docker and
//!   podman do (`alpine` is `docker.io/library/alpine:latest`).
//! - [`digest`]: sha256 content digests and hashing readers/writers.
//! - [`manifest`]: OCI and Docker schema 2 manifests, indexes and configs,
//!   with platform selection.
//! - [`unpack`]: safe layer unpacking into overlayfs lower dirs.
//! - [`store`]: the image store on /var, an OCI image layout with unpacked
//!   layers, crash-safe writes and garbage collection.
//! - [`import`]: offline import of OCI archives and `docker save` tars.
//! - [`registry`]: a client for the OCI distribution protocol (mirrors,
//!   bearer and basic auth, manifests, ranged blob downloads).
//! - [`pull`]: pulling an image from a registry (or an OCI archive from an
//!   HTTPS URL) into the store, every blob verified, layers downloaded in
//!   parallel and resumed.
//! - [`run`]: running a container: the spec (an OCI `config.json`
//!   subset, built from an image config by Docker's rules), overlay
//!   rootfs and pivot_root, namespaces, cgroup v2 limits, capabilities,
//!   no_new_privs and a default seccomp filter.
//! - [`oci`]: the runc-compatible OCI lifecycle (create, start, state,
//!   kill, delete on a bundle) behind the `atoll-runtime` binary.
//!
//! - [`network`]: the host bridge for containers (veth, addresses, NAT
//!   and published ports over rtnetlink and nf_tables netlink).
//! - [`health`]: healthcheck state by Docker's rules.
//! - [`signature`]: ed25519 image signatures over manifest digests.
//! - [`workload`]: a config `[[containers]]` entry made into a runnable
//!   spec and overlay.
//!
//! Supervision (start order, restarts, logs, pods) is PID 1's
//! (init/src/containers), on top of this library.

pub mod digest;
pub mod health;
pub mod import;
pub mod manifest;
pub mod network;
pub mod oci;
#[cfg(feature = "pull")]
pub mod pull;
pub mod reference;
#[cfg(feature = "pull")]
pub mod registry;
pub mod run;
pub mod signature;
pub mod store;
pub mod unpack;
pub mod workload;
