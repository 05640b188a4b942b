//! `[network]`: DHCP by default, interfaces picked by name (or glob) or MAC
//! address with static addresses, routes and DNS, global DNS and search
//! domains.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::names::{check_hostname, check_interface_pattern, glob_match};
use super::value::{KeyPath, Parsed, TextValue, ValidationError};

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// DHCP (v4, and SLAAC for v6) on every wired interface that no entry of
    /// `interfaces` picks.
    pub dhcp_default: bool,
    pub interfaces: Vec<Interface>,
    /// DNS servers used by every interface (before the ones DHCP gives).
    pub dns: Vec<Parsed<IpAddr>>,
    /// DNS search domains.
    pub search: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            dhcp_default: true,
            interfaces: Vec::new(),
            dns: Vec::new(),
            search: Vec::new(),
        }
    }
}

/// `[[network.interfaces]]`: the settings of the interfaces it picks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Interface {
    /// The interface name, or a glob of names (`eth*`, `en?0`). Exactly one
    /// of `name` and `mac` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The interface's MAC address (`aa:bb:cc:dd:ee:ff`, any case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Parsed<MacAddr>>,
    /// DHCPv4. When left out: on when `addresses` is empty, off otherwise
    /// ([`super::Config::fill_defaults`] writes the choice in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp4: Option<bool>,
    /// Static addresses with their prefix length (`10.0.0.5/24`, `fd00::5/64`).
    pub addresses: Vec<Parsed<IpCidr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<Parsed<Ipv4Addr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Parsed<Ipv6Addr>>,
    pub routes: Vec<Route>,
    /// DNS servers for this interface.
    pub dns: Vec<Parsed<IpAddr>>,
    /// 68 to 65535; left out: the driver's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// IPv6 stateless address autoconfiguration from router advertisements.
    pub ipv6_slaac: bool,
}

impl Default for Interface {
    fn default() -> Self {
        Self {
            name: None,
            mac: None,
            dhcp4: None,
            addresses: Vec::new(),
            gateway4: None,
            gateway6: None,
            routes: Vec::new(),
            dns: Vec::new(),
            mtu: None,
            ipv6_slaac: true,
        }
    }
}

impl Interface {
    /// Whether DHCPv4 runs on the interface (the default when `dhcp4` is left out).
    pub fn dhcp4(&self) -> bool {
        self.dhcp4.unwrap_or(self.addresses.is_empty())
    }

    /// Whether this entry picks the interface `ifname` with MAC address `mac`.
    pub fn matches(&self, ifname: &str, mac: Option<&MacAddr>) -> bool {
        if let Some(pattern) = &self.name {
            return glob_match(pattern, ifname);
        }
        match (self.mac.as_ref().and_then(Parsed::get), mac) {
            (Some(want), Some(have)) => want == have,
            _ => false,
        }
    }
}

/// `routes = [{ to = "CIDR", via = "IP", metric = N }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination (`0.0.0.0/0` for a default route).
    pub to: Parsed<IpCidr>,
    /// Next hop, of the same family as `to`.
    pub via: Parsed<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// An address with a prefix length, like `10.0.0.5/24` (host bits are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl TextValue for IpCidr {
    const EXPECTED: &'static str =
        "an address with a prefix length, like 10.0.0.5/24 or fd00::5/64";
    fn parse_text(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').ok_or("no /prefix length")?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= max && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => {
                return Err(format!(
                    "prefix length `{prefix}` is not a number from 0 to {max}"
                ))
            }
        };
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl TextValue for MacAddr {
    const EXPECTED: &'static str = "a MAC address like 52:54:00:12:34:56";
    fn parse_text(text: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{} parts, expected 6 separated by `:`",
                parts.len()
            ));
        }
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(format!("`{p}` is not two hex digits"));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("`{p}` is not two hex digits"))?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl TextValue for IpAddr {
    const EXPECTED: &'static str = "an IPv4 or IPv6 address";
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| "not an IP address".to_string())
    }
}

impl TextValue for Ipv4Addr {
    const EXPECTED: &'static str = "an IPv4 address";
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| "not an IPv4 address".to_string())
    }
}

impl TextValue for Ipv6Addr {
    const EXPECTED: &'static str = "an IPv6 address";
    fn parse_text(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| "not an IPv6 address".to_string())
    }
}

impl Network {
    pub(crate) fn fill_defaults(&mut self) {
        for iface in &mut self.interfaces {
            iface.dhcp4 = Some(iface.dhcp4());
        }
    }

