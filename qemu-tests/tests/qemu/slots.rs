//! A/B fallback and the protections around it: a corrupted root slot never
//! gets ready, a slot on trial that never gets ready loses its tries and
//! GRUB falls back, and a damaged grubenv is replaced by its good copy.
//!
//! These tests set the stage on a private raw copy of the image (mtools on
//! the ESP, one flipped byte in a slot) and boot that file directly, so the
//! host can also read the disk back afterwards.

use crate::common::{check_ready_status, slot_status};
use atoll_common::api::BootMode;
use atoll_common::bootstate::BootState;
use atoll_common::grubenv::{self, Grubenv};
use atoll_common::layout::Slot;
use qemu_tests::console::Pattern;
use qemu_tests::disk::{self, EnvFile, RawCopy};
use qemu_tests::vm::{DiskFormat, Firmware, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

/// A raw copy of the image and its boot state as built.
fn raw_copy() -> Result<(RawCopy, BootState), VmError> {
    let copy = disk::prepare_raw_copy(&disk::base_image()?)?;
    let state = disk::read_boot_state(copy.path(), EnvFile::Live)?;
    Ok((copy, state))
}

/// A well-formed root hash that is not `real`.
fn wrong_hash(real: &str) -> String {
    let mut h: String = if real.len() == 64 {
        real.to_string()
    } else {
        "0".repeat(64)
    };
    let last = if h.ends_with('0') { "1" } else { "0" };
    h.replace_range(63.., last);
    h
}

fn ready_on(slot: Slot) -> Result<Pattern, VmError> {
    Ok(Pattern::regex(&format!(r"atoll: ready .*slot={slot}\b"))?)
}

/// Where in init's first block (`init_data_start` in build.json) the test
/// flips a byte: GRUB never reads that block, the kernel reads it through
/// dm-verity as soon as stage 1 checks init's build id.
const CORRUPT_AT_IN_BLOCK: u64 = 1000;

#[test]
fn corrupt_root_never_gets_ready_and_falls_back_to_b() -> Result<(), VmError> {
    let build = disk::build_info(&disk::base_image()?)?;
    let init_data = build.init_data_start..build.init_data_end;
    let corrupt_at = build.init_data_start + CORRUPT_AT_IN_BLOCK;
    if !init_data.contains(&corrupt_at) {
        return Err(disk::DiskError::BuildInfo {
            path: "build.json".into(),
            reason: format!(
                "init's data is at {init_data:?} in the slot: byte {corrupt_at} is not in it"
            ),
        }
        .into());
    }
    let (copy, mut state) = raw_copy()?;
    // Slot A on trial with two tries, B good: a slot marked good would
    // retry forever; this way GRUB must give up on A.
    state.order = vec![Slot::A, Slot::B];
    state.a.good = false;
    state.a.tries = 2;
    state.b.good = true;
    disk::write_grubenv(copy.path(), &state)?;
    disk::flip_byte(copy.path(), disk::ROOT_A_OFFSET + corrupt_at)?;

    // UEFI: this also covers GRUB's save_env (try counting) under OVMF.
    let vm = Vm::builder("corrupt_root_falls_back")
        .firmware(Firmware::Uefi)
        .disk_file(copy.path(), DiskFormat::Raw)
        .start()?;
    let verity_error = Pattern::regex(r"device-mapper: verity.*corrupt")?;
    for _ in 0..2 {
        vm.wait_for("atoll-grub: booting slot A (trial", BOOT_TIMEOUT)?;
        vm.wait_for(verity_error.clone(), BOOT_TIMEOUT)?;
        vm.wait_for("atoll: stage 1 failed", BOOT_TIMEOUT)?;
    }
    vm.wait_for("atoll-grub: booting slot B (good", BOOT_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = check_ready_status(&vm, &ready, Slot::B, BootMode::Good)?;
    let a = slot_status(&vm, &status, Slot::A)?;
    vm.check(!a.good && a.tries_left == 0, || {
        format!("slot A should be not good with no tries left: {a:?}")
    })?;
    let on_a = vm.console_matches(ready_on(Slot::A)?);
    vm.check(on_a.is_empty(), || {
        format!("the corrupted slot A got ready: {:?}", on_a[0].line)
    })?;
    vm.quit()?;
    Ok(())
}

#[test]
fn trial_slot_that_never_gets_ready_falls_back_after_its_tries() -> Result<(), VmError> {
    let (copy, mut state) = raw_copy()?;
    // Slot B first, on trial with three tries, with a root hash that cannot
    // match: every boot of B fails in stage 1.
    state.order = vec![Slot::B, Slot::A];
    state.b.good = false;
    state.b.tries = 3;
    state.b.verity = wrong_hash(&state.b.verity);
    disk::write_grubenv(copy.path(), &state)?;

    let vm = Vm::builder("trial_slot_falls_back")
        .disk_file(copy.path(), DiskFormat::Raw)
        .start()?;
    for _ in 0..3 {
        vm.wait_for("atoll-grub: booting slot B (trial", BOOT_TIMEOUT)?;
        vm.wait_for("atoll: stage 1 failed", BOOT_TIMEOUT)?;
    }
    vm.wait_for("atoll-grub: booting slot A (good", BOOT_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    let b = slot_status(&vm, &status, Slot::B)?;
    vm.check(!b.good && b.tries_left == 0, || {
        format!("slot B should be not good with no tries left: {b:?}")
    })?;
    let on_b = vm.console_matches(ready_on(Slot::B)?);
    vm.check(on_b.is_empty(), || {
        format!(
            "slot B with a wrong root hash got ready: {:?}",
            on_b[0].line
        )
    })?;
    let trials = vm.console_matches("atoll-grub: booting slot B (trial");
    vm.check(trials.len() == 3, || {
        format!("slot B was tried {} times, expected 3", trials.len())
    })?;
    vm.quit()?;
    Ok(())
}

#[test]
fn damaged_grubenv_is_repaired_from_the_good_copy() -> Result<(), VmError> {
    let (copy, _) = raw_copy()?;
    // 1024 bytes that are not an environment block.
    let junk: Vec<u8> = (0..grubenv::SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    disk::write_grubenv_bytes(copy.path(), EnvFile::Live, &junk)?;
    assert!(Grubenv::parse(&junk).is_err(), "the junk must not parse");

    let vm = Vm::builder("damaged_grubenv_repaired")
        .disk_file(copy.path(), DiskFormat::Raw)
        .start()?;
    vm.wait_for(Pattern::regex(r"atoll-grub: .*damaged")?, BOOT_TIMEOUT)?;
    vm.wait_for("atoll-grub: booting slot A (good", BOOT_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    vm.check(
        status.grubenv.to_ascii_lowercase().contains("repaired"),
        || {
            format!(
                "status.grubenv should say grubenv was repaired, says {:?}",
                status.grubenv
            )
        },
    )?;

    // Power off cleanly so that every write is on the disk, then read it.
    vm.powerdown()?;
    vm.wait_for("atoll: power off", SHUTDOWN_TIMEOUT)?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    let repaired = disk::read_boot_state(copy.path(), EnvFile::Live)?;
    vm.check(
        repaired.a.good && repaired.order.first() == Some(&Slot::A),
        || format!("the repaired grubenv does not hold slot A good and first: {repaired:?}"),
    )?;
    Ok(())
}
