//! A root slot: the read-only root tree (docs/boot.md "Slot content"), its
//! ext4 image, and the dm-verity hash tree appended to it in the same file:
//!
//! ```text
//! 0                        blocks × 4096
//! | ext4, no journal       | verity superblock + hash tree |
//! ```
//!
//! ext4 as in Flatcar's and Bottlerocket's verified roots: the kernel has
//! it built in (squashfs would be one more module to load, about 17 ms of
//! every boot under TCG, docs/BENCHMARKS.md), GRUB reads it, and files lie
//! in whole 4 KiB blocks, so a file that did not change between releases
//! keeps its blocks' bytes. mke2fs copies owners and time stamps from the
//! tree, so the build sets them all afterwards with debugfs: owner root,
//! every time stamp [`data::FAKE_TIME`], and the image is the same bytes for
//! the same tree whoever builds it. qemu-tests corrupt a byte of init's
//! first block (`init_data_start` in build.json, from [`init_block`]).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use atoll_common::layout::{self, VERITY_BLOCK_SIZE};
use atoll_updater::metadata::SHIPPED_ROOT;
use sha2::{Digest, Sha256};

use crate::data;
use crate::ids;
use crate::ociimage::{self, OciImageError};
use crate::tool::{self, ToolError};
use crate::tree::{Entry, Kind, Tree, TreeError};

/// The slot's file system blocks (= the verity data blocks).
const FS_BLOCK: u64 = VERITY_BLOCK_SIZE;
/// Bytes per inode in the slot (ext4's usual size, room for nanoseconds).
const INODE_SIZE: u64 = 256;
/// Room on top of the tree's own blocks: the inode table, bitmaps, group
/// descriptors, extent blocks and directories that outgrow a block.
const FS_SLACK: u64 = 4 * layout::MIB;

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
    #[error("{path} cannot go into the slot's file system: debugfs would misread its name")]
    OddPath { path: String },
    #[error("debugfs could not set owners and time stamps in {image}: {errors}")]
    Debugfs { image: PathBuf, errors: String },
    #[error("{init}'s first block in the slot: {reason}")]
    InitBlock { init: String, reason: String },
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

/// Size of the ext4 file system for the entries of a tree: every file,
/// directory and long symlink in whole blocks, an inode each (and a few
/// spare), plus [`FS_SLACK`], rounded up to a MiB.
pub fn fs_size(entries: &[Entry]) -> u64 {
    let blocks: u64 = entries
        .iter()
        .map(|e| match &e.kind {
            Kind::File { size, .. } => size.div_ceil(FS_BLOCK),
            Kind::Dir { .. } => 1,
            // Targets under 60 bytes live in the inode.
            Kind::Symlink { target } => u64::from(target.len() >= 60),
        })
        .sum();
    let inodes = inode_count(entries);
    layout::round_up(
        blocks * FS_BLOCK + inodes * INODE_SIZE + FS_SLACK,
        layout::MIB,
    )
}

/// Inodes for the slot: one per entry, the root, ext4's reserved ones and
/// lost+found, rounded up.
fn inode_count(entries: &[Entry]) -> u64 {
    layout::round_up(entries.len() as u64 + 64, 64)
}

