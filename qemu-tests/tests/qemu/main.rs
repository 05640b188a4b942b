//! The QEMU integration tests: real images booted under QEMU (TCG) and
//! checked the way a user would see them. One test binary, so that
//! `--test-threads` keeps that many guests running across all of them
//! (a binary per area left a core idle whenever its last test ran alone)
//! and the harness links once. Run one area with a name filter:
//! `cargo test -p qemu-tests --test qemu -- update_power::`.

mod common;

mod boot;
mod containers;
mod data;
mod provision;
mod slots;
mod update;
mod update_power;
mod update_refusals;
mod update_rollback;
