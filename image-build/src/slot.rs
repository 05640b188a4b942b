//! A root slot: the read-only root tree (docs/boot.md "Slot content"), its
//! squashfs image, and the dm-verity hash tree appended to it in the same
//! file:
//!
//! ```text
//! 0                       round_up(squashfs, 4096)
//! | squashfs, zero-padded | verity superblock + hash tree |
//! ```
//!
//! `/usr/lib/atoll/init` is sorted first in the squashfs so that its data
//! starts right after the 96-byte superblock: the kernel reads those bytes
//! through dm-verity, GRUB never does. qemu-tests flip a byte there
//! ([`TAMPER_OFFSET`]) to see verity refuse it; [`check_init_first`] keeps
//! that true for every build.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use atoll_common::layout::{self, VERITY_BLOCK_SIZE};
use atoll_updater::metadata::SHIPPED_ROOT;
use sha2::{Digest, Sha256};

use crate::ids;
use crate::ociimage::{self, OciImageError};
use crate::tool::{self, ToolError};
use crate::tree::{Kind, Tree, TreeError};

/// Size of the squashfs superblock; the first data block follows it.
pub const SUPERBLOCK_SIZE: u64 = 96;
/// A byte of the slot that lies in init's data, read by the kernel (through
/// dm-verity) but never by GRUB. qemu-tests corrupt it.
pub const TAMPER_OFFSET: u64 = 4000;

