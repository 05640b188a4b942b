//! DATA on /var: find it, grow it to fill the disk, create it only when it
//! is really absent, and never format a partition that holds anything.
//!
//! The decisions ([`setup`]) run against the [`DataSys`] trait; [`RealSys`]
//! does the syscalls, and the tests use a recording double.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use atoll_common::api::DataStatus;
use atoll_common::layout;
use nix::errno::Errno;
use nix::mount::MsFlags;

use super::partition::{self, DiskLayout, PartitionError, PartitionPlan, SECTOR};
use super::{console, ioctl, reaper};

use atoll_common::error::error_chain;

/// How much of the partition's start is read to decide whether it is blank.
pub const PROBE_BYTES: usize = 1024 * 1024;
/// The mke2fs that ships in the root image.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("telling the kernel about {disk} partition {number}")]
    Blkpg {
        disk: PathBuf,
        number: u32,
        source: Errno,
    },
    #[error("{device} did not appear")]
    NoDevice { device: PathBuf },
    #[error("reading {device}")]
    Probe {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("running {MKE2FS} on {device}")]
    MkfsSpawn {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{MKE2FS} on {device} failed: {status}")]
    Mkfs { device: PathBuf, status: String },
    #[error("{device} has no readable ext4 superblock")]
    Superblock { device: PathBuf },
    #[error("growing the file system on {path} to {blocks} blocks")]
    Resize {
        path: PathBuf,
        blocks: u64,
        source: Errno,
    },
}

/// What the first MiB of a partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// All zeros: nothing was ever written there.
    Blank,
    /// An ext2/3/4 superblock.
    Ext4,
    /// Some other known signature (named).
    Other(&'static str),
    /// Data, but no signature we know: never formatted over.
    Unknown,
}

/// Recognises the first bytes of a partition.
pub fn classify(head: &[u8]) -> Content {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if head.iter().all(|&b| b == 0) {
        Content::Blank
    } else if at(1080, &[0x53, 0xef]) {
        Content::Ext4
    } else if at(0, b"hsqs") {
        Content::Other("squashfs")
    } else if at(0, b"XFSB") {
        Content::Other("xfs")
    } else if at(0x10040, b"_BHRfS_M") {
        Content::Other("btrfs")
    } else if at(0, b"LUKS\xba\xbe") {
        Content::Other("luks")
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Content::Other("swap")
    } else if at(1024, &[0xe2, 0xe1, 0xf5, 0xe0]) {
        Content::Other("erofs")
    } else if at(510, &[0x55, 0xaa]) {
        Content::Other("fat or a boot sector")
    } else {
        Content::Unknown
    }
}

pub use crate::superblock::ext4_size;

/// The operations DATA setup needs; [`RealSys`] does them for real.
pub trait DataSys {
    fn read_layout(&mut self, disk: &Path) -> Result<DiskLayout, DataError>;
    /// Rewrites the GPT: backup header to the end, partition `number` to `new_last_lba`.
    fn grow_gpt(&mut self, disk: &Path, number: u32, new_last_lba: u64) -> Result<(), DataError>;
    /// Adds the DATA entry; returns its number.
    fn add_gpt(&mut self, disk: &Path, first_lba: u64, last_lba: u64) -> Result<u32, DataError>;
    /// BLKPG: the kernel's view of partition `number` (bytes).
    fn kernel_partition(
        &mut self,
        disk: &Path,
        number: u32,
        start: u64,
        length: u64,
        add: bool,
    ) -> Result<(), DataError>;
    /// Waits (briefly) for a device node to appear.
    fn wait_device(&mut self, device: &Path) -> Result<(), DataError>;
    fn probe(&mut self, device: &Path) -> Result<Content, DataError>;
    fn mkfs(&mut self, device: &Path) -> Result<(), DataError>;
    fn mount_ext4(&mut self, device: &Path, target: &Path) -> Result<(), Errno>;
    fn mount_tmpfs(&mut self, target: &Path) -> Result<(), Errno>;
    /// (block size, blocks) of the ext4 file system on `device`, from its superblock.
    fn fs_blocks(&mut self, device: &Path) -> Result<(u64, u64), DataError>;
    fn resize_fs(&mut self, target: &Path, blocks: u64) -> Result<(), DataError>;
    /// A line for the operator, on the console and in the log.
    fn say(&mut self, level: log::Level, line: &str);
}

