//! The disk image file: a sparse file of [`layout::DISK_SIZE`] bytes with
//! the GPT of [`layout::PARTITIONS`] (written with the `gpt` crate, GUIDs
//! derived from the inputs), a protective MBR carrying GRUB's boot code, and
//! the partitions' contents written with seeks so that zero blocks stay
//! holes. Also the qcow2 conversion.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use atoll_common::layout::{self, PartitionSpec};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use gpt::GptConfig;
use uuid::Uuid;

use crate::ids;
use crate::tool::{self, ToolError};

pub const SECTOR: u64 = 512;
/// Runs of zeros this long (and aligned) are left as holes.
const SPARSE_BLOCK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("GPT on {path}")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("protective MBR on {path}")]
    Mbr {
        path: PathBuf,
        #[source]
        source: gpt::mbr::MBRError,
    },
    #[error("partition type {0:?} is not a GUID")]
    TypeGuid(String),
    #[error("{what} is {size} bytes, more than partition {label} ({room} bytes)")]
    TooBig {
        what: String,
        label: String,
        size: u64,
        room: u64,
    },
    #[error("the GPT read back from {path} differs from the layout: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The disk's GUIDs, derived from the slot image's sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    pub disk: Uuid,
    /// Partition GUIDs by partition number.
    pub partitions: BTreeMap<u32, Uuid>,
}

impl DiskIds {
    pub fn derive(slot_sha256: &[u8; 32]) -> Self {
        Self {
            disk: ids::uuid("disk guid", slot_sha256),
            partitions: layout::PARTITIONS
                .iter()
                .map(|p| {
                    (
                        p.number,
                        ids::uuid(&format!("partition guid {}", p.label), slot_sha256),
                    )
                })
                .collect(),
        }
    }
}

/// An open disk image.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file: File,
}

