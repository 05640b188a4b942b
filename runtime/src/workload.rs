//! From a config's `[[containers]]` entry to what [`crate::run::process`]
//! starts: the image from the store, its layers unpacked, the overlay
//! rootfs in the container's state directory, and the spec with the
//! entry's overrides (Docker's `docker run` flags, one for one).
//!
//! | config key | becomes |
//! |---|---|
//! | `command` / `args` | `--entrypoint` / the command after the image |
//! | `env`, `user`, `workdir`, `read_only` | the same flags |
//! | `memory`, `cpus`, `pids_limit` | cgroup v2 `memory.max`, `cpu.max` (period 100 ms), `pids.max` |
//! | `capabilities_add` / `_drop` | `--cap-add` / `--cap-drop` |
//! | `privileged` | every capability and no seccomp filter (device access and /sys stay as for others) |
//! | `volumes` | host paths under /var or named volumes in /var/lib/atoll/volumes |
//! | `network` | `none`, `host`, or `bridge` (a namespace the caller connects) |
//! | `user_namespace` | a user namespace mapping container ids `0..size` to the host range the caller chose ([`atoll_common::config::userns::ranges`]); the layers are idmapped ([`crate::run::idmap`]) |
//!
//! The hostname is the container's name; with `host` or `bridge`
//! networking the host's `/etc/resolv.conf` is bind-mounted read-only.

use std::path::{Path, PathBuf};

use atoll_common::config::userns::{IdRange, UserNamespace};
use atoll_common::config::workload::{
    Container, NetworkMode as ConfigNetwork, VolumeSource as ConfigVolume,
};

use crate::reference::{Reference, ReferenceError};
use crate::run::rootfs::RootfsSource;
use crate::run::spec::{
    CpuResources, EtcFiles, IdMapping, MemoryResources, Mount, NetworkMode, Overrides,
    PidsResources, Resources, Spec, SpecError, Volume, VolumePolicy, VolumeSource,
};
use crate::store::{Store, StoreError};
use crate::unpack::UnpackOptions;

/// The CFS period `cpus` is expressed in (Docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Why a container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("image `{image}`: {source}")]
    Reference {
        image: String,
        #[source]
        source: ReferenceError,
    },
    #[error("image {image}: {source}")]
    Store {
        image: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("container state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Spec(#[from] Box<SpecError>),
    #[error("key `{key}`: {message}")]
    Config { key: &'static str, message: String },
}

/// A container ready to start.
#[derive(Debug)]
pub struct Prepared {
    /// The image's canonical name in the store.
    pub image: String,
    /// The manifest digest the container runs.
    pub image_digest: String,
    pub spec: Spec,
    pub rootfs: RootfsSource,
    pub resources: Resources,
}

/// The store name of a config's image reference (`nginx` is
/// `docker.io/library/nginx:latest`).
pub fn canonical_image(image: &str) -> Result<String, WorkloadError> {
    Reference::parse(image)
        .map(|r| r.to_string())
        .map_err(|source| WorkloadError::Reference {
            image: image.to_string(),
            source,
        })
}

fn network_mode(n: ConfigNetwork) -> NetworkMode {
    match n {
        ConfigNetwork::Bridge => NetworkMode::Bridge,
        ConfigNetwork::Host => NetworkMode::Host,
        ConfigNetwork::None => NetworkMode::None,
    }
}

/// The cgroup limits of an entry (`None` when it sets none).
pub fn resources(c: &Container) -> Result<Option<Resources>, WorkloadError> {
    let mut r = Resources::default();
    if let Some(m) = &c.memory {
        let bytes = m.get().ok_or_else(|| WorkloadError::Config {
            key: "memory",
            message: format!("`{}` is not a size", m.text()),
        })?;
        r.memory = Some(MemoryResources {
            limit: Some(i64::try_from(bytes.0).unwrap_or(i64::MAX)),
        });
    }
    if let Some(cpus) = c.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(WorkloadError::Config {
                key: "cpus",
                message: format!("{cpus} is not a positive number of CPUs"),
            });
        }
        // At least 1 ms per period, as the kernel requires.
        let quota = ((cpus * CPU_PERIOD_US as f64) as i64).max(1000);
        r.cpu = Some(CpuResources {
            quota: Some(quota),
            period: Some(CPU_PERIOD_US),
        });
    }
    if let Some(p) = c.pids_limit {
        r.pids = Some(PidsResources {
            limit: i64::from(p),
        });
    }
    Ok((r != Resources::default()).then_some(r))
}

