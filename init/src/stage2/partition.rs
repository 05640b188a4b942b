//! The GPT of the boot disk: reading it, growing DATA to the end of the disk
//! (moving the backup header there first), and adding a missing DATA entry.
//! Works on any file or block device through the `gpt` crate; the kernel is
//! told about the change separately (BLKPG, see [`super::ioctl`]).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use atoll_common::layout::{self, ALIGN};
use gpt::partition_types::Type;
use gpt::GptConfig;

/// Sector size the disk is addressed in.
pub const SECTOR: u64 = 512;
/// 1 MiB in sectors: partitions start and end on this grid.
pub const ALIGN_SECTORS: u64 = ALIGN / SECTOR;
/// Sectors of a standard partition entry array (128 entries × 128 bytes).
pub const ENTRY_ARRAY_SECTORS: u64 = 32;
/// Smallest free space worth making a DATA partition of.
pub const MIN_DATA_SECTORS: u64 = 16 * ALIGN_SECTORS;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("reading the GPT of {disk}")]
    Read {
        disk: PathBuf,
        source: gpt::GptError,
    },
    #[error("measuring {disk}")]
    Size {
        disk: PathBuf,
        source: std::io::Error,
    },
    #[error("rewriting the GPT of {disk}")]
    Write {
        disk: PathBuf,
        source: gpt::GptError,
    },
    #[error("{disk} has no partition {number}")]
    NoPartition { disk: PathBuf, number: u32 },
    #[error("{disk}: the used partition entries are not numbered 1..n; not rewriting a table that would be renumbered")]
    NotContiguous { disk: PathBuf },
    #[error("clearing the old backup header of {disk}")]
    ClearBackup {
        disk: PathBuf,
        source: std::io::Error,
    },
}

/// One used entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartEntry {
    /// Partition number (1-based, as in /dev/vda5).
    pub number: u32,
    pub name: String,
    /// Type GUID, upper-case.
    pub type_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// What the GPT says, plus the disk's real size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Size of the disk in sectors.
    pub sectors: u64,
    /// Where the primary header puts the backup header.
    pub backup_lba: u64,
    pub last_usable: u64,
    pub entries: Vec<PartEntry>,
}

/// What to do with the partition table so that DATA fills the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionPlan {
    /// DATA is there and reaches the end; the backup header is in place.
    Keep { number: u32 },
    /// Only the backup header is misplaced (DATA cannot or need not grow).
    MoveBackup { number: u32 },
    /// Move the backup header to the end and extend DATA to `new_last_lba`.
    Grow { number: u32, new_last_lba: u64 },
    /// DATA is not in the table: add it over the free space at the end.
    Add { first_lba: u64, last_lba: u64 },
    /// DATA is not in the table and there is no room for it.
    NoRoom,
}

impl DiskLayout {
    pub fn data(&self) -> Option<&PartEntry> {
        self.entries.iter().find(|e| e.name == layout::LABEL_DATA)
    }

    /// The last usable LBA once the backup header sits at the end of the disk.
    pub fn target_last_usable(&self) -> u64 {
        self.sectors.saturating_sub(2 + ENTRY_ARRAY_SECTORS)
    }

    /// The last LBA a partition may reach: the target last usable LBA, aligned
    /// down so the partition ends on a 1 MiB boundary.
    pub fn aligned_end(&self) -> u64 {
        ((self.target_last_usable() + 1) / ALIGN_SECTORS * ALIGN_SECTORS).saturating_sub(1)
    }

    pub fn plan(&self) -> PartitionPlan {
        let backup_ok = self.backup_lba + 1 == self.sectors;
        let end = self.aligned_end();
        match self.data() {
            Some(data) => {
                let is_last = !self.entries.iter().any(|e| e.first_lba > data.last_lba);
                if is_last && data.last_lba < end {
                    PartitionPlan::Grow {
                        number: data.number,
                        new_last_lba: end,
                    }
                } else if !backup_ok {
                    PartitionPlan::MoveBackup {
                        number: data.number,
                    }
                } else {
                    PartitionPlan::Keep {
                        number: data.number,
                    }
                }
            }
            None => {
                let used_end = self.entries.iter().map(|e| e.last_lba).max().unwrap_or(33);
                let first = (used_end + 1).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
                if end > first && end - first + 1 >= MIN_DATA_SECTORS {
                    PartitionPlan::Add {
                        first_lba: first,
                        last_lba: end,
                    }
                } else {
                    PartitionPlan::NoRoom
                }
            }
        }
    }
}

/// Reads the partition table of `disk` (a file or a block device).
pub fn read_layout(disk: &Path) -> Result<DiskLayout, PartitionError> {
    let gpt = open_gpt(disk, false)?;
    let header = gpt.header().clone();
    let sectors = disk_sectors(disk)?;
    let entries = gpt
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| PartEntry {
            number: *n,
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid.to_string().to_ascii_uppercase(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        })
        .collect();
    Ok(DiskLayout {
        sectors,
        backup_lba: header.backup_lba,
        last_usable: header.last_usable,
        entries,
    })
}

