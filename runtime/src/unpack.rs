//! Safe unpacking of one image layer (a tar, plain, gzip or zstd) into an
//! empty directory that becomes an overlayfs lower dir.
//!
//! Every entry is placed by walking its path one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from the layer root, so nothing is
//! ever written through a symlink and nothing lands outside the root:
//!
//! - **`..`** is resolved by name (`a/../b` is `b`); a path that climbs
//!   above the root is refused.
//! - **Absolute paths** (`/etc/x`) are refused. Image builders write
//!   relative names (`etc/x`, `./etc/x`); a layer with absolute names is
//!   malformed or hostile, and guessing what it meant is how unpackers get
//!   CVEs.
//! - **Symlinks** may point anywhere (they are resolved inside the
//!   container later), but an entry whose parent is a symlink is refused:
//!   `l -> /etc` then `l/passwd` never writes `/etc/passwd`.
//! - **Hard links** must name a regular file or symlink already unpacked in
//!   this layer, reached by the same walk; absolute or escaping targets are
//!   refused.
//! - **Device nodes and FIFOs** are refused by default
//!   ([`DevicePolicy::Refuse`]): container images have no business shipping
//!   them (the runtime gives each container its own `/dev`).
//!   [`DevicePolicy::Create`] creates them, as root only.
//! - **Whiteouts** become what overlayfs reads, so that a layer is unpacked
//!   once and used as a lower dir as it is: `.wh.NAME` becomes a 0/0
//!   character device `NAME`, and `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory. Both need root
//!   (CAP_MKNOD, CAP_SYS_ADMIN); without it the unpack fails with
//!   [`UnpackError::NeedsRoot`]. As the OCI spec says, a whiteout hides
//!   only lower layers: an entry of the same layer is kept.
//! - Modes are kept, setuid/setgid/sticky bits included; owners are kept
//!   when running as root (else files belong to the caller); mtimes are
//!   kept (directories' set once their contents are in place). The
//!   `security.capability` and `user.*` xattrs from PAX headers are kept
//!   (root only for the first); no other xattr is, so a layer cannot plant
//!   `trusted.overlay.*` attributes.
//! - Limits: total file bytes, entry count and path length
//!   ([`UnpackOptions`]).
//!
//! The digest of the compressed stream and of the tar itself (the
//! `diff_id`) are computed while reading, over the whole stream, and
//! checked against what the manifest and config say. A mismatch is an
//! error after the fact, so unpack into a scratch directory and move it
//! into place only on success (the store does).

use std::ffi::{CString, OsStr};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Digest, HashingReader};
use crate::manifest::Compression;

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The entry name that marks its directory opaque.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The overlayfs xattr for an opaque directory.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The longest entry path accepted (Linux's PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// Errors from unpacking a layer; each names the entry (its path in the
/// tar) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    #[error("reading tar entry {entry:?}")]
    Tar {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {entry:?}: absolute paths are refused")]
    Absolute { entry: String },
    #[error("tar entry {entry:?}: the path leaves the layer root")]
    Escapes { entry: String },
    #[error("tar entry {entry:?}: path is too long or has a NUL byte")]
    BadPath { entry: String },
    #[error("tar entry {entry:?}: parent {component:?} is a symlink; nothing is written through a symlink")]
    ThroughSymlink { entry: String, component: String },
    #[error("tar entry {entry:?}: parent {component:?} is not a directory")]
    NotADirectory { entry: String, component: String },
    #[error("tar entry {entry:?}: would replace the directory of the same layer")]
    ReplacesDirectory { entry: String },
    #[error(
        "tar entry {entry:?}: hard link target {target:?} is absolute or leaves the layer root"
    )]
    HardlinkOutside { entry: String, target: String },
    #[error("tar entry {entry:?}: hard link target {target:?} is not a file or symlink already in this layer")]
    HardlinkTarget { entry: String, target: String },
    #[error(
        "tar entry {entry:?}: {kind} entries are refused (device nodes and FIFOs are not unpacked)"
    )]
    Device { entry: String, kind: &'static str },
    #[error("tar entry {entry:?}: {what} needs root")]
    NeedsRoot { entry: String, what: &'static str },
    #[error("tar entry {entry:?}: unsupported entry type {kind:?}")]
    Unsupported { entry: String, kind: String },
    #[error("tar entry {entry:?}: invalid owner {id}")]
    BadOwner { entry: String, id: u64 },
    #[error("tar entry {entry:?}: {op}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer holds more than {max} bytes of files")]
    TooLarge { max: u64 },
    #[error("layer holds more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("layer blob digest is {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("layer diff_id (digest of the tar) is {actual}, expected {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// What to do with device nodes and FIFOs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Refuse the layer (the default).
    #[default]
    Refuse,
    /// Create them (root only; [`UnpackError::NeedsRoot`] otherwise).
    Create,
}

/// Limits and policies for [`unpack_layer`].
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub devices: DevicePolicy,
    /// The most bytes of file contents the layer may hold.
    pub max_bytes: u64,
    /// The most entries the layer may hold.
    pub max_entries: u64,
    /// The digest the compressed blob must have (from the manifest).
    pub digest: Option<Digest>,
    /// The digest the uncompressed tar must have (from the config).
    pub diff_id: Option<Digest>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            devices: DevicePolicy::Refuse,
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
            digest: None,
            diff_id: None,
        }
    }
}

