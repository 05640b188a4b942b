//! DATA (/var) when it is not the healthy file system the image ships: a
//! DATA partition that holds an ext4 the kernel refuses is never formatted
//! (the host gets ready on a tmpfs /var and the partition stays byte for
//! byte as it was), and a blank DATA gets a new file system that keeps the
//! machine id across a reboot.
//!
//! Each test edits a private raw copy of the image (`disk::prepare_raw_copy`)
//! at the DATA partition's offset and boots that file directly, so the host
//! can read the partition back afterwards.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::check_ready_status;
use atoll_common::api::BootMode;
use atoll_common::layout::{self, PartitionSpec, Slot};
use qemu_tests::console::Pattern;
use qemu_tests::disk::{self, DiskError};
use qemu_tests::vm::{DiskFormat, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

/// The ext4 superblock's place in the partition, and its magic (0xEF53,
/// little-endian) at offset 0x38 in it: what PID 1 looks for to call a
/// partition ext4 (`classify` in init/src/stage2/data.rs).
const SUPERBLOCK: u64 = 1024;
const MAGIC_IN_SUPERBLOCK: u64 = 0x38;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xef];

/// PID 1's line when DATA holds something it cannot mount.
const NOT_FORMATTING: &str = r"atoll: ERROR: cannot mount DATA (\S+) on /var: (.+); not formatting it; /var is a tmpfs for this boot, data is untouched";
/// PID 1's line when DATA is blank.
const CREATING: &str = "is blank: creating an ext4 file system on it";

fn data_partition() -> &'static PartitionSpec {
    layout::partition(layout::LABEL_DATA).expect("atoll_common::layout has a DATA partition")
}

fn io_error(image: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| {
        VmError::Disk(DiskError::Io {
            path: image.to_path_buf(),
            source,
        })
    }
}

fn read_at(image: &Path, offset: u64, len: u64) -> Result<Vec<u8>, VmError> {
    let f = std::fs::File::open(image).map_err(io_error(image))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).map_err(io_error(image))?;
    Ok(buf)
}

fn write_at(image: &Path, offset: u64, bytes: &[u8]) -> Result<(), VmError> {
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_error(image))?;
    f.write_all_at(bytes, offset).map_err(io_error(image))?;
    f.sync_all().map_err(io_error(image))
}