const SQUASHFS_MAGIC: u32 = 0x7371_7368;
const SQUASHFS_GZIP: u16 = 1;
const SQUASHFS_COMP_OPT: u16 = 0x0400;
/// Largest priority a mksquashfs sort file takes.
const SORT_FIRST: i32 = 32767;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("preloaded image: {0}")]
    Image(#[from] OciImageError),
    #[error("{path}: not a gzip squashfs image ({reason})")]
    Squashfs { path: PathBuf, reason: String },
    #[error("the slot's first data block is not the start of {init}: {reason}; the -sort file no longer puts init first")]
    InitNotFirst { init: String, reason: String },
    #[error("init's first data block ends at byte {end} of the slot, before byte {TAMPER_OFFSET} that qemu-tests corrupt")]
    InitBlockShort { end: u64 },
    #[error("veritysetup printed no root hash: {output}")]
    NoRootHash { output: String },
    #[error("the slot image is {size} bytes, more than the {max}-byte root partition")]
    TooBig { size: u64, max: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The root file system tree's inputs.
#[derive(Debug, Clone)]
pub struct RootfsInputs<'a> {
    pub init: &'a Path,
    pub atollctl: &'a Path,
    pub runtime: &'a Path,
    pub updater: &'a Path,
    /// Made into the preloaded image (see [`crate::ociimage`]).
    pub busybox: &'a Path,
    /// Shipped as [`layout::SLOT_CA_BUNDLE`].
    pub ca_bundle: &'a Path,
    pub mke2fs: &'a Path,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub kernel_release: &'a str,
    /// The update root of trust (a checked root.json), shipped as
    /// [`SHIPPED_ROOT`].
    pub update_root: &'a [u8],
}

/// Lays out the slot's root in `tree` (modules and libraries are added by
/// the caller) except `/usr/lib/os-release`, which [`finish_rootfs`] writes.
pub fn populate(tree: &Tree, inp: &RootfsInputs<'_>) -> Result<(), SlotError> {
    tree.merged_usr()?;
    tree.copy(layout::SLOT_INIT, inp.init, 0o755)?;
    tree.copy(layout::SLOT_ATOLLCTL, inp.atollctl, 0o755)?;
    tree.copy(layout::SLOT_RUNTIME, inp.runtime, 0o755)?;
    tree.copy(layout::SLOT_UPDATER, inp.updater, 0o755)?;
    tree.copy("usr/sbin/mke2fs", inp.mke2fs, 0o755)?;
    tree.copy(
        layout::SLOT_CA_BUNDLE.trim_start_matches('/'),
        inp.ca_bundle,
        0o644,
    )?;
    let images = layout::SLOT_PRELOADED_IMAGES.trim_start_matches('/');
    tree.dir(images)?;
    let archive = tree.path(&format!("{images}/busybox.tar"));
    let written = ociimage::write_busybox_archive(
        inp.busybox,
        &ociimage::ImageOptions::busybox(ociimage::PRELOADED_NAME),
        &archive,
    )?;
    tree.file(
        &format!("{images}/images.json"),
        ociimage::preloaded_index(&[(written, "busybox.tar".to_string())]).as_bytes(),
        0o644,
    )?;
    tree.copy(layout::SLOT_KERNEL, inp.vmlinuz, 0o644)?;
    tree.copy(layout::SLOT_INITRD, inp.initrd, 0o644)?;
    tree.file(SHIPPED_ROOT, inp.update_root, 0o644)?;
    for d in ["etc", "proc", "sys", "dev", "run", "tmp", "var", "boot"] {
        tree.dir(d)?;
    }
    tree.symlink("etc/os-release", "../usr/lib/os-release")?;
    Ok(())
}

/// A digest of everything in the tree (paths, kinds, modes, contents,
/// symlink targets), in walk order.
pub fn tree_digest(tree: &Tree) -> Result<[u8; 32], SlotError> {
    let mut h = Sha256::new();
    for e in tree.walk()? {
        h.update(e.path.as_bytes());
        h.update([0u8]);
        match &e.kind {
            Kind::Dir { mode } => h.update(format!("d{mode:o}\0")),
            Kind::Symlink { target } => h.update(format!("l{target}\0")),
            Kind::File { mode, size } => {
                h.update(format!("f{mode:o} {size}\0"));
                let p = tree.path(&e.path);
                h.update(std::fs::read(&p).map_err(io(&p))?);
            }
        }
    }
    Ok(h.finalize().into())
}

/// The content of `/usr/lib/os-release`.
pub fn os_release(version: &str, kernel_release: &str, build_id: &str) -> String {
    format!(
        "NAME=Atoll\nID=atoll\nVERSION={version}\nKERNEL={kernel_release}\nBUILD_ID={build_id}\n"
    )
}

/// Writes os-release (VERSION = `version`, BUILD_ID = the first 12 hex
/// digits of the tree's digest) and fixes every mode. Returns the build id.
pub fn finish_rootfs(
    tree: &Tree,
    kernel_release: &str,
    version: &str,
) -> Result<String, SlotError> {
    tree.normalize_modes()?;
    let build_id = hex::encode(tree_digest(tree)?)[..12].to_string();
    tree.file(
        layout::SLOT_RELEASE,
        os_release(version, kernel_release, &build_id).as_bytes(),
        0o644,
    )?;
    Ok(build_id)
}

/// Runs mksquashfs over `tree` into `out` (gzip, all files owned by root,
/// every time stamp 0, init first). Returns the image size.
pub fn mksquashfs(tree: &Tree, sort_file: &Path, out: &Path) -> Result<u64, SlotError> {
    let init = layout::SLOT_INIT.trim_start_matches('/');
    std::fs::write(sort_file, format!("{init} {SORT_FIRST}\n")).map_err(io(sort_file))?;
    if out.exists() {
        std::fs::remove_file(out).map_err(io(out))?;
    }
    tool::run(
        Command::new("mksquashfs")
            .arg(tree.root())
            .arg(out)
            .args(["-comp", "gzip", "-noappend", "-all-root", "-no-xattrs"])
            .args([
                "-mkfs-time",
                "0",
                "-all-time",
                "0",
                "-no-progress",
                "-quiet",
            ])
            .arg("-sort")
            .arg(sort_file),
    )?;
    Ok(std::fs::metadata(out).map_err(io(out))?.len())
}

/// The fields of a squashfs superblock this build looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u32,
    pub compressor: u16,
    pub flags: u16,
    pub bytes_used: u64,
}

