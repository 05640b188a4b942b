//! The root filesystem of a container in a user namespace: the image's
//! layers through idmapped mounts, so a file the image owns as root is
//! owned by the container's root (the host id its uid 0 maps to), and not
//! by `nobody` as it would be otherwise.
//!
//! Before the fork (as host root, in the caller's namespaces):
//! 1. a helper user namespace with the container's maps: a child unshares
//!    `CLONE_NEWUSER`, the caller writes its maps and keeps
//!    `/proc/PID/ns/user` open; the child exits (the maps are what an
//!    idmapped mount uses, so any user namespace with the same maps does);
//! 2. each layer: `open_tree(OPEN_TREE_CLONE)` (a detached copy of its
//!    mount, rooted at the layer) and `mount_setattr(MOUNT_ATTR_IDMAP)`
//!    with that namespace: on-disk id `n` shows as host id `start + n`;
//! 3. the upper directory is chowned to the container's root. It is not
//!    idmapped: files the container creates are stored with the host ids
//!    it runs as (`start + n`), which is what the container sees through
//!    its own user namespace.
//!
//! In the setup process, still in the host's user namespace, in a new
//! mount namespace of its own ([`IdmappedOverlay::mount`]): a small tmpfs
//! on the rootfs mount point holds the layers' mount points (overlayfs
//! takes its layers by path, and a path must be in the caller's mount
//! namespace), and the overlay is mounted over it, by host root, as for any
//! container (so `trusted.overlay.*` xattrs, opaque directories and
//! whiteouts work as without a user namespace). The setup process then
//! unshares the user namespace and a second mount namespace owned by it,
//! where the container's own mounts (proc, sysfs, /dev, volumes) are made.
//! Nothing is mounted in the host's mount namespace: everything goes when
//! the container's mount namespace goes, so there is nothing to clean up
//! after a crash.
//!
//! overlayfs takes idmapped layers since Linux 5.19 (the upper layer stays
//! plain, as containers/storage does it).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::ForkResult;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use super::rootfs::{overlay_options, RootfsError};
use super::spec::IdMapping;

/// `MOUNT_ATTR_IDMAP` (linux/mount.h).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (linux/mount.h, `MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Errors preparing idmapped layers; each names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("the user namespace has no mapping for container id 0")]
    NoRootMapping,
    #[error("creating the helper user namespace: {what}")]
    Helper {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path:?}")]
    WriteMap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cloning the mount of layer {path:?} (open_tree)")]
    OpenTree {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("idmapping the mount of layer {path:?} (mount_setattr; Linux 5.15 or later, and a filesystem that supports it)")]
    SetAttr {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("giving {path:?} to the container's root")]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The host uid and gid that container id 0 maps to.
pub fn host_root(uid: &[IdMapping], gid: &[IdMapping]) -> Option<(u32, u32)> {
    let zero = |maps: &[IdMapping]| {
        maps.iter()
            .find(|m| m.container_id == 0 && m.size > 0)
            .map(|m| m.host_id)
    };
    Some((zero(uid)?, zero(gid)?))
}

/// The text of a `uid_map`/`gid_map` file.
pub fn map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// A user namespace with these maps, held by the returned fd (the process
/// that made it has exited).
pub fn user_namespace(uid: &[IdMapping], gid: &[IdMapping]) -> Result<OwnedFd, IdmapError> {
    let helper = |what: &'static str| {
        move |e: Errno| IdmapError::Helper {
            what,
            source: e.into(),
        }
    };
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(helper("pipe"))?;
    let (done_r, done_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(helper("pipe"))?;
    // SAFETY: the child makes only raw syscalls (unshare, write, read,
    // _exit): no allocation and no lock another thread could hold.
    match unsafe { nix::unistd::fork() }.map_err(helper("fork"))? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            if nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok() {
                let _ = nix::unistd::write(&ready_w, b"u");
                // Wait until the caller has opened the namespace (it closes
                // its end then).
                let mut b = [0u8; 1];
                let _ = nix::unistd::read(done_r.as_raw_fd(), &mut b);
            }
            // SAFETY: ends the child without running the caller's atexit
            // handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = (|| {
                let mut b = [0u8; 1];
                let n = std::fs::File::from(ready_r)
                    .read(&mut b)
                    .map_err(|source| IdmapError::Helper {
                        what: "waiting for the helper",
                        source,
                    })?;
                if n == 0 {
                    return Err(IdmapError::Helper {
                        what: "unshare(CLONE_NEWUSER) in the helper",
                        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                    });
                }
                for (file, maps) in [("uid_map", uid), ("gid_map", gid)] {
                    let path = PathBuf::from(format!("/proc/{child}/{file}"));
                    std::fs::write(&path, map_text(maps))
                        .map_err(|source| IdmapError::WriteMap { path, source })?;
                }
                std::fs::File::open(format!("/proc/{child}/ns/user"))
                    .map(OwnedFd::from)
                    .map_err(|source| IdmapError::Helper {
                        what: "opening its /proc/PID/ns/user",
                        source,
                    })
            })();
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            result
        }
    }
}