impl Disk {
    /// Creates `path` afresh: an all-hole file of [`layout::DISK_SIZE`] bytes.
    pub fn create(path: &Path) -> Result<Self, DiskError> {
        if path.exists() {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(layout::DISK_SIZE).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes the GPT (primary and backup) for [`layout::PARTITIONS`].
    pub fn write_gpt(&mut self, ids: &DiskIds) -> Result<(), DiskError> {
        let gpt_err = |source| DiskError::Gpt {
            path: self.path.clone(),
            source,
        };
        let file = self.file.try_clone().map_err(io(&self.path))?;
        let mut gdisk = GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .create_from_device(file, Some(ids.disk))
            .map_err(gpt_err)?;
        let mut parts = BTreeMap::new();
        for spec in &layout::PARTITIONS {
            parts.insert(spec.number, partition_entry(spec, ids)?);
        }
        gdisk.update_partitions(parts).map_err(gpt_err)?;
        gdisk.write().map_err(gpt_err)?;
        Ok(())
    }

    /// Writes the protective MBR with `boot_code` (GRUB's boot.img, patched)
    /// in its code area.
    pub fn write_mbr(&mut self, boot_code: &[u8; 440]) -> Result<(), DiskError> {
        let sectors = layout::DISK_SIZE / SECTOR - 1;
        let mut mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors).unwrap_or(u32::MAX));
        mbr.set_bootcode(*boot_code);
        mbr.overwrite_lba0(&mut self.file)
            .map_err(|source| DiskError::Mbr {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }

    /// Writes `data` at the start of the partition labelled `label`.
    pub fn write_bytes(&self, label: &str, what: &str, data: &[u8]) -> Result<(), DiskError> {
        let spec = spec(label)?;
        check_room(spec, what, data.len() as u64)?;
        self.file
            .write_all_at(data, spec.offset)
            .map_err(io(&self.path))
    }

    /// Copies file `src` to the start of partition `label`, leaving 4 KiB
    /// blocks of zeros as holes. Returns the bytes actually written.
    pub fn write_file(&self, label: &str, src: &Path) -> Result<u64, DiskError> {
        let spec = spec(label)?;
        let len = std::fs::metadata(src).map_err(io(src))?.len();
        check_room(spec, &src.display().to_string(), len)?;
        let mut f = File::open(src).map_err(io(src))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        let mut written = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(io(src))?;
            if n == 0 {
                break;
            }
            for (i, chunk) in buf[..n].chunks(SPARSE_BLOCK).enumerate() {
                if chunk.iter().all(|b| *b == 0) {
                    continue;
                }
                let at = spec.offset + pos + (i * SPARSE_BLOCK) as u64;
                self.file.write_all_at(chunk, at).map_err(io(&self.path))?;
                written += chunk.len() as u64;
            }
            pos += n as u64;
        }
        Ok(written)
    }

    pub fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_all().map_err(io(&self.path))
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn spec(label: &str) -> Result<&'static PartitionSpec, DiskError> {
    layout::partition(label).ok_or_else(|| DiskError::Mismatch {
        path: PathBuf::new(),
        detail: format!("no partition labelled {label}"),
    })
}

fn check_room(spec: &PartitionSpec, what: &str, size: u64) -> Result<(), DiskError> {
    if size > spec.size {
        return Err(DiskError::TooBig {
            what: what.to_string(),
            label: spec.label.to_string(),
            size,
            room: spec.size,
        });
    }
    Ok(())
}

fn partition_entry(spec: &PartitionSpec, ids: &DiskIds) -> Result<Partition, DiskError> {
    let guid =
        Uuid::parse_str(spec.type_guid).map_err(|_| DiskError::TypeGuid(spec.type_guid.into()))?;
    let first_lba = spec.offset / SECTOR;
    Ok(Partition {
        part_type_guid: Type {
            guid,
            os: OperatingSystem::None,
        },
        part_guid: ids
            .partitions
            .get(&spec.number)
            .copied()
            .unwrap_or_default(),
        first_lba,
        last_lba: first_lba + spec.size / SECTOR - 1,
        flags: 0,
        name: spec.label.to_string(),
    })
}

/// Reads the GPT back and checks it against the layout and `ids`.
pub fn verify_gpt(path: &Path, ids: &DiskIds) -> Result<(), DiskError> {
    let mismatch = |detail: String| DiskError::Mismatch {
        path: path.to_path_buf(),
        detail,
    };
    let gdisk = GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .only_valid_headers(true)
        .open(path)
        .map_err(|source| DiskError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
    if *gdisk.guid() != ids.disk {
        return Err(mismatch(format!("disk GUID {}", gdisk.guid())));
    }
    let used: Vec<(&u32, &Partition)> = gdisk
        .partitions()
        .iter()
        .filter(|p| p.1.is_used())
        .collect();
    if used.len() != layout::PARTITIONS.len() {
        return Err(mismatch(format!("{} partitions", used.len())));
    }
    for spec in &layout::PARTITIONS {
        let want = partition_entry(spec, ids)?;
        match gdisk.partitions().get(&spec.number) {
            // Compare what is on disk; the `os` tag is the crate's lookup.
            Some(p)
                if p.part_type_guid.guid == want.part_type_guid.guid
                    && p.part_guid == want.part_guid
                    && p.first_lba == want.first_lba
                    && p.last_lba == want.last_lba
                    && p.flags == want.flags
                    && p.name == want.name => {}
            other => return Err(mismatch(format!("partition {}: {other:?}", spec.number))),
        }
    }
    Ok(())
}

/// Converts the raw image to qcow2 with `qemu-img convert`.
pub fn qcow2(raw: &Path, out: &Path) -> Result<u64, DiskError> {
    if out.exists() {
        std::fs::remove_file(out).map_err(io(out))?;
    }
    tool::run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(out),
    )?;
    Ok(std::fs::metadata(out).map_err(io(out))?.len())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::tree::tests::scratch;

    #[test]
    fn gpt_matches_layout_and_is_sparse() {
        let dir = scratch("disk");
        let path = dir.join("d.raw");
        let ids = DiskIds::derive(&[7u8; 32]);
        let mut d = Disk::create(&path).unwrap();
        d.write_gpt(&ids).unwrap();
        let mut code = [0u8; 440];
        code[0] = 0xeb;
        d.write_mbr(&code).unwrap();
        // A file with a zero hole in the middle.
        let src = dir.join("src");
        let mut data = vec![0u8; 3 * 4096];
        data[0] = 1;
        data[2 * 4096 + 5] = 2;
        std::fs::write(&src, &data).unwrap();
        assert_eq!(d.write_file(layout::LABEL_ROOT_A, &src).unwrap(), 2 * 4096);
        d.sync().unwrap();
        drop(d);

        verify_gpt(&path, &ids).unwrap();
        assert!(verify_gpt(&path, &DiskIds::derive(&[8u8; 32])).is_err());
        let f = File::open(&path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), layout::DISK_SIZE);
        let mut bytes = vec![0u8; 1024];
        f.read_exact_at(&mut bytes, 0).unwrap();
        assert_eq!(bytes[0], 0xeb);
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(bytes[0x1be + 4], 0xee, "protective partition type");
        assert_eq!(&bytes[512..520], b"EFI PART");
        let a = layout::partition(layout::LABEL_ROOT_A).unwrap().offset;
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, a).unwrap();
        assert_eq!(back, data);
        // Mostly holes: far less allocated than the apparent size.
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        // sfdisk agrees when it is there.
        if let Ok(out) = Command::new("sfdisk").arg("--dump").arg(&path).output() {
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains("name=\"ROOT-B\""), "{text}");
                assert!(
                    text.contains(&ids.disk.to_string().to_uppercase()),
                    "{text}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn too_big_is_refused() {
        let dir = scratch("disk-big");
        let d = Disk::create(&dir.join("d.raw")).unwrap();
        let err = d
            .write_bytes(
                layout::LABEL_BIOS_BOOT,
                "core.img",
                &vec![1u8; (2 << 20) as usize],
            )
            .unwrap_err();
        assert!(err.to_string().contains("BIOS-BOOT"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
