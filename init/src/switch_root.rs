//! Leaving the initramfs: what util-linux's and busybox's `switch_root` do.
//! Move the API file systems into the new root, free the initramfs (it is
//! RAM that nothing else gives back), make the new root `/`, and execute its
//! init.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot, execv, fexecve};

/// linux/magic.h; nix names only tmpfs's.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("{} is missing in the new root", path.display())]
    MissingDir { path: PathBuf },
    #[error("cannot move the mount {} to {}", from.display(), to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("/ is not an initramfs (ramfs or tmpfs with {marker}): not deleting it")]
    NotInitramfs { marker: &'static str },
    #[error("cannot inspect {}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {} the root ({step})", new_root.display())]
    Chroot {
        new_root: PathBuf,
        step: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot execute {}", path.display())]
    Exec {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What deleting the initramfs freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Moves each mount in `mounts` (absolute paths such as `/dev`) to the same
/// place under `new_root`, deletes the initramfs, and makes `new_root` the
/// root and working directory. Only for PID 1 in an initramfs: the
/// deletion is refused unless `/` is a ramfs or tmpfs holding `marker`.
pub fn switch_root(
    new_root: &Path,
    mounts: &[&str],
    marker: &'static str,
) -> Result<Removed, SwitchRootError> {
    let stat = |path: &Path| {
        std::fs::symlink_metadata(path).map_err(|source| SwitchRootError::Stat {
            path: path.to_path_buf(),
            source,
        })
    };
    let fs = statfs("/").map_err(|e| SwitchRootError::Stat {
        path: "/".into(),
        source: e.into(),
    })?;
    if !(fs.filesystem_type() == RAMFS_MAGIC || fs.filesystem_type() == TMPFS_MAGIC)
        || !Path::new(marker).exists()
    {
        return Err(SwitchRootError::NotInitramfs { marker });
    }
    let root_dev = stat(Path::new("/"))?.dev();
    if stat(new_root)?.dev() == root_dev {
        return Err(SwitchRootError::MissingDir {
            path: new_root.to_path_buf(),
        });
    }

    for m in mounts {
        let from = Path::new(m);
        let to = new_root.join(m.trim_start_matches('/'));
        if !to.is_dir() {
            return Err(SwitchRootError::MissingDir { path: to });
        }
        mount(
            Some(from),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| SwitchRootError::Move {
            from: from.to_path_buf(),
            to: to.clone(),
            source,
        })?;
    }

    // Busybox's order: delete while the old root is still `/`, skipping
    // every other file system (the new root and whatever is under it).
    let mut removed = Removed::default();
    remove_contents(Path::new("/"), root_dev, &mut removed);

    let chroot_err = |step| {
        move |source| SwitchRootError::Chroot {
            new_root: new_root.to_path_buf(),
            step,
            source,
        }
    };
    chdir(new_root).map_err(chroot_err("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(chroot_err("mount --move . /"))?;
    chroot(".").map_err(chroot_err("chroot"))?;
    chdir("/").map_err(chroot_err("chdir /"))?;
    Ok(removed)
}

/// Deletes everything under `dir` that lives on the device `dev`, without
/// following symbolic links or entering other file systems. Errors are
/// skipped: what cannot be deleted only costs memory.
pub fn remove_contents(dir: &Path, dev: u64, removed: &mut Removed) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_contents(&path, dev, removed);
            // A mount point stays (EBUSY), as in switch_root.
            if std::fs::remove_dir(&path).is_ok() {
                removed.dirs += 1;
            }
        } else if std::fs::remove_file(&path).is_ok() {
            removed.files += 1;
            removed.bytes += meta.len();
        }
    }
}

/// Replaces this process with the open executable `file`, with argv[0] =
/// `path` (the name it would have had) and the environment kept: stage 1
/// runs stage 2 from its own copy in RAM when the slot's is the same build.
pub fn exec_file(file: &std::fs::File, path: &Path) -> SwitchRootError {
    use std::os::fd::AsRawFd;
    let err = |source| SwitchRootError::Exec {
        path: path.to_path_buf(),
        source,
    };
    let Ok(prog) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return err(Errno::EINVAL);
    };
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    match fexecve(file.as_raw_fd(), &[&prog], &env) {
        Ok(never) => match never {},
        Err(source) => err(source),
    }
}

/// Replaces this process with `path` (argv[0] = path, environment kept).
pub fn exec(path: &Path) -> SwitchRootError {
    let err = |source| SwitchRootError::Exec {
        path: path.to_path_buf(),
        source,
    };
    let Ok(prog) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return err(Errno::EINVAL);
    };
    match execv(&prog, &[&prog]) {
        Ok(never) => match never {},
        Err(source) => err(source),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn removes_one_file_system_without_following_links() {
        let base = std::env::temp_dir().join(format!("atoll-switch-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tree = base.join("tree");
        let outside = base.join("outside");
        std::fs::create_dir_all(tree.join("usr/lib/modules/6.1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(tree.join("init"), b"12345").unwrap();
        std::fs::write(tree.join("usr/lib/modules/6.1/a.ko"), b"123").unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();

        let dev = std::fs::metadata(&tree).unwrap().dev();
        let mut removed = Removed::default();
        remove_contents(&tree, dev, &mut removed);
        assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 0);
        assert!(outside.join("keep").exists());
        assert_eq!(
            removed,
            Removed {
                files: 3,
                dirs: 4,
                // Two files and the link (its length is its target's).
                bytes: 5 + 3 + outside.as_os_str().len() as u64
            }
        );

        // Another device number stands for another file system: untouched.
        std::fs::write(tree.join("other"), b"x").unwrap();
        remove_contents(&tree, dev + 1, &mut Removed::default());
        assert!(tree.join("other").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
