//! Disk images for the tests: finding the built image, qcow2 overlays and raw
//! copies of it, and editing a raw image from the host the way a test needs
//! to set the stage — the boot state in grubenv on the ESP (through mtools,
//! no root or loop device), or one flipped byte in a slot.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use atoll_common::bootstate::{BootState, BootStateError};
use atoll_common::grubenv::{Grubenv, GrubenvError};
use atoll_common::layout;

/// Byte offsets of the partitions of a freshly built disk.
pub const ESP_OFFSET: u64 = layout::PARTITIONS[1].offset;
pub const ROOT_A_OFFSET: u64 = layout::PARTITIONS[2].offset;
pub const ROOT_B_OFFSET: u64 = layout::PARTITIONS[3].offset;
pub const DATA_OFFSET: u64 = layout::PARTITIONS[4].offset;

/// What builds the image, for the message when it is missing.
pub const BUILD_HINT: &str = "build it with `./test.sh` (builds it, then runs every test), \
     or `scripts/build-image.sh`, or `cargo build --release -p atoll-init && \
     cargo run --release -p image-build -- disk`";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no Atoll disk image at {path} ({from}); {BUILD_HINT}")]
    ImageMissing { path: PathBuf, from: &'static str },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {tool} (is it installed? scripts/install-deps.sh installs it)")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{file} in {image} is not a valid environment block")]
    Grubenv {
        image: PathBuf,
        file: &'static str,
        #[source]
        source: GrubenvError,
    },
    #[error("{file} in {image} holds an invalid boot state")]
    BootState {
        image: PathBuf,
        file: &'static str,
        #[source]
        source: BootStateError,
    },
    #[error("{path}: {reason}")]
    BuildInfo { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The image the tests boot: `$ATOLL_IMAGE`, or `target/atoll/atoll.raw` in
/// the workspace. Absolute, and known to exist.
pub fn base_image() -> Result<PathBuf, DiskError> {
    match std::env::var_os("ATOLL_IMAGE") {
        Some(p) if !p.is_empty() => checked_image(Path::new(&p), "from $ATOLL_IMAGE"),
        _ => checked_image(
            &workspace_root().join("target/atoll/atoll.raw"),
            "the default; set ATOLL_IMAGE to use another",
        ),
    }
}

/// `path` made absolute, if it exists.
pub fn checked_image(path: &Path, from: &'static str) -> Result<PathBuf, DiskError> {
    if !path.is_file() {
        return Err(DiskError::ImageMissing {
            path: path.to_path_buf(),
            from,
        });
    }
    std::fs::canonicalize(path).map_err(io(path))
}

/// What image-build says about an image (`build.json` next to it); the
/// fields the tests use (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BuildInfo {
    pub version: String,
    /// The dm-verity root hash of the slot image.
    pub verity_root_hash: String,
    /// Bytes `[start, end)` of a slot holding init's first data block (read
    /// by the kernel through dm-verity, never by GRUB).
    pub init_data_start: u64,
    pub init_data_end: u64,
}

/// Reads `build.json` beside `image`.
pub fn build_info(image: &Path) -> Result<BuildInfo, DiskError> {
    let path = image.with_file_name("build.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let info: BuildInfo = serde_json::from_str(&text).map_err(|e| DiskError::BuildInfo {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let h = &info.verity_root_hash;
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DiskError::BuildInfo {
            path,
            reason: format!("verity_root_hash {h:?} is not a sha256 hex digest"),
        });
    }
    Ok(info)
}

fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, DiskError> {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|source| DiskError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if !out.status.success() {
        let command = std::iter::once(tool.to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(DiskError::Tool {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Creates a qcow2 overlay at `overlay` on the raw `base` (absolute),
/// optionally larger than the base (`size` in bytes).
pub fn create_overlay(base: &Path, overlay: &Path, size: Option<u64>) -> Result<(), DiskError> {
    let size = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
    ];
    if let Some(s) = &size {
        args.push(s.as_ref());
    }
    run("qemu-img", &args).map(|_| ())
}

/// A private raw copy of an image, deleted on drop.
#[derive(Debug)]
pub struct RawCopy {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl RawCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the copy on disk after drop (for debugging) and returns its path.
    pub fn keep(self) -> PathBuf {
        let path = self.path;
        let _ = self.dir.keep();
        path
    }
}

/// Copies `base` (sparse) into a fresh temporary directory.
pub fn prepare_raw_copy(base: &Path) -> Result<RawCopy, DiskError> {
    let dir = tempfile::Builder::new()
        .prefix("atoll-disk-")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    let path = dir.path().join("disk.raw");
    run(
        "cp",
        &[
            "--sparse=always".as_ref(),
            base.as_os_str(),
            path.as_os_str(),
        ],
    )?;
    Ok(RawCopy { dir, path })
}

/// XORs the byte at `offset` with 0xff; returns the byte it held.
pub fn flip_byte(image: &Path, offset: u64) -> Result<u8, DiskError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io(image))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).map_err(io(image))?;
    let old = b[0];
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).map_err(io(image))?;
    f.sync_all().map_err(io(image))?;
    Ok(old)
}

/// Which environment block on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvFile {
    /// `grubenv`: the live boot state.
    Live,
    /// `grubenv.good`: the copy of the last good boot.
    Good,
}

impl EnvFile {
    pub fn esp_path(self) -> &'static str {
        match self {
            EnvFile::Live => layout::ESP_GRUBENV,
            EnvFile::Good => layout::ESP_GRUBENV_GOOD,
        }
    }
}

/// A FAT file system inside an image file, at a byte offset, reached with mtools.
#[derive(Debug, Clone)]
pub struct FatImage {
    image: PathBuf,
    offset: u64,
}

impl FatImage {
    pub fn new(image: &Path, offset: u64) -> Self {
        Self {
            image: image.to_path_buf(),
            offset,
        }
    }

    /// The ESP of a raw Atoll disk image.
    pub fn esp(image: &Path) -> Self {
        Self::new(image, ESP_OFFSET)
    }

    fn drive(&self) -> std::ffi::OsString {
        let mut s = self.image.as_os_str().to_os_string();
        s.push(format!("@@{}", self.offset));
        s
    }

    /// The bytes of the file at `path` (absolute, e.g. `/EFI/atoll/grubenv`).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, DiskError> {
        let drive = self.drive();
        let target = format!("::{path}");
        run(
            "mtype",
            &["-i".as_ref(), drive.as_os_str(), target.as_ref()],
        )
    }

    /// Replaces the file at `path` with `bytes`.
    pub fn write(&self, path: &str, bytes: &[u8]) -> Result<(), DiskError> {
        let scratch = tempfile::NamedTempFile::new().map_err(io(&std::env::temp_dir()))?;
        std::fs::write(scratch.path(), bytes).map_err(io(scratch.path()))?;
        let drive = self.drive();
        let target = format!("::{path}");
        run(
            "mcopy",
            &[
                "-o".as_ref(),
                "-i".as_ref(),
                drive.as_os_str(),
                scratch.path().as_os_str(),
                target.as_ref(),
            ],
        )
        .map(|_| ())
    }
}

/// The ext4 file system on DATA inside a raw image (at [`DATA_OFFSET`]),
/// reached with e2fsprogs (`debugfs`, `e2fsck`) through their `?offset=`
/// device option: no root or loop device. Paths are inside the file
/// system (`/lib/atoll/…` is the host's `/var/lib/atoll/…`).
#[derive(Debug, Clone)]
pub struct Ext4Image {
    image: PathBuf,
    offset: u64,
}

impl Ext4Image {
    pub fn new(image: &Path, offset: u64) -> Self {
        Self {
            image: image.to_path_buf(),
            offset,
        }
    }

    /// DATA of a raw Atoll disk image.
    pub fn data(image: &Path) -> Self {
        Self::new(image, DATA_OFFSET)
    }

    fn device(&self) -> std::ffi::OsString {
        let mut s = self.image.as_os_str().to_os_string();
        s.push(format!("?offset={}", self.offset));
        s
    }