/// What an unpack read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// Digest and size of the stream as given (compressed).
    pub digest: Digest,
    pub size: u64,
    /// Digest and size of the tar.
    pub diff_id: Digest,
    pub tar_size: u64,
    pub compression: Compression,
    pub entries: u64,
}

/// The decompressor in front of the tar, kept as a concrete type so the
/// compressed stream can be drained and hashed to its end afterwards.
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

impl<R: BufRead> Decoder<R> {
    fn into_inner(self) -> R {
        match self {
            Self::Plain(r) => r,
            Self::Gzip(r) => r.into_inner(),
            Self::Zstd(r) => r.finish(),
        }
    }
}

/// Unpacks the layer stream `blob` (compression told by its first bytes)
/// into `root`, an existing directory that should be empty, and checks
/// its digests against `options`.
pub fn unpack_layer<R: Read>(
    blob: R,
    root: &Path,
    options: &UnpackOptions,
) -> Result<Unpacked, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: root.to_owned(),
        source: e.into(),
    })?;
    let mut compressed = BufReader::with_capacity(128 << 10, HashingReader::new(blob));
    let head = compressed.fill_buf().map_err(UnpackError::Read)?;
    let compression = Compression::sniff(head);
    let decoder = match compression {
        Compression::None => Decoder::Plain(compressed),
        Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(compressed)),
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(compressed).map_err(UnpackError::Read)?,
        ),
    };
    let mut archive = tar::Archive::new(HashingReader::new(decoder));
    let mut unpacker = Unpacker {
        root: root_fd,
        options,
        is_root: rustix::process::geteuid().is_root(),
        bytes: 0,
        entries: 0,
        dirs: Vec::new(),
    };
    let entries = archive.entries().map_err(UnpackError::Read)?;
    for entry in entries {
        let entry = entry.map_err(|source| UnpackError::Tar {
            entry: "(next header)".to_owned(),
            source,
        })?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_dirs()?;

    // Hash the rest of the tar (end blocks, padding) and of the blob,
    // within the byte limit (trailing zeros are a cheap bomb too).
    let left = options.max_bytes.saturating_sub(unpacker.bytes);
    let mut tar_stream = archive.into_inner();
    drain(&mut tar_stream, left, options.max_bytes)?;
    let (decoder, diff_id, tar_size) = tar_stream.into_parts();
    let mut rest = decoder.into_inner();
    drain(&mut rest, left, options.max_bytes)?;
    let (digest, size) = rest.into_inner().finish();
    check(options, digest, diff_id)?;
    Ok(Unpacked {
        digest,
        size,
        diff_id,
        tar_size,
        compression,
        entries: unpacker.entries,
    })
}

/// Reads `r` to its end, refusing more than `left` bytes.
fn drain(r: &mut impl Read, left: u64, max: u64) -> Result<(), UnpackError> {
    let n = io::copy(&mut r.take(left.saturating_add(1)), &mut io::sink())
        .map_err(UnpackError::Read)?;
    if n > left {
        return Err(UnpackError::TooLarge { max });
    }
    Ok(())
}

fn check(options: &UnpackOptions, digest: Digest, diff_id: Digest) -> Result<(), UnpackError> {
    if let Some(expected) = options.digest {
        if expected != digest {
            return Err(UnpackError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
    }
    if let Some(expected) = options.diff_id {
        if expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                expected,
                actual: diff_id,
            });
        }
    }
    Ok(())
}

/// Extended attributes to set: name and value.
type Xattrs = Vec<(String, Vec<u8>)>;

/// Owner, mode and times of an entry, after PAX overrides.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    options: &'a UnpackOptions,
    is_root: bool,
    bytes: u64,
    entries: u64,
    /// Directories whose mode and mtime are set at the end.
    dirs: Vec<(Vec<Vec<u8>>, Meta)>,
}

/// An entry path split into components under the root.
fn normalise(raw: &[u8], entry: &str) -> Result<Vec<Vec<u8>>, UnpackError> {
    if raw.len() > PATH_MAX || raw.contains(&0) {
        return Err(UnpackError::BadPath {
            entry: entry.to_owned(),
        });
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Absolute {
                    entry: entry.to_owned(),
                })
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(UnpackError::Escapes {
                        entry: entry.to_owned(),
                    });
                }
            }
            Component::Normal(name) => parts.push(name.as_bytes().to_vec()),
        }
    }
    Ok(parts)
}

fn cstring(name: &[u8], entry: &str) -> Result<CString, UnpackError> {
    CString::new(name).map_err(|_| UnpackError::BadPath {
        entry: entry.to_owned(),
    })
}

