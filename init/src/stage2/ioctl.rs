//! The few block-device and file-system ioctls stage 2 needs, in one place.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;

/// `BLKPG_ADD_PARTITION`.
const BLKPG_ADD_PARTITION: i32 = 1;
/// `BLKPG_RESIZE_PARTITION`.
const BLKPG_RESIZE_PARTITION: i32 = 3;

/// `struct blkpg_partition` (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

fn blkpg_op(disk: &File, op: i32, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| Errno::EINVAL)?,
        length: i64::try_from(length).map_err(|_| Errno::EINVAL)?,
        pno: i32::try_from(number).map_err(|_| Errno::EINVAL)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: `arg` and the partition it points to are valid, initialised
    // repr(C) structs that live across the call; the kernel only reads them.
    unsafe { blkpg(disk.as_raw_fd(), &arg) }.map(|_| ())
}

/// Tells the kernel that partition `number` of `disk` now spans `start..start+length` bytes.
pub fn resize_partition(disk: &File, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    blkpg_op(disk, BLKPG_RESIZE_PARTITION, number, start, length)
}

/// Tells the kernel about a new partition `number` of `disk` (`start`, `length` in bytes).
pub fn add_partition(disk: &File, number: u32, start: u64, length: u64) -> Result<(), Errno> {
    blkpg_op(disk, BLKPG_ADD_PARTITION, number, start, length)
}

/// Grows the mounted ext4 file system of which `dir` is (in) to `blocks` blocks.
pub fn ext4_resize(dir: &Path, blocks: u64) -> Result<(), Errno> {
    let f = File::open(dir).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    // SAFETY: the fd is open for the duration of the call and `blocks` is a
    // valid u64 the kernel reads.
    unsafe { ext4_resize_fs(f.as_raw_fd(), &blocks) }.map(|_| ())
}
