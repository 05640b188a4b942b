//! The on-disk headers of a root slot (docs/boot.md, "A slot"): the ext4
//! superblock at byte 1024 and the dm-verity superblock that `veritysetup
//! format --hash-offset` writes right after the file system. Stage 1 reads
//! them to build the dm-verity table; anything odd is refused. Only the
//! root hash does not come from here: it comes from the kernel command
//! line, so any tampering with these headers or the tree changes what the
//! kernel computes and the mount fails.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dm::VerityParams;
use crate::le::{u16_at, u32_at, u64_at};

/// Both data and hash blocks are this size, and so are the file system's.
const BLOCK: u64 = atoll_common::layout::VERITY_BLOCK_SIZE;
/// The ext4 superblock starts 1024 bytes into the file system.
const EXT4_SB_OFFSET: usize = 1024;
const EXT4_SB_SIZE: usize = 1024;
const EXT4_MAGIC: u16 = 0xef53;
/// `s_feature_incompat`: block counts have a high half.
#[cfg(test)]
const EXT4_INCOMPAT_64BIT: u32 = 0x80;
const VERITY_SIGNATURE: &[u8; 8] = b"verity\0\0";
/// `struct verity_sb` from cryptsetup (lib/verity/verity.c), packed.
const VERITY_SB_SIZE: usize = 512;
const MAX_SALT: usize = 256;
const SHA256_SIZE: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no ext4 file system at the start of the slot (magic {0:#06x} at byte 1080, want 0xef53)"
    )]
    Ext4Magic(u16),
    #[error("ext4 {0}")]
    Ext4(String),
    #[error("no dm-verity superblock at offset {offset} (signature {found:02x?})")]
    VerityMagic { offset: u64, found: [u8; 8] },
    #[error("dm-verity superblock at offset {offset}: {what}")]
    Verity { offset: u64, what: String },
    #[error("{} is {size} bytes, too small for {what}", path.display())]
    TooSmall {
        path: PathBuf,
        size: u64,
        what: String,
    },
}

/// What stage 1 needs from the ext4 superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4 {
    /// Bytes of the file system (block count times block size); the hash
    /// tree's superblock follows.
    pub bytes: u64,
}

/// Bytes of a slot's head that [`parse_ext4`] needs.
pub const EXT4_HEAD: usize = EXT4_SB_OFFSET + EXT4_SB_SIZE;

/// Parses the ext4 superblock in the first [`EXT4_HEAD`] bytes of a slot:
/// the magic, 4096-byte blocks (what image-build makes, and the verity
/// block size) and the block count.
pub fn parse_ext4(head: &[u8]) -> Result<Ext4, SuperblockError> {
    let short = || SuperblockError::Ext4("superblock is cut short".into());
    let sb = head.get(EXT4_SB_OFFSET..EXT4_HEAD).ok_or_else(short)?;
    let magic = u16_at(sb, 56).ok_or_else(short)?;
    if magic != EXT4_MAGIC {
        return Err(SuperblockError::Ext4Magic(magic));
    }
    let odd = |what: String| Err(SuperblockError::Ext4(what));
    let Some((block_size, blocks)) = ext4_size(sb) else {
        return odd(format!(
            "block size 1024 << {} is out of range",
            u32_at(sb, 24).unwrap_or_default()
        ));
    };
    if block_size != BLOCK {
        return odd(format!("block size {block_size}, want {BLOCK}"));
    }
    if blocks < 2 {
        return odd(format!("block count {blocks} is too small"));
    }
    let bytes = blocks
        .checked_mul(BLOCK)
        .ok_or_else(|| SuperblockError::Ext4(format!("block count {blocks} overflows")))?;
    Ok(Ext4 { bytes })
}