/// Where two copies of the partition differ: the first differing byte
/// (offset in the partition) and how many 4 KiB blocks differ.
fn differences(before: &[u8], after: &[u8]) -> Option<(usize, usize)> {
    let first = before.iter().zip(after).position(|(a, b)| a != b)?;
    let blocks = before
        .chunks(4096)
        .zip(after.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    Some((first, blocks))
}

/// A DATA partition whose ext4 superblock keeps its magic (PID 1 sees an
/// ext4, not a blank partition) but whose fields before the magic (inode
/// and block counts, block size, blocks per group, …) are junk: the kernel
/// refuses to mount it (bad superblock checksum; invalid block size on a
/// file system without checksums), as do e2fsprogs. PID 1 must say so, run
/// on a tmpfs /var, and write nothing to the partition.
#[test]
fn unmountable_data_is_never_wiped() -> Result<(), VmError> {
    let data = data_partition();
    let copy = disk::prepare_raw_copy(&disk::base_image()?)?;
    let sb = data.offset + SUPERBLOCK;
    let magic = read_at(copy.path(), sb + MAGIC_IN_SUPERBLOCK, 2)?;
    assert_eq!(
        magic, EXT4_MAGIC,
        "the image's DATA has no ext4 superblock at {sb}"
    );
    write_at(copy.path(), sb, &[0xa5; MAGIC_IN_SUPERBLOCK as usize])?;
    let before = read_at(copy.path(), data.offset, data.size)?;
    assert_eq!(
        before[(SUPERBLOCK + MAGIC_IN_SUPERBLOCK) as usize..][..2],
        EXT4_MAGIC,
        "the corruption must keep the ext4 magic"
    );

    let vm = Vm::builder("unmountable_data_never_wiped")
        .disk_file(copy.path(), DiskFormat::Raw)
        .start()?;
    let refused = vm.wait_for(Pattern::regex(NOT_FORMATTING)?, BOOT_TIMEOUT)?;
    // The kernel's own complaint (KERN_ERR gets through `quiet`).
    let kernel = vm.console_matches(Pattern::regex(r"EXT4-fs \(vd[a-z]+\d+\): ")?);
    vm.check(!kernel.is_empty(), || {
        format!(
            "no EXT4-fs error from the kernel before PID 1's {:?}",
            refused.line
        )
    })?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    let d = &status.data;
    vm.check(d.state.starts_with("failed: mount:"), || {
        format!("status.data.state should be \"failed: mount: ..\": {d:?}")
    })?;
    let device = refused.captures.first().cloned().flatten();
    vm.check(d.device.is_some() && d.device == device, || {
        format!(
            "status.data.device {:?} is not the device of the console line {:?}",
            d.device, refused.line
        )
    })?;
    // /var is not on the 128 MiB partition: a tmpfs (half of the guest's
    // 512 MiB) is larger than any file system that fits on it.
    vm.check(d.size_bytes > data.size, || {
        format!(
            "/var is {} bytes, not larger than DATA ({} bytes): is it still on DATA and not a tmpfs? {d:?}",
            d.size_bytes, data.size
        )
    })?;
    let created = vm.console_matches(CREATING);
    vm.check(created.is_empty(), || {
        format!("PID 1 formatted DATA: {:?}", created[0].line)
    })?;

    vm.poweroff()?;
    vm.wait_for("atoll: power off", SHUTDOWN_TIMEOUT)?;
    let exit = vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    vm.check(exit.success(), || format!("QEMU exited with {exit}"))?;
    let after = read_at(copy.path(), data.offset, data.size)?;
    if let Some((first, blocks)) = differences(&before, &after) {
        return Err(vm.fail(format!(
            "DATA changed during a boot that could not mount it: {blocks} 4 KiB block(s) differ, \
             the first at byte {first} of the partition (disk offset {})",
            data.offset + first as u64
        )));
    }
    Ok(())
}

/// A DATA partition whose first MiB is zeros (all PID 1 reads to decide
/// that it is blank): PID 1 creates an ext4 on it and mounts it; the
/// machine id it draws is kept there, so a reboot finds the same one on an
/// ordinary mount.
#[test]
fn blank_data_is_created() -> Result<(), VmError> {
    let data = data_partition();
    let copy = disk::prepare_raw_copy(&disk::base_image()?)?;
    write_at(copy.path(), data.offset, &vec![0u8; layout::MIB as usize])?;

    let vm = Vm::builder("blank_data_created")
        .disk_file(copy.path(), DiskFormat::Raw)
        .start()?;
    vm.wait_for(CREATING, BOOT_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let first = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    vm.check(first.data.state == "created", || {
        format!(
            "status.data.state on a blank DATA should be \"created\": {:?}",
            first.data
        )
    })?;
    vm.check(
        first.data.size_bytes > 0 && first.data.size_bytes <= data.size,
        || {
            format!(
                "/var should be the new file system on DATA ({} bytes): {:?}",
                data.size, first.data
            )
        },
    )?;
    vm.check(!first.machine_id.is_empty(), || "empty machine id".into())?;
    let refused = vm.console_matches(Pattern::regex(NOT_FORMATTING)?);
    vm.check(refused.is_empty(), || {
        format!("the new DATA did not mount: {:?}", refused[0].line)
    })?;

    vm.reboot()?;
    vm.wait_for("atoll: shutting down", SHUTDOWN_TIMEOUT)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let second = check_ready_status(&vm, &ready, Slot::A, BootMode::Good)?;
    vm.check(second.data.state == "mounted", || {
        format!(
            "status.data.state after a reboot should be \"mounted\": {:?}",
            second.data
        )
    })?;
    vm.check(second.machine_id == first.machine_id, || {
        format!(
            "the machine id did not persist on the new DATA: {:?} then {:?}",
            first.machine_id, second.machine_id
        )
    })?;
    vm.check(second.previous_shutdown == "clean", || {
        format!(
            "previous_shutdown after an API reboot is {:?}, expected \"clean\"",
            second.previous_shutdown
        )
    })?;
    let created = vm.console_matches(CREATING);
    vm.check(created.len() == 1, || {
        format!(
            "DATA should be created once, on the first boot only; {} creation lines",
            created.len()
        )
    })?;
    vm.quit()?;
    Ok(())
}