fn is_whiteout_device(stat: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker<'_> {
    fn io(&self, entry: &str, op: &'static str) -> impl Fn(Errno) -> UnpackError + '_ {
        let entry = entry.to_owned();
        move |e| UnpackError::Io {
            entry: entry.clone(),
            op,
            source: e.into(),
        }
    }

    /// Opens the directory `parts` names under the root, creating missing
    /// ones when `create`, never following a symlink.
    fn open_dir(
        &self,
        parts: &[Vec<u8>],
        entry: &str,
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let mut dir: Option<OwnedFd> = None;
        for (i, name) in parts.iter().enumerate() {
            let cname = cstring(name, entry)?;
            let component = || String::from_utf8_lossy(&parts[..=i].join(&b'/')).into_owned();
            let parent = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(parent, &cname, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, &cname, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(entry, "creating a parent directory")(e)),
                    }
                    rustix::fs::openat(parent, &cname, flags, Mode::empty())
                        .map_err(self.io(entry, "opening a parent directory"))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let stat = rustix::fs::statat(parent, &cname, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(self.io(entry, "inspecting a parent"))?;
                    match FileType::from_raw_mode(stat.st_mode) {
                        FileType::Symlink => {
                            return Err(UnpackError::ThroughSymlink {
                                entry: entry.to_owned(),
                                component: component(),
                            })
                        }
                        // `.wh.x` then `x/y` in one layer: x is deleted
                        // from the lower layers and made anew here.
                        FileType::CharacterDevice if create && is_whiteout_device(&stat) => {
                            rustix::fs::unlinkat(parent, &cname, AtFlags::empty())
                                .map_err(self.io(entry, "removing a whiteout"))?;
                            rustix::fs::mkdirat(parent, &cname, Mode::from_raw_mode(0o755))
                                .map_err(self.io(entry, "creating a parent directory"))?;
                            let fd = rustix::fs::openat(parent, &cname, flags, Mode::empty())
                                .map_err(self.io(entry, "opening a parent directory"))?;
                            rustix::fs::fsetxattr(
                                &fd,
                                OVERLAY_OPAQUE_XATTR,
                                b"y",
                                XattrFlags::empty(),
                            )
                            .map_err(self.io(entry, "marking a directory opaque"))?;
                            fd
                        }
                        _ if !create => return Ok(None),
                        _ => {
                            return Err(UnpackError::NotADirectory {
                                entry: entry.to_owned(),
                                component: component(),
                            })
                        }
                    }
                }
                Err(e) => return Err(self.io(entry, "opening a parent directory")(e)),
            };
            dir = Some(fd);
        }
        match dir {
            Some(d) => Ok(Some(d)),
            None => rustix::fs::openat(
                &self.root,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map(Some)
            .map_err(self.io(entry, "opening the layer root")),
        }
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(Meta, Xattrs), UnpackError> {
        let tar_err = |source| UnpackError::Tar {
            entry: name.to_owned(),
            source,
        };
        let header = entry.header();
        let mut uid = header.uid().map_err(tar_err)?;
        let mut gid = header.gid().map_err(tar_err)?;
        let mut mtime = header.mtime().map_err(tar_err)? as i64;
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(tar_err)? {
            for ext in pax {
                let ext = ext.map_err(tar_err)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()?
                        .split('.')
                        .next()?
                        .parse::<i64>()
                        .ok()
                };
                match key {
                    "uid" => uid = number().map_or(uid, |n| n as u64),
                    "gid" => gid = number().map_or(gid, |n| n as u64),
                    "mtime" => mtime = number().unwrap_or(mtime),
                    _ => {
                        if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                            if attr == "security.capability" || attr.starts_with("user.") {
                                xattrs.push((attr.to_owned(), value.to_vec()));
                            }
                        }
                    }
                }
            }
        }
        let id = |id: u64| {
            u32::try_from(id)
                .ok()
                .filter(|&i| i != u32::MAX)
                .ok_or(UnpackError::BadOwner {
                    entry: name.to_owned(),
                    id,
                })
        };
        Ok((
            Meta {
                mode,
                uid: id(uid)?,
                gid: id(gid)?,
                mtime,
            },
            xattrs,
        ))
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        self.entries += 1;
        if self.entries > self.options.max_entries {
            return Err(UnpackError::TooManyEntries {
                max: self.options.max_entries,
            });
        }
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let mut parts = normalise(&raw_path, &name)?;
        let Some(last) = parts.pop() else {
            // The root itself ("./"): its mode is the store's business.
            if kind.is_dir() {
                return Ok(());
            }
            return Err(UnpackError::BadPath { entry: name });
        };
        let (meta, xattrs) = self.meta(&mut entry, &name)?;

        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&parts, hidden, &name);
        }

        let parent = self
            .open_dir(&parts, &name, true)?
            .ok_or_else(|| UnpackError::BadPath {
                entry: name.clone(),
            })?;
        let cname = cstring(&last, &name)?;
        let existing = match rustix::fs::statat(&parent, &cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Some(FileType::from_raw_mode(stat.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(self.io(&name, "inspecting the entry")(e)),
        };

        if kind.is_dir() {
            match existing {
                Some(FileType::Directory) => {}
                Some(_) => {
                    rustix::fs::unlinkat(&parent, &cname, AtFlags::empty())
                        .map_err(self.io(&name, "replacing an entry"))?;
                    self.mkdir(&parent, &cname, &name)?;
                }
                None => self.mkdir(&parent, &cname, &name)?,
            }
            if !xattrs.is_empty() || self.is_root {
                let fd = rustix::fs::openat(
                    &parent,
                    &cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.io(&name, "opening the directory"))?;
                self.set_xattrs(&fd, &xattrs, &name)?;
            }
            parts.push(last);
            self.dirs.push((parts, meta));
            return Ok(());
        }

        // Every other kind replaces what is there, unless it is a directory.
        let replace = |this: &Self| -> Result<(), UnpackError> {
            match existing {
                None => Ok(()),
                Some(FileType::Directory) => Err(UnpackError::ReplacesDirectory {
                    entry: name.clone(),
                }),
                Some(_) => rustix::fs::unlinkat(&parent, &cname, AtFlags::empty())
                    .map_err(this.io(&name, "replacing an entry")),
            }
        };

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                replace(self)?;
                let fd = rustix::fs::openat(
                    &parent,
                    &cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.io(&name, "creating the file"))?;
                let mut file = std::fs::File::from(fd);
                let left = self.options.max_bytes.saturating_sub(self.bytes);
                let copied = io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut file)
                    .map_err(|source| UnpackError::Tar {
                        entry: name.clone(),
                        source,
                    })?;
                if copied > left {
                    return Err(UnpackError::TooLarge {
                        max: self.options.max_bytes,
                    });
                }
                self.bytes += copied;
                let fd = OwnedFd::from(file);
                self.set_xattrs(&fd, &xattrs, &name)?;
                self.set_meta_fd(&fd, meta, &name)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                if target.is_empty() {
                    return Err(UnpackError::BadPath { entry: name });
                }
                let ctarget = cstring(&target, &name)?;
                replace(self)?;
                rustix::fs::symlinkat(&ctarget, &parent, &cname)
                    .map_err(self.io(&name, "creating the symlink"))?;
                self.set_meta_at(&parent, &cname, meta, &name)
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target_name = String::from_utf8_lossy(&target).into_owned();
                let outside = || UnpackError::HardlinkOutside {
                    entry: name.clone(),
                    target: target_name.clone(),
                };
                let missing = || UnpackError::HardlinkTarget {
                    entry: name.clone(),
                    target: target_name.clone(),
                };
                let mut tparts = match normalise(&target, &name) {
                    Ok(p) => p,
                    Err(UnpackError::Absolute { .. } | UnpackError::Escapes { .. }) => {
                        return Err(outside())
                    }
                    Err(e) => return Err(e),
                };
                let tlast = tparts.pop().ok_or_else(missing)?;
                if tparts == parts && tlast == last {
                    return Ok(()); // a link to itself: already there
                }
                let tparent = match self.open_dir(&tparts, &name, false) {
                    Ok(Some(d)) => d,
                    Ok(None) | Err(UnpackError::ThroughSymlink { .. }) => return Err(missing()),
                    Err(e) => return Err(e),
                };
                let ctlast = cstring(&tlast, &name)?;
                let stat = rustix::fs::statat(&tparent, &ctlast, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|_| missing())?;
                match FileType::from_raw_mode(stat.st_mode) {
                    FileType::RegularFile | FileType::Symlink => {}
                    _ => return Err(missing()),
                }
                replace(self)?;
                rustix::fs::linkat(&tparent, &ctlast, &parent, &cname, AtFlags::empty())
                    .map_err(self.io(&name, "creating the hard link"))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (what, file_type) = match kind {
                    tar::EntryType::Char => ("character device", FileType::CharacterDevice),
                    tar::EntryType::Block => ("block device", FileType::BlockDevice),
                    _ => ("FIFO", FileType::Fifo),
                };
                if self.options.devices == DevicePolicy::Refuse {
                    return Err(UnpackError::Device {
                        entry: name.clone(),
                        kind: what,
                    });
                }
                if !self.is_root {
                    return Err(UnpackError::NeedsRoot {
                        entry: name.clone(),
                        what: "creating a device node",
                    });
                }
                let header = entry.header();
                let tar_err = |source| UnpackError::Tar {
                    entry: name.clone(),
                    source,
                };
                let (major, minor) = if file_type == FileType::Fifo {
                    (0, 0)
                } else {
                    (
                        header.device_major().map_err(tar_err)?.unwrap_or(0),
                        header.device_minor().map_err(tar_err)?.unwrap_or(0),
                    )
                };
                replace(self)?;
                rustix::fs::mknodat(
                    &parent,
                    &cname,
                    file_type,
                    Mode::from_raw_mode(meta.mode & 0o777),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(self.io(&name, "creating the device node"))?;
                self.set_meta_at(&parent, &cname, meta, &name)?;
                rustix::fs::chmodat(
                    &parent,
                    &cname,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(self.io(&name, "setting the mode"))
            }
            other => Err(UnpackError::Unsupported {
                entry: name,
                kind: format!("{other:?}"),
            }),
        }
    }

    fn mkdir(&self, parent: &OwnedFd, cname: &CString, name: &str) -> Result<(), UnpackError> {
        rustix::fs::mkdirat(parent, cname, Mode::from_raw_mode(0o755))
            .map_err(self.io(name, "creating the directory"))
    }

    fn set_xattrs(
        &self,
        fd: &OwnedFd,
        xattrs: &[(String, Vec<u8>)],
        name: &str,
    ) -> Result<(), UnpackError> {
        for (key, value) in xattrs {
            if key.starts_with("security.") && !self.is_root {
                continue;
            }
            rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty())
                .map_err(self.io(name, "setting an xattr"))?;
        }
        Ok(())
    }

    /// Owner (as root), mode and mtime of an open file or directory; the
    /// mode after the owner, since chown clears setuid bits.
    fn set_meta_fd(&self, fd: &OwnedFd, meta: Meta, name: &str) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(self.io(name, "setting the owner"))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(self.io(name, "setting the mode"))?;
        rustix::fs::futimens(fd, &timestamps(meta.mtime))
            .map_err(self.io(name, "setting the mtime"))
    }

    /// Owner (as root) and mtime of a symlink or device, not following it.
    fn set_meta_at(
        &self,
        parent: &OwnedFd,
        cname: &CString,
        meta: Meta,
        name: &str,
    ) -> Result<(), UnpackError> {
        if self.is_root {
            rustix::fs::chownat(
                parent,
                cname,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(self.io(name, "setting the owner"))?;
        }
        rustix::fs::utimensat(
            parent,
            cname,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(self.io(name, "setting the mtime"))
    }

    /// `.wh.NAME` or `.wh..wh..opq` in the directory `parts`.
    fn whiteout(
        &mut self,
        parts: &[Vec<u8>],
        hidden: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        let opaque = hidden == &WHITEOUT_OPAQUE.as_bytes()[WHITEOUT_PREFIX.len()..];
        if !opaque && hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs bookkeeping: skip them.
            return Ok(());
        }
        if !opaque && (hidden.is_empty() || hidden == b"." || hidden == b"..") {
            return Err(UnpackError::BadPath {
                entry: name.to_owned(),
            });
        }
        if !self.is_root {
            return Err(UnpackError::NeedsRoot {
                entry: name.to_owned(),
                what: if opaque {
                    "an opaque directory (the trusted.overlay.opaque xattr)"
                } else {
                    "a whiteout (a 0/0 character device for overlayfs)"
                },
            });
        }
        let dir = self
            .open_dir(parts, name, true)?
            .ok_or_else(|| UnpackError::BadPath {
                entry: name.to_owned(),
            })?;
        if opaque {
            return rustix::fs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(self.io(name, "marking the directory opaque"));
        }
        let chidden = cstring(hidden, name)?;
        match rustix::fs::statat(&dir, &chidden, AtFlags::SYMLINK_NOFOLLOW) {
            // An entry of this same layer stays; a whiteout is there already.
            Ok(_) => Ok(()),
            Err(Errno::NOENT) => rustix::fs::mknodat(
                &dir,
                &chidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(self.io(name, "creating the whiteout")),
            Err(e) => Err(self.io(name, "inspecting the whiteout's target")(e)),
        }
    }

    /// Sets directories' modes and mtimes once their contents are in.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (parts, meta) in dirs.iter().rev() {
            let name = String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
            // Replaced since by another kind of entry: nothing to do.
            let Ok(Some(fd)) = self.open_dir(parts, &name, false) else {
                continue;
            };
            self.set_meta_fd(&fd, *meta, &name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use proptest::prelude::*;

    use super::*;

    /// One tar entry, written with raw header bytes so that hostile names
    /// (`..`, absolute) get in as they are.
    #[derive(Clone, Debug)]
    pub(crate) enum E {
        Dir(&'static str),
        File(&'static str, &'static [u8]),
        Mode(&'static str, u32, u32),
        Symlink(&'static str, &'static str),
        Hardlink(&'static str, &'static str),
        Char(&'static str),
        Block(&'static str),
        Fifo(&'static str),
    }

    pub(crate) fn raw(
        builder: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &[u8],
        link: &[u8],
        data: &[u8],
        mode: u32,
        uid: u64,
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_600_000_000);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }

    pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            use tar::EntryType as T;
            match e {
                E::Dir(p) => raw(&mut b, T::Directory, p.as_bytes(), b"", b"", 0o755, 0),
                E::File(p, d) => raw(&mut b, T::Regular, p.as_bytes(), b"", d, 0o644, 0),
                E::Mode(p, mode, uid) => raw(
                    &mut b,
                    T::Regular,
                    p.as_bytes(),
                    b"",
                    b"x",
                    *mode,
                    (*uid).into(),
                ),
                E::Symlink(p, t) => raw(
                    &mut b,
                    T::Symlink,
                    p.as_bytes(),
                    t.as_bytes(),
                    b"",
                    0o777,
                    0,
                ),
                E::Hardlink(p, t) => {
                    raw(&mut b, T::Link, p.as_bytes(), t.as_bytes(), b"", 0o644, 0)
                }
                E::Char(p) => raw(&mut b, T::Char, p.as_bytes(), b"", b"", 0o666, 0),
                E::Block(p) => raw(&mut b, T::Block, p.as_bytes(), b"", b"", 0o660, 0),
                E::Fifo(p) => raw(&mut b, T::Fifo, p.as_bytes(), b"", b"", 0o644, 0),
            }
        }
        b.into_inner().unwrap()
    }

    /// A scratch dir with `root/` to unpack into and `outside/` beside it
    /// (holding one canary file) that must never change.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("root")).unwrap();
            fs::create_dir(dir.path().join("outside")).unwrap();
            fs::write(dir.path().join("outside/canary"), b"canary").unwrap();
            Self { dir }
        }
        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        fn unpack(&self, bytes: &[u8]) -> Result<Unpacked, UnpackError> {
            self.unpack_with(bytes, &UnpackOptions::default())
        }
        fn unpack_with(
            &self,
            bytes: &[u8],
            options: &UnpackOptions,
        ) -> Result<Unpacked, UnpackError> {
            let r = unpack_layer(bytes, &self.root(), options);
            self.assert_outside_untouched();
            r
        }
        fn assert_outside_untouched(&self) {
            let mut top: Vec<_> = fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            top.sort();
            assert_eq!(top, ["outside", "root"]);
            let inside: Vec<_> = fs::read_dir(self.dir.path().join("outside"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(inside, ["canary"]);
            assert_eq!(
                fs::read(self.dir.path().join("outside/canary")).unwrap(),
                b"canary"
            );
        }
    }

    #[test]
    fn unpacks_files_links_and_metadata() {
        let s = Scratch::new();
        let tar = tar_of(&[
            E::Dir("./usr/"),
            E::Dir("usr/bin"),
            E::File("usr/bin/hello", b"#!/bin/sh\necho hi\n"),
            E::Mode("usr/bin/su", 0o4755, 1234),
            E::Symlink("bin", "usr/bin"),
            E::Symlink("etc/mtab", "/proc/self/mounts"),
            E::Hardlink("usr/bin/hello2", "usr/bin/hello"),
            E::File("a/./b/../c", b"c"),
            E::File("usr/bin/hello3", b"old"),
            E::File("usr/bin/hello3", b"new"),
        ]);
        let out = s.unpack(&tar).unwrap();
        assert_eq!(out.entries, 10);
        assert_eq!(out.compression, Compression::None);
        assert_eq!(out.diff_id, Digest::of(&tar));
        assert_eq!(out.digest, out.diff_id);
        let r = s.root();
        assert_eq!(
            fs::read(r.join("usr/bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let su = fs::metadata(r.join("usr/bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        if rustix::process::geteuid().is_root() {
            assert_eq!(su.uid(), 1234);
        }
        assert_eq!(su.mtime(), 1_600_000_000);
        assert_eq!(fs::read_link(r.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(
            fs::read_link(r.join("etc/mtab")).unwrap(),
            Path::new("/proc/self/mounts")
        );
        assert_eq!(
            fs::symlink_metadata(r.join("bin")).unwrap().mtime(),
            1_600_000_000
        );
        let h1 = fs::metadata(r.join("usr/bin/hello")).unwrap();
        let h2 = fs::metadata(r.join("usr/bin/hello2")).unwrap();
        assert_eq!(h1.ino(), h2.ino());
        assert_eq!(fs::read(r.join("a/c")).unwrap(), b"c");
        assert_eq!(fs::read(r.join("usr/bin/hello3")).unwrap(), b"new");
        // Directories' mtimes are set after their contents.
        assert_eq!(
            fs::metadata(r.join("usr/bin")).unwrap().mtime(),
            1_600_000_000
        );
    }

    /// Every escape in the list, each refused with an error that
    /// names the entry.
    #[test]
    fn refuses_every_escape() {
        type Case = (Vec<E>, &'static str, fn(&UnpackError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![E::File("../x", b"x")], "../x", |e| {
                matches!(e, UnpackError::Escapes { .. })
            }),
            (vec![E::File("/abs", b"x")], "/abs", |e| {
                matches!(e, UnpackError::Absolute { .. })
            }),
            (vec![E::File("a/../../x", b"x")], "a/../../x", |e| {
                matches!(e, UnpackError::Escapes { .. })
            }),
            (
                vec![E::Dir("a"), E::File("a/../../outside/canary", b"x")],
                "a/../../outside/canary",
                |e| matches!(e, UnpackError::Escapes { .. }),
            ),
            (
                vec![E::Symlink("l", "/etc"), E::File("l/passwd", b"x")],
                "l/passwd",
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (
                vec![E::Symlink("l", "../.."), E::File("l/x", b"x")],
                "l/x",
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (
                vec![E::Symlink("l", "../outside"), E::File("l/canary", b"x")],
                "l/canary",
                |e| matches!(e, UnpackError::ThroughSymlink { .. }),
            ),
            (vec![E::Symlink("l", "."), E::Dir("l/d")], "l/d", |e| {
                matches!(e, UnpackError::ThroughSymlink { .. })
            }),
            (vec![E::Hardlink("h", "/etc/passwd")], "h", |e| {
                matches!(e, UnpackError::HardlinkOutside { .. })
            }),
            (vec![E::Hardlink("h", "../x")], "h", |e| {
                matches!(e, UnpackError::HardlinkOutside { .. })
            }),
            (vec![E::Hardlink("h", "../outside/canary")], "h", |e| {
                matches!(e, UnpackError::HardlinkOutside { .. })
            }),
            (
                vec![E::Symlink("l", "../outside"), E::Hardlink("h", "l/canary")],
                "h",
                |e| matches!(e, UnpackError::HardlinkTarget { .. }),
            ),
            (vec![E::Hardlink("h", "missing")], "h", |e| {
                matches!(e, UnpackError::HardlinkTarget { .. })
            }),
            (vec![E::Dir("d"), E::Hardlink("h", "d")], "h", |e| {
                matches!(e, UnpackError::HardlinkTarget { .. })
            }),
            (vec![E::Char("dev/null")], "dev/null", |e| {
                matches!(e, UnpackError::Device { .. })
            }),
            (vec![E::Block("dev/sda")], "dev/sda", |e| {
                matches!(e, UnpackError::Device { .. })
            }),
            (vec![E::Fifo("run/fifo")], "run/fifo", |e| {
                matches!(e, UnpackError::Device { .. })
            }),
            (vec![E::File("f", b"x"), E::File("f/x", b"x")], "f/x", |e| {
                matches!(e, UnpackError::NotADirectory { .. })
            }),
            (
                vec![E::Dir("d"), E::File("d/x", b"x"), E::File("d", b"x")],
                "d",
                |e| matches!(e, UnpackError::ReplacesDirectory { .. }),
            ),
        ];
        for (entries, entry, kind) in cases {
            let s = Scratch::new();
            let e = s.unpack(&tar_of(&entries)).expect_err(entry);
            assert!(kind(&e), "{entry}: wrong error {e:?}");
            assert!(
                e.to_string().contains(&format!("{entry:?}")),
                "{entry}: error does not name it: {e}"
            );
        }
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = [0u8; 16];
        rustix::fs::lgetxattr(path, name, &mut buf)
            .ok()
            .map(|n| buf[..n].to_vec())
    }

    fn is_whiteout(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: overlay whiteouts need root");
            let s = Scratch::new();
            let e = s.unpack(&tar_of(&[E::File(".wh.x", b"")])).unwrap_err();
            assert!(matches!(e, UnpackError::NeedsRoot { .. }), "{e}");
            return;
        }
        let s = Scratch::new();
        s.unpack(&tar_of(&[
            E::File("etc/.wh.passwd", b""),
            E::Dir("var/cache"),
            E::File("var/cache/.wh..wh..opq", b""),
            E::File("var/cache/new", b"n"),
            E::File("keep", b"k"),
            E::File(".wh.keep", b""),
            E::File(".wh.gone", b""),
            E::File("gone/again", b"a"),
            E::File(".wh..wh.plnk", b""),
            E::File(".wh.later", b""),
            E::File("later", b"l"),
        ]))
        .unwrap();
        let r = s.root();
        assert!(is_whiteout(&r.join("etc/passwd")));
        assert!(!r.join("etc/.wh.passwd").exists());
        assert_eq!(
            xattr(&r.join("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!r.join("var/cache/.wh..wh..opq").exists());
        assert_eq!(fs::read(r.join("var/cache/new")).unwrap(), b"n");
        assert_eq!(
            fs::read(r.join("keep")).unwrap(),
            b"k",
            "a whiteout hides lower layers only"
        );
        assert_eq!(
            xattr(&r.join("gone"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(fs::read(r.join("gone/again")).unwrap(), b"a");
        assert!(!r.join(".wh..wh.plnk").exists());
        assert_eq!(fs::read(r.join("later")).unwrap(), b"l");
        assert_eq!(xattr(&r.join("etc"), OVERLAY_OPAQUE_XATTR), None);

        let s = Scratch::new();
        let e = s
            .unpack(&tar_of(&[E::File("../.wh.outside", b"")]))
            .unwrap_err();
        assert!(matches!(e, UnpackError::Escapes { .. }), "{e}");
        let e = s
            .unpack(&tar_of(&[
                E::Symlink("l", "../outside"),
                E::File("l/.wh.canary", b""),
            ]))
            .unwrap_err();
        assert!(matches!(e, UnpackError::ThroughSymlink { .. }), "{e}");
    }

    #[test]
    fn devices_when_allowed() {
        let s = Scratch::new();
        let options = UnpackOptions {
            devices: DevicePolicy::Create,
            ..Default::default()
        };
        let r = s.unpack_with(
            &tar_of(&[E::Fifo("run/fifo"), E::Char("dev/null")]),
            &options,
        );
        if rustix::process::geteuid().is_root() {
            r.unwrap();
            assert!(fs::symlink_metadata(s.root().join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
            let null = fs::symlink_metadata(s.root().join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        } else {
            assert!(matches!(r.unwrap_err(), UnpackError::NeedsRoot { .. }));
        }
    }

    #[test]
    fn gzip_and_zstd_with_digests() {
        let tar = tar_of(&[E::File("hello", b"hello")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (blob, compression) in [
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
            (&tar, Compression::None),
        ] {
            let good = UnpackOptions {
                digest: Some(Digest::of(blob)),
                diff_id: Some(Digest::of(&tar)),
                ..Default::default()
            };
            let s = Scratch::new();
            let out = s.unpack_with(blob, &good).unwrap();
            assert_eq!(out.compression, compression);
            assert_eq!(out.size, blob.len() as u64);
            assert_eq!(out.tar_size, tar.len() as u64);
            assert_eq!(fs::read(s.root().join("hello")).unwrap(), b"hello");

            let bad_digest = UnpackOptions {
                digest: Some(Digest::of(b"other")),
                ..good.clone()
            };
            let e = Scratch::new().unpack_with(blob, &bad_digest).unwrap_err();
            assert!(matches!(e, UnpackError::DigestMismatch { .. }), "{e}");
            assert!(e.to_string().contains(&Digest::of(b"other").to_string()));
            let bad_diff = UnpackOptions {
                diff_id: Some(Digest::of(b"other")),
                ..good.clone()
            };
            let e = Scratch::new().unpack_with(blob, &bad_diff).unwrap_err();
            assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
        }
        // Bytes after the tar count in the blob digest.
        let mut padded = tar.clone();
        padded.extend_from_slice(&[0u8; 4096]);
        let out = Scratch::new().unpack(&padded).unwrap();
        assert_eq!(out.diff_id, Digest::of(&padded));
        // A truncated gzip stream is an error.
        assert!(Scratch::new().unpack(&gz[..gz.len() / 2]).is_err());
    }

    #[test]
    fn limits() {
        let tar = tar_of(&[E::File("a", &[7u8; 1000]), E::File("b", &[7u8; 1000])]);
        let small = UnpackOptions {
            max_bytes: 1500,
            ..Default::default()
        };
        assert!(matches!(
            Scratch::new().unpack_with(&tar, &small).unwrap_err(),
            UnpackError::TooLarge { .. }
        ));
        let few = UnpackOptions {
            max_entries: 1,
            ..Default::default()
        };
        assert!(matches!(
            Scratch::new().unpack_with(&tar, &few).unwrap_err(),
            UnpackError::TooManyEntries { .. }
        ));
        // A zero bomb after the tar.
        let mut bomb = tar.clone();
        bomb.extend(std::iter::repeat_n(0u8, 10_000));
        let limited = UnpackOptions {
            max_bytes: 5000,
            ..Default::default()
        };
        assert!(matches!(
            Scratch::new().unpack_with(&bomb, &limited).unwrap_err(),
            UnpackError::TooLarge { .. }
        ));
        let mut long = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        long.append_data(&mut h, "d/".repeat(2100) + "f", &b""[..])
            .unwrap();
        let e = Scratch::new()
            .unpack(&long.into_inner().unwrap())
            .unwrap_err();
        assert!(matches!(e, UnpackError::BadPath { .. }), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Scratch::new()
            .unpack(b"not a tar at all, just some words")
            .is_err());
        assert!(unpack_layer(
            &b""[..],
            Path::new("/nonexistent/dir"),
            &UnpackOptions::default()
        )
        .is_err());
    }

    fn name() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just(".."),
            Just("."),
            Just("l"),
            Just(""),
            Just("outside"),
            Just("canary"),
            Just(".wh.a"),
            Just(".wh..wh..opq")
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (any::<bool>(), proptest::collection::vec(name(), 1..5)).prop_map(|(abs, parts)| {
            let p = parts.join("/");
            if abs {
                format!("/{p}")
            } else {
                p
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        /// Random layers of files, dirs, symlinks and hard links with
        /// `..`, absolute and symlinked paths never touch anything outside
        /// the root, whether they unpack or not.
        #[test]
        fn nothing_escapes(entries in proptest::collection::vec((0u8..4, path(), path()), 1..8)) {
            let mut b = tar::Builder::new(Vec::new());
            for (kind, p, target) in &entries {
                use tar::EntryType as T;
                let kind = [T::Regular, T::Directory, T::Symlink, T::Link][*kind as usize];
                raw(&mut b, kind, p.as_bytes(), target.as_bytes(), b"data", 0o644, 0);
            }
            let s = Scratch::new();
            let _ = s.unpack(&b.into_inner().unwrap());
        }
    }
}
