//! `[[containers]]` and `[[pods]]`: the workloads, and the checks on their
//! names, images, ports, volumes, limits and dependencies.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::files::{check_absolute_path, check_var_path};
use super::units::ByteSize;
use super::userns::{self, UserNamespace};
use super::value::{KeyPath, Parsed, TextValue, ValidationError};

/// `[[containers]]` (and the entries of a pod's `containers` and `init_containers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Container {
    /// Unique among containers and pods: `[a-z0-9][a-z0-9_.-]{0,62}`.
    pub name: String,
    /// The image reference (`docker.io/library/nginx:1.27`, `…@sha256:…`).
    pub image: String,
    /// Replaces the image's entrypoint; empty: the image's.
    pub command: Vec<String>,
    /// Replaces the image's arguments; empty: the image's.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    /// With `restart = "on-failure"`: give up after this many restarts
    /// (left out: never give up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    pub network: NetworkMode,
    /// `HOST:CONTAINER[/tcp|/udp]` (bridge network only).
    pub ports: Vec<Parsed<PortMapping>>,
    /// `SRC:DST[:ro|:rw]`, SRC a path under /var or a volume name.
    pub volumes: Vec<Parsed<VolumeMount>>,
    /// Mount the image's root file system read-only.
    pub read_only: bool,
    /// `UID[:GID]` or a user name from the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Memory limit (`512M`, `1G`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Parsed<ByteSize>>,
    /// CPU limit in CPUs (`0.5`, `2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u32>,
    /// Capabilities to add to / drop from the default set (`CAP_NET_ADMIN`, or `ALL`).
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub privileged: bool,
    /// Run in a user namespace of its own: `true` (a range of host ids
    /// the host chooses) or `{ uid, gid, size }` (see [`userns`]).
    #[serde(skip_serializing_if = "UserNamespace::is_off")]
    pub user_namespace: UserNamespace,
    /// Containers or pods that must be started first.
    pub depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// The Ed25519 public key (base64 or hex, 32 bytes) the image must be signed with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<Parsed<SignatureKey>>,
}

/// `[[pods]]`: containers sharing one network namespace, started together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pod {
    pub name: String,
    /// Run one after the other, each to success, before `containers` start.
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    pub restart: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    pub network: NetworkMode,
    pub ports: Vec<Parsed<PortMapping>>,
}

/// `[containers.healthcheck]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Healthcheck {
    /// Run in the container; exit status 0 means healthy.
    pub command: Vec<String>,
    pub interval: Parsed<Duration>,
    pub timeout: Parsed<Duration>,
    /// Failures in a row before the container counts as unhealthy.
    pub retries: u32,
    /// Failures during this time after start do not count.
    pub start_period: Parsed<Duration>,
}

