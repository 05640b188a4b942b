//! /etc/resolv.conf: rendered from the plan and the DHCP leases, and
//! replaced atomically (a temporary file renamed over it).

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// glibc reads at most this many `nameserver` lines (MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// Older glibc reads at most six search domains.
pub const MAX_SEARCH: usize = 6;

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct ResolvError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Whether `name` may go into resolv.conf as a search domain: DNS labels
/// of letters, digits, `-` and `_`, separated by dots (a DHCP server could
/// otherwise inject lines).
pub fn valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The resolver configuration: the first [`MAX_NAMESERVERS`] distinct name
/// servers in the order given, and the distinct valid search domains.
pub fn render_resolv_conf(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# Written by Atoll's init from the network config and DHCP.\n");
    let mut seen: Vec<IpAddr> = Vec::new();
    for ns in nameservers {
        if seen.len() == MAX_NAMESERVERS {
            break;
        }
        if ns.is_unspecified() || seen.contains(ns) {
            continue;
        }
        seen.push(*ns);
        out.push_str(&format!("nameserver {ns}\n"));
    }
    let mut domains: Vec<&str> = Vec::new();
    for d in search {
        let d = d.trim();
        if valid_domain(d)
            && !domains.iter().any(|x| x.eq_ignore_ascii_case(d))
            && domains.len() < MAX_SEARCH
        {
            domains.push(d);
        }
    }
    if !domains.is_empty() {
        out.push_str(&format!("search {}\n", domains.join(" ")));
    }
    out
}

/// Replaces `path` with `contents`: a temporary file beside it, renamed over it.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), ResolvError> {
    let err = |source| ResolvError {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "resolv.conf".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn renders_deduplicated_and_capped() {
        let ns: Vec<IpAddr> = [
            "10.0.2.3",
            "1.1.1.1",
            "10.0.2.3",
            "0.0.0.0",
            "2001:4860:4860::8888",
            "9.9.9.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let search = vec![
            "example.com".to_string(),
            "EXAMPLE.com".into(),
            "bad domain\nnameserver 6.6.6.6".into(),
            "corp.example.".into(),
        ];
        assert_eq!(
            render_resolv_conf(&ns, &search),
            "# Written by Atoll's init from the network config and DHCP.\n\
             nameserver 10.0.2.3\n\
             nameserver 1.1.1.1\n\
             nameserver 2001:4860:4860::8888\n\
             search example.com corp.example.\n"
        );
        assert_eq!(
            render_resolv_conf(&[], &[]),
            "# Written by Atoll's init from the network config and DHCP.\n"
        );
    }

    #[test]
    fn domains() {
        assert!(valid_domain("example.com"));
        assert!(valid_domain("a_b.c-d.example"));
        assert!(!valid_domain(""));
        assert!(!valid_domain("a..b"));
        assert!(!valid_domain("a b"));
        assert!(!valid_domain(&"a".repeat(64)));
    }

    #[test]
    fn atomic_write() {
        let dir = TempDir::new("resolv");
        let p = dir.path().join("resolv.conf");
        write_atomic(&p, "one\n").unwrap();
        write_atomic(&p, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("no/such/dir"), "x").is_err());
    }
}
