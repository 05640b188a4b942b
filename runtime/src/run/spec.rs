//! The container spec Atoll runs: a subset of the OCI runtime spec's
//! `config.json` (same field names, so a runc-style bundle reads into it),
//! and [`Spec::from_image`], which builds one from an image config with
//! Docker's rules and defaults.
//!
//! Defaults, as Docker's (moby `oci/defaults.go`, `oci/caps/defaults.go`):
//! the capability set in [`DEFAULT_CAPABILITIES`], the masked and
//! read-only paths in [`DEFAULT_MASKED_PATHS`] and
//! [`DEFAULT_READONLY_PATHS`], the standard mounts (proc, /dev tmpfs,
//! devpts, shm, mqueue, read-only sysfs, read-only cgroup2), namespaces
//! mount, pid, ipc, uts, cgroup and (unless the network mode is host) net.
//! One difference: `no_new_privileges` is on by default (Docker needs
//! `--security-opt no-new-privileges`).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::seccomp::{default_profile, Seccomp};
use crate::manifest::ImageConfig;

/// The OCI runtime spec version the files we write claim.
pub const OCI_VERSION: &str = "1.0.2";

/// Docker's default capabilities.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths: a file gets /dev/null over it, a directory an
/// empty read-only tmpfs.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// PATH when the image sets none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability the kernel knows, by number (`CAP_LAST_CAP` is 40):
/// the config's list, so the config and the runtime accept the same names.
pub const ALL_CAPABILITIES: &[&str] = &atoll_common::config::workload::CAPABILITIES;

/// The number of a capability named `CAP_X` (or `X`, any case).
pub fn capability_number(name: &str) -> Option<u8> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES
        .iter()
        .position(|c| *c == full)
        .and_then(|n| u8::try_from(n).ok())
}