/// The uid and gid maps of an entry's user namespace: `ids`, the range
/// chosen for it among the config's containers, or its explicit range.
pub fn id_maps(
    c: &Container,
    ids: Option<IdRange>,
) -> Result<Option<(IdMapping, IdMapping)>, WorkloadError> {
    let range = match (c.user_namespace, ids) {
        (UserNamespace::Off, _) => return Ok(None),
        (_, Some(r)) | (UserNamespace::Explicit(r), None) => r,
        (UserNamespace::Auto, None) => {
            return Err(WorkloadError::Config {
                key: "user_namespace",
                message: "no host id range was chosen for it".into(),
            })
        }
    };
    let map = |host_id| IdMapping {
        container_id: 0,
        host_id,
        size: range.size,
    };
    Ok(Some((map(range.uid), map(range.gid))))
}

/// The `docker run` flags of a config entry; `ids`: the host id range for
/// its user namespace, if it asks for one (see [`id_maps`]).
pub fn overrides(c: &Container, ids: Option<IdRange>) -> Result<Overrides, WorkloadError> {
    let mut o = Overrides {
        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
        cmd: (!c.args.is_empty()).then(|| c.args.clone()),
        env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        user: c.user.clone(),
        working_dir: c.workdir.clone(),
        hostname: Some(c.name.clone()),
        cap_add: c.capabilities_add.clone(),
        cap_drop: c.capabilities_drop.clone(),
        read_only: c.read_only,
        network: network_mode(c.network),
        volume_policy: VolumePolicy::default(),
        resources: resources(c)?,
        user_namespace: id_maps(c, ids)?,
        ..Overrides::default()
    };
    if c.privileged {
        o.cap_add = vec!["ALL".to_string()];
        o.cap_drop.clear();
        o.seccomp_unconfined = true;
    }
    for v in &c.volumes {
        let m = v.get().ok_or_else(|| WorkloadError::Config {
            key: "volumes",
            message: format!("`{}` is not SRC:DST[:ro|:rw]", v.text()),
        })?;
        o.volumes.push(Volume {
            source: match &m.source {
                ConfigVolume::Path(p) => VolumeSource::HostPath(PathBuf::from(p)),
                ConfigVolume::Named(n) => VolumeSource::Named(n.clone()),
            },
            destination: PathBuf::from(&m.target),
            read_only: m.read_only,
        });
    }
    Ok(o)
}

