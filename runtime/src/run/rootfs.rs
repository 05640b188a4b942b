//! The container's root filesystem, set up inside its new mount namespace:
//! the overlay of the image layers (top layer first in `lowerdir`) with a
//! per-container upper and work dir, the spec's mounts, the default
//! device nodes (bind-mounted from the host's /dev, which also works in a
//! user namespace), pivot_root with the old root detached, masked and
//! read-only paths, and the root remounted read-only on request.
//!
//! All calls go through [`MountOps`], so [`setup`] is tested with the
//! recording double.
//!
//! Limits: the overlay options must fit in a page (about 4000 bytes of
//! layer paths); in a user namespace without a network namespace sysfs
//! cannot be mounted (runc binds the host's instead; not done here).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::spec::{Mount, Spec};
use super::sys::{FileKind, MountOps};

/// Device nodes every container gets (bound from the host's /dev).
pub const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks in /dev (Docker's).
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/kcore", "/dev/core"),
];

/// Errors setting up the root filesystem; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("making the mount tree private")]
    Private(#[source] io::Error),
    #[error("mounting the overlay of {layers} layers on {target:?}")]
    Overlay {
        layers: usize,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("overlay path {0:?} contains ':' or ','")]
    OverlayPath(PathBuf),
    #[error("overlay options are {0} bytes, over the page size")]
    OverlayTooLong(usize),
    #[error("an overlay needs at least one layer")]
    NoLayers,
    #[error("binding the root directory {0:?}")]
    BindRoot(PathBuf, #[source] io::Error),
    #[error("preparing the mount point {0:?}")]
    Target(PathBuf, #[source] io::Error),
    #[error("mounting {what} on {target:?}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {0:?} has no source")]
    NoSource(PathBuf),
    #[error("pivot_root to {0:?}")]
    PivotRoot(PathBuf, #[source] io::Error),
    #[error("creating the working directory {0:?}")]
    Cwd(PathBuf, #[source] io::Error),
}

/// Where the root filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootfsSource {
    /// An overlay of unpacked layers (top first) with the container's
    /// upper and work dirs (same filesystem, both existing).
    Overlay {
        layers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// `spec.root.path` is already the root filesystem (an OCI bundle's
    /// rootfs, or the overlay with idmapped layers mounted before the user
    /// namespace was entered: see [`super::idmap`]); it is bind-mounted on
    /// itself, which makes it a mount point of this mount namespace that
    /// pivot_root takes (a mount inherited from a more privileged
    /// namespace is locked, and pivot_root refuses a locked new root).
    Dir,
}

impl RootfsSource {
    /// The overlay for a container whose state lives in `state_dir`:
    /// `state_dir/upper`, `state_dir/work` (created here) and the mount
    /// point `state_dir/rootfs`, which is returned.
    pub fn overlay_in(layers: Vec<PathBuf>, state_dir: &Path) -> io::Result<(Self, PathBuf)> {
        let upper = state_dir.join("upper");
        let work = state_dir.join("work");
        let rootfs = state_dir.join("rootfs");
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d)?;
        }
        Ok((
            RootfsSource::Overlay {
                layers,
                upper,
                work,
            },
            rootfs,
        ))
    }
}

/// The overlay mount options.
pub fn overlay_options(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, RootfsError> {
    if layers.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    for p in layers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.to_string_lossy();
        if s.contains(':') || s.contains(',') {
            return Err(RootfsError::OverlayPath(p.to_path_buf()));
        }
    }
    let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() > 4000 {
        return Err(RootfsError::OverlayTooLong(data.len()));
    }
    Ok(data)
}

/// Mount flags and the data string from `config.json` mount options.
pub fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            // Propagation is private for everything (the tree is made
            // rprivate first).
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data)
}

fn mount_err(what: impl Into<String>, target: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let what = what.into();
    let target = target.to_path_buf();
    move |source| RootfsError::Mount {
        what,
        target,
        source,
    }
}

