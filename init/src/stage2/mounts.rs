//! The API file systems stage 2 needs, /proc/self/mountinfo, and unmounting
//! everything at shutdown.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// One line of /proc/self/mountinfo (the parts we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: String,
    /// Per-mount options (`ro`, `noatime`, …).
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl MountInfo {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parses /proc/self/mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                mount_point: unescape(l.get(4)?),
                options: l.get(5)?.to_string(),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn read_mountinfo() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The mount on `path` that is visible (the last one listed), if any.
pub fn mount_at<'a>(mounts: &'a [MountInfo], path: &str) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// A file system stage 2 mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fs_type: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// The options to mount with instead when the kernel refuses `data`
    /// (EINVAL: an option it does not know yet).
    pub older_kernels: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The base mounts, in order (parents first). cgroup2 is apart:
/// [`CGROUP2`].
pub const BASE: [MountSpec; 7] = [
    MountSpec {
        source: "proc",
        target: "/proc",
        fs_type: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        older_kernels: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fs_type: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        older_kernels: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fs_type: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        older_kernels: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        older_kernels: None,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fs_type: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
        older_kernels: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        older_kernels: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        older_kernels: None,
    },
];

/// cgroup2 on /sys/fs/cgroup, mounted apart from [`BASE`] and off PID 1's
/// main path ([`mount_cgroup2`]): with `favordynmods` the mount waits for an
/// RCU grace period (5 ms of an idle CPU in a boot under TCG), and nothing
/// needs the hierarchy before the containers start.
pub const CGROUP2: MountSpec = MountSpec {
    source: "cgroup2",
    target: "/sys/fs/cgroup",
    fs_type: "cgroup2",
    flags: NOSUID_NODEV_NOEXEC,
    data: Some(CGROUP2_OPTIONS),
    older_kernels: Some("nsdelegate"),
};

/// cgroup2's options: `nsdelegate`, and `favordynmods` (Linux 6.0), which
/// makes moving a process into a cgroup cheap (no RCU grace period per
/// move) at a small cost to fork and exit: a container host moves every
/// container's first process, and every exec, into a cgroup. Measured in
/// docs/BENCHMARKS.md ("Container runtime").
pub const CGROUP2_OPTIONS: &str = "nsdelegate,favordynmods";

/// The base mounts not yet present in `mounted`.
pub fn missing<'a>(mounted: &[MountInfo], specs: &'a [MountSpec]) -> Vec<&'a MountSpec> {
    specs
        .iter()
        .filter(|s| mount_at(mounted, s.target).is_none())
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("mounting {fs_type} on {target}")]
pub struct MountError {
    pub target: String,
    pub fs_type: String,
    pub source: Errno,
}

/// Mounts what is missing of [`BASE`]; returns the failures (each is logged by the caller).
pub fn mount_base() -> Vec<MountError> {
    mount_missing(&BASE)
}

/// Mounts [`CGROUP2`] unless it is there; returns the failure, if any.
pub fn mount_cgroup2() -> Vec<MountError> {
    mount_missing(&[CGROUP2])
}

fn mount_missing(specs: &[MountSpec]) -> Vec<MountError> {
    let mounted = read_mountinfo();
    let mut errors = Vec::new();
    for spec in missing(&mounted, specs) {
        let _ = std::fs::create_dir_all(spec.target);
        let mount = |data: Option<&str>| {
            nix::mount::mount(
                Some(spec.source),
                spec.target,
                Some(spec.fs_type),
                spec.flags,
                data,
            )
        };
        let mut result = mount(spec.data);
        if let (Err(Errno::EINVAL), Some(older)) = (result, spec.older_kernels) {
            log::info!(
                "{} on {}: options {:?} refused, mounting with {older:?}",
                spec.fs_type,
                spec.target,
                spec.data.unwrap_or_default()
            );
            result = mount(Some(older));
        }
        if let Err(source) = result {
            errors.push(MountError {
                target: spec.target.into(),
                fs_type: spec.fs_type.into(),
                source,
            });
        }
    }
    errors
}

/// Enables every available controller for the root cgroup's children.
pub fn enable_cgroup_controllers(root: &Path) -> Result<String, std::io::Error> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    let control = root.join("cgroup.subtree_control");
    if std::fs::write(&control, wanted.join(" ")).is_err() {
        // One at a time, so one refusal does not block the rest.
        for w in &wanted {
            let _ = std::fs::write(&control, w);
        }
    }
    std::fs::read_to_string(&control).map(|s| s.trim().to_string())
}

/// Mount points left alone at shutdown: the root and the API file systems.
fn kept_at_shutdown(mount_point: &str) -> bool {
    mount_point == "/"
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|k| mount_point == *k || mount_point.starts_with(&format!("{k}/")))
        || mount_point == "/run"
}

/// The mount points to unmount at shutdown, in order (newest first).
pub fn shutdown_order(mounts: &[MountInfo]) -> Vec<String> {
    let mut v: Vec<String> = mounts
        .iter()
        .rev()
        .map(|m| m.mount_point.clone())
        .filter(|m| !kept_at_shutdown(m))
        .collect();
    v.dedup();
    v
}

/// Unmounts everything but the root and the API file systems, newest first;
/// a busy mount is detached lazily. Returns what could not be unmounted.
pub fn unmount_all() -> Vec<(String, Errno)> {
    let mut failed = Vec::new();
    for mp in shutdown_order(&read_mountinfo()) {
        match nix::mount::umount2(mp.as_str(), MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                if let Err(e) = nix::mount::umount2(mp.as_str(), MntFlags::MNT_DETACH) {
                    failed.push((mp, e));
                }
            }
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {} // already gone
            Err(e) => failed.push((mp, e)),
        }
    }
    // The root is read-only already; make sure.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    failed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
22 1 253:0 / / ro,relatime - ext4 /dev/mapper/atoll-root ro
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=10k
24 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
25 22 0:20 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
26 22 0:22 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
30 22 252:5 / /var rw,noatime - ext4 /dev/vda5 rw
31 30 0:40 / /var/lib/x\\040y rw - tmpfs tmpfs rw
32 22 0:41 / /etc rw - tmpfs tmpfs rw
33 25 0:42 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 10);
        let root = mount_at(&m, "/").unwrap();
        assert_eq!(root.source, "/dev/mapper/atoll-root");
        assert_eq!(root.fs_type, "ext4");
        assert!(root.read_only());
        assert!(!mount_at(&m, "/var").unwrap().read_only());
        assert_eq!(m[7].mount_point, "/var/lib/x y");
    }

    #[test]
    fn mounts_only_what_is_missing() {
        let m = parse_mountinfo(SAMPLE);
        let targets: Vec<&str> = missing(&m, &BASE).iter().map(|s| s.target).collect();
        assert_eq!(targets, vec!["/dev/pts", "/dev/shm", "/tmp"]);
        assert_eq!(missing(&[], &BASE).len(), BASE.len());
        assert!(missing(&m, &[CGROUP2]).is_empty());
        assert_eq!(missing(&[], &[CGROUP2]), [&CGROUP2]);
    }

    #[test]
    fn shutdown_unmounts_children_first_and_keeps_api_fs() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(shutdown_order(&m), vec!["/etc", "/var/lib/x y", "/var"]);
    }
}
