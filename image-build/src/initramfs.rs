//! The initramfs: a gzip-compressed cpio archive in the kernel's `newc`
//! format, written here rather than by `cpio` so that it is deterministic
//! (entries sorted by path, inode numbers counted from 1, owner root, time
//! 0) and can hold `/dev/console` without root.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use crate::tree::{Kind, Tree, TreeError};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cpio entry {path}: {size} bytes is more than newc's 4 GiB")]
    TooBig { path: String, size: u64 },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Writes a cpio `newc` archive.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_ino: 1 }
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
        ino: u32,
    ) -> Result<(), InitramfsError> {
        let size = u32::try_from(data.len()).map_err(|_| InitramfsError::TooBig {
            path: path.to_string(),
            size: data.len() as u64,
        })?;
        let namesize = path.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        let io = |source| InitramfsError::Io {
            path: PathBuf::from(path),
            source,
        };
        self.out.write_all(header.as_bytes()).map_err(io)?;
        self.out.write_all(path.as_bytes()).map_err(io)?;
        let pad = pad4(header.len() + namesize);
        self.out.write_all(&[0u8; 4][..1 + pad]).map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.out
            .write_all(&[0u8; 3][..pad4(data.len())])
            .map_err(io)?;
        Ok(())
    }

    fn ino(&mut self) -> u32 {
        let i = self.next_ino;
        self.next_ino += 1;
        i
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), InitramfsError> {
        let ino = self.ino();
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[], ino)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), InitramfsError> {
        let ino = self.ino();
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data, ino)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        let ino = self.ino();
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes(), ino)
    }

    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        let ino = self.ino();
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[], ino)
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W, InitramfsError> {
        self.entry(TRAILER, 0, 1, (0, 0), &[], 0)?;
        Ok(self.out)
    }
}

/// Padding after `len` bytes up to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A device node added to the archive beside the tree's content.
#[derive(Debug, Clone, Copy)]
pub struct CharDev {
    pub path: &'static str,
    pub mode: u32,
    pub major: u32,
    pub minor: u32,
}

/// `/dev/console`, so that the kernel can give /init a console.
pub const CONSOLE: CharDev = CharDev {
    path: "dev/console",
    mode: 0o600,
    major: 5,
    minor: 1,
};

/// Writes `tree` (plus `devices`) as a gzip-compressed newc archive to
/// `out`. Returns the archive's compressed size.
pub fn write(tree: &Tree, devices: &[CharDev], out: &Path) -> Result<u64, InitramfsError> {
    enum Node {
        Entry(crate::tree::Entry),
        Dev(CharDev),
    }
    let mut nodes: Vec<(String, Node)> = tree
        .walk()?
        .into_iter()
        .map(|e| (e.path.clone(), Node::Entry(e)))
        .collect();
    nodes.extend(devices.iter().map(|d| (d.path.to_string(), Node::Dev(*d))));
    nodes.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    let io = |source| InitramfsError::Io {
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(io)?;
    let gz: GzEncoder<std::io::BufWriter<std::fs::File>> = GzBuilder::new()
        .mtime(0)
        .write(std::io::BufWriter::new(file), Compression::default());
    let mut cpio = CpioWriter::new(gz);
    for (path, node) in &nodes {
        match node {
            Node::Dev(d) => cpio.char_dev(path, d.mode, d.major, d.minor)?,
            Node::Entry(e) => match &e.kind {
                Kind::Dir { mode } => cpio.dir(path, *mode)?,
                Kind::Symlink { target } => cpio.symlink(path, target)?,
                Kind::File { mode, .. } => {
                    let host = tree.path(path);
                    let data = std::fs::read(&host).map_err(|source| InitramfsError::Io {
                        path: host.clone(),
                        source,
                    })?;
                    cpio.file(path, *mode, &data)?;
                }
            },
        }
    }
    let gz = cpio.finish()?;
    let mut buf = gz.finish().map_err(io)?;
    buf.flush().map_err(io)?;
    let len = std::fs::metadata(out).map_err(io)?.len();
    Ok(len)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;
    use crate::tree::tests::scratch;

    fn field(h: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&h[6 + 8 * i..6 + 8 * (i + 1)]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn headers_are_newc_and_aligned() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("etc/initrd-release", 0o644, b"NAME=Atoll initramfs\n")
            .unwrap();
        w.symlink("lib", "usr/lib").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        // First entry: "etc", a directory, inode 1.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 0), 1);
        assert_eq!(field(&out, 1), S_IFDIR | 0o755);
        assert_eq!(field(&out, 5), 0, "mtime");
        assert_eq!(field(&out, 11), 4, "namesize");
        // 110-byte header + "etc\0" = 114, padded to 116.
        let second = &out[116..];
        assert_eq!(&second[..6], b"070701");
        assert_eq!(field(second, 0), 2);
        assert_eq!(field(second, 6), 21, "filesize");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn cpio_tool_reads_it_back() {
        let dir = scratch("cpio");
        let t = Tree::create(&dir.join("root")).unwrap();
        t.merged_usr().unwrap();
        t.dir("dev").unwrap();
        t.file("init", b"\x7fELF....", 0o755).unwrap();
        t.file("etc/initrd-release", b"NAME=Atoll initramfs\n", 0o644)
            .unwrap();
        t.normalize_modes().unwrap();
        let img = dir.join("initrd.img");
        write(&t, &[CONSOLE], &img).unwrap();
        let gz = std::fs::read(&img).unwrap();
        // Fixed gzip header: no name, mtime 0.
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert!(names.contains(&"init"), "{listing}");
        assert!(names.contains(&"etc/initrd-release"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("lib -> usr/lib"), "{listing}");
        // Same tree, same bytes.
        let img2 = dir.join("initrd2.img");
        write(&t, &[CONSOLE], &img2).unwrap();
        assert_eq!(std::fs::read(&img2).unwrap(), gz);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
