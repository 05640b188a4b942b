//! Running a container (shared/DESIGN.md, "Runtime"): the spec
//! ([`spec`], a subset of the OCI runtime spec), the root filesystem
//! ([`rootfs`], overlay + mounts + pivot_root, through the [`sys`] trait),
//! the cgroup ([`cgroup`], v2), the seccomp filter ([`seccomp`]) and the
//! process itself ([`process`]: namespaces, user, capabilities,
//! no_new_privs, seccomp, execve).
//!
//! ```no_run
//! # use atoll_runtime::run::{spec::*, rootfs::RootfsSource, process};
//! # fn f(config: &atoll_runtime::manifest::ImageConfig, layers: Vec<std::path::PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
//! let state = std::path::Path::new("/var/lib/atoll/containers/web");
//! let etc = EtcFiles::from_layers(&layers);
//! let (source, root) = RootfsSource::overlay_in(layers, state)?;
//! let spec = Spec::from_image(config, &Overrides::default(), &etc, &root)?;
//! let mut container = process::start(&spec, &source, None, process::Stdio::default())?;
//! let status = container.wait()?;
//! # Ok(()) }
//! ```
//!
//! A container in a user namespace gets its image's layers through
//! idmapped mounts ([`idmap`]).
//!
//! Also: [`exec`] (a process in a running container's namespaces) and
//! [`sandbox`] (a pod's namespace holder); a spec's namespaces with a
//! `path` are joined, as a pod's containers join the sandbox's.

pub mod cgroup;
pub mod exec;
pub mod idmap;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod sys;