    /// Replays the journal and checks the file system (`e2fsck -fy`), as
    /// the kernel would replay it at the next mount: what a power cut left
    /// in the journal is then in place for [`Ext4Image::read`]. e2fsck
    /// re-opens the file system after a replay without the `?offset=`
    /// option, so it runs on a copy of the file system's bytes, which is
    /// written back. Fails if e2fsck finds errors it cannot correct (exit
    /// status above 1).
    pub fn replay_journal(&self) -> Result<(), DiskError> {
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .map_err(io(&self.image))?;
        let mut sb = [0u8; 1024];
        image
            .read_exact_at(&mut sb, self.offset + 1024)
            .map_err(io(&self.image))?;
        let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        if sb[0x38..0x3a] != [0x53, 0xef] {
            return Err(DiskError::BuildInfo {
                path: self.image.clone(),
                reason: format!("no ext4 superblock at byte {}", self.offset + 1024),
            });
        }
        let block = 1024u64 << le32(24).min(6);
        let incompat_64bit = le32(0x60) & 0x80 != 0;
        let high = if incompat_64bit {
            u64::from(le32(0x150))
        } else {
            0
        };
        let size = (high << 32 | u64::from(le32(4))) * block;
        let scratch = tempfile::Builder::new()
            .prefix("atoll-ext4-")
            .tempfile()
            .map_err(io(&std::env::temp_dir()))?;
        let copy = |from: &std::fs::File, from_at: u64, to: &std::fs::File, to_at: u64| {
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < size {
                let n = (size - done).min(buf.len() as u64) as usize;
                from.read_exact_at(&mut buf[..n], from_at + done)?;
                // Holes stay holes in the scratch copy.
                if buf[..n].iter().any(|b| *b != 0) || to_at != 0 {
                    to.write_all_at(&buf[..n], to_at + done)?;
                }
                done += n as u64;
            }
            to.set_len(to.metadata()?.len().max(to_at + size))?;
            to.sync_all()
        };
        copy(&image, self.offset, scratch.as_file(), 0).map_err(io(scratch.path()))?;
        let out = Command::new("e2fsck")
            .args(["-f".as_ref(), "-y".as_ref(), scratch.path().as_os_str()])
            .output()
            .map_err(|source| DiskError::Spawn {
                tool: "e2fsck".into(),
                source,
            })?;
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(DiskError::Tool {
                command: format!("e2fsck -f -y {}", scratch.path().display()),
                status: out.status,
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        copy(scratch.as_file(), 0, &image, self.offset).map_err(io(&self.image))
    }

    fn debugfs(&self, write: bool, request: &str) -> Result<Vec<u8>, DiskError> {
        let dev = self.device();
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        if write {
            args.push("-w".as_ref());
        }
        args.extend(["-R".as_ref(), request.as_ref(), dev.as_os_str()]);
        run("debugfs", &args)
    }

    /// Whether `path` exists.
    pub fn exists(&self, path: &str) -> Result<bool, DiskError> {
        // debugfs reports a missing file on stderr and still exits 0.
        let out = self.debugfs(false, &format!("stat {path}"))?;
        Ok(String::from_utf8_lossy(&out).contains("Inode:"))
    }

    /// The bytes of the file at `path`; an error if it does not exist.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, DiskError> {
        if !self.exists(path)? {
            return Err(DiskError::Io {
                path: PathBuf::from(format!("{}: {path}", self.image.display())),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        self.debugfs(false, &format!("cat {path}"))
    }

    /// Removes `path` if it exists.
    pub fn remove(&self, path: &str) -> Result<(), DiskError> {
        if self.exists(path)? {
            self.debugfs(true, &format!("rm {path}"))?;
        }
        Ok(())
    }

    /// Replaces the file at `path` (in an existing directory) with `bytes`.
    pub fn write(&self, path: &str, bytes: &[u8]) -> Result<(), DiskError> {
        let scratch = tempfile::NamedTempFile::new().map_err(io(&std::env::temp_dir()))?;
        std::fs::write(scratch.path(), bytes).map_err(io(scratch.path()))?;
        self.remove(path)?;
        let local = scratch.path().to_string_lossy();
        if local.contains(char::is_whitespace) {
            return Err(DiskError::Io {
                path: scratch.path().to_path_buf(),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        self.debugfs(true, &format!("write {local} {path}"))?;
        if !self.exists(path)? {
            return Err(DiskError::Io {
                path: PathBuf::from(format!("{}: {path}", self.image.display())),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(())
    }
}

/// The raw bytes of a grubenv file on the ESP of `image`.
pub fn read_grubenv_bytes(image: &Path, which: EnvFile) -> Result<Vec<u8>, DiskError> {
    FatImage::esp(image).read(which.esp_path())
}

/// Overwrites a grubenv file on the ESP of `image` with `bytes` as they are.
pub fn write_grubenv_bytes(image: &Path, which: EnvFile, bytes: &[u8]) -> Result<(), DiskError> {
    FatImage::esp(image).write(which.esp_path(), bytes)
}

/// A grubenv file on the ESP of `image`, parsed.
pub fn read_grubenv(image: &Path, which: EnvFile) -> Result<Grubenv, DiskError> {
    let bytes = read_grubenv_bytes(image, which)?;
    Grubenv::parse(&bytes).map_err(|source| DiskError::Grubenv {
        image: image.to_path_buf(),
        file: which.esp_path(),
        source,
    })
}

/// The boot state held in a grubenv file on the ESP of `image`.
pub fn read_boot_state(image: &Path, which: EnvFile) -> Result<BootState, DiskError> {
    let env = read_grubenv(image, which)?;
    BootState::from_env(&env).map_err(|source| DiskError::BootState {
        image: image.to_path_buf(),
        file: which.esp_path(),
        source,
    })
}

/// Writes `state` into the live grubenv of `image`, keeping its other
/// variables (or starting from an empty block if it is unreadable).
pub fn write_grubenv(image: &Path, state: &BootState) -> Result<(), DiskError> {
    let mut env = read_grubenv(image, EnvFile::Live).unwrap_or_default();
    let err = |source| DiskError::BootState {
        image: image.to_path_buf(),
        file: layout::ESP_GRUBENV,
        source,
    };
    state.to_env(&mut env).map_err(err)?;
    let bytes = env
        .to_bytes()
        .map_err(|e| err(BootStateError::Grubenv(e)))?;
    write_grubenv_bytes(image, EnvFile::Live, &bytes)
}

#[cfg(test)]
mod tests {
    use atoll_common::layout::Slot;

    use super::*;

    #[test]
    fn offsets_match_the_layout() {
        assert_eq!(
            ESP_OFFSET,
            layout::partition(layout::LABEL_ESP).unwrap().offset
        );
        assert_eq!(
            ROOT_A_OFFSET,
            layout::partition(layout::LABEL_ROOT_A).unwrap().offset
        );
        assert_eq!(
            ROOT_B_OFFSET,
            layout::partition(layout::LABEL_ROOT_B).unwrap().offset
        );
        assert_eq!(
            DATA_OFFSET,
            layout::partition(layout::LABEL_DATA).unwrap().offset
        );
    }

    /// A disk file with a small FAT file system at 1 MiB (as the ESP sits
    /// at an offset in the real image) holding /EFI/atoll.
    fn fat_disk(dir: &Path) -> PathBuf {
        let fat = dir.join("esp.fat");
        let status = Command::new("mkfs.vfat")
            .args(["-C".as_ref(), fat.as_os_str(), "2048".as_ref()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let drive = {
            let mut s = fat.as_os_str().to_os_string();
            s.push("@@0");
            s
        };
        run(
            "mmd",
            &[
                "-i".as_ref(),
                drive.as_os_str(),
                "::/EFI".as_ref(),
                "::/EFI/atoll".as_ref(),
            ],
        )
        .unwrap();
        let mut disk = vec![0u8; 1024 * 1024];
        disk.extend(std::fs::read(&fat).unwrap());
        let path = dir.join("disk.raw");
        std::fs::write(&path, disk).unwrap();
        path
    }

    #[test]
    fn grubenv_round_trip_through_mtools() {
        let dir = tempfile::tempdir().unwrap();
        let disk = fat_disk(dir.path());
        let esp = FatImage::new(&disk, 1024 * 1024);

        let mut env = Grubenv::new();
        env.set("EXTRA", "kept").unwrap();
        let mut state = BootState::fresh(&"ab".repeat(32));
        state.to_env(&mut env).unwrap();
        esp.write(layout::ESP_GRUBENV, &env.to_bytes().unwrap())
            .unwrap();

        state.order = vec![Slot::B, Slot::A];
        state.b.good = false;
        state.b.tries = 3;
        let bytes = {
            let mut e = Grubenv::parse(&esp.read(layout::ESP_GRUBENV).unwrap()).unwrap();
            state.to_env(&mut e).unwrap();
            e.to_bytes().unwrap()
        };
        esp.write(layout::ESP_GRUBENV, &bytes).unwrap();
        let back = Grubenv::parse(&esp.read(layout::ESP_GRUBENV).unwrap()).unwrap();
        assert_eq!(back.get("EXTRA"), Some("kept"));
        assert_eq!(BootState::from_env(&back).unwrap(), state);

        // Junk goes through byte for byte, and no longer parses.
        let junk: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        esp.write(layout::ESP_GRUBENV, &junk).unwrap();
        assert_eq!(esp.read(layout::ESP_GRUBENV).unwrap(), junk);
        assert!(Grubenv::parse(&junk).is_err());

        let e = esp.read("/EFI/atoll/absent").unwrap_err();
        assert!(matches!(e, DiskError::Tool { .. }), "{e}");
    }

    #[test]
    fn flips_one_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [1u8, 2, 3, 4]).unwrap();
        assert_eq!(flip_byte(&path, 2).unwrap(), 3);
        assert_eq!(std::fs::read(&path).unwrap(), [1, 2, 3 ^ 0xff, 4]);
        assert!(flip_byte(&path, 10).is_err());
    }

    #[test]
    fn raw_copy_and_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(4 * 1024 * 1024).unwrap();
        f.write_all_at(b"atoll", 1024 * 1024).unwrap();
        let copy = prepare_raw_copy(&base).unwrap();
        assert_eq!(
            std::fs::read(copy.path()).unwrap(),
            std::fs::read(&base).unwrap()
        );
        let overlay = dir.path().join("o.qcow2");
        create_overlay(&base, &overlay, Some(8 * 1024 * 1024)).unwrap();
        let info = run("qemu-img", &["info".as_ref(), overlay.as_os_str()]).unwrap();
        let info = String::from_utf8_lossy(&info);
        assert!(info.contains("8 MiB"), "{info}");
        assert!(info.contains("base.raw"), "{info}");
    }

    #[test]
    fn reads_build_json() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("atoll.raw");
        let h = "ab".repeat(32);
        // As image-build writes it, with more fields than the tests use.
        std::fs::write(
            dir.path().join("build.json"),
            format!(
                r#"{{"version":"0.1.0","build_id":"x","verity_root_hash":"{h}",
                "verity_salt":"{}","init_data_start":96,"init_data_end":63682,"qcow2":null}}"#,
                "cd".repeat(32)
            ),
        )
        .unwrap();
        let info = build_info(&image).unwrap();
        assert_eq!(info.verity_root_hash, h);
        assert_eq!(info.version, "0.1.0");
        assert_eq!((info.init_data_start, info.init_data_end), (96, 63682));
        std::fs::write(
            dir.path().join("build.json"),
            r#"{"version":"x","verity_root_hash":"zz","init_data_start":0,"init_data_end":1}"#,
        )
        .unwrap();
        assert!(build_info(&image).is_err());
        std::fs::write(dir.path().join("build.json"), r#"{"version":"x"}"#).unwrap();
        assert!(build_info(&image).is_err());
    }

    #[test]
    fn missing_image_names_the_build_command() {
        let e = checked_image(Path::new("/nonexistent/atoll.raw"), "test").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("./test.sh") && msg.contains("image-build"),
            "{msg}"
        );
    }
}