pub fn parse_superblock(b: &[u8]) -> Result<Superblock, String> {
    if b.len() < SUPERBLOCK_SIZE as usize {
        return Err("shorter than a superblock".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if u32_at(0) != SQUASHFS_MAGIC {
        return Err("bad magic".into());
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&b[40..48]);
    Ok(Superblock {
        block_size: u32_at(12),
        compressor: u16_at(20),
        flags: u16_at(24),
        bytes_used: u64::from_le_bytes(used),
    })
}

/// Checks that the data right after the superblock is init's first block,
/// and returns the byte range `[96, end)` it occupies in the image.
pub fn check_init_first(image: &[u8], init: &[u8]) -> Result<(u64, u64), SlotError> {
    let fail = |reason: String| SlotError::InitNotFirst {
        init: layout::SLOT_INIT.to_string(),
        reason,
    };
    let sb = parse_superblock(image).map_err(fail)?;
    if sb.compressor != SQUASHFS_GZIP || sb.flags & SQUASHFS_COMP_OPT != 0 {
        return Err(fail(format!(
            "compressor {} with flags {:#x}, expected plain gzip",
            sb.compressor, sb.flags
        )));
    }
    let block = sb.block_size as usize;
    if init.len() < block {
        return Err(fail(format!(
            "init is {} bytes, smaller than one {block}-byte block, so it sits in a fragment",
            init.len()
        )));
    }
    let start = SUPERBLOCK_SIZE as usize;
    let data = &image[start.min(image.len())..];
    let want = &init[..block];
    let used = if data.first() == Some(&0x78) {
        // A zlib stream (gzip compressor): inflate one block.
        let mut z = flate2::Decompress::new(true);
        let mut outbuf = vec![0u8; block];
        let status = z
            .decompress(data, &mut outbuf, flate2::FlushDecompress::Finish)
            .map_err(|e| fail(format!("does not inflate: {e}")))?;
        if status != flate2::Status::StreamEnd || z.total_out() as usize != block {
            return Err(fail(format!(
                "inflates to {} bytes, not one {block}-byte block",
                z.total_out()
            )));
        }
        if outbuf != want {
            return Err(fail("inflates to other bytes".into()));
        }
        z.total_in()
    } else {
        // An uncompressed block.
        if data.get(..block) != Some(want) {
            return Err(fail("holds other bytes".into()));
        }
        block as u64
    };
    let end = SUPERBLOCK_SIZE + used;
    if end <= TAMPER_OFFSET {
        return Err(SlotError::InitBlockShort { end });
    }
    Ok((SUPERBLOCK_SIZE, end))
}

/// What `veritysetup format` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    /// Byte offset of the verity superblock (= the padded squashfs size).
    pub hash_offset: u64,
    pub data_blocks: u64,
}

/// Pads the squashfs in `slot` to a multiple of 4096 bytes and appends the
/// dm-verity superblock and hash tree, salt and UUID derived from the
/// squashfs digest. Returns the verity parameters.
pub fn append_verity(slot: &Path, squashfs_sha256: &[u8; 32]) -> Result<Verity, SlotError> {
    let len = std::fs::metadata(slot).map_err(io(slot))?.len();
    let padded = layout::round_up(len, VERITY_BLOCK_SIZE);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io(slot))?;
    f.set_len(padded).map_err(io(slot))?;
    drop(f);
    let salt = hex::encode(squashfs_sha256);
    let uuid = ids::uuid("verity uuid", squashfs_sha256).to_string();
    let data_blocks = padded / VERITY_BLOCK_SIZE;
    let out = tool::stdout(
        Command::new("veritysetup")
            .arg("format")
            .arg(format!("--hash-offset={padded}"))
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={uuid}"))
            .arg(format!("--data-block-size={VERITY_BLOCK_SIZE}"))
            .arg(format!("--hash-block-size={VERITY_BLOCK_SIZE}"))
            .arg("--hash=sha256")
            .arg(slot)
            .arg(slot),
    )?;
    let root_hash = parse_root_hash(&out).ok_or_else(|| SlotError::NoRootHash {
        output: out.trim().to_string(),
    })?;
    // Read the whole slot back through the hash tree.
    tool::run(
        Command::new("veritysetup")
            .arg("verify")
            .arg(format!("--hash-offset={padded}"))
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(slot)
            .arg(slot)
            .arg(&root_hash),
    )?;
    Ok(Verity {
        root_hash,
        salt,
        uuid,
        hash_offset: padded,
        data_blocks,
    })
}