impl Default for Healthcheck {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            interval: Parsed::new("10s"),
            timeout: Parsed::new("5s"),
            retries: 3,
            start_period: Parsed::new("0s"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    #[default]
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own network namespace behind the host's bridge (NAT).
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Loopback only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A published port: `HOST:CONTAINER[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl TextValue for PortMapping {
    const EXPECTED: &'static str = "HOST:CONTAINER[/tcp|/udp], like 8080:80 or 53:53/udp";
    fn parse_text(text: &str) -> Result<Self, String> {
        let (ports, protocol) = match text.split_once('/') {
            None => (text, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => return Err(format!("unknown protocol `{other}`")),
        };
        let (host, container) = ports.split_once(':').ok_or("no `:`")?;
        let port = |s: &str| -> Result<u16, String> {
            match s.parse::<u16>() {
                Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
                _ => Err(format!("`{s}` is not a port from 1 to 65535")),
            }
        };
        Ok(PortMapping {
            host: port(host)?,
            container: port(container)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}:{}/{proto}", self.host, self.container)
    }
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host directory or file under /var.
    Path(String),
    /// A named volume (kept under /var by the runtime).
    Named(String),
}

/// A volume: `SRC:DST[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

impl TextValue for VolumeMount {
    const EXPECTED: &'static str = "SRC:DST[:ro|:rw], SRC a path under /var or a volume name";
    fn parse_text(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let (src, dst, read_only) = match parts.as_slice() {
            [s, d] => (*s, *d, false),
            [s, d, "ro"] => (*s, *d, true),
            [s, d, "rw"] => (*s, *d, false),
            [_, _, o] => return Err(format!("unknown option `{o}` (ro or rw)")),
            _ => return Err("expected SRC:DST or SRC:DST:ro".into()),
        };
        let source = if src.starts_with('/') {
            check_var_path(src).map_err(|e| format!("source `{src}`: {e}"))?;
            VolumeSource::Path(src.to_string())
        } else {
            check_name(src).map_err(|e| format!("volume name `{src}`: {e}"))?;
            VolumeSource::Named(src.to_string())
        };
        check_absolute_path(dst).map_err(|e| format!("target `{dst}`: {e}"))?;
        if dst == "/" {
            return Err("the target cannot be /".into());
        }
        Ok(VolumeMount {
            source,
            target: dst.to_string(),
            read_only,
        })
    }
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureKey(pub [u8; 32]);

impl TextValue for SignatureKey {
    const EXPECTED: &'static str = "an Ed25519 public key: 32 bytes in base64 or hex";
    fn parse_text(text: &str) -> Result<Self, String> {
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("neither hex nor base64 ({e})"))?
        };
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("{} bytes, expected 32", bytes.len()))?;
        Ok(SignatureKey(key))
    }
}

/// Checks a container or pod name: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("empty".into()),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err("must start with a-z or 0-9".into())
        }
        _ => {}
    }
    if let Some(c) = chars
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("{c:?} is not allowed (a-z, 0-9, _ . -)"));
    }
    if name.len() > 63 {
        return Err(format!("{} characters, at most 63", name.len()));
    }
    Ok(())
}

/// Checks an image reference loosely: not empty, no white space or control
/// characters (the runtime parses it fully).
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("missing: which image does it run?".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid value: string {image:?}, expected an image reference without spaces"
        ));
    }
    Ok(())
}

/// The Linux capabilities (as of 6.x).
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where a container sits, for the checks that differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    TopLevel,
    InPod,
}

