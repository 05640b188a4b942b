//! Checks for names written in the config: host names, hosts (a name or an
//! IP address), registry hosts, URLs, interface names and globs, and the
//! glob matching used to pick interfaces.

use std::net::{IpAddr, Ipv6Addr};

/// Checks an RFC 1123 host name: labels of 1 to 63 letters, digits and
/// hyphens (not first or last), separated by dots, 253 characters at most.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{} characters, at most 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots, or a dot at the start or end)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "label `{label}` has {} characters, at most 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "`{c}` is not allowed (letters, digits, hyphens and dots only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with a hyphen"));
        }
    }
    Ok(())
}

/// Checks a host: an IP address or a host name.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_hostname(host).map_err(|e| format!("not an IP address or a host name: {e}"))
}

/// Checks `host[:port]` as registries are named (`docker.io`,
/// `registry.local:5000`, `[fd00::1]:5000`).
pub fn check_registry_host(s: &str) -> Result<(), String> {
    let (host, port) = split_host_port(s)?;
    if let Some(port) = port {
        check_port(port)?;
    }
    if host.starts_with('[') {
        return Ok(()); // checked by split_host_port
    }
    check_host(host)
}

fn check_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("port `{port}` is not a number from 1 to 65535")),
    }
}

/// Splits `host[:port]` where host may be `[IPv6]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if s.is_empty() {
        return Err("empty host".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("`[` without `]`".into());
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{v6}` is not an IPv6 address"));
        }
        return match after {
            "" => Ok((&s[..v6.len() + 2], None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((&s[..v6.len() + 2], Some(port))),
                None => Err(format!("unexpected `{after}` after the address")),
            },
        };
    }
    match s.split_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Checks an `http://` or `https://` URL: a host (name, IPv4 or `[IPv6]`),
/// an optional port and an optional path; no credentials, spaces or
/// control characters.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains {c:?}"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if authority.contains('@') {
        return Err("credentials do not belong in the URL: use [[registries.credentials]]".into());
    }
    check_registry_host(authority)
}

/// Checks an interface name, or a glob of one (`eth0`, `en*`, `eth?`): 1 to
/// 15 characters, no `/`, `:` or white space; `*` and `?` are wildcards.
pub fn check_interface_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty".into());
    }
    if pattern.len() > 15 {
        return Err(format!(
            "{} characters, interface names have at most 15",
            pattern.len()
        ));
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(format!("{c:?} cannot be in an interface name"));
    }
    Ok(())
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (also none) and `?` any one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point (the last `*`).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for good in ["atoll", "node-1", "a.b.example.com", "x1", &"a".repeat(63)] {
            assert!(check_hostname(good).is_ok(), "{good}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "é",
            &"a".repeat(64),
            &long,
        ] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_and_registries() {
        assert!(check_host("10.0.0.1").is_ok());
        assert!(check_host("fd00::1").is_ok());
        assert!(check_host("pool.ntp.org").is_ok());
        assert!(check_host("bad host").is_err());
        for good in [
            "docker.io",
            "registry.local:5000",
            "10.0.0.1:443",
            "[fd00::1]:5000",
            "[::1]",
        ] {
            assert!(check_registry_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "docker.io:",
            "docker.io:0",
            "docker.io:70000",
            "[fd00::1",
            "[xx]:1",
            "a:b:c",
            "[::1]x",
        ] {
            assert!(check_registry_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for good in [
            "https://mirror.gcr.io",
            "http://10.0.0.1:5000/v2/",
            "https://[fd00::1]:8443/path?q=1",
            "https://updates.example.com/atoll",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x",
            "mirror.gcr.io",
            "https://",
            "https://user:pw@host",
            "https://a b",
            "https://host:99999",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_patterns() {
        for good in ["eth0", "en*", "eth?", "wlp0s20f3", "*"] {
            assert!(check_interface_pattern(good).is_ok(), "{good}");
        }
        for bad in ["", "eth0:1", "a/b", "a b", "abcdefghijklmnop"] {
            assert!(check_interface_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("eth*", "eth"));
        assert!(glob_match("en*", "enp0s3"));
        assert!(!glob_match("en*", "eth0"));
        assert!(glob_match("eth?", "eth1"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(glob_match("*0", "eth0"));
        assert!(glob_match("e*h*0", "eth0"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