/// Where DATA is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLocation {
    /// The whole disk (e.g. /dev/vda).
    pub disk: PathBuf,
    /// The DATA partition's device as the kernel lists it, if it does.
    pub device: Option<PathBuf>,
    /// The kernel's view: disk size and DATA's (first, last) LBA. When DATA
    /// already ends at the end of the disk the GPT is not read at all.
    pub kernel_view: Option<(u64, (u64, u64))>,
}

/// The device node of partition `number` of `disk` (vda → vda5, nvme0n1 → nvme0n1p5).
pub fn partition_device(disk: &Path, number: u32) -> PathBuf {
    let name = disk.to_string_lossy();
    if name.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{name}p{number}"))
    } else {
        PathBuf::from(format!("{name}{number}"))
    }
}

/// Sets up /var (`target`) from DATA. Always leaves something mounted on
/// `target` (a tmpfs when DATA cannot be used) and says what happened.
pub fn setup(sys: &mut dyn DataSys, loc: &DataLocation, target: &Path) -> DataStatus {
    match setup_inner(sys, loc, target) {
        Ok(status) => status,
        Err((device, reason)) => {
            if let Err(e) = sys.mount_tmpfs(target) {
                sys.say(
                    log::Level::Error,
                    &format!(
                        "atoll: cannot mount a tmpfs on {} either: {e}",
                        target.display()
                    ),
                );
            }
            DataStatus {
                device: device.map(|d| d.display().to_string()),
                state: format!("failed: {reason}"),
                size_bytes: 0,
                free_bytes: 0,
            }
        }
    }
}

type Failure = (Option<PathBuf>, String);