impl Container {
    fn validate(&self, path: &KeyPath, place: Place, errors: &mut Vec<ValidationError>) {
        let err = |errors: &mut Vec<ValidationError>, key: &str, msg: String| {
            errors.push(ValidationError::new(path.key(key), msg));
        };
        if self.name.is_empty() {
            err(
                errors,
                "name",
                "missing: every container needs a name".into(),
            );
        } else if let Err(e) = check_name(&self.name) {
            err(
                errors,
                "name",
                format!(
                    "invalid value: string {:?}, expected a container name ({e})",
                    self.name
                ),
            );
        }
        if let Err(e) = check_image(&self.image) {
            err(errors, "image", e);
        }
        for (k, v) in &self.env {
            if !is_env_name(k) {
                errors.push(ValidationError::new(
                    path.key("env").key(k),
                    "invalid variable name (letters, digits and _, not starting with a digit)",
                ));
            } else if v.contains('\0') {
                errors.push(ValidationError::new(
                    path.key("env").key(k),
                    "contains a NUL byte",
                ));
            }
        }
        for (list, key) in [(&self.command, "command"), (&self.args, "args")] {
            if let Some(i) = list.iter().position(|s| s.contains('\0')) {
                errors.push(ValidationError::new(
                    path.key(key).index(i),
                    "contains a NUL byte",
                ));
            }
        }
        if self.max_retries.is_some() && self.restart != RestartPolicy::OnFailure {
            err(
                errors,
                "max_retries",
                "only used with restart = \"on-failure\"".into(),
            );
        }
        for (i, p) in self.ports.iter().enumerate() {
            p.check(&path.key("ports").index(i), errors);
        }
        if !self.ports.is_empty() && self.network != NetworkMode::Bridge && place == Place::TopLevel
        {
            err(
                errors,
                "ports",
                "ports are published only with network = \"bridge\"".into(),
            );
        }
        if place == Place::InPod {
            if !self.ports.is_empty() {
                err(
                    errors,
                    "ports",
                    "a pod's containers share the pod's network: set `ports` on the pod".into(),
                );
            }
            if self.network != NetworkMode::Bridge {
                err(
                    errors,
                    "network",
                    "a pod's containers share the pod's network: set `network` on the pod".into(),
                );
            }
            if self.restart != RestartPolicy::Always || self.max_retries.is_some() {
                err(
                    errors,
                    "restart",
                    "a pod restarts as a whole: set `restart` on the pod".into(),
                );
            }
            if !self.user_namespace.is_off() {
                err(errors, "user_namespace", userns::IN_POD.into());
            }
        }
        let mut targets: Vec<&str> = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let p = path.key("volumes").index(i);
            v.check(&p, errors);
            if let Some(m) = v.get() {
                if targets.contains(&m.target.as_str()) {
                    errors.push(ValidationError::new(
                        p,
                        format!("`{}` is mounted twice", m.target),
                    ));
                }
                targets.push(&m.target);
            }
        }
        if let Some(user) = &self.user {
            if user.is_empty()
                || user.matches(':').count() > 1
                || user.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                err(
                    errors,
                    "user",
                    format!("invalid value: string {user:?}, expected UID[:GID] or a user name"),
                );
            }
        }
        if let Some(dir) = &self.workdir {
            if let Err(e) = check_absolute_path(dir) {
                err(
                    errors,
                    "workdir",
                    format!("invalid value: string {dir:?}: {e}"),
                );
            }
        }
        if let Some(m) = &self.memory {
            m.check(&path.key("memory"), errors);
            if m.get().is_some_and(|s| s.0 < 1 << 20) {
                err(
                    errors,
                    "memory",
                    format!("invalid value: string {:?}, expected at least 1M", m.text()),
                );
            }
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus <= 4096.0) {
                err(
                    errors,
                    "cpus",
                    format!("invalid value: float `{cpus}`, expected a number of CPUs above 0"),
                );
            }
        }
        if self.pids_limit == Some(0) {
            err(
                errors,
                "pids_limit",
                "invalid value: integer `0`, expected at least 1".into(),
            );
        }
        for key in ["capabilities_add", "capabilities_drop"] {
            let caps = if key == "capabilities_add" {
                &self.capabilities_add
            } else {
                &self.capabilities_drop
            };
            for (i, cap) in caps.iter().enumerate() {
                if cap != "ALL" && !CAPABILITIES.contains(&cap.as_str()) {
                    errors.push(ValidationError::new(
                        path.key(key).index(i),
                        format!("unknown capability {cap:?} (names like CAP_NET_ADMIN, or ALL)"),
                    ));
                }
            }
        }
        if let Some(h) = &self.healthcheck {
            let p = path.key("healthcheck");
            if h.command.is_empty() {
                errors.push(ValidationError::new(
                    p.key("command"),
                    "missing: what does the check run?",
                ));
            }
            for (key, d) in [
                ("interval", &h.interval),
                ("timeout", &h.timeout),
                ("start_period", &h.start_period),
            ] {
                d.check(&p.key(key), errors);
                if key != "start_period" && d.get().is_some_and(Duration::is_zero) {
                    errors.push(ValidationError::new(p.key(key), "must be more than 0s"));
                }
            }
        }
        if let Some(k) = &self.signature_key {
            k.check(&path.key("signature_key"), errors);
        }
    }
}

