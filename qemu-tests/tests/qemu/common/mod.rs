//! Checks shared by the integration tests.

pub mod update;

use std::time::Duration;

use atoll_common::api::{BootMode, SlotStatus, Status};
use atoll_common::layout::Slot;
use qemu_tests::vm::{Ready, Vm, VmError};

pub const GIB: u64 = 1024 * 1024 * 1024;

/// The slot's entry in `status.slots`.
pub fn slot_status(vm: &Vm, status: &Status, slot: Slot) -> Result<SlotStatus, VmError> {
    status
        .slots
        .iter()
        .find(|s| s.slot == slot)
        .cloned()
        .ok_or_else(|| {
            vm.fail(format!(
                "status.slots has no slot {slot}: {:?}",
                status.slots
            ))
        })
}

/// How long PID 1 may take after its ready line to read the boot state
/// and mark the boot good (it loads the FAT driver and writes grubenv).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The status once the host has read its boot state after ready (the
/// slot table is filled then).
pub fn settled_status(vm: &Vm) -> Result<Status, VmError> {
    vm.wait_status(
        "the slot table (boot state read after ready)",
        SETTLE_TIMEOUT,
        |s| !s.slots.is_empty(),
    )
}

/// Reads the status after `ready` and checks what every ready host must
/// show: ready, booted from `slot` in `mode`, the ready line's version, a
/// read-only root on dm-verity that has seen no corruption, and `slot`
/// marked booted in the slot table.
pub fn check_ready_status(
    vm: &Vm,
    ready: &Ready,
    slot: Slot,
    mode: BootMode,
) -> Result<Status, VmError> {
    vm.check(ready.slot == slot, || {
        format!(
            "ready on slot {} instead of {slot}: {:?}",
            ready.slot, ready.line
        )
    })?;
    let s = settled_status(vm)?;
    vm.check(s.ready, || {
        format!("status.ready is false after {:?}", ready.line)
    })?;
    vm.check(s.booted_slot == Some(slot), || {
        format!("status.booted_slot is {:?}, expected {slot}", s.booted_slot)
    })?;
    vm.check(s.boot_mode == mode, || {
        format!("status.boot_mode is {:?}, expected {mode:?}", s.boot_mode)
    })?;
    vm.check(s.version == ready.version, || {
        format!(
            "status.version {:?} differs from the ready line's {:?}",
            s.version, ready.version
        )
    })?;
    let root = &s.root;
    vm.check(root.read_only, || {
        format!("the root is not read-only: {root:?}")
    })?;
    vm.check(root.dm_target.as_deref() == Some("verity"), || {
        format!("the root is not on a dm-verity target: {root:?}")
    })?;
    vm.check(root.verity_status.as_deref() == Some("V"), || {
        format!("dm-verity status is not V (verified): {root:?}")
    })?;
    let booted = slot_status(vm, &s, slot)?;
    vm.check(booted.booted, || {
        format!("status.slots does not mark {slot} as booted: {booted:?}")
    })?;
    Ok(s)
}
