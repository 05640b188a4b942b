//! The mount and filesystem calls container setup makes, behind a trait
//! ([`MountOps`]) with the real implementation ([`LinuxMounts`]) and a
//! recording double ([`RecordingMounts`]), so the logic that decides what
//! to mount is unit-tested without root (as youki's `syscall` module).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// What is at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    /// Anything that is not a directory.
    File,
}

/// Mount and filesystem calls.
pub trait MountOps {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Create an empty file (and its parents) if nothing is there.
    fn create_file(&self, path: &Path) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// What is at `path`, following symlinks; `None` if nothing.
    fn kind(&self, path: &Path) -> Option<FileKind>;
    /// The flags of the mount at `path` that a bind remount must repeat:
    /// nosuid, nodev, noexec and the atime mode (`MS_STRICTATIME` when it
    /// is neither noatime nor relatime). In a user namespace they are
    /// locked on a mount from the host, and a remount that leaves one out
    /// fails with EPERM.
    fn kept_flags(&self, path: &Path) -> io::Result<MsFlags>;
    /// `dest` (absolute, as the container sees it) under `root` with every
    /// symlink resolved as if `root` were `/` (never leaving it).
    fn resolve_in_root(&self, root: &Path, dest: &Path) -> io::Result<PathBuf>;
}

/// The real calls (nix, std::fs).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounts;

impl MountOps for LinuxMounts {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        nix::unistd::pivot_root(new_root, put_old).map_err(io::Error::from)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io::Error::from)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        if path.symlink_metadata().is_ok() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn kept_flags(&self, path: &Path) -> io::Result<MsFlags> {
        use nix::sys::statvfs::FsFlags;
        let f = nix::sys::statvfs::statvfs(path)?.flags();
        let mut out = MsFlags::empty();
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(st) {
                out |= ms;
            }
        }
        if !out.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
            out |= MsFlags::MS_STRICTATIME;
        }
        Ok(out)
    }

    fn kind(&self, path: &Path) -> Option<FileKind> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.is_dir() {
            FileKind::Dir
        } else {
            FileKind::File
        })
    }

    fn resolve_in_root(&self, root: &Path, dest: &Path) -> io::Result<PathBuf> {
        // As filepath-securejoin: walk the components, expanding each
        // symlink found relative to `root`; `..` never climbs above it.
        let mut pending: VecDeque<OsString> = normal_components(dest);
        let mut resolved = PathBuf::new();
        let mut links = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                resolved.pop();
                continue;
            }
            let candidate = root.join(&resolved).join(&c);
            match candidate.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                    }
                    let target = std::fs::read_link(&candidate)?;
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    for t in normal_components(&target).into_iter().rev() {
                        pending.push_front(t);
                    }
                }
                _ => resolved.push(c),
            }
        }
        Ok(root.join(resolved))
    }
}

/// Normal components and `..`, in order (`/` and `.` dropped).
fn normal_components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount {
        target: PathBuf,
        flags: MntFlags,
    },
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chdir(PathBuf),
    MkdirAll(PathBuf),
    CreateFile(PathBuf),
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
}

/// The test double: records every call, succeeds, and answers `kind`
/// and `kept_flags` from tables (a path not in `flags`: none).
#[derive(Debug, Default)]
pub struct RecordingMounts {
    pub calls: RefCell<Vec<Call>>,
    pub kinds: HashMap<PathBuf, FileKind>,
    pub flags: HashMap<PathBuf, MsFlags>,
}

impl RecordingMounts {
    /// The recorded calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn push(&self, call: Call) -> io::Result<()> {
        self.calls.borrow_mut().push(call);
        Ok(())
    }
}

impl MountOps for RecordingMounts {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount {
            target: target.to_path_buf(),
            flags,
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        self.push(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chdir(path.to_path_buf()))
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.push(Call::MkdirAll(path.to_path_buf()))
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        self.push(Call::CreateFile(path.to_path_buf()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
    }

    fn kind(&self, path: &Path) -> Option<FileKind> {
        self.kinds.get(path).copied()
    }

    fn kept_flags(&self, path: &Path) -> io::Result<MsFlags> {
        Ok(self.flags.get(path).copied().unwrap_or(MsFlags::empty()))
    }

    fn resolve_in_root(&self, root: &Path, dest: &Path) -> io::Result<PathBuf> {
        Ok(root.join(dest.strip_prefix("/").unwrap_or(dest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_keeps_symlinks_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).expect("mkdir");
        std::os::unix::fs::symlink("/real", root.join("abs")).expect("symlink");
        std::os::unix::fs::symlink("../../../../etc", root.join("real/up")).expect("symlink");
        let sys = LinuxMounts;
        assert_eq!(
            sys.resolve_in_root(root, Path::new("/abs/sub/x"))
                .expect("resolves"),
            root.join("real/sub/x")
        );
        assert_eq!(
            sys.resolve_in_root(root, Path::new("/real/up/passwd"))
                .expect("resolves"),
            root.join("etc/passwd")
        );
        assert_eq!(
            sys.resolve_in_root(root, Path::new("/../../x"))
                .expect("resolves"),
            root.join("x")
        );
    }

    #[test]
    fn resolve_in_root_stops_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/b", dir.path().join("a")).expect("symlink");
        std::os::unix::fs::symlink("/a", dir.path().join("b")).expect("symlink");
        assert!(LinuxMounts
            .resolve_in_root(dir.path(), Path::new("/a/x"))
            .is_err());
    }
}