fn disk_sectors(disk: &Path) -> Result<u64, PartitionError> {
    let size_err = |source| PartitionError::Size {
        disk: disk.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(disk).map_err(size_err)?;
    let len = f.seek(SeekFrom::End(0)).map_err(size_err)?;
    Ok(len / SECTOR)
}

/// Opens the GPT of `disk`, for reading or for rewriting in place.
fn open_gpt(disk: &Path, writable: bool) -> Result<gpt::GptDisk<std::fs::File>, PartitionError> {
    GptConfig::new()
        .writable(writable)
        .open(disk)
        .map_err(|source| PartitionError::Read {
            disk: disk.to_path_buf(),
            source,
        })
}

/// Moves the backup header to the end of the disk and sets the last LBA of
/// partition `number` to `new_last_lba` (pass its current last LBA to only
/// move the header). The old backup header is zeroed so nothing mistakes it
/// for a live one.
pub fn grow(disk: &Path, number: u32, new_last_lba: u64) -> Result<(), PartitionError> {
    let write_err = |source| PartitionError::Write {
        disk: disk.to_path_buf(),
        source,
    };
    let mut gpt = open_gpt(disk, true)?;
    let old_backup = gpt.header().backup_lba;
    check_contiguous(disk, gpt.partitions())?;
    let mut parts = gpt.partitions().clone();
    let Some(p) = parts.get_mut(&number) else {
        return Err(PartitionError::NoPartition {
            disk: disk.to_path_buf(),
            number,
        });
    };
    p.last_lba = new_last_lba;
    // Re-derives both headers from the device size: backup at the last LBA.
    gpt.update_partitions(parts).map_err(write_err)?;
    gpt.write_inplace().map_err(write_err)?;
    let sectors = disk_sectors(disk)?;
    if old_backup + 1 != sectors {
        clear_sector(disk, old_backup)?;
    }
    Ok(())
}

/// Adds the DATA entry (label, type) over `first_lba..=last_lba`, moving the
/// backup header to the end. Returns the new partition's number.
pub fn add_data(disk: &Path, first_lba: u64, last_lba: u64) -> Result<u32, PartitionError> {
    let write_err = |source| PartitionError::Write {
        disk: disk.to_path_buf(),
        source,
    };
    let mut gpt = open_gpt(disk, true)?;
    let old_backup = gpt.header().backup_lba;
    check_contiguous(disk, gpt.partitions())?;
    let parts = gpt.partitions().clone();
    gpt.update_partitions(parts).map_err(write_err)?;
    let number = gpt
        .find_next_partition_id()
        .ok_or(write_err(gpt::GptError::OverflowPartitionCount))?;
    let ty = Type::from_str(layout::type_guid::DATA)
        .map_err(|_| write_err(gpt::GptError::NotEnoughSpace))?;
    gpt.add_partition_at(
        layout::LABEL_DATA,
        number,
        first_lba,
        last_lba - first_lba + 1,
        ty,
        0,
    )
    .map_err(write_err)?;
    gpt.write_inplace().map_err(write_err)?;
    let sectors = disk_sectors(disk)?;
    if old_backup + 1 != sectors {
        clear_sector(disk, old_backup)?;
    }
    Ok(number)
}

/// The gpt crate writes the used entries packed from the start of the
/// array, so a table with holes would be renumbered: refuse it.
fn check_contiguous(
    disk: &Path,
    parts: &std::collections::BTreeMap<u32, gpt::partition::Partition>,
) -> Result<(), PartitionError> {
    let used: Vec<u32> = parts
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, _)| *n)
        .collect();
    if used.iter().enumerate().all(|(i, n)| *n == i as u32 + 1) {
        Ok(())
    } else {
        Err(PartitionError::NotContiguous {
            disk: disk.to_path_buf(),
        })
    }
}

