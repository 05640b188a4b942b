//! The disk layout and the names every stage agrees on (shared/DESIGN.md, "The disk").

/// GPT partition type GUIDs.
pub mod type_guid {
    /// BIOS boot partition: GRUB's core.img for legacy BIOS.
    pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
    /// EFI system partition.
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// An Atoll root slot (read-only image + dm-verity hash tree).
    pub const ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    /// The DATA partition, mounted on /var.
    pub const DATA: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
}

/// GPT partition names (PARTLABEL), in disk order.
pub const LABEL_BIOS_BOOT: &str = "BIOS-BOOT";
pub const LABEL_ESP: &str = "ESP";
pub const LABEL_ROOT_A: &str = "ROOT-A";
pub const LABEL_ROOT_B: &str = "ROOT-B";
pub const LABEL_DATA: &str = "DATA";

/// FAT volume label of the ESP; GRUB's early config finds the ESP by it.
pub const ESP_FS_LABEL: &str = "ATOLL-ESP";
/// ext4 volume label of the DATA file system.
pub const DATA_FS_LABEL: &str = "ATOLL-DATA";

/// Partition sizes in bytes.
pub const MIB: u64 = 1024 * 1024;
pub const BIOS_BOOT_SIZE: u64 = MIB;
pub const ESP_SIZE: u64 = 64 * MIB;
pub const ROOT_SIZE: u64 = 512 * MIB;
/// Size of DATA in a freshly built image; PID 1 grows it to fill the disk.
pub const DATA_INITIAL_SIZE: u64 = 128 * MIB;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = MIB;

/// One partition of a freshly built disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition number (1-based).
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    /// Byte offset from the start of the disk.
    pub offset: u64,
    pub size: u64,
}

/// The partitions of a freshly built disk, in order. DATA is the last and
/// is grown on first boot.
pub const PARTITIONS: [PartitionSpec; 5] = [
    PartitionSpec {
        number: 1,
        label: LABEL_BIOS_BOOT,
        type_guid: type_guid::BIOS_BOOT,
        offset: MIB,
        size: BIOS_BOOT_SIZE,
    },
    PartitionSpec {
        number: 2,
        label: LABEL_ESP,
        type_guid: type_guid::ESP,
        offset: 2 * MIB,
        size: ESP_SIZE,
    },
    PartitionSpec {
        number: 3,
        label: LABEL_ROOT_A,
        type_guid: type_guid::ROOT,
        offset: 2 * MIB + ESP_SIZE,
        size: ROOT_SIZE,
    },
    PartitionSpec {
        number: 4,
        label: LABEL_ROOT_B,
        type_guid: type_guid::ROOT,
        offset: 2 * MIB + ESP_SIZE + ROOT_SIZE,
        size: ROOT_SIZE,
    },
    PartitionSpec {
        number: 5,
        label: LABEL_DATA,
        type_guid: type_guid::DATA,
        offset: 2 * MIB + ESP_SIZE + 2 * ROOT_SIZE,
        size: DATA_INITIAL_SIZE,
    },
];

/// Size of a freshly built disk: the partitions plus one MiB at the end for
/// the backup GPT.
pub const DISK_SIZE: u64 = 2 * MIB + ESP_SIZE + 2 * ROOT_SIZE + DATA_INITIAL_SIZE + MIB;

/// The partition spec with this label.
pub fn partition(label: &str) -> Option<&'static PartitionSpec> {
    PARTITIONS.iter().find(|p| p.label == label)
}

/// Paths inside the ESP (FAT; absolute from the ESP's root).
pub const ESP_EFI_BOOT: &str = "/EFI/BOOT/BOOTX64.EFI";
pub const ESP_GRUB_CFG: &str = "/EFI/atoll/grub.cfg";
/// The live boot state, rewritten in place by GRUB's `save_env`.
pub const ESP_GRUBENV: &str = "/EFI/atoll/grubenv";
/// Copy of the boot state as of the last boot that was marked good. GRUB
/// reads it when [`ESP_GRUBENV`] is damaged.
pub const ESP_GRUBENV_GOOD: &str = "/EFI/atoll/grubenv.good";

