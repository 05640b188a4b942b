//! Per-interface IPv6 sysctls (/proc/sys/net/ipv6/conf/IF/…).

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("writing {value} to {path}")]
pub struct SysctlError {
    pub path: PathBuf,
    pub value: String,
    #[source]
    pub source: io::Error,
}

/// Switches IPv6 stateless autoconfiguration (router advertisements and
/// SLAAC addresses) on or off for one interface: `accept_ra` and `autoconf`.
pub fn set_ipv6_slaac(ifname: &str, on: bool) -> Result<(), SysctlError> {
    set_ipv6_slaac_in(Path::new("/proc/sys/net/ipv6/conf"), ifname, on)
}

fn set_ipv6_slaac_in(conf: &Path, ifname: &str, on: bool) -> Result<(), SysctlError> {
    let value = if on { "1" } else { "0" };
    for key in ["accept_ra", "autoconf"] {
        write(&conf.join(ifname).join(key), value)?;
    }
    Ok(())
}

/// Writes one sysctl file.
pub fn write(path: &Path, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path, value).map_err(|source| SysctlError {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn writes_both_keys() {
        let dir = TempDir::new("sysctl");
        std::fs::create_dir_all(dir.path().join("eth0")).unwrap();
        set_ipv6_slaac_in(dir.path(), "eth0", true).unwrap();
        let read = |k: &str| std::fs::read_to_string(dir.path().join("eth0").join(k)).unwrap();
        assert_eq!(read("accept_ra"), "1");
        assert_eq!(read("autoconf"), "1");
        set_ipv6_slaac_in(dir.path(), "eth0", false).unwrap();
        assert_eq!(read("autoconf"), "0");
        let e = set_ipv6_slaac_in(dir.path(), "nope", true).unwrap_err();
        assert!(e.path.ends_with("nope/accept_ra"));
    }
}