fn clear_sector(disk: &Path, lba: u64) -> Result<(), PartitionError> {
    let err = |source| PartitionError::ClearBackup {
        disk: disk.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(disk).map_err(err)?;
    f.seek(SeekFrom::Start(lba * SECTOR)).map_err(err)?;
    f.write_all(&[0u8; SECTOR as usize]).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;
    use atoll_common::layout::{DISK_SIZE, MIB, PARTITIONS};

    /// Writes a fresh Atoll-layout GPT into a file of `DISK_SIZE` bytes.
    pub(crate) fn make_image(path: &Path, with_data: bool) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(DISK_SIZE).unwrap();
        drop(f);
        let mut gpt = GptConfig::new().writable(true).create(path).unwrap();
        for p in PARTITIONS {
            if p.label == layout::LABEL_DATA && !with_data {
                continue;
            }
            gpt.add_partition_at(
                p.label,
                p.number,
                p.offset / SECTOR,
                p.size / SECTOR,
                Type::from_str(p.type_guid).unwrap(),
                0,
            )
            .unwrap();
        }
        gpt.write_inplace().unwrap();
    }

    fn resize(path: &Path, size: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(size).unwrap();
    }

    #[test]
    fn fresh_image_needs_nothing() {
        let dir = TempDir::new("gpt-fresh");
        let img = dir.path().join("disk.img");
        make_image(&img, true);
        let l = read_layout(&img).unwrap();
        assert_eq!(l.sectors, DISK_SIZE / SECTOR);
        assert_eq!(l.data().unwrap().number, 5);
        assert_eq!(l.plan(), PartitionPlan::Keep { number: 5 });
    }

    #[test]
    fn grows_data_to_the_end_of_a_bigger_disk() {
        let dir = TempDir::new("gpt-grow");
        let img = dir.path().join("disk.img");
        make_image(&img, true);
        let new_size = 4096 * MIB + 12345 * SECTOR;
        resize(&img, new_size);
        let l = read_layout(&img).unwrap();
        let old_data = l.data().unwrap().clone();
        let PartitionPlan::Grow {
            number,
            new_last_lba,
        } = l.plan()
        else {
            panic!("expected a grow plan, got {:?}", l.plan());
        };
        assert_eq!(number, 5);
        assert_eq!((new_last_lba + 1) % ALIGN_SECTORS, 0);
        assert!(new_last_lba <= new_size / SECTOR - 34);
        grow(&img, number, new_last_lba).unwrap();

        // Both headers valid, backup at the end, other partitions untouched.
        let gpt = GptConfig::new()
            .only_valid_headers(true)
            .open(&img)
            .unwrap();
        assert_eq!(gpt.header().backup_lba, new_size / SECTOR - 1);
        assert_eq!(
            gpt.backup_header().unwrap().current_lba,
            new_size / SECTOR - 1
        );
        let l2 = read_layout(&img).unwrap();
        let d = l2.data().unwrap();
        assert_eq!(
            (d.first_lba, d.last_lba),
            (old_data.first_lba, new_last_lba)
        );
        assert_eq!(&l2.entries[..4], &l.entries[..4]);
        assert_eq!(l2.plan(), PartitionPlan::Keep { number: 5 });
        // The old backup header is gone.
        let mut f = std::fs::File::open(&img).unwrap();
        f.seek(SeekFrom::Start(DISK_SIZE - SECTOR)).unwrap();
        let mut old = [0xffu8; 512];
        std::io::Read::read_exact(&mut f, &mut old).unwrap();
        assert!(old.iter().all(|&b| b == 0));
    }

    #[test]
    fn adds_missing_data_over_the_free_space() {
        let dir = TempDir::new("gpt-add");
        let img = dir.path().join("disk.img");
        make_image(&img, false);
        resize(&img, 2048 * MIB);
        let l = read_layout(&img).unwrap();
        assert!(l.data().is_none());
        let PartitionPlan::Add {
            first_lba,
            last_lba,
        } = l.plan()
        else {
            panic!("expected an add plan, got {:?}", l.plan());
        };
        let spec = layout::partition(layout::LABEL_DATA).unwrap();
        assert_eq!(first_lba, spec.offset / SECTOR);
        let n = add_data(&img, first_lba, last_lba).unwrap();
        assert_eq!(n, 5);
        let l2 = read_layout(&img).unwrap();
        let d = l2.data().unwrap();
        assert_eq!((d.first_lba, d.last_lba), (first_lba, last_lba));
        assert_eq!(d.type_guid, layout::type_guid::DATA);
        assert_eq!(l2.backup_lba + 1, l2.sectors);
    }

    #[test]
    fn no_room_and_misplaced_backup() {
        let dir = TempDir::new("gpt-noroom");
        let img = dir.path().join("disk.img");
        make_image(&img, false);
        // The image's free tail is DATA's 128 MiB: room for it.
        assert!(matches!(
            read_layout(&img).unwrap().plan(),
            PartitionPlan::Add { .. }
        ));
        let mut l = read_layout(&img).unwrap();
        l.sectors = l.entries.iter().map(|e| e.last_lba).max().unwrap() + 2048;
        assert_eq!(l.plan(), PartitionPlan::NoRoom);
        // DATA that is not the last partition is never grown.
        let mut l = read_layout(&img).unwrap();
        l.entries[0].name = layout::LABEL_DATA.into();
        l.sectors += 8 * ALIGN_SECTORS;
        assert_eq!(l.plan(), PartitionPlan::MoveBackup { number: 1 });
    }
}
