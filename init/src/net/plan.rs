//! [`NetPlan`]: what the network should look like, independent of the
//! config file's types (stage 2 maps the host config onto it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::netlink::{Link, LinkKind};

/// The network to set up.
#[derive(Debug, Clone, PartialEq)]
pub struct NetPlan {
    /// Per-interface entries; the first entry that matches a link wins.
    pub interfaces: Vec<InterfacePlan>,
    /// Run DHCP on every wired link that no entry matches.
    pub dhcp_default: bool,
    /// Name servers and search domains for every interface, listed before
    /// the per-interface and DHCP ones.
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    /// NTP servers (names or addresses, optionally `:port`). Empty: use the
    /// servers DHCP gave (option 42), if any.
    pub ntp_servers: Vec<String>,
    /// Off: the clock is never set over the network (not even from the
    /// servers DHCP gives).
    pub ntp_enabled: bool,
    /// Sent as the DHCP host name (option 12).
    pub hostname: Option<String>,
    /// How long "configured" waits for DHCP leases (and for the links the
    /// plan expects to show up) before it gives up on them.
    pub wait: Duration,
    /// How often the clock is synchronised after the first time.
    pub ntp_interval: Duration,
    /// The resolver configuration to write.
    pub resolv_conf: PathBuf,
    /// Where DHCP leases are kept across boots so the next boot can ask for
    /// the same address first (INIT-REBOOT). `None`: not kept.
    pub lease_dir: Option<PathBuf>,
}

impl Default for NetPlan {
    fn default() -> Self {
        NetPlan {
            interfaces: Vec::new(),
            dhcp_default: true,
            dns: Vec::new(),
            search: Vec::new(),
            ntp_servers: Vec::new(),
            ntp_enabled: true,
            hostname: None,
            wait: Duration::from_secs(5),
            ntp_interval: Duration::from_secs(3600),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            lease_dir: None,
        }
    }
}

/// One interface entry.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfacePlan {
    pub matches: LinkMatch,
    pub method: Method,
    /// MTU to set on the link (a DHCP interface MTU option does not override it).
    pub mtu: Option<u32>,
    /// Extra name servers and search domains for this interface.
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    /// IPv6 router advertisements and SLAAC addresses (`accept_ra`,
    /// `autoconf`); off switches them off.
    pub ipv6_slaac: bool,
    /// Metric of the default and other routes this entry adds (DHCP: 1024
    /// when unset; static: the kernel's default).
    pub route_metric: Option<u32>,
}

impl InterfacePlan {
    /// DHCP on the links that match, with SLAAC on.
    pub fn dhcp(matches: LinkMatch) -> Self {
        InterfacePlan {
            matches,
            method: Method::Dhcp,
            mtu: None,
            dns: Vec::new(),
            search: Vec::new(),
            ipv6_slaac: true,
            route_metric: None,
        }
    }

    /// A static configuration on the links that match, SLAAC off.
    pub fn fixed(matches: LinkMatch, config: StaticPlan) -> Self {
        InterfacePlan {
            matches,
            method: Method::Static(config),
            mtu: None,
            dns: Vec::new(),
            search: Vec::new(),
            ipv6_slaac: false,
            route_metric: None,
        }
    }
}

/// Which links an entry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMatch {
    /// A name or a glob (`*` any run of characters, `?` one character).
    Name(String),
    Mac([u8; 6]),
}

impl LinkMatch {
    pub fn matches(&self, link: &Link) -> bool {
        match self {
            LinkMatch::Name(pattern) => glob_match(pattern, &link.name),
            LinkMatch::Mac(mac) => link.mac.as_ref() == Some(mac),
        }
    }

    /// A plain name (no glob characters): the plan expects that very link.
    pub fn exact_name(&self) -> Option<&str> {
        match self {
            LinkMatch::Name(n) if !n.contains(['*', '?']) => Some(n),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Dhcp,
    Static(StaticPlan),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticPlan {
    /// IPv4 and IPv6 addresses with their prefix.
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Vec<StaticRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub to: IpNet,
    /// `None`: directly on the link.
    pub via: Option<IpAddr>,
    pub metric: Option<u32>,
}

/// What to do with one link.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Configure it with this entry (an index into [`NetPlan::interfaces`],
    /// or `None` for the default DHCP).
    Configure(Option<usize>),
    /// Leave it alone.
    Skip,
    Loopback,
}

impl NetPlan {
    /// What to do with `link`. Entries apply to any link they match except
    /// loopback; the default DHCP only to wired links.
    pub fn decide(&self, link: &Link) -> Decision {
        if link.kind == LinkKind::Loopback {
            return Decision::Loopback;
        }
        if let Some(i) = self.interfaces.iter().position(|e| e.matches.matches(link)) {
            return Decision::Configure(Some(i));
        }
        if self.dhcp_default && link.kind == LinkKind::Wired {
            return Decision::Configure(None);
        }
        Decision::Skip
    }

    /// The entry for a decision (the default DHCP entry for `None`).
    pub fn entry(&self, index: Option<usize>) -> InterfacePlan {
        index
            .and_then(|i| self.interfaces.get(i).cloned())
            .unwrap_or_else(|| InterfacePlan::dhcp(LinkMatch::Name("*".into())))
    }
}

/// Shell-style glob: `*` matches any run of characters (also none), `?` one
/// (the config's own matcher, so the config and the network agree).
pub use atoll_common::config::names::glob_match;

#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a MAC address (six hex bytes separated by ':' or '-')")]
pub struct MacError {
    pub text: String,
}

/// Parses `52:54:00:12:34:56` (or with `-`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], MacError> {
    let err = || MacError {
        text: text.to_string(),
    };
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: LinkKind, mac: Option<[u8; 6]>) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac,
            mtu: 1500,
            up: false,
            carrier: false,
            kind,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("eth*", "eth"));
        assert!(glob_match("en*s?", "enp0s3"));
        assert!(!glob_match("en*s?", "enp0s33"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*0*1", "a0b0c1"));
        assert!(!glob_match("e?h", "eh"));
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]
        );
        assert_eq!(parse_mac("52-54-00-ab-cd-0f").unwrap()[3], 0xab);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let plan = NetPlan {
            interfaces: vec![
                InterfacePlan::fixed(LinkMatch::Mac(mac), StaticPlan::default()),
                InterfacePlan::dhcp(LinkMatch::Name("br*".into())),
            ],
            ..Default::default()
        };
        assert_eq!(
            plan.decide(&link("lo", LinkKind::Loopback, None)),
            Decision::Loopback
        );
        assert_eq!(
            plan.decide(&link("eth1", LinkKind::Wired, Some(mac))),
            Decision::Configure(Some(0))
        );
        assert_eq!(
            plan.decide(&link("br0", LinkKind::Other("bridge".into()), Some([2; 6]))),
            Decision::Configure(Some(1))
        );
        assert_eq!(
            plan.decide(&link("eth0", LinkKind::Wired, Some([4; 6]))),
            Decision::Configure(None)
        );
        assert_eq!(
            plan.decide(&link("veth1", LinkKind::Other("veth".into()), Some([6; 6]))),
            Decision::Skip
        );
        let off = NetPlan {
            dhcp_default: false,
            ..plan
        };
        assert_eq!(
            off.decide(&link("eth0", LinkKind::Wired, Some([4; 6]))),
            Decision::Skip
        );
        assert_eq!(off.entry(None).method, Method::Dhcp);
        assert_eq!(LinkMatch::Name("eth0".into()).exact_name(), Some("eth0"));
        assert_eq!(LinkMatch::Name("eth*".into()).exact_name(), None);
    }
}