/// Errors building a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the image has no entrypoint or cmd and none was given")]
    NoCommand,
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("environment entry {0:?} has no '='")]
    BadEnv(String),
    #[error("mount destination {0:?} must be absolute without '..'")]
    BadDestination(PathBuf),
    #[error("host path {path:?} for a volume is not under an allowed root ({roots:?})")]
    HostPathNotAllowed { path: PathBuf, roots: Vec<PathBuf> },
    #[error("volume name {0:?} must be [A-Za-z0-9][A-Za-z0-9_.-]*")]
    BadVolumeName(String),
    #[error("creating the volume directory {path:?}")]
    CreateVolume {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("giving the new volume directory {path:?} to the container's root")]
    ChownVolume {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole spec (OCI `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default = "oci_version")]
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub linux: Linux,
}

fn oci_version() -> String {
    OCI_VERSION.to_string()
}

/// The container's process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: User,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

fn root_dir() -> String {
    "/".to_string()
}

/// Who the process runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Capability sets, by name (`CAP_CHOWN`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

impl Capabilities {
    /// Docker's default: the default set bounding, effective and
    /// permitted; inheritable and ambient empty.
    pub fn docker_default() -> Self {
        let set: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        Capabilities {
            bounding: set.clone(),
            effective: set.clone(),
            permitted: set,
            inheritable: Vec::new(),
            ambient: Vec::new(),
        }
    }

    /// Docker's `--cap-add`/`--cap-drop` on bounding, effective and
    /// permitted: `ALL` adds or drops everything; drops win over adds
    /// only for names in both, as in Docker.
    pub fn adjust(&mut self, add: &[String], drop: &[String]) -> Result<(), SpecError> {
        let norm = |n: &String| -> Result<Option<String>, SpecError> {
            if n.eq_ignore_ascii_case("ALL") {
                return Ok(None);
            }
            let num =
                capability_number(n).ok_or_else(|| SpecError::UnknownCapability(n.clone()))?;
            Ok(Some(ALL_CAPABILITIES[usize::from(num)].to_string()))
        };
        let mut set: Vec<String> = self.bounding.clone();
        for n in drop {
            match norm(n)? {
                None => set.clear(),
                Some(c) => set.retain(|x| *x != c),
            }
        }
        for n in add {
            match norm(n)? {
                None => {
                    set = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
                }
                Some(c) => {
                    if !set.contains(&c)
                        && !drop
                            .iter()
                            .any(|d| norm(d).ok().flatten() == Some(c.clone()))
                    {
                        set.push(c);
                    }
                }
            }
        }
        for n in drop {
            if let Some(c) = norm(n)? {
                set.retain(|x| *x != c);
            }
        }
        self.bounding = set.clone();
        self.effective = set.clone();
        self.permitted = set;
        self.inheritable.retain(|c| self.bounding.contains(c));
        self.ambient.retain(|c| self.bounding.contains(c));
        Ok(())
    }
}

/// One resource limit (`RLIMIT_NOFILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

/// The root filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

/// A mount, as in `config.json` (`type` "bind" or options `bind`/`rbind`
/// make a bind mount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub destination: PathBuf,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl Mount {
    fn new(dest: &str, kind: &str, source: &str, options: &[&str]) -> Self {
        Mount {
            destination: PathBuf::from(dest),
            kind: Some(kind.to_string()),
            source: Some(PathBuf::from(source)),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A bind mount (recursive), read-only on request.
    pub fn bind(source: &Path, destination: &Path, read_only: bool) -> Self {
        Mount {
            destination: destination.to_path_buf(),
            kind: Some("bind".to_string()),
            source: Some(source.to_path_buf()),
            options: vec![
                "rbind".to_string(),
                if read_only { "ro" } else { "rw" }.to_string(),
            ],
        }
    }

    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// Linux specifics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

impl Linux {
    /// Whether the spec asks for a new namespace of this type.
    pub fn has_namespace(&self, kind: NamespaceType) -> bool {
        self.namespaces.iter().any(|n| n.kind == kind)
    }
}

/// A namespace to create, or to join when `path` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: NamespaceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Namespace types, named as in `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceType {
    Pid,
    Network,
    Mount,
    Ipc,
    Uts,
    User,
    Cgroup,
}

/// A user namespace id mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

/// cgroup v2 limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<PidsResources>,
    #[serde(rename = "blockIO", default, skip_serializing_if = "Option::is_none")]
    pub block_io: Option<BlockIoResources>,
}

/// Memory limit in bytes (memory.max).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// CPU bandwidth: `quota` µs every `period` µs (cpu.max).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}

/// Maximum number of tasks (pids.max).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsResources {
    pub limit: i64,
}

/// I/O weight 1..=10000 (io.weight; the OCI field is 10..=1000, and is
/// passed through as is).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockIoResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

/// How the container is networked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A network namespace with only `lo`.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A network namespace the caller connects to a bridge (not set up
    /// here).
    Bridge,
}

/// Where a volume's data lives on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host path; must be under one of [`VolumePolicy::host_roots`].
    HostPath(PathBuf),
    /// A named volume: `<named_dir>/<name>/_data`, created on first use.
    Named(String),
}

/// A volume to mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub source: VolumeSource,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// A tmpfs to mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tmpfs {
    pub destination: PathBuf,
    /// Size in bytes (the kernel's default, half of RAM, when `None`).
    pub size: Option<u64>,
    /// Mode, 0o1777 when `None` (Docker's).
    pub mode: Option<u32>,
}

/// Where volumes may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumePolicy {
    /// Host paths must be under one of these.
    pub host_roots: Vec<PathBuf>,
    /// Named volumes live here.
    pub named_dir: PathBuf,
}

impl Default for VolumePolicy {
    fn default() -> Self {
        VolumePolicy {
            host_roots: vec![PathBuf::from("/var")],
            named_dir: PathBuf::from("/var/lib/atoll/volumes"),
        }
    }
}

