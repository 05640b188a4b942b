//! Carrying out the parts of a config that PID 1 owns itself: host name,
//! sysctls, files under /var, extra CA certificates, the admin SSH keys and
//! the effective config for the other Atoll components. (Network settings go
//! to [`crate::net`]; containers and updates to their own components, which
//! read [`EFFECTIVE_CONFIG`].)
//!
//! Every boot applies the config afresh (/etc is a tmpfs); each step that
//! fails is reported and the others still run.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The effective config (defaults filled in) for the other components.
pub const EFFECTIVE_CONFIG: &str = "/run/atoll/config.toml";
/// The extra CA certificates from the config, one PEM bundle.
pub const CA_BUNDLE: &str = "/etc/atoll/ca-certificates.pem";
/// The admin container's SSH keys.
pub const ADMIN_KEYS: &str = "/etc/atoll/admin/authorized_keys";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("sysctl {name}: writing {path}")]
    Sysctl {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sysctl {name}: not a sysctl name")]
    SysctlName { name: String },
    #[error("file {path}: {why}")]
    FilePath { path: PathBuf, why: &'static str },
    #[error("file {path}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting the host name to {name}")]
    Hostname { name: String, source: nix::Error },
}

/// The /proc/sys path of a sysctl: dots separate the levels, unless the
/// name uses slashes, where dots are literal (as sysctl(8) reads
/// `net/ipv4/conf/eth0.100/forwarding`).
pub fn sysctl_path(proc_sys: &Path, name: &str) -> Result<PathBuf, ApplyError> {
    let bad = || ApplyError::SysctlName {
        name: name.to_string(),
    };
    let parts: Vec<&str> = if name.contains('/') {
        name.split('/').collect()
    } else {
        name.split('.').collect()
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(bad());
    }
    Ok(parts.iter().fold(proc_sys.to_path_buf(), |p, c| p.join(c)))
}

/// Writes one sysctl.
pub fn write_sysctl(proc_sys: &Path, name: &str, value: &str) -> Result<(), ApplyError> {
    let path = sysctl_path(proc_sys, name)?;
    std::fs::write(&path, format!("{value}\n")).map_err(|source| ApplyError::Sysctl {
        name: name.to_string(),
        path,
        source,
    })
}

/// A file the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute, under /var.
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Writes `spec` below `root` (normally `/`), atomically, creating its
/// directories. The path must stay under /var (the config's validation
/// says so too; this is the last line of defence) and no symlink on the
/// way may lead out of it.
pub fn write_file(root: &Path, spec: &FileSpec) -> Result<(), ApplyError> {
    let bad = |why| ApplyError::FilePath {
        path: spec.path.clone(),
        why,
    };
    let rel = spec
        .path
        .strip_prefix("/var")
        .map_err(|_| bad("not under /var"))?;
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("not a plain path below /var"));
    }
    let err = |source| ApplyError::File {
        path: spec.path.clone(),
        source,
    };
    let mut dir = root.join("var");
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len() - 1] {
        dir = dir.join(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad("a directory on its path is a symlink"))
            }
            Ok(m) if !m.is_dir() => return Err(bad("a parent on its path is not a directory")),
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&dir).map_err(err)?,
        }
    }
    let target = dir.join(comps[comps.len() - 1]);
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
        return Err(bad("a directory is in the way"));
    }
    let tmp = dir.join(format!(
        ".{}.atoll-tmp",
        comps[comps.len() - 1].as_os_str().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&spec.content).map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(spec.mode & 0o7777))
        .map_err(err)?;
    nix::unistd::fchown(
        std::os::fd::AsRawFd::as_raw_fd(&f),
        Some(nix::unistd::Uid::from_raw(spec.uid)),
        Some(nix::unistd::Gid::from_raw(spec.gid)),
    )
    .map_err(|e| err(e.into()))?;
    f.sync_all().map_err(err)?;
    drop(f);
    // rename() replaces a symlink at the target itself, never its target.
    std::fs::rename(&tmp, &target).map_err(err)
}

/// Writes a text file (for /etc and /run), creating its directory.
pub fn write_text(path: &Path, text: &str, mode: u32) -> Result<(), ApplyError> {
    let err = |source| ApplyError::File {
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

/// Sets the kernel's host name.
pub fn set_hostname(name: &str) -> Result<(), ApplyError> {
    nix::unistd::sethostname(name).map_err(|source| ApplyError::Hostname {
        name: name.to_string(),
        source,
    })
}

/// Joins PEM certificates into one bundle, each ending in a newline.
pub fn ca_bundle(certs: &[String]) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(c.trim());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn maps_sysctl_names() {
        let p = Path::new("/proc/sys");
        assert_eq!(
            sysctl_path(p, "net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path(p, "net/ipv4/conf/eth0.100/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "net..x", "net/../../etc", ".net", "net/ipv4/"] {
            assert!(sysctl_path(p, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_sysctls() {
        let dir = TempDir::new("sysctl");
        std::fs::create_dir_all(dir.path().join("vm")).unwrap();
        write_sysctl(dir.path(), "vm.swappiness", "10").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("vm/swappiness")).unwrap(),
            "10\n"
        );
        let e = write_sysctl(dir.path(), "kernel.nope", "1").unwrap_err();
        assert!(
            e.to_string().starts_with("sysctl kernel.nope: writing"),
            "{e}"
        );
    }

    fn spec(path: &str) -> FileSpec {
        FileSpec {
            path: path.into(),
            content: b"hello\n".to_vec(),
            mode: 0o640,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn writes_files_under_var_only() {
        let dir = TempDir::new("files");
        let root = dir.path();
        std::fs::create_dir_all(root.join("var")).unwrap();
        write_file(root, &spec("/var/lib/app/conf.txt")).unwrap();
        let p = root.join("var/lib/app/conf.txt");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // Again, replacing it.
        write_file(root, &spec("/var/lib/app/conf.txt")).unwrap();
        for bad in [
            "/etc/passwd",
            "/var",
            "/var/../etc/x",
            "/var/lib/../../etc/x",
            "var/x",
        ] {
            assert!(write_file(root, &spec(bad)).is_err(), "{bad}");
        }
        // A symlinked directory on the way is refused.
        std::os::unix::fs::symlink("/etc", root.join("var/evil")).unwrap();
        let e = write_file(root, &spec("/var/evil/passwd")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // A symlink at the target is replaced, not followed.
        let outside = root.join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("var/lib/app/link")).unwrap();
        write_file(root, &spec("/var/lib/app/link")).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(
            std::fs::read(root.join("var/lib/app/link")).unwrap(),
            b"hello\n"
        );
    }

    #[test]
    fn bundles_certificates() {
        let b = ca_bundle(&[
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----".into(),
            "x\n\n".into(),
        ]);
        assert_eq!(
            b,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\nx\n"
        );
    }
}
