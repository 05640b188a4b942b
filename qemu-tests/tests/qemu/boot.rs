//! A healthy image boots to ready on both firmwares, keeps /var across a
//! reboot, grows DATA to fill a larger disk, and powers off cleanly.
//!
//! Each test boots its own VM on a fresh qcow2 overlay of the built image
//! (`target/atoll/atoll.raw` or `$ATOLL_IMAGE`).

use crate::common::{check_ready_status, slot_status, GIB};
use atoll_common::api::BootMode;
use atoll_common::layout::{Slot, READY_PREFIX};
use qemu_tests::disk;
use qemu_tests::vm::{Firmware, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

/// Boots on `firmware` and checks the ready line and the status of a
/// freshly built disk: slot A, good, verity root, both slots good.
fn boot_fresh(name: &str, firmware: Firmware) -> Result<Vm, VmError> {
    let vm = Vm::builder(name).firmware(firmware).start()?;
    vm.wait_for("atoll-grub: booting slot A (good", BOOT_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;

    let build = disk::build_info(&disk::base_image()?)?;
    for slot in Slot::ALL {
        let s = slot_status(&vm, &status, slot)?;
        vm.check(s.good, || {
            format!("slot {slot} of a fresh disk is not good: {s:?}")
        })?;
        vm.check(s.verity == build.verity_root_hash, || {
            format!(
                "slot {slot}'s verity hash {:?} is not build.json's {:?}",
                s.verity, build.verity_root_hash
            )
        })?;
    }
    let g = status.grubenv.to_ascii_lowercase();
    vm.check(!g.contains("repair") && !g.contains("damage"), || {
        format!("status.grubenv on an intact disk says {:?}", status.grubenv)
    })?;
    Ok(vm)
}

#[test]
fn bios_boots_to_ready_and_powers_off_on_the_acpi_button() -> Result<(), VmError> {
    let vm = boot_fresh("bios_boots_to_ready", Firmware::Bios)?;
    vm.powerdown()?;
    vm.wait_for("atoll: shutting down", SHUTDOWN_TIMEOUT)?;
    vm.wait_for("atoll: power off", SHUTDOWN_TIMEOUT)?;
    let status = vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    vm.check(status.success(), || format!("QEMU exited with {status}"))
}

#[test]
fn uefi_boots_to_ready_and_powers_off_through_the_api() -> Result<(), VmError> {
    let vm = boot_fresh("uefi_boots_to_ready", Firmware::Uefi)?;
    vm.poweroff()?;
    vm.wait_for("atoll: shutting down", SHUTDOWN_TIMEOUT)?;
    vm.wait_for("atoll: power off", SHUTDOWN_TIMEOUT)?;
    let status = vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    vm.check(status.success(), || format!("QEMU exited with {status}"))
}

/// One VM, two boots: /var (machine id, log store) survives a reboot, the
/// reboot is recorded as clean, and DATA grows to fill a 4 GiB disk on the
/// first boot only.
#[test]
fn var_persists_and_data_grows_across_a_reboot() -> Result<(), VmError> {
    let disk_size = 4 * GIB;
    let vm = Vm::builder("var_persists_and_data_grows")
        .overlay_size(disk_size)
        .start()?;

    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let first = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    vm.check(!first.machine_id.is_empty(), || "empty machine id".into())?;
    vm.check(first.previous_shutdown == "unknown", || {
        format!(
            "previous_shutdown on the first boot is {:?}, expected \"unknown\"",
            first.previous_shutdown
        )
    })?;
    let data = &first.data;
    vm.check(data.state == "grown", || {
        format!("DATA on a 4 GiB disk was not grown on first boot: {data:?}")
    })?;
    let most = disk_size - disk::DATA_OFFSET;
    vm.check(
        data.size_bytes > 5 * GIB / 2 && data.size_bytes <= most,
        || {
            format!(
                "DATA is {} bytes, expected more than 2.5 GiB and at most {most}: {data:?}",
                data.size_bytes
            )
        },
    )?;

    vm.reboot()?;
    vm.wait_for("atoll: shutting down", SHUTDOWN_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let second = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    vm.check(second.machine_id == first.machine_id, || {
        format!(
            "the machine id changed across a reboot: {:?} then {:?}",
            first.machine_id, second.machine_id
        )
    })?;
    vm.check(second.previous_shutdown == "clean", || {
        format!(
            "previous_shutdown after an API reboot is {:?}, expected \"clean\"",
            second.previous_shutdown
        )
    })?;
    vm.check(second.data.state == "mounted", || {
        format!("DATA on the second boot: {:?}", second.data)
    })?;
    vm.check(second.data.size_bytes == first.data.size_bytes, || {
        format!(
            "DATA size changed across a reboot: {} then {}",
            first.data.size_bytes, second.data.size_bytes
        )
    })?;

    // The log store lives on /var: both boots' ready records are there.
    let logs = vm.logs(0)?;
    let readies: Vec<&str> = logs
        .iter()
        .map(|r| r.message.as_str())
        .filter(|m| m.contains("ready version="))
        .collect();
    vm.check(readies.len() == 2, || {
        format!(
            "expected two `{READY_PREFIX}` records in the log store (one per boot), found {}: {readies:?} among {} records",
            readies.len(),
            logs.len()
        )
    })?;
    vm.quit()?;
    Ok(())
}