fn setup_inner(
    sys: &mut dyn DataSys,
    loc: &DataLocation,
    target: &Path,
) -> Result<DataStatus, Failure> {
    let mut device = loc.device.clone();
    let mut grown_to: Option<(u64, u64)> = None; // (first, last) LBA after growing
    let mut extent: Option<(u64, u64)> = None;
    let fast = match (&device, loc.kernel_view) {
        (Some(_), Some((sectors, (first, last)))) => {
            let end = DiskLayout {
                sectors,
                backup_lba: 0,
                last_usable: 0,
                entries: Vec::new(),
            }
            .aligned_end();
            (last == end).then_some((first, last))
        }
        _ => None,
    };
    let layout = match fast {
        // Grown already (a partition reaching there leaves no room for a
        // misplaced backup header).
        Some(e) => {
            extent = Some(e);
            None
        }
        None => Some(sys.read_layout(&loc.disk)),
    };
    match layout {
        None => {}
        Some(layout) => match layout {
            Err(e) => {
                let msg = error_chain(&e);
                if device.is_none() {
                    sys.say(
                    log::Level::Error,
                    &format!("atoll: cannot read the partition table of {}: {msg}; /var is a tmpfs for this boot", loc.disk.display()),
                );
                    return Err((None, format!("partition table unreadable: {msg}")));
                }
                sys.say(
                    log::Level::Warn,
                    &format!(
                        "atoll: cannot read the partition table of {} ({msg}); using DATA as it is",
                        loc.disk.display()
                    ),
                );
            }
            Ok(l) => {
                let plan = l.plan();
                match plan {
                    PartitionPlan::Keep { number } => {
                        device.get_or_insert_with(|| partition_device(&loc.disk, number));
                        extent = l.data().map(|d| (d.first_lba, d.last_lba));
                    }
                    PartitionPlan::MoveBackup { number } => {
                        device.get_or_insert_with(|| partition_device(&loc.disk, number));
                        extent = l.data().map(|d| (d.first_lba, d.last_lba));
                        if let Some(d) = l.data() {
                            if let Err(e) = sys.grow_gpt(&loc.disk, number, d.last_lba) {
                                sys.say(
                                    log::Level::Warn,
                                    &format!(
                                        "atoll: moving the backup GPT header failed: {}",
                                        error_chain(&e)
                                    ),
                                );
                            }
                        }
                    }
                    PartitionPlan::Grow {
                        number,
                        new_last_lba,
                    } => {
                        let dev = device
                            .get_or_insert_with(|| partition_device(&loc.disk, number))
                            .clone();
                        let first = l.data().map(|d| d.first_lba).unwrap_or(0);
                        extent = l.data().map(|d| (d.first_lba, d.last_lba));
                        let grow = sys
                            .grow_gpt(&loc.disk, number, new_last_lba)
                            .and_then(|()| {
                                sys.kernel_partition(
                                    &loc.disk,
                                    number,
                                    first * SECTOR,
                                    (new_last_lba - first + 1) * SECTOR,
                                    false,
                                )
                            });
                        match grow {
                            Ok(()) => {
                                grown_to = Some((first, new_last_lba));
                                extent = grown_to;
                            }
                            Err(e) => sys.say(
                                log::Level::Warn,
                                &format!(
                                    "atoll: growing DATA ({}) failed, keeping its size: {}",
                                    dev.display(),
                                    error_chain(&e)
                                ),
                            ),
                        }
                    }
                    PartitionPlan::Add {
                        first_lba,
                        last_lba,
                    } => {
                        sys.say(
                            log::Level::Warn,
                            &format!(
                                "atoll: no DATA partition on {}: adding one over the free space",
                                loc.disk.display()
                            ),
                        );
                        let number = sys
                            .add_gpt(&loc.disk, first_lba, last_lba)
                            .map_err(|e| (None, format!("adding DATA: {}", error_chain(&e))))?;
                        sys.kernel_partition(
                            &loc.disk,
                            number,
                            first_lba * SECTOR,
                            (last_lba - first_lba + 1) * SECTOR,
                            true,
                        )
                        .map_err(|e| (None, format!("adding DATA: {}", error_chain(&e))))?;
                        let dev = partition_device(&loc.disk, number);
                        sys.wait_device(&dev)
                            .map_err(|e| (Some(dev.clone()), error_chain(&e)))?;
                        device = Some(dev);
                        extent = Some((first_lba, last_lba));
                    }
                    PartitionPlan::NoRoom => {
                        sys.say(
                        log::Level::Error,
                        &format!("atoll: no DATA partition on {} and no room for one; /var is a tmpfs for this boot", loc.disk.display()),
                    );
                        return Err((None, "no DATA partition and no room for one".into()));
                    }
                }
            }
        },
    }
    let Some(device) = device else {
        return Err((None, "no DATA partition".into()));
    };
    let fail = |reason: String| (Some(device.clone()), reason);

    let content = sys.probe(&device).map_err(|e| fail(error_chain(&e)))?;
    let mut state = "mounted";
    if content == Content::Blank {
        sys.say(
            log::Level::Warn,
            &format!(
                "atoll: DATA ({}) is blank: creating an ext4 file system on it",
                device.display()
            ),
        );
        sys.mkfs(&device).map_err(|e| {
            let msg = error_chain(&e);
            sys.say(
                log::Level::Error,
                &format!("atoll: creating DATA failed: {msg}; /var is a tmpfs for this boot"),
            );
            fail(format!("mkfs: {msg}"))
        })?;
        state = "created";
    }
    if let Err(errno) = sys.mount_ext4(&device, target) {
        let what = match &content {
            Content::Other(name) => format!(" (it holds {name})"),
            Content::Unknown => " (it holds data with no known file system signature)".into(),
            _ => String::new(),
        };
        sys.say(
            log::Level::Error,
            &format!(
                "atoll: ERROR: cannot mount DATA {}{what} on {}: {errno}; not formatting it; /var is a tmpfs for this boot, data is untouched",
                device.display(),
                target.display(),
            ),
        );
        return Err(fail(format!("mount: {errno}")));
    }

    // Grow the file system to the partition (also finishes a grow that an
    // earlier boot started but did not complete).
    if let Some((first, last)) = extent {
        let part_bytes = (last - first + 1) * SECTOR;
        match sys.fs_blocks(&device) {
            Ok((bsize, blocks)) if bsize > 0 && part_bytes / bsize > blocks => {
                let want = part_bytes / bsize;
                match sys.resize_fs(target, want) {
                    Ok(()) => {
                        if state == "mounted" {
                            state = "grown";
                        }
                        sys.say(
                            log::Level::Info,
                            &format!("atoll: DATA grown to {} MiB", part_bytes / layout::MIB),
                        );
                    }
                    Err(e) => sys.say(
                        log::Level::Warn,
                        &format!(
                            "atoll: growing the DATA file system failed: {}",
                            error_chain(&e)
                        ),
                    ),
                }
            }
            Ok(_) => {
                if grown_to.is_some() && state == "mounted" {
                    state = "grown";
                }
            }
            Err(e) => sys.say(log::Level::Warn, &format!("atoll: {}", error_chain(&e))),
        }
    }
    Ok(DataStatus {
        device: Some(device.display().to_string()),
        state: state.into(),
        size_bytes: 0,
        free_bytes: 0,
    })
}