/// Makes the slot's ext4 file system of `tree` in `out` (4 KiB blocks, no
/// journal, nothing reserved for growth: it is never written after the
/// build), sets every owner to root and every time stamp to
/// [`data::FAKE_TIME`], and checks it with `e2fsck -fn`. Returns its size.
pub fn mkext4(
    tree: &Tree,
    out: &Path,
    uuid: &uuid::Uuid,
    hash_seed: &uuid::Uuid,
) -> Result<u64, SlotError> {
    let entries = tree.walk()?;
    let script = owner_and_times_script(&entries)?;
    let size = fs_size(&entries);
    if out.exists() {
        std::fs::remove_file(out).map_err(io(out))?;
    }
    std::fs::File::create(out)
        .and_then(|f| f.set_len(size))
        .map_err(io(out))?;
    tool::run(
        Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", data::FAKE_TIME.to_string())
            .env_remove("MKE2FS_CONFIG")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .args(["-I", &INODE_SIZE.to_string()])
            .args(["-N", &inode_count(&entries).to_string()])
            // Read-only: no journal, no room to grow. The rest are the
            // defaults GRUB 2.06 reads (extents, flex_bg, 64bit, checksums).
            .args(["-O", "^has_journal,^resize_inode"])
            .arg("-U")
            .arg(uuid.to_string())
            .arg("-E")
            .arg(format!(
                "hash_seed={hash_seed},root_owner=0:0,nodiscard,no_copy_xattrs"
            ))
            .arg("-d")
            .arg(tree.root())
            .arg(out),
    )?;
    let script_path = out.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(io(&script_path))?;
    let result = tool::run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", data::FAKE_TIME.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out),
    );
    let _ = std::fs::remove_file(&script_path);
    let output = result?;
    // debugfs exits 0 whatever its commands did; its errors go to stderr
    // after the version banner.
    let errors: Vec<String> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .map(str::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(SlotError::Debugfs {
            image: out.to_path_buf(),
            errors: errors.join("; "),
        });
    }
    tool::run(Command::new("e2fsck").args(["-f", "-n"]).arg(out))?;
    Ok(size)
}

/// debugfs commands that give every entry (and the root) owner 0:0 and
/// [`data::FAKE_TIME`] as its access, change and modification time.
fn owner_and_times_script(entries: &[Entry]) -> Result<String, SlotError> {
    let t = data::FAKE_TIME;
    let mut script = String::new();
    let paths = std::iter::once("").chain(entries.iter().map(|e| e.path.as_str()));
    for path in paths {
        if path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '\''))
        {
            return Err(SlotError::OddPath {
                path: path.to_string(),
            });
        }
        // Times as `@seconds`: debugfs reads bare digits as YYYYMMDD….
        for (field, value) in [
            ("uid", "0".to_string()),
            ("gid", "0".to_string()),
            ("atime", format!("@{t}")),
            ("ctime", format!("@{t}")),
            ("mtime", format!("@{t}")),
        ] {
            script.push_str(&format!("sif /{path} {field} {value}\n"));
        }
    }
    Ok(script)
}

/// Where init's first 4 KiB block lies in the ext4 `image`, checked against
/// init's bytes: `[start, end)` in bytes. The kernel reads it through
/// dm-verity as soon as stage 1 checks init's build id; GRUB never does.
pub fn init_block(image: &Path, init: &[u8]) -> Result<(u64, u64), SlotError> {
    let fail = |reason: String| SlotError::InitBlock {
        init: layout::SLOT_INIT.to_string(),
        reason,
    };
    let out = tool::stdout(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("bmap {} 0", layout::SLOT_INIT))
            .arg(image),
    )?;
    let block: u64 = out
        .trim()
        .parse()
        .map_err(|_| fail(format!("debugfs bmap printed {:?}", out.trim())))?;
    if block == 0 {
        return Err(fail("debugfs finds no block 0 (a hole?)".into()));
    }
    let start = block * FS_BLOCK;
    let want = init
        .get(..FS_BLOCK as usize)
        .ok_or_else(|| fail(format!("init is only {} bytes", init.len())))?;
    let mut f = std::fs::File::open(image).map_err(io(image))?;
    let mut got = vec![0u8; FS_BLOCK as usize];
    f.seek(SeekFrom::Start(start))
        .and_then(|_| f.read_exact(&mut got))
        .map_err(io(image))?;
    if got != want {
        return Err(fail(format!(
            "block {block} does not hold init's first bytes"
        )));
    }
    Ok((start, start + FS_BLOCK))
}

/// What `veritysetup format` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    /// Byte offset of the verity superblock (= the file system's size).
    pub hash_offset: u64,
    pub data_blocks: u64,
}