/// Paths inside a slot's read-only root.
pub const SLOT_KERNEL: &str = "/boot/vmlinuz";
pub const SLOT_INITRD: &str = "/boot/initrd.img";
/// The stage-2 PID 1 that stage 1 executes after switching root.
pub const SLOT_INIT: &str = "/usr/lib/atoll/init";
pub const SLOT_ATOLLCTL: &str = "/usr/bin/atollctl";
/// The OCI runtime command line; PID 1 also runs it for registry pulls.
pub const SLOT_RUNTIME: &str = "/usr/bin/atoll-runtime";
/// The CA roots the slot ships (Debian's ca-certificates bundle), for
/// registry pulls and the update agent: the root has no /etc/ssl.
pub const SLOT_CA_BUNDLE: &str = "/usr/lib/atoll/ca-certificates.crt";
/// The config's extra CA roots (`ca_certs`), written by PID 1.
pub const CONFIG_CA_BUNDLE: &str = "/etc/atoll/ca-certificates.pem";
/// The update agent; PID 1 runs `atoll-updater run` and, for the host API,
/// its other commands.
pub const SLOT_UPDATER: &str = "/usr/bin/atoll-updater";
/// Images shipped in the slot (OCI archives) and their index, `images.json`.
pub const SLOT_PRELOADED_IMAGES: &str = "/usr/share/atoll/images";
/// The container image store on DATA.
pub const VAR_IMAGES: &str = "/var/lib/atoll/images";
/// Archives sent through the API's import, while they are imported.
pub const VAR_IMPORT_DIR: &str = "/var/lib/atoll/import";
/// Per-container state (overlay upper and work dirs) on DATA.
pub const VAR_CONTAINERS: &str = "/var/lib/atoll/containers";
/// Kernel modules live in `/usr/lib/modules/<kernel version>/`.
pub const SLOT_MODULES: &str = "/usr/lib/modules";
/// `KEY=value` lines describing the build (VERSION, KERNEL, BUILD_ID).
pub const SLOT_RELEASE: &str = "/usr/lib/os-release";

/// A fault a test release asks for (`image-build disk --test-fault`),
/// for the rollback tests (docs/updates.md, "Testing rollbacks"); release
/// builds never have this file.
pub const SLOT_TEST_FAULT: &str = "/usr/lib/atoll/test-fault";
/// The [`SLOT_TEST_FAULT`] that makes stage 2 stop short of ready (a hung
/// boot, for the trial-boot watchdog).
pub const TEST_FAULT_NEVER_READY: &str = "never-ready";

/// Marker file that exists only in the initramfs: `init` runs stage 1 when it sees it.
pub const INITRD_MARKER: &str = "/etc/initrd-release";

/// The dm-verity block size used for both data and hash blocks.
pub const VERITY_BLOCK_SIZE: u64 = 4096;
/// The device-mapper name of the verified root.
pub const VERITY_DM_NAME: &str = "atoll-root";

/// Kernel command line keys set by grub.cfg.
pub mod cmdline {
    /// The booted slot: `A` or `B`.
    pub const SLOT: &str = "atoll.slot";
    /// The slot's dm-verity root hash (hex sha256).
    pub const VERITY: &str = "atoll.verity";
    /// Set to `damaged` when GRUB could not read grubenv and fell back to grubenv.good.
    pub const GRUBENV: &str = "atoll.grubenv";
    /// The try that GRUB counted for this boot: `trial` (slot not yet good) or `good`.
    pub const MODE: &str = "atoll.mode";
}

/// Runtime paths on the booted host.
pub const API_SOCKET: &str = "/run/atoll/api.sock";
/// Name of the virtio-serial port on which PID 1 also serves the API.
pub const API_VIRTIO_PORT: &str = "dev.atoll.api";
/// The QEMU fw_cfg file a host config is passed in
/// (`-fw_cfg name=opt/dev.atoll/config,file=host.toml`).
pub const FW_CFG_CONFIG: &str = "opt/dev.atoll/config";
/// Stage 1 writes its timings here for stage 2 (JSON, [`crate::api::Stage1Times`]).
pub const STAGE1_TIMES: &str = "/run/atoll/stage1.json";
/// journald native protocol socket, served by PID 1.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Persistent state on DATA.
pub const VAR_STATE_DIR: &str = "/var/lib/atoll";
pub const VAR_MACHINE_ID: &str = "/var/lib/atoll/machine-id";
/// Why the last trial boot failed (`atoll_common::trial`), left by PID 1
/// for the update agent.
pub const VAR_TRIAL_FAILURE: &str = "/var/lib/atoll/trial-failure.json";
pub const VAR_LOG_DIR: &str = "/var/log/atoll";

/// The line PID 1 prints on the console once the host is up. It continues
/// with ` version=<v> slot=<A|B>`.
pub const READY_PREFIX: &str = "atoll: ready";

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The letter used in grubenv keys and on the kernel command line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The slot's GPT partition label.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => LABEL_ROOT_A,
            Slot::B => LABEL_ROOT_B,
        }
    }

    /// Parses `A`/`B` (either case).
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two or any non-zero value).
pub fn round_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trip() {
        for s in Slot::ALL {
            assert_eq!(Slot::parse(s.letter()), Some(s));
            assert_eq!(s.other().other(), s);
        }
        assert_eq!(Slot::parse("C"), None);
    }

    #[test]
    fn partitions_are_ordered_aligned_and_fit() {
        let mut end = MIB;
        for p in PARTITIONS {
            assert_eq!(p.offset % ALIGN, 0, "{}", p.label);
            assert!(p.offset >= end, "{} overlaps", p.label);
            end = p.offset + p.size;
        }
        assert!(end + 33 * 512 <= DISK_SIZE);
        assert_eq!(partition(LABEL_ROOT_B).map(|p| p.number), Some(4));
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 4096), 0);
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_up(4096, 4096), 4096);
    }
}