/// (block size, block count) from an ext2/3/4 superblock (the 1024 bytes at
/// offset 1024 of the device). statfs is no use here: it leaves out the
/// file system's own overhead.
pub fn ext4_size(sb: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |at| crate::le::u32_at(sb, at);
    if sb.get(0x38..0x3a)? != [0x53, 0xef] {
        return None;
    }
    let log = u32_at(0x18)?;
    if log > 6 {
        return None;
    }
    let bsize = 1024u64 << log;
    let lo = u64::from(u32_at(0x04)?);
    let incompat_64bit = u32_at(0x60)? & 0x80 != 0;
    let hi = if incompat_64bit {
        u64::from(u32_at(0x150)?)
    } else {
        0
    };
    Some((bsize, hi << 32 | lo))
}

/// The dm-verity superblock (`veritysetup dump` shows the same fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySuperblock {
    pub version: u32,
    /// 1 = the normal format (salt before the data); 0 = Chrome OS.
    pub hash_type: u32,
    pub uuid: [u8; 16],
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl VeritySuperblock {
    /// The UUID as `veritysetup dump` prints it.
    pub fn uuid_string(&self) -> String {
        let h = hex(&self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// Parses a dm-verity superblock found at `offset` (for messages) and
/// refuses every setting Atoll does not build: anything but version 1,
/// hash type 1, sha256, 4096-byte blocks, a salt of at most 256 bytes.
pub fn parse_verity(b: &[u8], offset: u64) -> Result<VeritySuperblock, SuperblockError> {
    let odd = |what: String| SuperblockError::Verity { offset, what };
    let short = || odd("superblock is cut short".into());
    let b = b.get(..VERITY_SB_SIZE).ok_or_else(short)?;
    let mut found = [0u8; 8];
    found.copy_from_slice(&b[..8]);
    if &found != VERITY_SIGNATURE {
        return Err(SuperblockError::VerityMagic { offset, found });
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    let alg = &b[32..64];
    let alg_end = alg.iter().position(|&c| c == 0).unwrap_or(alg.len());
    let salt_size = usize::from(u16_at(b, 80).ok_or_else(short)?);
    let sb = VeritySuperblock {
        version: u32_at(b, 8).ok_or_else(short)?,
        hash_type: u32_at(b, 12).ok_or_else(short)?,
        uuid,
        algorithm: String::from_utf8_lossy(&alg[..alg_end]).into_owned(),
        data_block_size: u32_at(b, 64).ok_or_else(short)?,
        hash_block_size: u32_at(b, 68).ok_or_else(short)?,
        data_blocks: u64_at(b, 72).ok_or_else(short)?,
        salt: b[88..88 + salt_size.min(MAX_SALT)].to_vec(),
    };
    if sb.version != 1 {
        return Err(odd(format!("version {}, want 1", sb.version)));
    }
    if sb.hash_type != 1 {
        return Err(odd(format!("hash type {}, want 1", sb.hash_type)));
    }
    if sb.algorithm != "sha256" {
        return Err(odd(format!("algorithm {:?}, want sha256", sb.algorithm)));
    }
    if u64::from(sb.data_block_size) != BLOCK || u64::from(sb.hash_block_size) != BLOCK {
        return Err(odd(format!(
            "block sizes {}/{}, want {BLOCK}/{BLOCK}",
            sb.data_block_size, sb.hash_block_size
        )));
    }
    if salt_size > MAX_SALT {
        return Err(odd(format!(
            "salt of {salt_size} bytes, at most {MAX_SALT}"
        )));
    }
    if sb.data_blocks == 0 {
        return Err(odd("covers no data blocks".into()));
    }
    Ok(sb)
}

/// Number of hash blocks in a sha256 tree over `data_blocks` 4096-byte
/// blocks (each hash block holds 128 digests).
pub fn hash_tree_blocks(data_blocks: u64) -> u64 {
    let per_block = BLOCK / SHA256_SIZE;
    let (mut level, mut total) = (data_blocks, 0);
    loop {
        level = level.div_ceil(per_block);
        total += level;
        if level <= 1 {
            return total;
        }
    }
}

/// The dm-verity table parameters of a slot whose file system, hash
/// offset and verity superblock are known, checked against each other and the
/// device size. The hash tree starts one block after the superblock.
pub fn verity_params(
    path: &Path,
    device_size: u64,
    fs: &Ext4,
    sb: &VeritySuperblock,
    root_hash: &str,
) -> Result<VerityParams, SuperblockError> {
    let hash_offset = atoll_common::layout::round_up(fs.bytes, BLOCK);
    let odd = |what: String| SuperblockError::Verity {
        offset: hash_offset,
        what,
    };
    let data_bytes = sb
        .data_blocks
        .checked_mul(BLOCK)
        .ok_or_else(|| odd(format!("{} data blocks overflow", sb.data_blocks)))?;
    if data_bytes < fs.bytes {
        return Err(odd(format!(
            "{} data blocks do not cover the file system ({} bytes)",
            sb.data_blocks, fs.bytes
        )));
    }
    if data_bytes > hash_offset {
        return Err(odd(format!(
            "{} data blocks run into the superblock",
            sb.data_blocks
        )));
    }
    let hash_start_block = hash_offset / BLOCK + 1;
    let end = (hash_start_block + hash_tree_blocks(sb.data_blocks)) * BLOCK;
    if end > device_size {
        return Err(SuperblockError::TooSmall {
            path: path.to_path_buf(),
            size: device_size,
            what: format!("a hash tree ending at byte {end}"),
        });
    }
    Ok(VerityParams {
        data_blocks: sb.data_blocks,
        hash_start_block,
        root_hash: root_hash.to_ascii_lowercase(),
        salt: hex(&sb.salt),
    })
}

/// Reads a slot's headers from `dev` (a block device or an image file) and
/// returns its dm-verity parameters with `root_hash` (from the kernel
/// command line).
pub fn read_verity_params(dev: &Path, root_hash: &str) -> Result<VerityParams, SuperblockError> {
    let io = |source| SuperblockError::Io {
        path: dev.to_path_buf(),
        source,
    };
    let mut f = File::open(dev).map_err(io)?;
    let size = f.seek(SeekFrom::End(0)).map_err(io)?;
    let mut head = [0u8; EXT4_HEAD];
    read_at(&mut f, 0, &mut head).map_err(io)?;
    let fs = parse_ext4(&head)?;
    let offset = atoll_common::layout::round_up(fs.bytes, BLOCK);
    if offset.saturating_add(BLOCK) > size {
        return Err(SuperblockError::TooSmall {
            path: dev.to_path_buf(),
            size,
            what: format!("a file system of {} bytes and its hash tree", fs.bytes),
        });
    }
    let mut sb = [0u8; VERITY_SB_SIZE];
    read_at(&mut f, offset, &mut sb).map_err(io)?;
    let sb = parse_verity(&sb, offset)?;
    verity_params(dev, size, &fs, &sb, root_hash)
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    const SALT: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const UUID: &str = "12345678-1234-1234-1234-123456789abc";

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("atoll-superblock-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn have(tool: &str) -> bool {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `Key:   value` from `veritysetup format`/`dump` output.
    fn field<'a>(text: &'a str, key: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{key} missing in {text}"))
            .trim()
    }

    fn sha256(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }

    /// An ext4 head by hand (the fields stage 1 reads; the rest zero):
    /// 4096-byte blocks, `blocks` of them, 64-bit counts if the high half
    /// is not zero.
    fn ext4_head(blocks: u64) -> Vec<u8> {
        let mut b = vec![0u8; EXT4_HEAD];
        let sb = &mut b[EXT4_SB_OFFSET..];
        sb[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[56..58].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        if blocks >> 32 != 0 {
            sb[96..100].copy_from_slice(&EXT4_INCOMPAT_64BIT.to_le_bytes());
            sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        b
    }

    /// The slot's file system: ext4 made by mke2fs from a small tree if
    /// mke2fs is installed, else a hand-made superblock and filler.
    fn make_data(dir: &Path) -> PathBuf {
        let img = dir.join("slot.img");
        if have("mke2fs") {
            let root = dir.join("root/usr/lib/atoll");
            std::fs::create_dir_all(&root).unwrap();
            // 1 MiB: a hash tree of more than one level.
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            let payload: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(root.join("init"), payload).unwrap();
            std::fs::File::create(&img)
                .unwrap()
                .set_len(4 << 20)
                .unwrap();
            run(Command::new("mke2fs")
                .args([
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-b",
                    "4096",
                    "-O",
                    "^has_journal",
                    "-d",
                ])
                .arg(dir.join("root"))
                .arg(&img));
        } else {
            let mut data = ext4_head(18);
            data.resize(18 * 4096, 0x5a);
            std::fs::write(&img, data).unwrap();
        }
        img
    }

    #[test]
    fn reads_what_veritysetup_wrote() {
        if !have("veritysetup") {
            eprintln!("veritysetup not installed: checked by hand-built bytes only");
            return;
        }
        let dir = Scratch::new("veritysetup");
        let img = make_data(&dir.0);
        let fs = parse_ext4(&std::fs::read(&img).unwrap()).unwrap();
        assert_eq!(fs.bytes, std::fs::metadata(&img).unwrap().len());
        let offset = fs.bytes;
        let formatted = run(Command::new("veritysetup")
            .arg("format")
            .arg(&img)
            .arg(&img)
            .arg(format!("--hash-offset={offset}"))
            .arg(format!("--data-blocks={}", offset / 4096))
            .arg(format!("--salt={SALT}"))
            .arg(format!("--uuid={UUID}")));
        let root_hash = field(&formatted, "Root hash");
        let dump = run(Command::new("veritysetup")
            .arg("dump")
            .arg(&img)
            .arg(format!("--hash-offset={offset}")));

        let bytes = std::fs::read(&img).unwrap();
        let sb = parse_verity(&bytes[offset as usize..], offset).unwrap();
        assert_eq!(sb.uuid_string(), field(&dump, "UUID"));
        assert_eq!(sb.hash_type.to_string(), field(&dump, "Hash type"));
        assert_eq!(sb.data_blocks.to_string(), field(&dump, "Data blocks"));
        assert_eq!(
            sb.data_block_size.to_string(),
            field(&dump, "Data block size")
        );
        assert_eq!(
            sb.hash_block_size.to_string(),
            field(&dump, "Hash block size")
        );
        assert_eq!(sb.algorithm, field(&dump, "Hash algorithm"));
        assert_eq!(hex(&sb.salt), field(&dump, "Salt"));
        assert_eq!(
            hash_tree_blocks(sb.data_blocks).to_string(),
            field(&dump, "Hash blocks")
        );
        if have("mke2fs") {
            assert!(hash_tree_blocks(sb.data_blocks) > 1);
        }

        let p = read_verity_params(&img, root_hash).unwrap();
        assert_eq!(p.data_blocks, offset / 4096);
        assert_eq!(p.salt, SALT);
        assert_eq!(p.root_hash, root_hash);
        // The tree's top block is where the table says: salted sha256 of
        // the block at hash_start_block is the root hash.
        let top = (p.hash_start_block * 4096) as usize;
        let mut salted = hex_decode(SALT);
        salted.extend_from_slice(&bytes[top..top + 4096]);
        assert_eq!(sha256(&salted), root_hash);
        assert_eq!(p.hash_start_block, offset / 4096 + 1);
    }

    fn hex_decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The first 0x78 bytes of a superblock `veritysetup format` wrote here
    /// (`xxd`; data blocks 25, the salt and UUID above); the rest is zero.
    fn real_verity_sb() -> Vec<u8> {
        const XXD: [&str; 8] = [
            "76657269747900000100000001000000",
            "12345678123412341234123456789abc",
            "73686132353600000000000000000000",
            "00000000000000000000000000000000",
            "00100000001000001900000000000000",
            "20000000000000000011223344556677",
            "8899aabbccddeeff0011223344556677",
            "8899aabbccddeeff0000000000000000",
        ];
        let mut b = hex_decode(&XXD.concat());
        b.resize(512, 0);
        b
    }

    #[test]
    fn parses_hand_built_superblocks() {
        let sb = parse_verity(&real_verity_sb(), 102_400).unwrap();
        assert_eq!(sb.uuid_string(), UUID);
        assert_eq!(sb.data_blocks, 25);
        assert_eq!(hex(&sb.salt), SALT);
        let fs = parse_ext4(&ext4_head(25)).unwrap();
        assert_eq!(fs.bytes, 102_400);
        assert_eq!(
            parse_ext4(&ext4_head(0x1_0000_0019)).unwrap().bytes,
            0x1_0000_0019 * 4096
        );
        let p = verity_params(Path::new("slot"), 110_592, &fs, &sb, &"AB".repeat(32)).unwrap();
        assert_eq!(p.hash_start_block, 26);
        assert_eq!(p.root_hash, "ab".repeat(32));
        // One byte short of the hash tree.
        assert!(matches!(
            verity_params(Path::new("slot"), 110_591, &fs, &sb, &"ab".repeat(32)),
            Err(SuperblockError::TooSmall { .. })
        ));
    }

    #[test]
    fn refuses_odd_headers() {
        let set = |at: usize, v: &[u8]| {
            let mut b = real_verity_sb();
            b[at..at + v.len()].copy_from_slice(v);
            parse_verity(&b, 0)
        };
        assert!(matches!(
            set(0, b"veriti"),
            Err(SuperblockError::VerityMagic { .. })
        ));
        for (at, v) in [
            (8, &2u32.to_le_bytes()[..]),
            (12, &0u32.to_le_bytes()),
            (32, b"sha1\0\0"),
            (64, &512u32.to_le_bytes()),
            (68, &8192u32.to_le_bytes()),
            (72, &0u64.to_le_bytes()),
            (80, &257u16.to_le_bytes()),
        ] {
            assert!(
                matches!(set(at, v), Err(SuperblockError::Verity { .. })),
                "offset {at}"
            );
        }
        assert!(matches!(
            parse_verity(&real_verity_sb()[..511], 0),
            Err(SuperblockError::Verity { what, .. }) if what == "superblock is cut short"
        ));

        let ext4 = |at: usize, v: &[u8]| {
            let mut b = ext4_head(25);
            b[EXT4_SB_OFFSET + at..EXT4_SB_OFFSET + at + v.len()].copy_from_slice(v);
            parse_ext4(&b)
        };
        assert!(matches!(
            parse_ext4(&ext4_head(25)[..EXT4_HEAD - 1]),
            Err(SuperblockError::Ext4(what)) if what == "superblock is cut short"
        ));
        assert!(matches!(
            ext4(56, b"hs"),
            Err(SuperblockError::Ext4Magic(0x7368))
        ));
        // 1 KiB and 64 KiB blocks, an absurd shift, no blocks.
        for (at, v) in [
            (24, &0u32.to_le_bytes()[..]),
            (24, &6u32.to_le_bytes()),
            (24, &40u32.to_le_bytes()),
            (4, &0u32.to_le_bytes()),
        ] {
            assert!(
                matches!(ext4(at, v), Err(SuperblockError::Ext4(_))),
                "offset {at}"
            );
        }

        // Data blocks that miss part of the file system or overlap the tree.
        let sb = parse_verity(&real_verity_sb(), 0).unwrap();
        let big = parse_ext4(&ext4_head(49)).unwrap();
        assert!(verity_params(Path::new("s"), 1 << 30, &big, &sb, "").is_err());
        let small = parse_ext4(&ext4_head(12)).unwrap();
        assert!(verity_params(Path::new("s"), 1 << 30, &small, &sb, "").is_err());
    }

    #[test]
    fn hash_tree_sizes() {
        assert_eq!(hash_tree_blocks(1), 1);
        assert_eq!(hash_tree_blocks(128), 1);
        assert_eq!(hash_tree_blocks(129), 3);
        // 512 MiB of data: 131072 blocks → 1024 + 8 + 1.
        assert_eq!(hash_tree_blocks(131_072), 1033);
    }
}
