//! Device-mapper through its ioctls on /dev/mapper/control (no libdevmapper,
//! no udev): create the dm-verity device over a root slot, and read a
//! target's status back.
//!
//! One ioctl call passes a buffer that starts with [`DmIoctl`] (the kernel's
//! `struct dm_ioctl`, linux/dm-ioctl.h); a table follows it as
//! [`DmTargetSpec`]s, each followed by its parameter string.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{major, makedev, minor, mknod, Mode, SFlag};

/// The control device and the directory of named nodes.
pub const CONTROL: &str = "/dev/mapper/control";
const MAPPER_DIR: &str = "/dev/mapper";
/// The misc device's number when sysfs cannot tell (linux/miscdevice.h).
const CONTROL_MAJOR: u64 = 10;
const CONTROL_MINOR: u64 = 236;
const CONTROL_SYSFS: &str = "/sys/class/misc/device-mapper/dev";

/// The ioctl interface version this code speaks (major must match).
const DM_VERSION_MAJOR: u32 = 4;
const DM_VERSION_MINOR: u32 = 0;
const DM_IOCTL_TYPE: u8 = 0xfd;

// Commands (enum in linux/dm-ioctl.h).
const DM_VERSION_CMD: u8 = 0;
const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_REMOVE_CMD: u8 = 4;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;
const DM_TABLE_STATUS_CMD: u8 = 12;

// Flags.
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

/// `struct dm_ioctl` (linux/dm-ioctl.h), 312 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DmIoctl {
    pub version: [u32; 3],
    /// Size of the whole buffer, this header included.
    pub data_size: u32,
    /// Offset of the payload from the start of this header.
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    pub padding: u32,
    pub dev: u64,
    pub name: [u8; DM_NAME_LEN],
    pub uuid: [u8; DM_UUID_LEN],
    pub data: [u8; 7],
}

/// `struct dm_target_spec` (linux/dm-ioctl.h), 40 bytes; its parameter
/// string follows it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DmTargetSpec {
    pub sector_start: u64,
    /// In 512-byte sectors.
    pub length: u64,
    pub status: i32,
    /// Loading: bytes from this spec to the next. Status: bytes from the
    /// first spec to the next.
    pub next: u32,
    pub target_type: [u8; DM_MAX_TYPE_NAME],
}

const HEADER: usize = std::mem::size_of::<DmIoctl>();
const SPEC: usize = std::mem::size_of::<DmTargetSpec>();

#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("cannot open {CONTROL} (is dm_mod loaded?)")]
    Control(#[source] std::io::Error),
    #[error("cannot create {path}")]
    Mknod {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("device-mapper ioctl interface {0}.{1}.{2} is not version 4")]
    Version(u32, u32, u32),
    #[error("device-mapper {op} on {name:?} failed")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: Errno,
    },
    #[error("device-mapper name {0:?} is empty, too long or has a slash")]
    Name(String),
    #[error("{} is not a block device", path.display())]
    NotBlock { path: PathBuf },
    #[error("cannot stat {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad verity parameter {field}: {value:?}")]
    Param { field: &'static str, value: String },
    #[error("the kernel's answer to {op} is malformed")]
    Reply { op: &'static str },
}

/// What the dm-verity table needs besides the devices. The root hash
/// comes from the kernel command line only; the rest from the slot's
/// superblocks ([`crate::superblock::read_verity_params`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Number of 4096-byte data blocks covered by the hash tree.
    pub data_blocks: u64,
    /// The hash tree's first block on the hash device, in 4096-byte blocks.
    pub hash_start_block: u64,
    /// sha256 root hash, hex.
    pub root_hash: String,
    /// Salt, hex; `-` or empty for none.
    pub salt: String,
}

/// The dm-verity block size for both data and hash blocks.
const BLOCK: u64 = atoll_common::layout::VERITY_BLOCK_SIZE;

impl VerityParams {
    fn check(&self) -> Result<(), DmError> {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        let bad = |field, value: &str| DmError::Param {
            field,
            value: value.to_string(),
        };
        if self.root_hash.len() != 64 || !hex(&self.root_hash) {
            return Err(bad("root_hash", &self.root_hash));
        }
        let salt_ok = self.salt.is_empty()
            || self.salt == "-"
            || (self.salt.len().is_multiple_of(2) && self.salt.len() <= 512 && hex(&self.salt));
        if !salt_ok {
            return Err(bad("salt", &self.salt));
        }
        if self.data_blocks == 0 || self.data_blocks > u64::MAX / (BLOCK / 512) {
            return Err(bad("data_blocks", &self.data_blocks.to_string()));
        }
        Ok(())
    }
}