/// Set up the root filesystem and pivot into it. Runs in the container's
/// mount namespace, before the user and capabilities change.
pub fn setup(sys: &dyn MountOps, spec: &Spec, source: &RootfsSource) -> Result<(), RootfsError> {
    let root = spec.root.path.as_path();
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(RootfsError::Private)?;

    match source {
        RootfsSource::Overlay {
            layers,
            upper,
            work,
        } => {
            let data = overlay_options(layers, upper, work)?;
            sys.mount(
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )
            .map_err(|source| RootfsError::Overlay {
                layers: layers.len(),
                target: root.to_path_buf(),
                source,
            })?;
        }
        RootfsSource::Dir => {
            sys.mount(
                Some(root),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|e| RootfsError::BindRoot(root.to_path_buf(), e))?;
        }
    }

    for m in &spec.mounts {
        mount_one(sys, root, m)?;
    }
    if spec
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev"))
    {
        setup_dev(sys, root)?;
    }

    // The working directory, created as Docker does (before the root may
    // turn read-only).
    let cwd = sys
        .resolve_in_root(root, Path::new(&spec.process.cwd))
        .map_err(|e| RootfsError::Target(PathBuf::from(&spec.process.cwd), e))?;
    sys.mkdir_all(&cwd)
        .map_err(|e| RootfsError::Cwd(cwd.clone(), e))?;

    // pivot_root(".", "."): the old root ends up on top of the new one and
    // is detached at once; no put_old directory needed (runc's way).
    let pivot = |e| RootfsError::PivotRoot(root.to_path_buf(), e);
    sys.chdir(root).map_err(pivot)?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(pivot)?;
    sys.mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )
    .map_err(pivot)?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(pivot)?;
    sys.chdir(Path::new("/")).map_err(pivot)?;

    for p in &spec.linux.masked_paths {
        mask(sys, Path::new(p))?;
    }
    for p in &spec.linux.readonly_paths {
        readonly(sys, Path::new(p))?;
    }
    if spec.root.readonly {
        let kept = sys.kept_flags(Path::new("/")).map_err(mount_err(
            "read-only remount (the root's flags)",
            Path::new("/"),
        ))?;
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
            None,
        )
        .map_err(mount_err("read-only remount", Path::new("/")))?;
    }
    Ok(())
}

fn mount_one(sys: &dyn MountOps, root: &Path, m: &Mount) -> Result<(), RootfsError> {
    let (mut flags, data) = parse_options(&m.options);
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if m.is_bind() {
        let source = m
            .source
            .as_deref()
            .ok_or_else(|| RootfsError::NoSource(m.destination.clone()))?;
        let target = sys
            .resolve_in_root(root, &m.destination)
            .map_err(|e| RootfsError::Target(m.destination.clone(), e))?;
        let made = match sys.kind(source) {
            Some(FileKind::File) => sys.create_file(&target),
            _ => sys.mkdir_all(&target),
        };
        made.map_err(|e| RootfsError::Target(target.clone(), e))?;
        flags |= MsFlags::MS_BIND;
        let what = format!("bind of {}", source.display());
        sys.mount(
            Some(source),
            &target,
            None,
            flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None,
        )
        .map_err(mount_err(what.clone(), &target))?;
        // A bind ignores other flags; they take a remount, which keeps the
        // source mount's nosuid, nodev, noexec and atime mode (locked in a
        // user namespace).
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let kept = sys
                .kept_flags(&target)
                .map_err(mount_err(format!("{what} (its flags)"), &target))?;
            sys.mount(
                None,
                &target,
                None,
                rest | kept | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None,
            )
            .map_err(mount_err(format!("{what} (remount)"), &target))?;
        }
        return Ok(());
    }
    let fstype = m.kind.as_deref().unwrap_or("none");
    let source = m.source.clone().unwrap_or_else(|| PathBuf::from(fstype));
    let target = sys
        .resolve_in_root(root, &m.destination)
        .map_err(|e| RootfsError::Target(m.destination.clone(), e))?;
    sys.mkdir_all(&target)
        .map_err(|e| RootfsError::Target(target.clone(), e))?;
    sys.mount(Some(&source), &target, Some(fstype), flags, data)
        .map_err(mount_err(fstype, &target))
}

fn setup_dev(sys: &dyn MountOps, root: &Path) -> Result<(), RootfsError> {
    for name in DEFAULT_DEVICES {
        let host = Path::new("/dev").join(name);
        let target = sys
            .resolve_in_root(root, &host)
            .map_err(|e| RootfsError::Target(host.clone(), e))?;
        sys.create_file(&target)
            .map_err(|e| RootfsError::Target(target.clone(), e))?;
        sys.mount(Some(&host), &target, None, MsFlags::MS_BIND, None)
            .map_err(mount_err(format!("bind of {}", host.display()), &target))?;
    }
    for (to, link) in DEV_SYMLINKS {
        let at = root.join(link.trim_start_matches('/'));
        sys.symlink(Path::new(to), &at)
            .map_err(|e| RootfsError::Target(at.clone(), e))?;
    }
    Ok(())
}