/// The root hash from `veritysetup format` output (`Root hash: <hex>`).
pub fn parse_root_hash(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let v = l.strip_prefix("Root hash:")?.trim();
        (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
    })
}

/// Refuses a slot image larger than a root partition.
pub fn check_fits(size: u64) -> Result<(), SlotError> {
    if size > layout::ROOT_SIZE {
        return Err(SlotError::TooBig {
            size,
            max: layout::ROOT_SIZE,
        });
    }
    Ok(())
}

/// sha256 of a file (streamed).
pub fn sha256_file(path: &Path) -> Result<[u8; 32], SlotError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut HashWriter(&mut h)).map_err(io(path))?;
    Ok(h.finalize().into())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::scratch;

    #[test]
    fn root_hash_is_parsed() {
        let out = "VERITY header information for slot.img\nUUID:            \tx\nSalt:            \tab\nRoot hash:      \t0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\n";
        assert_eq!(
            parse_root_hash(out).unwrap(),
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(parse_root_hash("Root hash: xyz\n"), None);
    }

    #[test]
    fn os_release_has_the_keys() {
        let t = os_release("0.1.0", "6.1.0-56-cloud-amd64", "abcdef123456");
        assert!(t.contains("NAME=Atoll\n"));
        assert!(t.contains("VERSION=0.1.0\n"));
        assert!(t.contains("KERNEL=6.1.0-56-cloud-amd64\n"));
        assert!(t.contains("BUILD_ID=abcdef123456\n"));
    }

    #[test]
    fn too_big_is_refused() {
        assert!(check_fits(layout::ROOT_SIZE).is_ok());
        let err = check_fits(layout::ROOT_SIZE + 1).unwrap_err();
        assert!(err.to_string().contains("root partition"));
    }

    /// A fake "init": compressible but not trivially so, several blocks long.
    fn fake_init() -> Vec<u8> {
        let mut v = b"\x7fELF".to_vec();
        let mut x: u32 = 1;
        while v.len() < 400_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            v.push(b"abcdefghij"[(x >> 16) as usize % 10]);
        }
        v
    }

    #[test]
    fn sorted_squashfs_has_init_first_and_verity_verifies() {
        let dir = scratch("slot");
        let t = Tree::create(&dir.join("root")).unwrap();
        // Names that sort before usr/ and would come first without -sort.
        t.file("aaa/big", &vec![7u8; 300_000], 0o644).unwrap();
        t.file("boot/vmlinuz", &fake_init()[..200_000], 0o644)
            .unwrap();
        let init = fake_init();
        t.file(layout::SLOT_INIT, &init, 0o755).unwrap();
        t.normalize_modes().unwrap();
        let img = dir.join("slot.img");
        mksquashfs(&t, &dir.join("sort"), &img).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        let sb = parse_superblock(&bytes).unwrap();
        // mksquashfs pads the file to 4 KiB past bytes_used.
        assert_eq!(layout::round_up(sb.bytes_used, 4096), bytes.len() as u64);
        let (start, end) = check_init_first(&bytes, &init).unwrap();
        assert_eq!(start, 96);
        assert!(end > TAMPER_OFFSET);
        // Another init is refused.
        let mut other = init.clone();
        other[10] ^= 1;
        assert!(matches!(
            check_init_first(&bytes, &other),
            Err(SlotError::InitNotFirst { .. })
        ));

        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let v = append_verity(&img, &digest).unwrap();
        assert_eq!(v.hash_offset % 4096, 0);
        assert!(v.hash_offset >= bytes.len() as u64);
        assert_eq!(v.salt, hex::encode(digest));
        let again = std::fs::read(&img).unwrap();
        assert_eq!(&again[..bytes.len()], &bytes[..]);
        assert_eq!(&again[v.hash_offset as usize..][..8], b"verity\0\0");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