/// A detached copy of the mount at `path` (rooted at `path`), idmapped
/// with the maps of the user namespace `userns`.
pub fn idmapped_tree(path: &Path, userns: &OwnedFd) -> Result<OwnedFd, IdmapError> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| IdmapError::OpenTree {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr (which neither rustix nor nix wraps) reads
    // `size_of::<MountAttr>()` bytes from `attr`, a live `struct
    // mount_attr` (VER0 layout); the path is an empty C string, with
    // AT_EMPTY_PATH meaning the fd itself; both fds are open.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret != 0 {
        return Err(IdmapError::SetAttr {
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tree)
}

/// A container's overlay with idmapped layers, prepared before the fork.
#[derive(Debug)]
pub struct IdmappedOverlay {
    /// Detached idmapped copies of the layers, top first.
    layers: Vec<OwnedFd>,
    upper: PathBuf,
    work: PathBuf,
}

impl IdmappedOverlay {
    /// Idmaps `layers` (top first) with the container's maps and gives
    /// `upper` to the container's root.
    pub fn prepare(
        layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        uid: &[IdMapping],
        gid: &[IdMapping],
    ) -> Result<Self, IdmapError> {
        let (root_uid, root_gid) = host_root(uid, gid).ok_or(IdmapError::NoRootMapping)?;
        let userns = user_namespace(uid, gid)?;
        let layers = layers
            .iter()
            .map(|l| idmapped_tree(l, &userns))
            .collect::<Result<Vec<_>, _>>()?;
        std::os::unix::fs::chown(upper, Some(root_uid), Some(root_gid)).map_err(|source| {
            IdmapError::Chown {
                path: upper.to_path_buf(),
                source,
            }
        })?;
        Ok(IdmappedOverlay {
            layers,
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
        })
    }

    /// In the setup process, in a new mount namespace still owned by the
    /// host's user namespace: the overlay on `root` (see the module docs).
    pub fn mount(&self, root: &Path) -> Result<(), RootfsError> {
        let mount_err = |what: &str, target: &Path| {
            let what = what.to_string();
            let target = target.to_path_buf();
            move |e: Errno| RootfsError::Mount {
                what,
                target,
                source: e.into(),
            }
        };
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| RootfsError::Private(e.into()))?;
        nix::mount::mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700,size=64k"),
        )
        .map_err(mount_err("tmpfs for the idmapped layers", root))?;
        let mut staged = Vec::with_capacity(self.layers.len());
        for (i, fd) in self.layers.iter().enumerate() {
            let at = root.join(i.to_string());
            std::fs::create_dir(&at).map_err(|e| RootfsError::Target(at.clone(), e))?;
            rustix::mount::move_mount(
                fd,
                c"",
                rustix::fs::CWD,
                &at,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| RootfsError::Mount {
                what: "idmapped layer".into(),
                target: at.clone(),
                source: e.into(),
            })?;
            staged.push(at);
        }
        let data = overlay_options(&staged, &self.upper, &self.work)?;
        nix::mount::mount(
            Some("overlay"),
            root,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| RootfsError::Overlay {
            layers: staged.len(),
            target: root.to_path_buf(),
            source: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_root() {
        let m = |c, h, s| IdMapping {
            container_id: c,
            host_id: h,
            size: s,
        };
        let uid = [m(1, 5000, 10), m(0, 131072, 1)];
        let gid = [m(0, 196608, 65536)];
        assert_eq!(host_root(&uid, &gid), Some((131072, 196608)));
        assert_eq!(host_root(&uid[..1], &gid), None);
        assert_eq!(host_root(&[m(0, 7, 0)], &gid), None);
        assert_eq!(map_text(&uid), "1 5000 10\n0 131072 1\n");
    }
}