/// Pads the file system in `slot` to a multiple of 4096 bytes (ext4 already
/// is) and appends the dm-verity superblock and hash tree, salt and UUID
/// derived from the file system's digest. Returns the verity parameters.
pub fn append_verity(slot: &Path, fs_sha256: &[u8; 32]) -> Result<Verity, SlotError> {
    let len = std::fs::metadata(slot).map_err(io(slot))?.len();
    let padded = layout::round_up(len, VERITY_BLOCK_SIZE);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(slot)
        .map_err(io(slot))?;
    f.set_len(padded).map_err(io(slot))?;
    drop(f);
    let salt = hex::encode(fs_sha256);
    let uuid = ids::uuid("verity uuid", fs_sha256).to_string();
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

    fn sample_tree(root: &Path) -> Tree {
        let t = Tree::create(root).unwrap();
        t.file("aaa/big", &vec![7u8; 300_000], 0o644).unwrap();
        t.file("boot/vmlinuz", &fake_init()[..200_000], 0o644)
            .unwrap();
        t.file(layout::SLOT_INIT, &fake_init(), 0o755).unwrap();
        t.symlink("etc/short", "../usr/lib/os-release").unwrap();
        t.symlink("etc/long", &"x/".repeat(40)).unwrap();
        t.normalize_modes().unwrap();
        t
    }

    #[test]
    fn ext4_slot_is_reproducible_owned_by_root_and_verity_verifies() {
        let dir = scratch("slot");
        let t = sample_tree(&dir.join("a"));
        let img = dir.join("slot.img");
        let u = ids::uuid("t", b"1");
        let size = mkext4(&t, &img, &u, &u).unwrap();
        assert_eq!(size, std::fs::metadata(&img).unwrap().len());
        assert_eq!(size % layout::MIB, 0);
        let bytes = std::fs::read(&img).unwrap();
        // The same tree made again later (other time stamps on the build
        // host's files) gives the same bytes.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let t2 = sample_tree(&dir.join("b"));
        let img2 = dir.join("slot2.img");
        mkext4(&t2, &img2, &u, &u).unwrap();
        assert!(std::fs::read(&img2).unwrap() == bytes);

        let stat = tool::stdout(
            Command::new("debugfs")
                .arg("-R")
                .arg("stat /etc/long")
                .arg(&img),
        )
        .unwrap();
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        assert!(stat.contains(" mtime: 0x386d4380"), "{stat}");

        let (start, end) = init_block(&img, &fake_init()).unwrap();
        assert_eq!(end - start, 4096);
        assert_eq!(&bytes[start as usize..end as usize], &fake_init()[..4096]);
        let mut other = fake_init();
        other[10] ^= 1;
        assert!(matches!(
            init_block(&img, &other),
            Err(SlotError::InitBlock { .. })
        ));

        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let v = append_verity(&img, &digest).unwrap();
        assert_eq!(v.hash_offset, bytes.len() as u64);
        assert_eq!(v.salt, hex::encode(digest));
        let again = std::fs::read(&img).unwrap();
        assert_eq!(&again[..bytes.len()], &bytes[..]);
        assert_eq!(&again[v.hash_offset as usize..][..8], b"verity\0\0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fs_size_counts_blocks_inodes_and_slack() {
        let e = |path: &str, kind| Entry {
            path: path.into(),
            kind,
        };
        let entries = [
            e("usr", Kind::Dir { mode: 0o755 }),
            e(
                "usr/a",
                Kind::File {
                    mode: 0o644,
                    size: 1,
                },
            ),
            e(
                "usr/b",
                Kind::File {
                    mode: 0o644,
                    size: 4097,
                },
            ),
            e("usr/c", Kind::Symlink { target: "a".into() }),
        ];
        // 4 blocks + 128 inodes × 256 bytes + 4 MiB, rounded up to 5 MiB.
        assert_eq!(fs_size(&entries), 5 * layout::MIB);
        let big = [e(
            "f",
            Kind::File {
                mode: 0o644,
                size: 10 * layout::MIB,
            },
        )];
        assert_eq!(fs_size(&big), 15 * layout::MIB);
    }

    #[test]
    fn names_debugfs_would_misread_are_refused() {
        let file = |path: &str| Entry {
            path: path.into(),
            kind: Kind::File {
                mode: 0o644,
                size: 0,
            },
        };
        let script = owner_and_times_script(&[file("usr/lib/x")]).unwrap();
        assert!(script.starts_with("sif / uid 0\n"));
        assert!(script.contains("sif /usr/lib/x mtime @946684800\n"));
        for bad in ["a b", "a\"b", "a\\b", "a\nb"] {
            assert!(matches!(
                owner_and_times_script(&[file(bad)]),
                Err(SlotError::OddPath { .. })
            ));
        }
    }
}