/// What the user asked for on top of the image (`docker run` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--entrypoint`: replaces the image's and clears its Cmd.
    pub entrypoint: Option<Vec<String>>,
    /// The command after the image name: replaces the image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// `-e KEY=VALUE`: replaces the image's KEY or is appended.
    pub env: Vec<String>,
    /// `--user uid[:gid]` or names.
    pub user: Option<String>,
    /// `--workdir`.
    pub working_dir: Option<String>,
    /// `--hostname`; the container name is a good default.
    pub hostname: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--userns`: run in a user namespace with these maps (container
    /// 0..size to host start..).
    pub user_namespace: Option<(IdMapping, IdMapping)>,
    pub network: NetworkMode,
    pub volumes: Vec<Volume>,
    pub tmpfs: Vec<Tmpfs>,
    pub volume_policy: VolumePolicy,
    pub resources: Option<Resources>,
    pub rlimits: Vec<Rlimit>,
    /// Leave out the seccomp filter (`--security-opt seccomp=unconfined`).
    pub seccomp_unconfined: bool,
}

/// The image's `/etc/passwd` and `/etc/group`, for user names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcFiles {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl EtcFiles {
    /// Read them from the topmost layer that has them (layers top
    /// first), resolving symlinks inside the layer only.
    pub fn from_layers(layers: &[PathBuf]) -> Self {
        let read = |name: &str| layers.iter().find_map(|layer| read_in_root(layer, name));
        EtcFiles {
            passwd: read("etc/passwd"),
            group: read("etc/group"),
        }
    }
}

/// Read `name` under `root` with symlinks resolved as if `root` were `/`
/// (openat2 `RESOLVE_IN_ROOT`), so an image cannot point us at a host
/// file. At most 1 MiB.
fn read_in_root(root: &Path, name: &str) -> Option<String> {
    use std::io::Read;

    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = openat2(
        &dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Merge `extra` into `env`: same key replaces, new key appended.
fn merge_env(env: &mut Vec<String>, extra: &[String]) -> Result<(), SpecError> {
    for e in extra {
        if !e.contains('=') {
            return Err(SpecError::BadEnv(e.clone()));
        }
        let key = env_key(e);
        match env.iter_mut().find(|x| env_key(x) == key) {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    Ok(())
}

/// A passwd entry: (name, uid, gid, home).
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5]))
    })
}

/// A group entry: (name, gid, members).
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolve Docker's `user[:group]` (names or numbers) against the image's
/// files. Returns the user and its home (for HOME).
pub fn resolve_user(spec: &str, etc: &EtcFiles) -> Result<(User, Option<String>), SpecError> {
    let passwd = etc.passwd.as_deref().unwrap_or("");
    let group = etc.group.as_deref().unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.1 == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.0 == user_part)
                .ok_or_else(|| SpecError::UnknownUser(user_part.to_string()))?,
        ),
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.1,
        (Err(_), None) => return Err(SpecError::UnknownUser(user_part.to_string())),
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
        },
        None => entry.map_or(0, |e| e.2),
    };
    // Supplementary groups: those listing the user by name (Docker's
    // rule), unless a group was given explicitly.
    let mut additional_gids = Vec::new();
    if group_part.is_none() {
        if let Some(e) = entry {
            for (_, g, members) in group_entries(group) {
                if members.contains(&e.0) && g != gid && !additional_gids.contains(&g) {
                    additional_gids.push(g);
                }
            }
        }
    }
    let home = entry.map(|e| e.3.to_string());
    Ok((
        User {
            uid,
            gid,
            additional_gids,
        },
        home,
    ))
}

/// An absolute destination without `..`.
fn check_destination(p: &Path) -> Result<(), SpecError> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::BadDestination(p.to_path_buf()));
    }
    Ok(())
}

/// The standard mounts every container gets (runc's and Docker's).
pub fn default_mounts(cgroup_ns: bool) -> Vec<Mount> {
    let mut m = vec![
        Mount::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::new(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        Mount::new(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        Mount::new(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    if cgroup_ns {
        m.push(Mount::new(
            "/sys/fs/cgroup",
            "cgroup2",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ));
    }
    m
}

impl Spec {
    /// The spec for a container of an image, by Docker's rules:
    /// - args: Entrypoint + Cmd; `--entrypoint` replaces Entrypoint and
    ///   clears Cmd; a given cmd replaces Cmd.
    /// - env: the image's, then the overrides (same key replaces); PATH
    ///   defaulted, HOSTNAME set, HOME from /etc/passwd when unset.
    /// - cwd: WorkingDir or override, "/" by default.
    /// - user: "uid[:gid]" or names, resolved in `etc`.
    ///
    /// `root` is the rootfs mount point the process will see as `/`.
    pub fn from_image(
        config: &ImageConfig,
        overrides: &Overrides,
        etc: &EtcFiles,
        root: &Path,
    ) -> Result<Spec, SpecError> {
        let image = config.config.clone().unwrap_or_default();
        let (entrypoint, cmd) = match &overrides.entrypoint {
            Some(ep) => (ep.clone(), overrides.cmd.clone().unwrap_or_default()),
            None => (
                image.entrypoint.clone().unwrap_or_default(),
                overrides
                    .cmd
                    .clone()
                    .or_else(|| image.cmd.clone())
                    .unwrap_or_default(),
            ),
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(SpecError::NoCommand);
        }

        let user_spec = overrides
            .user
            .clone()
            .or(image.user.clone())
            .unwrap_or_default();
        let (user, home) = resolve_user(&user_spec, etc)?;

        let hostname = overrides.hostname.clone();
        let mut env = Vec::new();
        merge_env(&mut env, image.env.as_deref().unwrap_or(&[]))?;
        if !env.iter().any(|e| env_key(e) == "PATH") {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        if let Some(h) = &hostname {
            merge_env(&mut env, &[format!("HOSTNAME={h}")])?;
        }
        merge_env(&mut env, &overrides.env)?;
        if !env.iter().any(|e| env_key(e) == "HOME") {
            env.push(format!("HOME={}", home.unwrap_or_else(|| "/".to_string())));
        }

        let cwd = overrides
            .working_dir
            .clone()
            .or(image.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(root_dir);

        let mut capabilities = Capabilities::docker_default();
        capabilities.adjust(&overrides.cap_add, &overrides.cap_drop)?;

        let mut namespaces = vec![
            NamespaceType::Mount,
            NamespaceType::Pid,
            NamespaceType::Ipc,
            NamespaceType::Uts,
            NamespaceType::Cgroup,
        ];
        if overrides.network != NetworkMode::Host {
            namespaces.push(NamespaceType::Network);
        }
        let (uid_mappings, gid_mappings) = match overrides.user_namespace {
            Some((u, g)) => {
                namespaces.push(NamespaceType::User);
                (vec![u], vec![g])
            }
            None => (Vec::new(), Vec::new()),
        };

        let mut mounts = default_mounts(true);
        for v in &overrides.volumes {
            check_destination(&v.destination)?;
            let owner = overrides
                .user_namespace
                .map(|(uid, gid)| (uid.host_id, gid.host_id));
            let source = volume_source(&v.source, &overrides.volume_policy, owner)?;
            mounts.push(Mount::bind(&source, &v.destination, v.read_only));
        }
        for t in &overrides.tmpfs {
            check_destination(&t.destination)?;
            let mut options = vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                format!("mode={:o}", t.mode.unwrap_or(0o1777)),
            ];
            if let Some(size) = t.size {
                options.push(format!("size={size}"));
            }
            mounts.push(Mount {
                destination: t.destination.clone(),
                kind: Some("tmpfs".to_string()),
                source: Some(PathBuf::from("tmpfs")),
                options,
            });
        }

        Ok(Spec {
            oci_version: oci_version(),
            process: Process {
                terminal: false,
                user,
                args,
                env,
                cwd,
                capabilities: Some(capabilities),
                rlimits: overrides.rlimits.clone(),
                no_new_privileges: true,
            },
            root: Root {
                path: root.to_path_buf(),
                readonly: overrides.read_only,
            },
            hostname,
            mounts,
            linux: Linux {
                namespaces: namespaces
                    .into_iter()
                    .map(|kind| Namespace { kind, path: None })
                    .collect(),
                uid_mappings,
                gid_mappings,
                resources: overrides.resources.clone(),
                masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                readonly_paths: DEFAULT_READONLY_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                seccomp: if overrides.seccomp_unconfined {
                    None
                } else {
                    Some(default_profile())
                },
            },
        })
    }
}

/// The host directory for a volume; a named volume's is created (owned by
/// `owner`, the host uid and gid of the container's root in a user
/// namespace, when given; an existing one is left as it is).
fn volume_source(
    source: &VolumeSource,
    policy: &VolumePolicy,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, SpecError> {
    match source {
        VolumeSource::HostPath(p) => {
            let clean = p.is_absolute() && !p.components().any(|c| c == Component::ParentDir);
            if !clean || !policy.host_roots.iter().any(|r| p.starts_with(r)) {
                return Err(SpecError::HostPathNotAllowed {
                    path: p.clone(),
                    roots: policy.host_roots.clone(),
                });
            }
            Ok(p.clone())
        }
        VolumeSource::Named(name) => {
            let ok = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(SpecError::BadVolumeName(name.clone()));
            }
            let path = policy.named_dir.join(name).join("_data");
            let new = !path.exists();
            std::fs::create_dir_all(&path).map_err(|source| SpecError::CreateVolume {
                path: path.clone(),
                source,
            })?;
            if let (true, Some((uid, gid))) = (new, owner) {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|source| {
                    SpecError::ChownVolume {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            Ok(path)
        }
    }
}

/// Capability names to a bit set; unknown names are an error.
pub fn capability_mask(names: &[String]) -> Result<u64, SpecError> {
    names.iter().try_fold(0u64, |acc, n| {
        let num = capability_number(n).ok_or_else(|| SpecError::UnknownCapability(n.clone()))?;
        Ok(acc | 1u64 << num)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ContainerConfig, RootFs};

    fn image(config: ContainerConfig) -> ImageConfig {
        ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            created: None,
            config: Some(config),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: Vec::new(),
            },
            history: Vec::new(),
        }
    }

    fn etc() -> EtcFiles {
        EtcFiles {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n".into(),
            ),
            group: Some("root:x:0:\napp:x:1001:\nwheel:x:10:app,other\nstaff:x:50:\n".into()),
        }
    }

    fn build(config: ContainerConfig, o: &Overrides) -> Result<Spec, SpecError> {
        Spec::from_image(&image(config), o, &etc(), Path::new("/r"))
    }

    #[test]
    fn entrypoint_and_cmd_rules() {
        let img = ContainerConfig {
            entrypoint: Some(vec!["/ep".into()]),
            cmd: Some(vec!["a".into()]),
            ..Default::default()
        };
        let s = build(img.clone(), &Overrides::default()).expect("spec");
        assert_eq!(s.process.args, ["/ep", "a"]);
        let o = Overrides {
            cmd: Some(vec!["b".into()]),
            ..Default::default()
        };
        assert_eq!(
            build(img.clone(), &o).expect("spec").process.args,
            ["/ep", "b"]
        );
        let o = Overrides {
            entrypoint: Some(vec!["/other".into()]),
            ..Default::default()
        };
        assert_eq!(build(img, &o).expect("spec").process.args, ["/other"]);
        assert!(matches!(
            build(ContainerConfig::default(), &Overrides::default()),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_merge_and_defaults() {
        let img = ContainerConfig {
            cmd: Some(vec!["x".into()]),
            env: Some(vec!["A=1".into(), "B=2".into()]),
            working_dir: Some("".into()),
            ..Default::default()
        };
        let o = Overrides {
            env: vec!["B=3".into(), "C=4".into()],
            hostname: Some("h".into()),
            ..Default::default()
        };
        let s = build(img, &o).expect("spec");
        assert_eq!(
            s.process.env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "A=1".into(),
                "B=3".into(),
                "HOSTNAME=h".into(),
                "C=4".into(),
                "HOME=/root".into()
            ]
        );
        assert_eq!(s.process.cwd, "/");
        let bad = Overrides {
            env: vec!["NOEQ".into()],
            ..Default::default()
        };
        assert!(matches!(
            build(
                ContainerConfig {
                    cmd: Some(vec!["x".into()]),
                    ..Default::default()
                },
                &bad
            ),
            Err(SpecError::BadEnv(_))
        ));
    }

    #[test]
    fn users_by_number_and_name() {
        let e = etc();
        let (u, home) = resolve_user("app", &e).expect("app");
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 1001, vec![10]));
        assert_eq!(home.as_deref(), Some("/home/app"));
        let (u, _) = resolve_user("1000:staff", &e).expect("1000:staff");
        assert_eq!((u.uid, u.gid, u.additional_gids), (1000, 50, vec![]));
        let (u, home) = resolve_user("4242:7", &e).expect("numbers");
        assert_eq!((u.uid, u.gid, home), (4242, 7, None));
        let (u, _) = resolve_user("", &e).expect("default root");
        assert_eq!((u.uid, u.gid), (0, 0));
        assert!(matches!(
            resolve_user("ghost", &e),
            Err(SpecError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve_user("app:ghosts", &e),
            Err(SpecError::UnknownGroup(_))
        ));
    }

    #[test]
    fn docker_defaults() {
        let s = build(
            ContainerConfig {
                cmd: Some(vec!["x".into()]),
                ..Default::default()
            },
            &Overrides::default(),
        )
        .expect("spec");
        let caps = s.process.capabilities.clone().expect("caps");
        assert_eq!(capability_mask(&caps.effective).expect("mask"), 0xa804_25fb);
        assert_eq!(caps.bounding, caps.permitted);
        assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
        assert!(s.process.no_new_privileges);
        assert_eq!(s.linux.masked_paths.len(), 11);
        assert!(s
            .linux
            .readonly_paths
            .contains(&"/proc/sysrq-trigger".to_string()));
        assert!(s.linux.has_namespace(NamespaceType::Network));
        assert!(!s.linux.has_namespace(NamespaceType::User));
        assert!(s.linux.seccomp.is_some());
        let host = Overrides {
            network: NetworkMode::Host,
            ..Default::default()
        };
        let s = build(
            ContainerConfig {
                cmd: Some(vec!["x".into()]),
                ..Default::default()
            },
            &host,
        )
        .expect("spec");
        assert!(!s.linux.has_namespace(NamespaceType::Network));
    }

    #[test]
    fn cap_add_and_drop() {
        let mut c = Capabilities::docker_default();
        c.adjust(&["NET_ADMIN".into()], &["CAP_CHOWN".into(), "mknod".into()])
            .expect("adjust");
        assert!(c.effective.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.effective.contains(&"CAP_CHOWN".to_string()));
        assert!(!c.bounding.contains(&"CAP_MKNOD".to_string()));
        let mut c = Capabilities::docker_default();
        c.adjust(&["CAP_KILL".into()], &["ALL".into()])
            .expect("adjust");
        assert_eq!(c.effective, ["CAP_KILL"]);
        assert!(matches!(
            Capabilities::docker_default().adjust(&["CAP_NOPE".into()], &[]),
            Err(SpecError::UnknownCapability(_))
        ));
    }

    #[test]
    fn volumes_checked() {
        let o = Overrides {
            volumes: vec![Volume {
                source: VolumeSource::HostPath("/etc".into()),
                destination: "/x".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        let img = ContainerConfig {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        assert!(matches!(
            build(img.clone(), &o),
            Err(SpecError::HostPathNotAllowed { .. })
        ));
        let o = Overrides {
            volumes: vec![Volume {
                source: VolumeSource::HostPath("/var/../etc".into()),
                destination: "/x".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert!(matches!(
            build(img.clone(), &o),
            Err(SpecError::HostPathNotAllowed { .. })
        ));
        let o = Overrides {
            volumes: vec![Volume {
                source: VolumeSource::Named("../x".into()),
                destination: "/x".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert!(matches!(
            build(img.clone(), &o),
            Err(SpecError::BadVolumeName(_))
        ));
        let o = Overrides {
            tmpfs: vec![Tmpfs {
                destination: "relative".into(),
                size: None,
                mode: None,
            }],
            ..Default::default()
        };
        assert!(matches!(build(img, &o), Err(SpecError::BadDestination(_))));
    }

    #[test]
    fn reads_an_oci_config_json() {
        let json = r#"{
          "ociVersion": "1.0.2",
          "process": {"user": {"uid": 1, "gid": 2, "additionalGids": [3]},
                      "args": ["sh"], "env": ["A=b"], "cwd": "/",
                      "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
                      "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                      "noNewPrivileges": true},
          "root": {"path": "rootfs", "readonly": true},
          "hostname": "h",
          "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
          "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}],
                    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                    "resources": {"memory": {"limit": 1000}, "blockIO": {"weight": 100}},
                    "maskedPaths": ["/proc/kcore"]}
        }"#;
        let s: Spec = serde_json::from_str(json).expect("parses");
        assert_eq!(s.process.user.additional_gids, [3]);
        assert!(s.root.readonly);
        assert_eq!(s.linux.uid_mappings[0].host_id, 100000);
        assert_eq!(
            s.linux
                .resources
                .as_ref()
                .and_then(|r| r.block_io.as_ref())
                .and_then(|b| b.weight),
            Some(100)
        );
        let again: Spec =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parses");
        assert_eq!(again, s);
    }
}