/// Docker's masking: /dev/null over a file, an empty read-only tmpfs over
/// a directory, nothing if absent.
fn mask(sys: &dyn MountOps, path: &Path) -> Result<(), RootfsError> {
    match sys.kind(path) {
        Some(FileKind::Dir) => sys
            .mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )
            .map_err(mount_err("masking tmpfs", path)),
        Some(FileKind::File) => sys
            .mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )
            .map_err(mount_err("masking /dev/null", path)),
        None => Ok(()),
    }
}

/// Bind a path on itself and remount it read-only, keeping the nosuid,
/// nodev and noexec of the proc and sys mounts (locked in a user
/// namespace).
fn readonly(sys: &dyn MountOps, path: &Path) -> Result<(), RootfsError> {
    if sys.kind(path).is_none() {
        return Ok(());
    }
    sys.mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(mount_err("read-only bind", path))?;
    sys.mount(
        None,
        path,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(mount_err("read-only remount", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ImageConfig, RootFs};
    use crate::run::spec::{EtcFiles, Overrides, Tmpfs, Volume, VolumePolicy, VolumeSource};
    use crate::run::sys::{Call, RecordingMounts};

    fn spec(overrides: &Overrides) -> Spec {
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            created: None,
            config: Some(crate::manifest::ContainerConfig {
                cmd: Some(vec!["/bin/sh".into()]),
                ..Default::default()
            }),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            history: Vec::new(),
        };
        Spec::from_image(
            &config,
            overrides,
            &EtcFiles::default(),
            Path::new("/state/rootfs"),
        )
        .expect("spec")
    }

    fn mounts_to(calls: &[Call]) -> Vec<(String, Option<String>)> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, fstype, .. } => {
                    Some((target.display().to_string(), fstype.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn overlay() -> RootfsSource {
        RootfsSource::Overlay {
            layers: vec!["/store/layers/top".into(), "/store/layers/base".into()],
            upper: "/state/upper".into(),
            work: "/state/work".into(),
        }
    }

    #[test]
    fn decides_the_default_mount_list() {
        let mut sys = RecordingMounts::default();
        sys.kinds.insert("/proc/kcore".into(), FileKind::File);
        sys.kinds.insert("/proc/acpi".into(), FileKind::Dir);
        sys.kinds.insert("/proc/sys".into(), FileKind::Dir);
        sys.kinds
            .insert("/proc/sysrq-trigger".into(), FileKind::File);
        setup(&sys, &spec(&Overrides::default()), &overlay()).expect("setup");
        let calls = sys.calls();

        // First the tree goes private, then the overlay, top layer first.
        assert_eq!(
            calls[0],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None
            }
        );
        assert_eq!(
            calls[1],
            Call::Mount {
                source: Some("overlay".into()),
                target: "/state/rootfs".into(),
                fstype: Some("overlay".into()),
                flags: MsFlags::empty(),
                data: Some(
                    "lowerdir=/store/layers/top:/store/layers/base,upperdir=/state/upper,workdir=/state/work"
                        .into()
                ),
            }
        );
        let m = mounts_to(&calls);
        let expect_prefix: Vec<(String, Option<String>)> = [
            ("/", None),
            ("/state/rootfs", Some("overlay")),
            ("/state/rootfs/proc", Some("proc")),
            ("/state/rootfs/dev", Some("tmpfs")),
            ("/state/rootfs/dev/pts", Some("devpts")),
            ("/state/rootfs/dev/shm", Some("tmpfs")),
            ("/state/rootfs/dev/mqueue", Some("mqueue")),
            ("/state/rootfs/sys", Some("sysfs")),
            ("/state/rootfs/sys/fs/cgroup", Some("cgroup2")),
            ("/state/rootfs/dev/null", None),
            ("/state/rootfs/dev/zero", None),
            ("/state/rootfs/dev/full", None),
            ("/state/rootfs/dev/random", None),
            ("/state/rootfs/dev/urandom", None),
            ("/state/rootfs/dev/tty", None),
            (".", None),
            ("/proc/acpi", Some("tmpfs")),
            ("/proc/kcore", None),
            ("/proc/sys", None),
            ("/proc/sys", None),
            ("/proc/sysrq-trigger", None),
            ("/proc/sysrq-trigger", None),
        ]
        .iter()
        .map(|(t, f)| (t.to_string(), f.map(str::to_string)))
        .collect();
        assert_eq!(m, expect_prefix);

        // devpts: a new instance with ptmx usable by all.
        assert!(calls.iter().any(
            |c| matches!(c, Call::Mount { fstype: Some(f), data: Some(d), .. }
            if f == "devpts" && d.contains("newinstance") && d.contains("ptmxmode=0666"))
        ));
        // sysfs and cgroup2 read-only.
        for fs in ["sysfs", "cgroup2"] {
            assert!(calls
                .iter()
                .any(|c| matches!(c, Call::Mount { fstype: Some(f), flags, .. }
                if f == fs && flags.contains(MsFlags::MS_RDONLY))));
        }
        // pivot_root(".", ".") then the old root detached.
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot { .. }))
            .expect("pivot_root");
        assert_eq!(calls[pivot - 1], Call::Chdir("/state/rootfs".into()));
        assert_eq!(
            calls[pivot + 2],
            Call::Umount {
                target: ".".into(),
                flags: MntFlags::MNT_DETACH
            }
        );
        // Masks: /dev/null over the file, ro tmpfs over the dir.
        assert!(calls.contains(&Call::Mount {
            source: Some("/dev/null".into()),
            target: "/proc/kcore".into(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None
        }));
        // Read-only paths remounted ro.
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/proc/sys") && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY))));
        // No read-only root unless asked.
        assert!(!calls
            .iter()
            .any(|c| matches!(c, Call::Mount { target, flags, .. }
            if target == Path::new("/") && flags.contains(MsFlags::MS_RDONLY))));
        assert!(calls.contains(&Call::Symlink {
            target: "pts/ptmx".into(),
            link: "/state/rootfs/dev/ptmx".into()
        }));
    }

    #[test]
    fn volumes_tmpfs_and_read_only_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("data");
        let overrides = Overrides {
            read_only: true,
            volumes: vec![
                Volume {
                    source: VolumeSource::HostPath(host.clone()),
                    destination: "/data".into(),
                    read_only: true,
                },
                Volume {
                    source: VolumeSource::Named("cache".into()),
                    destination: "/cache".into(),
                    read_only: false,
                },
            ],
            tmpfs: vec![Tmpfs {
                destination: "/run".into(),
                size: Some(1 << 20),
                mode: None,
            }],
            volume_policy: VolumePolicy {
                host_roots: vec![dir.path().to_path_buf()],
                named_dir: dir.path().join("volumes"),
            },
            ..Default::default()
        };
        let mut sys = RecordingMounts::default();
        sys.flags.insert(
            "/state/rootfs/data".into(),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME,
        );
        setup(&sys, &spec(&overrides), &RootfsSource::Dir).expect("setup");
        let calls = sys.calls();
        assert_eq!(
            calls[1],
            Call::Mount {
                source: Some("/state/rootfs".into()),
                target: "/state/rootfs".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None
            }
        );
        let bind = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, .. } if target == Path::new("/state/rootfs/data")))
            .expect("volume bind");
        assert_eq!(
            calls[bind],
            Call::Mount {
                source: Some(host.clone()),
                target: "/state/rootfs/data".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None
            }
        );
        // The remount repeats the source mount's flags.
        assert_eq!(
            calls[bind + 1],
            Call::Mount {
                source: None,
                target: "/state/rootfs/data".into(),
                fstype: None,
                flags: MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_RELATIME,
                data: None
            }
        );
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), target, .. }
            if target == Path::new("/state/rootfs/cache") && s == &dir.path().join("volumes/cache/_data"))));
        assert!(dir.path().join("volumes/cache/_data").is_dir());
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { target, fstype: Some(f), data: Some(d), .. }
            if target == Path::new("/state/rootfs/run") && f == "tmpfs" && d == "mode=1777,size=1048576")));
        assert_eq!(
            calls.last(),
            Some(&Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                data: None
            })
        );
    }

    #[test]
    fn overlay_options_refuse_separators_and_empty() {
        assert!(matches!(
            overlay_options(&[], Path::new("/u"), Path::new("/w")),
            Err(RootfsError::NoLayers)
        ));
        assert!(matches!(
            overlay_options(&["/a:b".into()], Path::new("/u"), Path::new("/w")),
            Err(RootfsError::OverlayPath(_))
        ));
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/atoll/images/layers/sha256/{i:064}")))
            .collect();
        assert!(matches!(
            overlay_options(&many, Path::new("/u"), Path::new("/w")),
            Err(RootfsError::OverlayTooLong(_))
        ));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "mode=755".into(),
            "rbind".into(),
        ]);
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC
        );
        assert_eq!(data, vec!["mode=755".to_string()]);
    }
}
