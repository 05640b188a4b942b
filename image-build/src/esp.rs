//! The EFI system partition: GRUB's boot images (`grub-mkimage`, x86_64-efi
//! and i386-pc, each with the early config built in) and the FAT file system
//! (`mkfs.vfat -C`, files added with `mcopy`, no mount) holding
//! BOOTX64.EFI, grub.cfg, grubenv and grubenv.good.
//!
//! FAT records time stamps: mkfs.vfat runs with `--invariant` and a volume
//! id derived from the inputs; mtools takes the directories' time from
//! `SOURCE_DATE_EPOCH` and the files' from their (fixed) mtime with `-m`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use atoll_common::bootstate::BootState;
use atoll_common::grubenv::Grubenv;
use atoll_common::layout;

use crate::grubcfg;
use crate::tool::{self, ToolError};

/// GRUB's module directories (Debian grub-efi-amd64-bin and grub-pc-bin).
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
/// Every time stamp on the ESP: 2000-01-01 00:00:00 UTC (FAT cannot hold 1970).
pub const FAT_EPOCH: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("boot state")]
    BootState(#[from] atoll_common::bootstate::BootStateError),
    #[error("grubenv")]
    Grubenv(#[from] atoll_common::grubenv::GrubenvError),
    #[error("ESP path {0:?} is not absolute")]
    Path(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EspError + '_ {
    move |source| EspError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The two GRUB images.
#[derive(Debug, Clone)]
pub struct GrubImages {
    /// `EFI/BOOT/BOOTX64.EFI`.
    pub efi: PathBuf,
    /// `core.img` for the BIOS boot partition (not yet patched).
    pub core: PathBuf,
}

/// Builds both GRUB images into `work` with the early config built in.
pub fn grub_images(work: &Path) -> Result<GrubImages, EspError> {
    std::fs::create_dir_all(work).map_err(io(work))?;
    let early = work.join("early.cfg");
    std::fs::write(&early, grubcfg::early_cfg()).map_err(io(&early))?;
    let efi = work.join("BOOTX64.EFI");
    let core = work.join("core.img");
    let mkimage = |format: &str, dir: &str, out: &Path, extra: &[&str]| {
        tool::run(
            Command::new("grub-mkimage")
                .args(["-O", format, "-d", dir, "-p", grubcfg::PREFIX_DIR])
                .arg("-c")
                .arg(&early)
                .arg("-o")
                .arg(out)
                .args(extra)
                .args(grubcfg::MODULES),
        )
    };
    // efi_gop hands the kernel the firmware's frame buffer (else GRUB
    // prints "no suitable video mode found" and boots "in blind mode").
    mkimage("x86_64-efi", GRUB_EFI_DIR, &efi, &["efi_gop"])?;
    mkimage("i386-pc", GRUB_PC_DIR, &core, &["biosdisk"])?;
    Ok(GrubImages { efi, core })
}

/// The 1024-byte grubenv of a fresh disk: both slots good, the same root hash.
pub fn fresh_grubenv(root_hash: &str) -> Result<Vec<u8>, EspError> {
    let mut env = Grubenv::new();
    BootState::fresh(root_hash).to_env(&mut env)?;
    Ok(env.to_bytes()?)
}

/// A file to put on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// Absolute path on the ESP, e.g. `/EFI/atoll/grub.cfg`.
    pub path: String,
    pub data: Vec<u8>,
}

/// The ESP's files: the UEFI GRUB image, grub.cfg and both grubenv copies.
pub fn esp_files(grub_efi: &Path, root_hash: &str) -> Result<Vec<EspFile>, EspError> {
    let env = fresh_grubenv(root_hash)?;
    Ok(vec![
        EspFile {
            path: layout::ESP_EFI_BOOT.into(),
            data: std::fs::read(grub_efi).map_err(io(grub_efi))?,
        },
        EspFile {
            path: layout::ESP_GRUB_CFG.into(),
            data: grubcfg::grub_cfg().into_bytes(),
        },
        EspFile {
            path: layout::ESP_GRUBENV.into(),
            data: env.clone(),
        },
        EspFile {
            path: layout::ESP_GRUBENV_GOOD.into(),
            data: env,
        },
    ])
}

/// The environment every mtools run gets: fixed time, no geometry checks.
fn mtools(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("SOURCE_DATE_EPOCH", FAT_EPOCH.to_string())
        .env("TZ", "UTC")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C");
    c
}

/// Creates the FAT image `out` (`size` bytes, label ATOLL-ESP, volume id
/// `volume_id`) holding `files`; `staging` is scratch space for the files.
/// `hidden_sectors` is the partition's start LBA, recorded in the boot sector.
pub fn build_fat(
    out: &Path,
    size: u64,
    volume_id: u32,
    hidden_sectors: u64,
    files: &[EspFile],
    staging: &Path,
) -> Result<(), EspError> {
    if out.exists() {
        std::fs::remove_file(out).map_err(io(out))?;
    }
    if staging.exists() {
        std::fs::remove_dir_all(staging).map_err(io(staging))?;
    }
    std::fs::create_dir_all(staging).map_err(io(staging))?;
    tool::run(
        Command::new("mkfs.vfat")
            .args(["-C", "--invariant", "-F", "32"])
            .args(["-n", layout::ESP_FS_LABEL])
            .arg("-i")
            .arg(format!("{volume_id:08X}"))
            .arg("-h")
            .arg(hidden_sectors.to_string())
            .arg(out)
            .arg((size / 1024).to_string()),
    )?;
    // Directories first (parents before children), then the files.
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        if !f.path.starts_with('/') {
            return Err(EspError::Path(f.path.clone()));
        }
        let mut acc = String::new();
        let parts: Vec<&str> = f.path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            acc.push('/');
            acc.push_str(part);
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    dirs.sort();
    if !dirs.is_empty() {
        let mut mmd = mtools("mmd");
        mmd.arg("-i").arg(out);
        mmd.args(dirs.iter().map(|d| format!("::{d}")));
        tool::run(&mut mmd)?;
    }
    let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(FAT_EPOCH);
    for (i, f) in files.iter().enumerate() {
        let src = staging.join(format!("{i}"));
        std::fs::write(&src, &f.data).map_err(io(&src))?;
        let file = std::fs::File::options()
            .write(true)
            .open(&src)
            .map_err(io(&src))?;
        file.set_modified(fixed).map_err(io(&src))?;
        drop(file);
        tool::run(
            mtools("mcopy")
                .args(["-m", "-o", "-i"])
                .arg(out)
                .arg(&src)
                .arg(format!("::{}", f.path)),
        )?;
    }
    Ok(())
}

/// Reads a file back from a FAT image (for checks and tests).
pub fn read_fat_file(image: &Path, path: &str) -> Result<Vec<u8>, EspError> {
    let out = tool::run(
        mtools("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(image)
            .arg(format!("::{path}"))
            .arg("-"),
    )?;
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::scratch;

    #[test]
    fn fresh_grubenv_boots_a() {
        let env = fresh_grubenv(&"ab".repeat(32)).unwrap();
        assert_eq!(env.len(), 1024);
        let st = BootState::from_env(&Grubenv::parse(&env).unwrap()).unwrap();
        assert_eq!(st, BootState::fresh(&"ab".repeat(32)));
    }

    #[test]
    fn fat_is_reproducible_and_readable() {
        let dir = scratch("esp");
        let files = vec![
            EspFile {
                path: "/EFI/BOOT/BOOTX64.EFI".into(),
                data: vec![1, 2, 3],
            },
            EspFile {
                path: "/EFI/atoll/grubenv".into(),
                data: fresh_grubenv("").unwrap(),
            },
        ];
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        build_fat(&a, 64 << 20, 0x1234_5678, 4096, &files, &dir.join("s")).unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        build_fat(&b, 64 << 20, 0x1234_5678, 4096, &files, &dir.join("s")).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        assert_eq!(
            read_fat_file(&a, "/EFI/BOOT/BOOTX64.EFI").unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(read_fat_file(&a, "/EFI/atoll/grubenv").unwrap().len(), 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