impl Pod {
    fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        if self.name.is_empty() {
            errors.push(ValidationError::new(
                path.key("name"),
                "missing: every pod needs a name",
            ));
        } else if let Err(e) = check_name(&self.name) {
            errors.push(ValidationError::new(
                path.key("name"),
                format!(
                    "invalid value: string {:?}, expected a pod name ({e})",
                    self.name
                ),
            ));
        }
        if self.containers.is_empty() {
            errors.push(ValidationError::new(
                path.key("containers"),
                "a pod needs at least one container",
            ));
        }
        if self.max_retries.is_some() && self.restart != RestartPolicy::OnFailure {
            errors.push(ValidationError::new(
                path.key("max_retries"),
                "only used with restart = \"on-failure\"",
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            p.check(&path.key("ports").index(i), errors);
        }
        if !self.ports.is_empty() && self.network != NetworkMode::Bridge {
            errors.push(ValidationError::new(
                path.key("ports"),
                "ports are published only with network = \"bridge\"",
            ));
        }
        let mut names: Vec<(&str, KeyPath)> = Vec::new();
        for (key, list) in [
            ("init_containers", &self.init_containers),
            ("containers", &self.containers),
        ] {
            for (i, c) in list.iter().enumerate() {
                let p = path.key(key).index(i);
                c.validate(&p, Place::InPod, errors);
                if c.name.is_empty() {
                    continue;
                }
                if let Some((_, first)) = names.iter().find(|(n, _)| *n == c.name) {
                    errors.push(ValidationError::new(
                        p.key("name"),
                        format!("`{}` is used by `{first}` already", c.name),
                    ));
                } else {
                    names.push((&c.name, p.key("name")));
                }
            }
        }
    }
}

/// Checks the workloads as a whole: each on its own, unique names, ports
/// published once, and `depends_on` naming workloads that exist, without cycles.
pub(crate) fn validate_workloads(
    containers: &[Container],
    pods: &[Pod],
    root: &KeyPath,
    errors: &mut Vec<ValidationError>,
) {
    // Top-level names: containers and pods share one name space.
    let mut names: Vec<(&str, KeyPath)> = Vec::new();
    let tops = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), root.key("containers").index(i)))
        .chain(
            pods.iter()
                .enumerate()
                .map(|(i, p)| (p.name.as_str(), root.key("pods").index(i))),
        );
    for (name, p) in tops {
        if name.is_empty() {
            continue;
        }
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            errors.push(ValidationError::new(
                p.key("name"),
                format!("`{name}` is used by `{first}` already (containers and pods share names)"),
            ));
        } else {
            names.push((name, p));
        }
    }
    for (i, c) in containers.iter().enumerate() {
        c.validate(&root.key("containers").index(i), Place::TopLevel, errors);
    }
    userns::validate(containers, &root.key("containers"), errors);
    for (i, p) in pods.iter().enumerate() {
        p.validate(&root.key("pods").index(i), errors);
    }

    // Published ports: each host port and protocol once.
    let mut published: Vec<((u16, Protocol), KeyPath)> = Vec::new();
    let port_lists = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.ports, root.key("containers").index(i)))
        .chain(
            pods.iter()
                .enumerate()
                .map(|(i, p)| (&p.ports, root.key("pods").index(i))),
        );
    for (ports, p) in port_lists {
        for (j, port) in ports.iter().enumerate() {
            let Some(m) = port.get() else { continue };
            let at = p.key("ports").index(j);
            if let Some((_, first)) = published.iter().find(|(k, _)| *k == (m.host, m.protocol)) {
                errors.push(ValidationError::new(
                    at,
                    format!(
                        "host port {} is published by `{first}` already",
                        port.text()
                    ),
                ));
            } else {
                published.push(((m.host, m.protocol), at));
            }
        }
    }

    // depends_on: top-level graph (containers and pods), then each pod's own.
    let top_names: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (i, c) in containers.iter().enumerate() {
        for (j, dep) in c.depends_on.iter().enumerate() {
            let at = root.key("containers").index(i).key("depends_on").index(j);
            if !check_dependency(dep, &c.name, &top_names, &at, errors) {
                continue;
            }
            edges.entry(&c.name).or_default().push(dep);
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        let siblings: Vec<&str> = pod
            .init_containers
            .iter()
            .chain(&pod.containers)
            .map(|c| c.name.as_str())
            .collect();
        let mut pod_edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (key, list) in [
            ("init_containers", &pod.init_containers),
            ("containers", &pod.containers),
        ] {
            for (k, c) in list.iter().enumerate() {
                for (j, dep) in c.depends_on.iter().enumerate() {
                    let at = root
                        .key("pods")
                        .index(i)
                        .key(key)
                        .index(k)
                        .key("depends_on")
                        .index(j);
                    if siblings.contains(&dep.as_str()) && dep != &c.name {
                        pod_edges.entry(&c.name).or_default().push(dep);
                    } else if dep == &pod.name {
                        errors.push(ValidationError::new(
                            at,
                            "a pod's container cannot depend on its own pod",
                        ));
                    } else if check_dependency(dep, &c.name, &top_names, &at, errors) {
                        edges.entry(&pod.name).or_default().push(dep);
                    }
                }
            }
        }
        if let Some(cycle) = find_cycle(&pod_edges) {
            errors.push(ValidationError::new(
                root.key("pods").index(i),
                format!("depends_on goes round in a circle: {}", cycle.join(" → ")),
            ));
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        errors.push(ValidationError::new(
            root.clone(),
            format!("depends_on goes round in a circle: {}", cycle.join(" → ")),
        ));
    }
}

fn check_dependency(
    dep: &str,
    own: &str,
    known: &[&str],
    at: &KeyPath,
    errors: &mut Vec<ValidationError>,
) -> bool {
    if dep == own {
        errors.push(ValidationError::new(
            at.clone(),
            "a container cannot depend on itself",
        ));
        false
    } else if !known.contains(&dep) {
        errors.push(ValidationError::new(
            at.clone(),
            format!("no container or pod is named `{dep}`"),
        ));
        false
    } else {
        true
    }
}

/// A cycle in `edges` (name → names it depends on), as the names along it.
fn find_cycle<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for &start in edges.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Iterative depth-first search; `stack` holds (node, next edge index).
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Active);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = edges.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&dep) = deps.get(*next) {
                *next += 1;
                match marks.get(dep) {
                    Some(Mark::Active) => {
                        let pos = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[pos..].iter().map(|(n, _)| *n).collect();
                        cycle.push(dep);
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(dep, Mark::Active);
                        stack.push((dep, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = PortMapping::parse_text("8080:80").unwrap();
        assert_eq!((p.host, p.container, p.protocol), (8080, 80, Protocol::Tcp));
        assert_eq!(
            PortMapping::parse_text("53:53/udp").unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "80:80/sctp",
            "a:80",
            "1.2.3.4:80:80",
            ":80",
        ] {
            assert!(PortMapping::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v = VolumeMount::parse_text("/var/lib/app:/data:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Path("/var/lib/app".into()));
        assert_eq!(v.target, "/data");
        assert!(v.read_only);
        let n = VolumeMount::parse_text("pgdata:/var/lib/postgresql/data").unwrap();
        assert_eq!(n.source, VolumeSource::Named("pgdata".into()));
        assert!(!n.read_only);
        for (bad, why) in [
            ("/etc:/etc", "under /var"),
            ("/var/../etc:/x", "normalised"),
            ("data:relative", "absolute"),
            ("data:/x:rx", "unknown option"),
            ("Data:/x", "volume name"),
            ("data:/", "cannot be /"),
            ("data", "expected"),
        ] {
            let e = VolumeMount::parse_text(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn signature_keys() {
        let hex_key = "11".repeat(32);
        assert_eq!(
            SignatureKey::parse_text(&hex_key),
            Ok(SignatureKey([0x11; 32]))
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(SignatureKey::parse_text(&b64), Ok(SignatureKey([7; 32])));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        assert!(SignatureKey::parse_text(&short)
            .unwrap_err()
            .contains("31 bytes"));
        assert!(SignatureKey::parse_text("zz").is_err());
    }

    #[test]
    fn names() {
        for good in ["web", "a", "0", "db-1", "x.y_z", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "_a", "Web", "a b", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cycles() {
        let mut e: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        e.insert("a", vec!["b"]);
        e.insert("b", vec!["c"]);
        assert_eq!(find_cycle(&e), None);
        e.insert("c", vec!["a"]);
        assert_eq!(find_cycle(&e), Some(vec!["a", "b", "c", "a"]));
    }
}
