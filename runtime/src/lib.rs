//! Atoll's container runtime: image pull and store, containers and pods
//! (shared/DESIGN.md, "Runtime").
//!
//! Not built yet: it comes with the runtime issue.
