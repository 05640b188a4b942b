//! Host-wide settings: `[ntp]`, `[sysctl]` and `ca_certs` (the host name
//! check lives in [`super::names`]).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::names::check_host;
use super::value::{KeyPath, ValidationError};

/// `[ntp]`: time synchronisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ntp {
    pub enabled: bool,
    /// NTP servers (host names or IP addresses). Empty: the servers DHCP
    /// gives, and none when DHCP gives none.
    pub servers: Vec<String>,
}

impl Default for Ntp {
    fn default() -> Self {
        Self {
            enabled: true,
            servers: Vec::new(),
        }
    }
}

impl Ntp {
    pub(crate) fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = check_host(s) {
                errors.push(ValidationError::new(
                    path.key("servers").index(i),
                    format!("invalid value: string {s:?}, expected an NTP server ({e})"),
                ));
            }
        }
    }
}

/// A `[sysctl]` value: written as a string, an integer or a boolean, kept
/// as the string written to `/proc/sys` (`true` is `1`, `false` is `0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl SysctlValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for SysctlValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue(if v { "1" } else { "0" }.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Checks a sysctl name (`net.ipv4.ip_forward`, `net.ipv4.conf.eth0/1.rp_filter`):
/// segments of `a-z 0-9 _ -` separated by `.` or `/`, none empty (so no
/// `..` and no leading `/`).
pub fn check_sysctl_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = name.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '/'))
    }) {
        return Err(format!("{c:?} is not allowed (a-z, 0-9, _ - . /)"));
    }
    if name.split(['.', '/']).any(str::is_empty) {
        return Err("empty segment (a leading, trailing or doubled `.` or `/`)".into());
    }
    Ok(())
}

pub(crate) fn validate_sysctl(
    sysctl: &BTreeMap<String, SysctlValue>,
    path: &KeyPath,
    errors: &mut Vec<ValidationError>,
) {
    for (name, value) in sysctl {
        let p = path.key(name);
        if let Err(e) = check_sysctl_name(name) {
            errors.push(ValidationError::new(
                p.clone(),
                format!("invalid sysctl name: {e}"),
            ));
        }
        if value.0.contains(['\n', '\0']) {
            errors.push(ValidationError::new(
                p,
                "a sysctl value is one line (no newline or NUL)",
            ));
        }
    }
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";

/// Checks PEM text of CA certificates: one or more `CERTIFICATE` blocks,
/// each with a base64 body that decodes to a DER sequence. Text between
/// blocks (comments, `subject=` lines) is allowed; other kinds of block
/// (a private key!) are not.
pub fn check_ca_pem(pem: &str) -> Result<usize, String> {
    let mut rest = pem;
    let mut count = 0;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let Some((label, body_and_rest)) = after.split_once("-----") else {
            return Err("a `-----BEGIN` line without its closing `-----`".into());
        };
        if label != "CERTIFICATE" {
            return Err(format!(
                "a `{label}` block: only CERTIFICATE blocks belong in ca_certs"
            ));
        }
        let end_marker = format!("{END}CERTIFICATE-----");
        let Some(end) = body_and_rest.find(&end_marker) else {
            return Err(format!(
                "certificate {} has no `-----END CERTIFICATE-----`",
                count + 1
            ));
        };
        let body = &body_and_rest[..end];
        if body.contains(BEGIN) {
            return Err(format!(
                "certificate {} has no `-----END CERTIFICATE-----` before the next block",
                count + 1
            ));
        }
        let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("certificate {}: the body is not base64 ({e})", count + 1))?;
        if der.first() != Some(&0x30) {
            return Err(format!(
                "certificate {}: the body is not a DER certificate",
                count + 1
            ));
        }
        count += 1;
        rest = &body_and_rest[end + end_marker.len()..];
    }
    if rest.contains(END) {
        return Err("an `-----END` line without its `-----BEGIN`".into());
    }
    if count == 0 {
        return Err("no `-----BEGIN CERTIFICATE-----` block".into());
    }
    Ok(count)
}

pub(crate) fn validate_ca_certs(
    certs: &[String],
    path: &KeyPath,
    errors: &mut Vec<ValidationError>,
) {
    for (i, pem) in certs.iter().enumerate() {
        if let Err(e) = check_ca_pem(pem) {
            errors.push(ValidationError::new(
                path.index(i),
                format!("invalid CA certificate: {e}"),
            ));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real self-signed certificate (CN=atoll-test, EC P-256, made with openssl).
    pub(crate) const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUF/nz/VBRJIJrL8MeTscj9R44dAAwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKYXRvbGwtdGVzdDAeFw0yNjExMjMxNjA0MDlaFw0zNjExMjAx
NjA0MDlaMBUxEzARBgNVBAMMCmF0b2xsLXRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATQz0zjI1n8RxtB5Qc5/2O8AFzlqhnJdqReQqhMrzC1fR6N9/ZKXPSE
op5z+yVN8Pk6atuypbRvQzz/Cy9PK54So1MwUTAdBgNVHQ4EFgQUjxWeZqUqM8HF
3Qly9Yp26KR7MxMwHwYDVR0jBBgwFoAUjxWeZqUqM8HF3Qly9Yp26KR7MxMwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAqE7OZ+UavCpivCDD5KO5
jU49ayXANVUq2IHN4XUXX3MCIQCW/gknC8Qp9BsmfkNx89uu9bS1pmhCiPAoPGlZ
jOY+uw==
-----END CERTIFICATE-----
";

    #[test]
    fn ca_pem() {
        assert_eq!(check_ca_pem(TEST_CERT), Ok(1));
        let two = format!("# first\n{TEST_CERT}subject=CN = x\n{TEST_CERT}");
        assert_eq!(check_ca_pem(&two), Ok(2));
        assert!(check_ca_pem("").unwrap_err().contains("no `-----BEGIN"));
        let bad_b64 = TEST_CERT.replace("MIIBgDCC", "MIIB!DCC");
        assert!(check_ca_pem(&bad_b64).unwrap_err().contains("not base64"));
        let no_end = TEST_CERT.replace("-----END CERTIFICATE-----", "");
        assert!(check_ca_pem(&no_end).unwrap_err().contains("no `-----END"));
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(check_ca_pem(key).unwrap_err().contains("PRIVATE KEY"));
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(check_ca_pem(not_der).unwrap_err().contains("DER"));
        let stray_end = format!("{TEST_CERT}-----END CERTIFICATE-----\n");
        assert!(check_ca_pem(&stray_end).is_err());
        let nested = format!("-----BEGIN CERTIFICATE-----\nMIIB\n{TEST_CERT}");
        assert!(check_ca_pem(&nested).is_err());
    }

    #[test]
    fn sysctl_names() {
        for good in [
            "net.ipv4.ip_forward",
            "vm.max_map_count",
            "net.ipv4.conf.eth0/1.rp_filter",
            "kernel.pid_max",
            "net.ipv6.conf.all.disable_ipv6",
        ] {
            assert!(check_sysctl_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "net..ipv4",
            "/net.ipv4",
            ".net",
            "net.",
            "Net.ipv4",
            "net ipv4",
            "net/../x",
            "net.ipv4.*",
        ] {
            assert!(check_sysctl_name(bad).is_err(), "{bad}");
        }
    }
}
