//! /etc: a tmpfs rendered fresh on every boot from what PID 1 knows: the
//! host name (the config's, or one derived from the machine id) and the
//! machine id. resolv.conf is the network manager's ([`crate::net`]);
//! the config step adds /etc/atoll/ (`crate::provision::apply`).

use std::path::{Path, PathBuf};

use atoll_common::layout;

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct EtcError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The default host name: `atoll-` and the first 8 digits of the machine id.
pub fn default_hostname(machine_id: &str) -> String {
    format!("atoll-{}", machine_id.get(..8).unwrap_or(machine_id))
}

/// Writes /etc's files into `dir`.
pub fn render(dir: &Path, hostname: &str, machine_id: &str) -> Result<(), EtcError> {
    let write = |name: &str, content: String| {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|source| EtcError { path, source })
    };
    let link = |name: &str, to: &str| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(to, &path).map_err(|source| EtcError { path, source })
    };
    write("hostname", format!("{hostname}\n"))?;
    write(
        "hosts",
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"),
    )?;
    // The network manager owns resolv.conf once it runs: only create it.
    if !dir.join("resolv.conf").exists() {
        write("resolv.conf", String::new())?;
    }
    write("machine-id", format!("{machine_id}\n"))?;
    write(
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            .into(),
    )?;
    write("group", "root:x:0:\nnogroup:x:65534:\n".into())?;
    link("os-release", layout::SLOT_RELEASE)?;
    link("mtab", "../proc/self/mounts")?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn renders_the_files() {
        let dir = TempDir::new("etc");
        let id = "0123456789abcdef0123456789abcdef";
        let host = default_hostname(id);
        assert_eq!(host, "atoll-01234567");
        render(dir.path(), &host, id).unwrap();
        // Twice is fine (the links are replaced).
        render(dir.path(), &host, id).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("hostname"), "atoll-01234567\n");
        assert!(read("hosts").contains("127.0.0.1\tlocalhost\n"));
        assert!(read("hosts").contains("::1\tlocalhost"));
        assert!(read("hosts").contains("127.0.1.1\tatoll-01234567\n"));
        assert_eq!(read("resolv.conf"), "");
        assert_eq!(read("machine-id"), format!("{id}\n"));
        assert!(read("passwd").starts_with("root:x:0:0:"));
        assert!(read("passwd").contains("nobody:x:65534"));
        assert!(read("group").starts_with("root:x:0:"));
        assert_eq!(
            std::fs::read_link(dir.path().join("os-release")).unwrap(),
            PathBuf::from("/usr/lib/os-release")
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("mtab")).unwrap(),
            PathBuf::from("../proc/self/mounts")
        );
    }
}
