//! Finding disks and partitions by GPT name through /sys/class/block, for
//! both stages: stage 1 looks up its slot, stage 2 the ESP and DATA.

use std::path::{Path, PathBuf};

/// A view of /sys/class/block (a different root in tests).
#[derive(Debug, Clone)]
pub struct SysBlock {
    root: PathBuf,
}

impl Default for SysBlock {
    fn default() -> Self {
        Self::new("/sys/class/block")
    }
}

/// One partition as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPart {
    /// Kernel name (`vda5`); the device node is /dev/<name>.
    pub name: String,
    /// GPT partition name (PARTNAME), if any.
    pub label: Option<String>,
    pub number: Option<u32>,
}

impl BlockPart {
    pub fn device(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

fn uevent_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

impl SysBlock {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The whole disk a partition (`vda3` or `/dev/vda3`) belongs to (`vda`).
    pub fn disk_of(&self, part: &str) -> Option<String> {
        let name = Path::new(part).file_name()?.to_str()?;
        let real = std::fs::canonicalize(self.root.join(name)).ok()?;
        if !real.join("partition").exists() {
            return None;
        }
        Some(real.parent()?.file_name()?.to_str()?.to_string())
    }

    /// The partitions of `disk` (`vda`), in kernel order.
    pub fn partitions(&self, disk: &str) -> Vec<BlockPart> {
        let Ok(dir) = std::fs::read_dir(self.root.join(disk)) else {
            return Vec::new();
        };
        let mut parts: Vec<BlockPart> = dir
            .flatten()
            .filter(|e| e.path().join("partition").exists())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let uevent = std::fs::read_to_string(e.path().join("uevent")).unwrap_or_default();
                Some(BlockPart {
                    name,
                    label: uevent_value(&uevent, "PARTNAME"),
                    number: uevent_value(&uevent, "PARTN").and_then(|n| n.parse().ok()),
                })
            })
            .collect();
        parts.sort_by_key(|p| p.number);
        parts
    }

    /// Size in 512-byte sectors of a disk or partition (`vda`, `vda5`).
    pub fn size(&self, name: &str) -> Option<u64> {
        self.read_u64(name, "size")
    }

    /// First sector of a partition.
    pub fn start(&self, name: &str) -> Option<u64> {
        self.read_u64(name, "start")
    }

    fn read_u64(&self, name: &str, file: &str) -> Option<u64> {
        std::fs::read_to_string(self.root.join(name).join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The partition of `disk` named `label`.
    pub fn find(&self, disk: &str, label: &str) -> Option<BlockPart> {
        self.partitions(disk)
            .into_iter()
            .find(|p| p.label.as_deref() == Some(label))
    }

    /// The `DEVNAME`s of every block device whose uevent says
    /// `PARTNAME=<label>`, on any disk, sorted.
    pub fn named(&self, label: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut found: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
                if uevent_value(&uevent, "PARTNAME").as_deref() == Some(label) {
                    uevent_value(&uevent, "DEVNAME")
                } else {
                    None
                }
            })
            .collect();
        found.sort();
        found
    }

    /// Any disk that has a partition named `label` (first found).
    pub fn disk_with(&self, label: &str) -> Option<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names.into_iter().find(|d| self.find(d, label).is_some())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use atoll_common::layout::Slot;

    use super::*;
    use crate::stage2::testutil::TempDir;

    /// A fake /sys/class/block with disk `vda` and the given partitions.
    pub(crate) fn fake(dir: &Path, parts: &[(u32, &str)]) -> SysBlock {
        let devices = dir.join("devices/pci0000:00/virtio2/block/vda");
        std::fs::create_dir_all(&devices).unwrap();
        let class = dir.join("class");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&devices, class.join("vda")).unwrap();
        for (n, label) in parts {
            let p = devices.join(format!("vda{n}"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            std::fs::write(p.join("start"), format!("{}\n", n * 2048)).unwrap();
            std::fs::write(p.join("size"), "2048\n").unwrap();
            std::fs::write(
                p.join("uevent"),
                format!("MAJOR=253\nMINOR={n}\nDEVNAME=vda{n}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&p, class.join(format!("vda{n}"))).unwrap();
        }
        SysBlock::new(class)
    }

    #[test]
    fn finds_disk_and_partitions_by_name() {
        let dir = TempDir::new("sysblock");
        let sb = fake(
            dir.path(),
            &[(1, "BIOS-BOOT"), (2, "ESP"), (3, "ROOT-A"), (5, "DATA")],
        );
        assert_eq!(sb.disk_of("/dev/vda3").as_deref(), Some("vda"));
        assert_eq!(sb.disk_of("vda"), None);
        let data = sb.find("vda", "DATA").unwrap();
        assert_eq!(data.device(), PathBuf::from("/dev/vda5"));
        assert_eq!(data.number, Some(5));
        assert_eq!(
            (sb.start("vda5"), sb.size("vda5")),
            (Some(10240), Some(2048))
        );
        assert_eq!(sb.find("vda", "ROOT-B"), None);
        assert_eq!(sb.disk_with("ESP").as_deref(), Some("vda"));
        assert_eq!(sb.partitions("vda").len(), 4);
    }

    #[test]
    fn finds_the_slot_by_partname() {
        let dir = TempDir::new("sysblock-named");
        let dir = dir.path();
        for (name, uevent) in [
            ("vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=1\n"),
            (
                "vda3",
                "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=3\nPARTNAME=ROOT-A\n",
            ),
            (
                "vda4",
                "MAJOR=254\nMINOR=4\nDEVNAME=vda4\nDEVTYPE=partition\nPARTN=4\nPARTNAME=ROOT-B\n",
            ),
            (
                "vdb1",
                "MAJOR=254\nMINOR=17\nDEVNAME=vdb1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ROOT-AA\n",
            ),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("uevent"), uevent).unwrap();
        }
        let sb = SysBlock::new(dir);
        assert_eq!(sb.named(Slot::A.label()), ["vda3"]);
        assert_eq!(sb.named(Slot::B.label()), ["vda4"]);
        assert!(sb.named("DATA").is_empty());
        assert!(SysBlock::new(dir.join("nope")).named("ROOT-A").is_empty());
    }
}