    pub(crate) fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        for (i, dns) in self.dns.iter().enumerate() {
            dns.check(&path.key("dns").index(i), errors);
        }
        for (i, domain) in self.search.iter().enumerate() {
            if let Err(e) = check_hostname(domain) {
                errors.push(ValidationError::new(
                    path.key("search").index(i),
                    format!("invalid value: string {domain:?}, expected a domain name ({e})"),
                ));
            }
        }
        let mut seen: Vec<(String, KeyPath)> = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let p = path.key("interfaces").index(i);
            iface.validate(&p, errors);
            let id = match (&iface.name, iface.mac.as_ref().and_then(Parsed::get)) {
                (Some(name), _) => format!("name `{name}`"),
                (None, Some(mac)) => format!("mac `{mac}`"),
                _ => continue,
            };
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id) {
                errors.push(ValidationError::new(
                    p,
                    format!("{id} is already picked by `{first}`"),
                ));
            } else {
                seen.push((id, p));
            }
        }
    }
}

impl Interface {
    fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        match (&self.name, &self.mac) {
            (Some(_), Some(_)) => errors.push(ValidationError::new(
                path.clone(),
                "set `name` or `mac`, not both",
            )),
            (None, None) => errors.push(ValidationError::new(
                path.clone(),
                "missing `name` or `mac`: which interface is this?",
            )),
            _ => {}
        }
        if let Some(name) = &self.name {
            if let Err(e) = check_interface_pattern(name) {
                errors.push(ValidationError::new(
                    path.key("name"),
                    format!(
                        "invalid value: string {name:?}, expected an interface name or glob ({e})"
                    ),
                ));
            }
        }
        if let Some(mac) = &self.mac {
            mac.check(&path.key("mac"), errors);
        }
        for (i, a) in self.addresses.iter().enumerate() {
            a.check(&path.key("addresses").index(i), errors);
        }
        if let Some(g) = &self.gateway4 {
            g.check(&path.key("gateway4"), errors);
        }
        if let Some(g) = &self.gateway6 {
            g.check(&path.key("gateway6"), errors);
        }
        for (i, r) in self.routes.iter().enumerate() {
            let p = path.key("routes").index(i);
            r.to.check(&p.key("to"), errors);
            r.via.check(&p.key("via"), errors);
            if let (Some(to), Some(via)) = (r.to.get(), r.via.get()) {
                if to.addr.is_ipv4() != via.is_ipv4() {
                    errors.push(ValidationError::new(
                        p.key("via"),
                        format!(
                            "`{via}` and the destination `{to}` are not of the same IP version"
                        ),
                    ));
                }
            }
        }
        for (i, d) in self.dns.iter().enumerate() {
            d.check(&path.key("dns").index(i), errors);
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                errors.push(ValidationError::new(
                    path.key("mtu"),
                    format!("invalid value: integer `{mtu}`, expected an MTU from 68 to 65535"),
                ));
            }
        }
        if self.dhcp4 == Some(false) && self.addresses.is_empty() && !self.ipv6_slaac {
            errors.push(ValidationError::new(
                path.clone(),
                "no address at all: dhcp4 and ipv6_slaac are off and `addresses` is empty",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = IpCidr::parse_text("10.0.0.5/24").unwrap();
        assert_eq!(c.addr, IpAddr::from([10, 0, 0, 5]));
        assert_eq!(c.prefix, 24);
        assert_eq!(c.to_string(), "10.0.0.5/24");
        assert!(IpCidr::parse_text("fd00::5/64").is_ok());
        assert!(IpCidr::parse_text("0.0.0.0/0").is_ok());
        for bad in [
            "10.0.0.5",
            "10.0.0.5/33",
            "fd00::/129",
            "10.0.0.300/24",
            "10.0.0.5/+1",
            "x/1",
            "10.0.0.5/",
        ] {
            assert!(IpCidr::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs() {
        let m = MacAddr::parse_text("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "52:54:00:ab:cd",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:0g",
            "5:54:00:ab:cd:0f1",
        ] {
            assert!(MacAddr::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_matching() {
        let by_glob = Interface {
            name: Some("en*".into()),
            ..Interface::default()
        };
        assert!(by_glob.matches("enp0s3", None));
        assert!(!by_glob.matches("eth0", None));
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let by_mac = Interface {
            mac: Some(Parsed::new("52:54:00:01:02:03")),
            ..Interface::default()
        };
        assert!(by_mac.matches("whatever", Some(&mac)));
        assert!(!by_mac.matches("whatever", None));
        assert!(by_mac.dhcp4());
        let stat = Interface {
            addresses: vec![Parsed::new("10.0.0.5/24")],
            ..by_mac
        };
        assert!(!stat.dhcp4());
    }
}