/// Fills in size and free space of the file system on `target`.
pub fn fill_usage(status: &mut DataStatus, target: &Path) {
    if let Ok(st) = nix::sys::statvfs::statvfs(target) {
        let frag = st.fragment_size();
        status.size_bytes = st.blocks() * frag;
        status.free_bytes = st.blocks_available() * frag;
    }
}

/// Wraps a [`DataSys`] and records how long each call took (for the boot
/// time split).
#[derive(Debug, Default)]
pub struct Timed<S> {
    pub inner: S,
    pub steps: Vec<atoll_common::api::BootStep>,
}

impl<S> Timed<S> {
    fn time<T>(&mut self, name: &str, f: impl FnOnce(&mut S) -> T) -> T {
        let start = crate::clock::boottime_us();
        let r = f(&mut self.inner);
        let ms = (crate::clock::boottime_us() - start) / 1000;
        match self.steps.iter_mut().find(|s| s.name == name) {
            Some(s) => s.ms += ms,
            None => self.steps.push(atoll_common::api::BootStep {
                name: name.to_string(),
                ms,
            }),
        }
        r
    }
}

impl<S: DataSys> DataSys for Timed<S> {
    fn read_layout(&mut self, disk: &Path) -> Result<DiskLayout, DataError> {
        self.time("data: read GPT", |s| s.read_layout(disk))
    }
    fn grow_gpt(&mut self, disk: &Path, number: u32, new_last_lba: u64) -> Result<(), DataError> {
        self.time("data: grow GPT", |s| s.grow_gpt(disk, number, new_last_lba))
    }
    fn add_gpt(&mut self, disk: &Path, first_lba: u64, last_lba: u64) -> Result<u32, DataError> {
        self.time("data: add to GPT", |s| s.add_gpt(disk, first_lba, last_lba))
    }
    fn kernel_partition(
        &mut self,
        disk: &Path,
        number: u32,
        start: u64,
        length: u64,
        add: bool,
    ) -> Result<(), DataError> {
        self.time("data: BLKPG", |s| {
            s.kernel_partition(disk, number, start, length, add)
        })
    }
    fn wait_device(&mut self, device: &Path) -> Result<(), DataError> {
        self.time("data: wait for device", |s| s.wait_device(device))
    }
    fn probe(&mut self, device: &Path) -> Result<Content, DataError> {
        self.time("data: probe", |s| s.probe(device))
    }
    fn mkfs(&mut self, device: &Path) -> Result<(), DataError> {
        self.time("data: mke2fs", |s| s.mkfs(device))
    }
    fn mount_ext4(&mut self, device: &Path, target: &Path) -> Result<(), Errno> {
        self.time("data: mount", |s| s.mount_ext4(device, target))
    }
    fn mount_tmpfs(&mut self, target: &Path) -> Result<(), Errno> {
        self.time("data: mount tmpfs", |s| s.mount_tmpfs(target))
    }
    fn fs_blocks(&mut self, device: &Path) -> Result<(u64, u64), DataError> {
        self.time("data: read superblock", |s| s.fs_blocks(device))
    }
    fn resize_fs(&mut self, target: &Path, blocks: u64) -> Result<(), DataError> {
        self.time("data: resize ext4", |s| s.resize_fs(target, blocks))
    }
    fn say(&mut self, level: log::Level, line: &str) {
        self.inner.say(level, line)
    }
}

