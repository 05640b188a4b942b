//! Legacy BIOS boot without grub-bios-setup (which refuses a plain file):
//! GRUB's `boot.img` goes into the MBR's code area, `core.img` at the start
//! of the BIOS boot partition, and the sector pointers between them are
//! patched here, as grub-bios-setup would.
//!
//! - boot.img (first 440 bytes = 0x1b8, before the disk signature and the
//!   partition table): the LBA of core.img's first sector, u64 LE at 0x5c;
//!   the "boot drive" byte at 0x64 stays 0xff (use the drive the BIOS
//!   passes in DL); the jump at 0x66 over the drive check becomes two NOPs,
//!   as grub-bios-setup does for hard disks, so that a BIOS passing a bad DL
//!   still boots from 0x80.
//! - core.img's first sector (diskboot.img): the blocklist of the rest of
//!   core.img, start LBA (u64 LE) at 0x1f4 and sector count (u16 LE) at 0x1fc.

/// Bytes of boot.img that go into the MBR (the code area).
pub const MBR_CODE_SIZE: usize = 0x1b8;
/// boot.img: LBA of core.img's first sector (u64 LE).
pub const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: boot drive (0xff = the one the BIOS passes).
pub const BOOT_DRIVE: usize = 0x64;
/// boot.img: `jmp` over the drive check (0xeb 0x05).
pub const DRIVE_CHECK: usize = 0x66;
/// core.img sector 0: blocklist start LBA (u64 LE).
pub const BLOCKLIST_START: usize = 0x1f4;
/// core.img sector 0: blocklist length in sectors (u16 LE).
pub const BLOCKLIST_LEN: usize = 0x1fc;
/// core.img sector 0: load segment of the blocklist (u16 LE), 0x820.
pub const BLOCKLIST_SEGMENT: usize = 0x1fe;

const SECTOR: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BiosError {
    #[error("boot.img is {0} bytes, not 512")]
    BootImgSize(usize),
    #[error("boot.img has no 0x55AA signature")]
    BootImgSignature,
    #[error("boot.img byte {offset:#x} is {found:#04x}, expected {expected:#04x}: not GRUB 2's boot.img")]
    BootImgByte {
        offset: usize,
        found: u8,
        expected: u8,
    },
    #[error("core.img is {size} bytes; it must be 2 to 65536 sectors and fit the {room}-byte BIOS boot partition")]
    CoreImgSize { size: usize, room: u64 },
    #[error("core.img's blocklist segment is {0:#x}, not 0x820: not GRUB 2's diskboot.img")]
    CoreImgSegment(u16),
}

/// The MBR code area: boot.img's first 440 bytes, pointing at core.img at
/// `core_lba`.
pub fn mbr_code(boot_img: &[u8], core_lba: u64) -> Result<[u8; MBR_CODE_SIZE], BiosError> {
    if boot_img.len() != SECTOR {
        return Err(BiosError::BootImgSize(boot_img.len()));
    }
    if boot_img[510..] != [0x55, 0xaa] {
        return Err(BiosError::BootImgSignature);
    }
    for (offset, expected) in [(BOOT_DRIVE, 0xff), (DRIVE_CHECK, 0xeb)] {
        if boot_img[offset] != expected {
            return Err(BiosError::BootImgByte {
                offset,
                found: boot_img[offset],
                expected,
            });
        }
    }
    let mut code = [0u8; MBR_CODE_SIZE];
    code.copy_from_slice(&boot_img[..MBR_CODE_SIZE]);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

/// Points core.img's first sector at the rest of core.img, which will sit
/// at `core_lba + 1` onwards. `room` is the BIOS boot partition's size.
/// Returns core.img padded to whole sectors.
pub fn patch_core_img(core: &[u8], core_lba: u64, room: u64) -> Result<Vec<u8>, BiosError> {
    let sectors = core.len().div_ceil(SECTOR);
    if !(2..=65536).contains(&sectors) || (sectors * SECTOR) as u64 > room {
        return Err(BiosError::CoreImgSize {
            size: core.len(),
            room,
        });
    }
    let mut out = core.to_vec();
    out.resize(sectors * SECTOR, 0);
    let segment = u16::from_le_bytes([out[BLOCKLIST_SEGMENT], out[BLOCKLIST_SEGMENT + 1]]);
    if segment != 0x820 {
        return Err(BiosError::CoreImgSegment(segment));
    }
    out[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    let rest = u16::try_from(sectors - 1).map_err(|_| BiosError::CoreImgSize {
        size: core.len(),
        room,
    })?;
    out[BLOCKLIST_LEN..BLOCKLIST_LEN + 2].copy_from_slice(&rest.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[KERNEL_SECTOR] = 1;
        b[BOOT_DRIVE] = 0xff;
        b[DRIVE_CHECK] = 0xeb;
        b[DRIVE_CHECK + 1] = 0x05;
        b[0x1b8] = 0xaa; // beyond the code area: must not be copied
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    fn fake_core(len: usize) -> Vec<u8> {
        let mut c = vec![0x11u8; len];
        c[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&2u64.to_le_bytes());
        c[BLOCKLIST_SEGMENT..BLOCKLIST_SEGMENT + 2].copy_from_slice(&0x820u16.to_le_bytes());
        c
    }

    #[test]
    fn mbr_code_points_at_core() {
        let code = mbr_code(&fake_boot_img(), 2048).unwrap();
        assert_eq!(code.len(), 0x1b8);
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
    }

    #[test]
    fn core_blocklist_is_patched() {
        let core = fake_core(205_684);
        let out = patch_core_img(&core, 2048, 1 << 20).unwrap();
        assert_eq!(out.len(), 402 * 512);
        assert_eq!(&out[0x1f4..0x1fc], &2049u64.to_le_bytes());
        assert_eq!(&out[0x1fc..0x1fe], &401u16.to_le_bytes());
        assert_eq!(&out[0x1fe..0x200], &0x820u16.to_le_bytes());
        assert_eq!(&out[0x200..0x400], &core[0x200..0x400]);
    }

    #[test]
    fn refuses_what_is_not_grub() {
        assert_eq!(mbr_code(&[0u8; 100], 1), Err(BiosError::BootImgSize(100)));
        let mut b = fake_boot_img();
        b[511] = 0;
        assert_eq!(mbr_code(&b, 1), Err(BiosError::BootImgSignature));
        let mut b = fake_boot_img();
        b[DRIVE_CHECK] = 0x90;
        assert!(matches!(
            mbr_code(&b, 1),
            Err(BiosError::BootImgByte { .. })
        ));
        assert!(matches!(
            patch_core_img(&fake_core(2 << 20), 2048, 1 << 20),
            Err(BiosError::CoreImgSize { .. })
        ));
        let mut c = fake_core(4096);
        c[BLOCKLIST_SEGMENT] = 0;
        assert!(matches!(
            patch_core_img(&c, 2048, 1 << 20),
            Err(BiosError::CoreImgSegment(_))
        ));
    }

    #[test]
    fn real_grub_images_patch() {
        let boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
        let code = mbr_code(&boot, 2048).unwrap();
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
    }
}