/// Resolves the entry's image in `store`, unpacks its layers (once, shared)
/// and lays out a fresh overlay in `state_dir` (anything there from an
/// earlier run is removed first: a container starts from its image).
/// `ids`: as for [`overrides`].
pub fn prepare(
    store: &Store,
    c: &Container,
    ids: Option<IdRange>,
    state_dir: &Path,
    resolv_conf: Option<&Path>,
) -> Result<Prepared, WorkloadError> {
    let name = canonical_image(&c.image)?;
    let store_err = |source| WorkloadError::Store {
        image: name.clone(),
        source: Box::new(source),
    };
    let image = store.image(&name).map_err(store_err)?;
    let layers = store
        .unpack_image(&image, &UnpackOptions::default())
        .map_err(store_err)?;
    // overlayfs wants the top layer first.
    let top_first: Vec<PathBuf> = layers.into_iter().rev().collect();
    let etc = EtcFiles::from_layers(&top_first);
    let state_err = |source| WorkloadError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    };
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(state_err(e)),
    }
    let (rootfs, root) = RootfsSource::overlay_in(top_first, state_dir).map_err(state_err)?;
    let overrides = overrides(c, ids)?;
    let mut spec = Spec::from_image(&image.config, &overrides, &etc, &root).map_err(Box::new)?;
    if let Some(resolv) = resolv_conf {
        if c.network != ConfigNetwork::None && resolv.exists() {
            spec.mounts
                .push(Mount::bind(resolv, Path::new("/etc/resolv.conf"), true));
        }
    }
    Ok(Prepared {
        image: name,
        image_digest: image.descriptor.digest.to_string(),
        resources: overrides.resources.clone().unwrap_or_default(),
        spec,
        rootfs,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use atoll_common::config::value::Parsed;

    fn entry() -> Container {
        Container {
            name: "web".into(),
            image: "nginx".into(),
            ..Container::default()
        }
    }

    #[test]
    fn image_names_are_canonical() {
        assert_eq!(
            canonical_image("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            canonical_image("localhost/atoll/busybox:1").unwrap(),
            "localhost/atoll/busybox:1"
        );
        let e = canonical_image("UPPER/case").unwrap_err().to_string();
        assert!(e.starts_with("image `UPPER/case`"), "{e}");
    }

    #[test]
    fn flags_follow_docker_run() {
        let mut c = entry();
        c.command = vec!["/bin/sh".into(), "-c".into()];
        c.args = vec!["echo hi".into()];
        c.env.insert("A".into(), "1".into());
        c.network = ConfigNetwork::Host;
        c.read_only = true;
        c.volumes = vec![Parsed::new("/var/www:/srv:ro"), Parsed::new("data:/data")];
        let o = overrides(&c, None).unwrap();
        assert_eq!(o.entrypoint.as_deref(), Some(&c.command[..]));
        assert_eq!(o.cmd.as_deref(), Some(&c.args[..]));
        assert_eq!(o.env, vec!["A=1".to_string()]);
        assert_eq!(o.hostname.as_deref(), Some("web"));
        assert_eq!(o.network, NetworkMode::Host);
        assert!(o.read_only);
        assert_eq!(
            o.volumes[0].source,
            VolumeSource::HostPath("/var/www".into())
        );
        assert!(o.volumes[0].read_only);
        assert_eq!(o.volumes[1].source, VolumeSource::Named("data".into()));
        assert!(o.resources.is_none());
    }

    #[test]
    fn limits_become_cgroup_values() {
        let mut c = entry();
        c.memory = Some(Parsed::new("64M"));
        c.cpus = Some(0.5);
        c.pids_limit = Some(20);
        let r = resources(&c).unwrap().unwrap();
        assert_eq!(r.memory.unwrap().limit, Some(64 << 20));
        let cpu = r.cpu.unwrap();
        assert_eq!((cpu.quota, cpu.period), (Some(50_000), Some(CPU_PERIOD_US)));
        assert_eq!(r.pids.unwrap().limit, 20);
        c.cpus = Some(-1.0);
        assert!(resources(&c).unwrap_err().to_string().contains("cpus"));
    }

    #[test]
    fn privileged_means_all_caps_no_seccomp() {
        let mut c = entry();
        c.privileged = true;
        c.capabilities_drop = vec!["CAP_CHOWN".into()];
        let o = overrides(&c, None).unwrap();
        assert_eq!(o.cap_add, vec!["ALL".to_string()]);
        assert!(o.cap_drop.is_empty());
        assert!(o.seccomp_unconfined);
    }

    #[test]
    fn user_namespace_maps() {
        let mut c = entry();
        assert_eq!(overrides(&c, None).unwrap().user_namespace, None);
        let r = IdRange {
            uid: 200_000,
            gid: 300_000,
            size: 1000,
        };
        // Off wins over a range handed in by mistake.
        assert_eq!(id_maps(&c, Some(r)).unwrap(), None);
        c.user_namespace = UserNamespace::Auto;
        let e = overrides(&c, None).unwrap_err().to_string();
        assert!(e.contains("user_namespace"), "{e}");
        let (u, g) = overrides(&c, Some(r)).unwrap().user_namespace.unwrap();
        assert_eq!((u.container_id, u.host_id, u.size), (0, 200_000, 1000));
        assert_eq!((g.container_id, g.host_id, g.size), (0, 300_000, 1000));
        c.user_namespace = UserNamespace::Explicit(r);
        let (u, _) = id_maps(&c, None).unwrap().unwrap();
        assert_eq!(u.host_id, 200_000);
    }

    #[test]
    fn missing_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let e = prepare(&store, &entry(), None, &dir.path().join("c"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker.io/library/nginx:latest"), "{e}");
    }
}