/// The real thing.
#[derive(Debug, Default)]
pub struct RealSys;

impl DataSys for RealSys {
    fn read_layout(&mut self, disk: &Path) -> Result<DiskLayout, DataError> {
        Ok(partition::read_layout(disk)?)
    }

    fn grow_gpt(&mut self, disk: &Path, number: u32, new_last_lba: u64) -> Result<(), DataError> {
        Ok(partition::grow(disk, number, new_last_lba)?)
    }

    fn add_gpt(&mut self, disk: &Path, first_lba: u64, last_lba: u64) -> Result<u32, DataError> {
        Ok(partition::add_data(disk, first_lba, last_lba)?)
    }

    fn kernel_partition(
        &mut self,
        disk: &Path,
        number: u32,
        start: u64,
        length: u64,
        add: bool,
    ) -> Result<(), DataError> {
        let err = |source| DataError::Blkpg {
            disk: disk.to_path_buf(),
            number,
            source,
        };
        let f =
            File::open(disk).map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        if add {
            ioctl::add_partition(&f, number, start, length).map_err(err)
        } else {
            ioctl::resize_partition(&f, number, start, length).map_err(err)
        }
    }

    fn wait_device(&mut self, device: &Path) -> Result<(), DataError> {
        for _ in 0..200 {
            if device.exists() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(DataError::NoDevice {
            device: device.to_path_buf(),
        })
    }

    fn probe(&mut self, device: &Path) -> Result<Content, DataError> {
        let err = |source| DataError::Probe {
            device: device.to_path_buf(),
            source,
        };
        let mut f = File::open(device).map_err(err)?;
        // The superblock first: on every boot but the first it is all we need.
        let mut head = Vec::with_capacity(PROBE_BYTES);
        (&mut f).take(4096).read_to_end(&mut head).map_err(err)?;
        if classify(&head) == Content::Ext4 {
            return Ok(Content::Ext4);
        }
        f.take(PROBE_BYTES as u64 - head.len() as u64)
            .read_to_end(&mut head)
            .map_err(err)?;
        Ok(classify(&head))
    }

    fn mkfs(&mut self, device: &Path) -> Result<(), DataError> {
        let mut cmd = Command::new(MKE2FS);
        cmd.args(["-q", "-t", "ext4", "-L", layout::DATA_FS_LABEL])
            .arg(device)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let pending = reaper::spawn(&mut cmd).map_err(|source| DataError::MkfsSpawn {
            device: device.to_path_buf(),
            source,
        })?;
        match pending.wait_blocking() {
            Some(exit) if exit.success() => Ok(()),
            Some(exit) => Err(DataError::Mkfs {
                device: device.to_path_buf(),
                status: exit.to_string(),
            }),
            None => Err(DataError::Mkfs {
                device: device.to_path_buf(),
                status: "exit status lost".into(),
            }),
        }
    }

    fn mount_ext4(&mut self, device: &Path, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(
            Some(device),
            target,
            Some("ext4"),
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        )
    }

    fn mount_tmpfs(&mut self, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
    }

    fn fs_blocks(&mut self, device: &Path) -> Result<(u64, u64), DataError> {
        let mut sb = vec![0u8; 2048];
        File::open(device)
            .and_then(|mut f| f.read_exact(&mut sb))
            .map_err(|source| DataError::Probe {
                device: device.to_path_buf(),
                source,
            })?;
        ext4_size(&sb[1024..]).ok_or_else(|| DataError::Superblock {
            device: device.to_path_buf(),
        })
    }

    fn resize_fs(&mut self, target: &Path, blocks: u64) -> Result<(), DataError> {
        ioctl::ext4_resize(target, blocks).map_err(|source| DataError::Resize {
            path: target.to_path_buf(),
            blocks,
            source,
        })
    }

    fn say(&mut self, level: log::Level, line: &str) {
        console::line(line);
        super::loghub::LogHub::global().push_quiet(super::loghub::init_record(
            match level {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                _ => 6,
            },
            line.to_string(),
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::partition::PartEntry;

    /// Records every call; answers from its fields.
    #[derive(Debug, Default)]
    struct Double {
        layout: Option<DiskLayout>,
        content: Option<Content>,
        mount_errno: Option<Errno>,
        fs: (u64, u64),
        calls: Vec<String>,
    }

    impl DataSys for Double {
        fn read_layout(&mut self, disk: &Path) -> Result<DiskLayout, DataError> {
            self.calls.push(format!("read_layout {}", disk.display()));
            self.layout.clone().ok_or_else(|| DataError::NoDevice {
                device: disk.to_path_buf(),
            })
        }
        fn grow_gpt(&mut self, _: &Path, number: u32, last: u64) -> Result<(), DataError> {
            self.calls.push(format!("grow_gpt {number} {last}"));
            Ok(())
        }
        fn add_gpt(&mut self, _: &Path, first: u64, last: u64) -> Result<u32, DataError> {
            self.calls.push(format!("add_gpt {first} {last}"));
            Ok(5)
        }
        fn kernel_partition(
            &mut self,
            _: &Path,
            n: u32,
            s: u64,
            l: u64,
            add: bool,
        ) -> Result<(), DataError> {
            self.calls.push(format!(
                "blkpg {} {n} {s} {l}",
                if add { "add" } else { "resize" }
            ));
            Ok(())
        }
        fn wait_device(&mut self, d: &Path) -> Result<(), DataError> {
            self.calls.push(format!("wait {}", d.display()));
            Ok(())
        }
        fn probe(&mut self, d: &Path) -> Result<Content, DataError> {
            self.calls.push(format!("probe {}", d.display()));
            Ok(self.content.clone().unwrap_or(Content::Ext4))
        }
        fn mkfs(&mut self, d: &Path) -> Result<(), DataError> {
            self.calls.push(format!("mkfs {}", d.display()));
            Ok(())
        }
        fn mount_ext4(&mut self, d: &Path, t: &Path) -> Result<(), Errno> {
            self.calls
                .push(format!("mount ext4 {} {}", d.display(), t.display()));
            self.mount_errno.map_or(Ok(()), Err)
        }
        fn mount_tmpfs(&mut self, t: &Path) -> Result<(), Errno> {
            self.calls.push(format!("mount tmpfs {}", t.display()));
            Ok(())
        }
        fn fs_blocks(&mut self, _: &Path) -> Result<(u64, u64), DataError> {
            Ok(self.fs)
        }
        fn resize_fs(&mut self, _: &Path, blocks: u64) -> Result<(), DataError> {
            self.calls.push(format!("resize_fs {blocks}"));
            Ok(())
        }
        fn say(&mut self, _: log::Level, line: &str) {
            self.calls.push(format!("say {line}"));
        }
    }

    const MIB_S: u64 = 2048;

    /// The image's layout on a disk of `disk_mib` MiB (GPT not yet moved).
    fn image_layout(disk_mib: u64, with_data: bool) -> DiskLayout {
        let mut entries = Vec::new();
        for p in layout::PARTITIONS {
            if p.label == layout::LABEL_DATA && !with_data {
                continue;
            }
            entries.push(PartEntry {
                number: p.number,
                name: p.label.into(),
                type_guid: p.type_guid.into(),
                first_lba: p.offset / SECTOR,
                last_lba: (p.offset + p.size) / SECTOR - 1,
            });
        }
        DiskLayout {
            sectors: disk_mib * MIB_S,
            backup_lba: layout::DISK_SIZE / SECTOR - 1,
            last_usable: layout::DISK_SIZE / SECTOR - 34,
            entries,
        }
    }

    fn loc() -> DataLocation {
        DataLocation {
            disk: "/dev/vda".into(),
            device: Some("/dev/vda5".into()),
            kernel_view: None,
        }
    }

    fn has(calls: &[String], prefix: &str) -> bool {
        calls.iter().any(|c| c.starts_with(prefix))
    }

    #[test]
    fn fresh_image_on_its_own_size_just_mounts() {
        let mut d = Double {
            layout: Some(image_layout(layout::DISK_SIZE / layout::MIB, true)),
            fs: (4096, 128 * 256),
            ..Default::default()
        };
        let st = setup(&mut d, &loc(), Path::new("/var"));
        assert_eq!(st.state, "mounted");
        assert_eq!(st.device.as_deref(), Some("/dev/vda5"));
        assert!(
            !has(&d.calls, "grow_gpt") && !has(&d.calls, "mkfs") && !has(&d.calls, "resize_fs")
        );
        assert!(has(&d.calls, "mount ext4 /dev/vda5 /var"));
    }

    #[test]
    fn bigger_disk_grows_partition_then_file_system() {
        let mut d = Double {
            layout: Some(image_layout(4096, true)),
            fs: (4096, 128 * 256),
            ..Default::default()
        };
        let st = setup(&mut d, &loc(), Path::new("/var"));
        assert_eq!(st.state, "grown");
        let end = 4096 * MIB_S - MIB_S - 1; // last full MiB before the backup GPT
        let first = layout::partition(layout::LABEL_DATA).unwrap().offset / SECTOR;
        let i_grow = d
            .calls
            .iter()
            .position(|c| c == &format!("grow_gpt 5 {end}"))
            .unwrap();
        let i_blkpg = d
            .calls
            .iter()
            .position(|c| {
                c == &format!(
                    "blkpg resize 5 {} {}",
                    first * SECTOR,
                    (end - first + 1) * SECTOR
                )
            })
            .unwrap();
        let i_mount = d
            .calls
            .iter()
            .position(|c| c.starts_with("mount ext4"))
            .unwrap();
        let i_resize = d
            .calls
            .iter()
            .position(|c| c == &format!("resize_fs {}", (end - first + 1) * SECTOR / 4096))
            .unwrap();
        assert!(i_grow < i_blkpg && i_blkpg < i_mount && i_mount < i_resize);
        assert!(!has(&d.calls, "mkfs"));
    }

    #[test]
    fn grown_partition_skips_the_gpt() {
        // The kernel already sees DATA up to the last MiB of a 4 GiB disk.
        let first = layout::partition(layout::LABEL_DATA).unwrap().offset / SECTOR;
        let end = 4096 * MIB_S - MIB_S - 1;
        let mut l = loc();
        l.kernel_view = Some((4096 * MIB_S, (first, end)));
        let mut d = Double {
            fs: (4096, (end - first + 1) * SECTOR / 4096),
            ..Default::default()
        };
        let st = setup(&mut d, &l, Path::new("/var"));
        assert_eq!(st.state, "mounted");
        assert!(!has(&d.calls, "read_layout"), "{:?}", d.calls);
        // Not yet grown: the GPT is read.
        l.kernel_view = Some((4096 * MIB_S, (first, first + 128 * MIB_S - 1)));
        let mut d = Double {
            layout: Some(image_layout(4096, true)),
            fs: (4096, 128 * 256),
            ..Default::default()
        };
        assert_eq!(setup(&mut d, &l, Path::new("/var")).state, "grown");
        assert!(has(&d.calls, "read_layout"));
    }

    #[test]
    fn blank_partition_is_created() {
        let mut d = Double {
            layout: Some(image_layout(layout::DISK_SIZE / layout::MIB, true)),
            content: Some(Content::Blank),
            fs: (4096, 128 * 256),
            ..Default::default()
        };
        let st = setup(&mut d, &loc(), Path::new("/var"));
        assert_eq!(st.state, "created");
        assert!(has(&d.calls, "mkfs /dev/vda5"));
    }

    #[test]
    fn missing_partition_is_added_and_created() {
        let mut d = Double {
            layout: Some(image_layout(2048, false)),
            content: Some(Content::Blank),
            fs: (4096, 1 << 30),
            ..Default::default()
        };
        let l = DataLocation {
            disk: "/dev/vda".into(),
            device: None,
            kernel_view: None,
        };
        let st = setup(&mut d, &l, Path::new("/var"));
        assert_eq!(st.state, "created");
        assert!(has(&d.calls, "add_gpt"));
        assert!(has(&d.calls, "blkpg add 5"));
        assert!(has(&d.calls, "wait /dev/vda5"));
        assert!(has(&d.calls, "mkfs /dev/vda5"));
    }

    #[test]
    fn unmountable_file_system_is_never_formatted() {
        for content in [Content::Ext4, Content::Other("xfs"), Content::Unknown] {
            let mut d = Double {
                layout: Some(image_layout(4096, true)),
                content: Some(content.clone()),
                mount_errno: Some(Errno::EUCLEAN),
                ..Default::default()
            };
            let st = setup(&mut d, &loc(), Path::new("/var"));
            assert!(st.state.starts_with("failed: mount:"), "{}", st.state);
            assert!(!has(&d.calls, "mkfs"), "{content:?}: {:?}", d.calls);
            assert!(has(&d.calls, "mount tmpfs /var"));
            let said = d
                .calls
                .iter()
                .find(|c| c.contains("not formatting it"))
                .unwrap();
            assert!(
                said.contains("/dev/vda5") && said.contains("EUCLEAN"),
                "{said}"
            );
            assert!(said.contains("data is untouched"));
        }
    }

    #[test]
    fn unreadable_table_still_mounts_the_known_device() {
        let mut d = Double::default();
        let st = setup(&mut d, &loc(), Path::new("/var"));
        assert_eq!(st.state, "mounted");
        let l = DataLocation {
            disk: "/dev/vda".into(),
            device: None,
            kernel_view: None,
        };
        let mut d = Double::default();
        let st = setup(&mut d, &l, Path::new("/var"));
        assert!(st.state.starts_with("failed:"));
        assert!(has(&d.calls, "mount tmpfs /var"));
    }

    #[test]
    fn classifies_signatures() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(classify(&b), Content::Blank);
        b[1080] = 0x53;
        b[1081] = 0xef;
        assert_eq!(classify(&b), Content::Ext4);
        let mut b = vec![0u8; PROBE_BYTES];
        b[..4].copy_from_slice(b"XFSB");
        assert_eq!(classify(&b), Content::Other("xfs"));
        let mut b = vec![0u8; PROBE_BYTES];
        b[700_000] = 1;
        assert_eq!(classify(&b), Content::Unknown);
        assert_eq!(classify(&[]), Content::Blank);
    }

    #[test]
    fn reads_ext4_size_from_the_superblock() {
        let mut sb = vec![0u8; 1024];
        assert_eq!(ext4_size(&sb), None);
        sb[0x38] = 0x53;
        sb[0x39] = 0xef;
        sb[0x18] = 2; // 4096-byte blocks
        sb[0x04..0x08].copy_from_slice(&32768u32.to_le_bytes());
        assert_eq!(ext4_size(&sb), Some((4096, 32768)));
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            ext4_size(&sb),
            Some((4096, 32768)),
            "hi ignored without 64bit"
        );
        sb[0x60] = 0x80;
        assert_eq!(ext4_size(&sb), Some((4096, (1 << 32) + 32768)));
    }

    #[test]
    fn partition_device_names() {
        assert_eq!(
            partition_device(Path::new("/dev/vda"), 5),
            PathBuf::from("/dev/vda5")
        );
        assert_eq!(
            partition_device(Path::new("/dev/nvme0n1"), 5),
            PathBuf::from("/dev/nvme0n1p5")
        );
    }
}