/// The dm-verity table line for one target (kernel
/// Documentation/admin-guide/device-mapper/verity.rst):
/// `<version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
/// <num_data_blocks> <hash_start_block> <algorithm> <digest> <salt>`.
pub fn verity_table(data_dev: &str, hash_dev: &str, p: &VerityParams) -> String {
    let salt = if p.salt.is_empty() { "-" } else { &p.salt };
    format!(
        "1 {data_dev} {hash_dev} {BLOCK} {BLOCK} {} {} sha256 {} {salt}",
        p.data_blocks, p.hash_start_block, p.root_hash
    )
}

/// A dm ioctl buffer: a [`DmIoctl`] header and room for the payload, in
/// 8-byte words so that the header and the target specs are aligned.
struct Buffer {
    words: Vec<u64>,
}

impl Buffer {
    /// A buffer of at least `size` bytes for the device `name`.
    fn new(name: &str, size: usize) -> Result<Buffer, DmError> {
        if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
            return Err(DmError::Name(name.to_string()));
        }
        let mut buf = Buffer::unnamed(size);
        buf.header_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(buf)
    }

    /// A buffer for commands that name no device.
    fn unnamed(size: usize) -> Buffer {
        let size = size.max(HEADER).div_ceil(8) * 8;
        let mut buf = Buffer {
            words: vec![0; size / 8],
        };
        let h = buf.header_mut();
        h.version = [DM_VERSION_MAJOR, DM_VERSION_MINOR, 0];
        h.data_size = size as u32;
        h.data_start = HEADER as u32;
        buf
    }

    fn header(&self) -> &DmIoctl {
        // SAFETY: `words` holds at least HEADER bytes (see `new`), is 8-byte
        // aligned like DmIoctl, and DmIoctl is plain integers and byte
        // arrays, valid for any bit pattern.
        unsafe { &*(self.words.as_ptr() as *const DmIoctl) }
    }

    fn header_mut(&mut self) -> &mut DmIoctl {
        // SAFETY: as in `header`; the borrow of `self` is exclusive.
        unsafe { &mut *(self.words.as_mut_ptr() as *mut DmIoctl) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the Vec's words are initialized; u8 has no alignment or
        // validity requirements; the length covers exactly the words.
        unsafe {
            std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.words.len() * 8)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the borrow of `self` is exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.words.len() * 8)
        }
    }

    /// Appends one target spec and its NUL-terminated parameters at
    /// `offset` (from the start of the buffer); returns the next offset.
    fn put_target(
        &mut self,
        offset: usize,
        length: u64,
        target: &str,
        params: &str,
    ) -> Result<usize, DmError> {
        let next = (SPEC + params.len() + 1).div_ceil(8) * 8;
        if target.len() >= DM_MAX_TYPE_NAME || offset + next > self.bytes().len() {
            return Err(DmError::Param {
                field: "table",
                value: params.to_string(),
            });
        }
        let mut spec = DmTargetSpec {
            sector_start: 0,
            length,
            status: 0,
            next: next as u32,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        spec.target_type[..target.len()].copy_from_slice(target.as_bytes());
        let bytes = self.bytes_mut();
        bytes[offset..offset + SPEC].copy_from_slice(&spec_bytes(&spec));
        bytes[offset + SPEC..offset + SPEC + params.len()].copy_from_slice(params.as_bytes());
        bytes[offset + SPEC + params.len()..offset + next].fill(0);
        Ok(offset + next)
    }

    /// Reads the target spec at `offset`, if it fits in the buffer.
    fn target_at(&self, offset: usize) -> Option<(DmTargetSpec, String)> {
        let bytes = self.bytes();
        let raw = bytes.get(offset..offset.checked_add(SPEC)?)?;
        let u64_at = |i: usize| u64::from_ne_bytes(raw[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_ne_bytes(raw[i..i + 4].try_into().unwrap_or([0; 4]));
        let mut target_type = [0u8; DM_MAX_TYPE_NAME];
        target_type.copy_from_slice(&raw[24..24 + DM_MAX_TYPE_NAME]);
        let spec = DmTargetSpec {
            sector_start: u64_at(0),
            length: u64_at(8),
            status: u32_at(16) as i32,
            next: u32_at(20),
            target_type,
        };
        let rest = &bytes[offset + SPEC..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((spec, String::from_utf8_lossy(&rest[..end]).into_owned()))
    }
}

/// The bytes of a target spec as the kernel lays them out.
fn spec_bytes(s: &DmTargetSpec) -> [u8; SPEC] {
    let mut b = [0u8; SPEC];
    b[0..8].copy_from_slice(&s.sector_start.to_ne_bytes());
    b[8..16].copy_from_slice(&s.length.to_ne_bytes());
    b[16..20].copy_from_slice(&s.status.to_ne_bytes());
    b[20..24].copy_from_slice(&s.next.to_ne_bytes());
    b[24..40].copy_from_slice(&s.target_type);
    b
}

/// A NUL-terminated C string field as text.
fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An open /dev/mapper/control.
struct Control(File);

impl Control {
    /// Opens the control node, creating it when devtmpfs has not.
    fn open() -> Result<Control, DmError> {
        let open = || OpenOptions::new().read(true).write(true).open(CONTROL);
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (maj, min) = std::fs::read_to_string(CONTROL_SYSFS)
                    .ok()
                    .and_then(|s| {
                        let (a, b) = s.trim().split_once(':')?;
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .unwrap_or((CONTROL_MAJOR, CONTROL_MINOR));
                let _ = std::fs::create_dir_all(MAPPER_DIR);
                mknod(
                    CONTROL,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o600),
                    makedev(maj, min),
                )
                .map_err(|source| DmError::Mknod {
                    path: CONTROL.into(),
                    source,
                })?;
                open().map_err(DmError::Control)?
            }
            Err(e) => return Err(DmError::Control(e)),
        };
        let ctl = Control(file);
        let mut buf = Buffer::unnamed(HEADER);
        ctl.call(DM_VERSION_CMD, "version", &mut buf)?;
        let v = buf.header().version;
        if v[0] != DM_VERSION_MAJOR {
            return Err(DmError::Version(v[0], v[1], v[2]));
        }
        Ok(ctl)
    }

    fn call(&self, cmd: u8, op: &'static str, buf: &mut Buffer) -> Result<(), DmError> {
        let request = nix::request_code_readwrite!(DM_IOCTL_TYPE, cmd, HEADER);
        let name = c_str(&buf.header().name);
        // SAFETY: the fd is open; the buffer starts with a DmIoctl whose
        // data_size is the buffer's length, so the kernel reads and writes
        // within it; the buffer outlives the call.
        let ret = unsafe {
            nix::libc::ioctl(
                self.0.as_raw_fd(),
                request as _,
                buf.words.as_mut_ptr() as *mut DmIoctl,
            )
        };
        Errno::result(ret)
            .map(drop)
            .map_err(|source| DmError::Ioctl { op, name, source })
    }
}

/// `major:minor` of a block device node.
fn block_dev(path: &Path) -> Result<String, DmError> {
    let meta = std::fs::metadata(path).map_err(|source| DmError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_block_device() {
        return Err(DmError::NotBlock {
            path: path.to_path_buf(),
        });
    }
    Ok(format!("{}:{}", major(meta.rdev()), minor(meta.rdev())))
}

/// Creates a read-only dm-verity device `name` over `data_dev` (hash tree on
/// `hash_dev`, which may be the same device) and activates it. Returns its
/// node, `/dev/mapper/<name>`. On failure nothing is left behind.
pub fn create_verity(
    name: &str,
    data_dev: &Path,
    hash_dev: &Path,
    params: &VerityParams,
) -> Result<PathBuf, DmError> {
    params.check()?;
    let table = verity_table(&block_dev(data_dev)?, &block_dev(hash_dev)?, params);
    let sectors = params.data_blocks * (BLOCK / 512);
    let ctl = Control::open()?;

    let mut buf = Buffer::new(name, HEADER)?;
    ctl.call(DM_DEV_CREATE_CMD, "create", &mut buf)?;
    let dev = buf.header().dev;

    let activate = || -> Result<(), DmError> {
        let mut buf = Buffer::new(name, HEADER + SPEC + table.len() + 8)?;
        buf.header_mut().flags = DM_READONLY_FLAG;
        buf.header_mut().target_count = 1;
        buf.put_target(HEADER, sectors, "verity", &table)?;
        ctl.call(DM_TABLE_LOAD_CMD, "table load", &mut buf)?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the loaded table goes live.
        let mut buf = Buffer::new(name, HEADER)?;
        ctl.call(DM_DEV_SUSPEND_CMD, "resume", &mut buf)
    };
    if let Err(e) = activate() {
        if let Ok(mut buf) = Buffer::new(name, HEADER) {
            let _ = ctl.call(DM_DEV_REMOVE_CMD, "remove", &mut buf);
        }
        return Err(e);
    }
    node(name, dev)
}

/// Makes `/dev/mapper/<name>` for the device (udev would; there is none).
fn node(name: &str, dev: u64) -> Result<PathBuf, DmError> {
    // The kernel reports the device number in its "huge" encoding, which
    // is the same as glibc's for 32-bit numbers.
    let path = Path::new(MAPPER_DIR).join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() => {
            use std::os::unix::fs::MetadataExt;
            if m.rdev() == dev {
                return Ok(path);
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
        }
        Err(_) => {}
    }
    let _ = std::fs::create_dir_all(MAPPER_DIR);
    mknod(&path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev).map_err(|source| {
        DmError::Mknod {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// The first target of device `name` and its status line
/// (`DM_TABLE_STATUS`): e.g. `("verity", "V")`, or `("verity", "C")`
/// once dm-verity has seen a corrupted block. `None` when there is no such
/// device or it has no table.
pub fn target_status(name: &str) -> Result<Option<(String, String)>, DmError> {
    let ctl = Control::open()?;
    let mut size = 16 * 1024;
    loop {
        let mut buf = Buffer::new(name, size)?;
        match ctl.call(DM_TABLE_STATUS_CMD, "table status", &mut buf) {
            Ok(()) => {}
            Err(DmError::Ioctl {
                source: Errno::ENXIO,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let h = *buf.header();
        if h.flags & DM_BUFFER_FULL_FLAG != 0 && size < 1024 * 1024 {
            size *= 4;
            continue;
        }
        if h.target_count == 0 {
            return Ok(None);
        }
        let (spec, status) = buf
            .target_at(h.data_start as usize)
            .ok_or(DmError::Reply { op: "table status" })?;
        return Ok(Some((c_str(&spec.target_type), status.trim().to_string())));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_linux_dm_ioctl_h() {
        assert_eq!(std::mem::size_of::<DmIoctl>(), 312);
        assert_eq!(std::mem::align_of::<DmIoctl>(), 8);
        assert_eq!(std::mem::offset_of!(DmIoctl, flags), 28);
        assert_eq!(std::mem::offset_of!(DmIoctl, dev), 40);
        assert_eq!(std::mem::offset_of!(DmIoctl, name), 48);
        assert_eq!(std::mem::offset_of!(DmIoctl, uuid), 176);
        assert_eq!(std::mem::offset_of!(DmIoctl, data), 305);
        assert_eq!(std::mem::size_of::<DmTargetSpec>(), 40);
        assert_eq!(std::mem::offset_of!(DmTargetSpec, next), 20);
        assert_eq!(std::mem::offset_of!(DmTargetSpec, target_type), 24);
        // _IOWR(0xfd, 9, struct dm_ioctl) as in the header.
        assert_eq!(
            nix::request_code_readwrite!(DM_IOCTL_TYPE, DM_TABLE_LOAD_CMD, HEADER),
            0xc138_fd09
        );
    }

    fn params() -> VerityParams {
        VerityParams {
            data_blocks: 25,
            hash_start_block: 26,
            root_hash: "47039ab8e251219fa75efc20a01e8e7e5a9df52672605305c817a1c5973c7526".into(),
            salt: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
        }
    }

    #[test]
    fn verity_table_line() {
        assert_eq!(
            verity_table("254:3", "254:3", &params()),
            "1 254:3 254:3 4096 4096 25 26 sha256 \
             47039ab8e251219fa75efc20a01e8e7e5a9df52672605305c817a1c5973c7526 \
             00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        );
        let no_salt = VerityParams {
            salt: String::new(),
            ..params()
        };
        assert!(verity_table("a", "b", &no_salt).ends_with(" -"));
    }

    #[test]
    fn refuses_bad_params() {
        assert!(params().check().is_ok());
        for bad in [
            VerityParams {
                root_hash: "abc".into(),
                ..params()
            },
            VerityParams {
                salt: "0g".into(),
                ..params()
            },
            VerityParams {
                salt: "a".repeat(514),
                ..params()
            },
            VerityParams {
                data_blocks: 0,
                ..params()
            },
        ] {
            assert!(matches!(bad.check(), Err(DmError::Param { .. })), "{bad:?}");
        }
    }

    #[test]
    fn buffer_holds_header_and_table() {
        let table = verity_table("254:3", "254:3", &params());
        let mut buf = Buffer::new("atoll-root", HEADER + SPEC + table.len() + 8).unwrap();
        buf.header_mut().target_count = 1;
        let end = buf.put_target(HEADER, 200, "verity", &table).unwrap();
        assert_eq!(end % 8, 0);
        assert!(end <= buf.bytes().len());
        let h = buf.header();
        assert_eq!(h.version, [4, 0, 0]);
        assert_eq!(h.data_size as usize, buf.bytes().len());
        assert_eq!(h.data_start, 312);
        assert_eq!(c_str(&h.name), "atoll-root");
        let (spec, text) = buf.target_at(HEADER).unwrap();
        assert_eq!(spec.length, 200);
        assert_eq!(spec.next as usize, end - HEADER);
        assert_eq!(c_str(&spec.target_type), "verity");
        assert_eq!(text, table);
        // Names the kernel would refuse.
        assert!(Buffer::new("", 0).is_err());
        assert!(Buffer::new("a/b", 0).is_err());
        assert!(Buffer::new(&"x".repeat(128), 0).is_err());
    }
}
