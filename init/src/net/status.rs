//! The network part of the host status ([`NetStatus`]) and the console's
//! one-line summary per interface.

use std::collections::BTreeMap;
use std::time::Instant;

use atoll_common::api::{InterfaceStatus, LeaseStatus};

use super::dhcp::lease::Lease;
use super::netlink::{format_mac, render_route, Address, Link, LinkKind, Route};

/// What the manager knows about one interface beyond what the kernel says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managed {
    /// `dhcp` or `static`.
    pub method: &'static str,
    pub lease: Option<Lease>,
    pub error: Option<String>,
}

/// A lease as the status shows it, times counted from `now`.
pub fn lease_status(lease: &Lease, now: Instant) -> LeaseStatus {
    let left =
        |t: Option<Instant>| t.map_or(u64::MAX, |t| t.saturating_duration_since(now).as_secs());
    LeaseStatus {
        address: lease.net().to_string(),
        server: lease.server.to_string(),
        gateway: lease.gateway().map(|g| g.to_string()),
        renew_in_s: left(lease.renew_at()),
        rebind_in_s: left(lease.rebind_at()),
        expires_in_s: left(lease.expires_at()),
        obtained_in_ms: lease.obtained_in.as_millis() as u64,
    }
}

/// One [`InterfaceStatus`] per link, in index order.
pub fn interfaces(
    links: &[Link],
    addresses: &[Address],
    managed: &BTreeMap<u32, Managed>,
    now: Instant,
) -> Vec<InterfaceStatus> {
    let mut links: Vec<&Link> = links.iter().collect();
    links.sort_by_key(|l| l.index);
    links
        .into_iter()
        .map(|l| {
            let m = managed.get(&l.index);
            let method = match (m, &l.kind) {
                (Some(m), _) => m.method,
                (None, LinkKind::Loopback) => "loopback",
                (None, _) => "unconfigured",
            };
            InterfaceStatus {
                name: l.name.clone(),
                mac: l.mac.as_ref().map(format_mac).unwrap_or_default(),
                mtu: l.mtu,
                up: l.up,
                carrier: l.carrier,
                method: method.to_string(),
                addresses: addresses
                    .iter()
                    .filter(|a| a.index == l.index)
                    .map(|a| a.net.to_string())
                    .collect(),
                lease: m
                    .and_then(|m| m.lease.as_ref())
                    .map(|x| lease_status(x, now)),
                error: m.and_then(|m| m.error.clone()),
            }
        })
        .collect()
}

/// The main table as `ip route` prints it.
pub fn routes(routes: &[Route], links: &[Link]) -> Vec<String> {
    let name = |i: u32| {
        links
            .iter()
            .find(|l| l.index == i)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("if{i}"))
    };
    routes.iter().map(|r| render_route(r, name)).collect()
}

/// One console line for an interface, e.g.
/// `eth0 dhcp 10.0.2.15/24, fe80::5054:ff:fe12:3456/64 via 10.0.2.2 (lease from 10.0.2.2, renew in 43199 s)`.
pub fn summary_line(i: &InterfaceStatus) -> String {
    let mut s = format!("{} {}", i.name, i.method);
    if !i.up {
        s.push_str(" down");
    } else if !i.carrier && i.method != "loopback" {
        s.push_str(" no-carrier");
    }
    if i.addresses.is_empty() {
        s.push_str(" (no address)");
    } else {
        s.push(' ');
        s.push_str(&i.addresses.join(", "));
    }
    if let Some(l) = &i.lease {
        if let Some(gw) = &l.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        s.push_str(&format!(" (lease from {}", l.server));
        if l.renew_in_s != u64::MAX {
            s.push_str(&format!(", renew in {} s", l.renew_in_s));
        }
        s.push(')');
    } else if i.method == "dhcp" {
        s.push_str(" (no lease yet)");
    }
    if let Some(e) = &i.error {
        s.push_str(&format!(" [error: {e}]"));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    #[test]
    fn status_and_summary() {
        let now = Instant::now();
        let links = vec![
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                mtu: 1500,
                up: true,
                carrier: true,
                kind: LinkKind::Wired,
            },
            Link {
                index: 1,
                name: "lo".into(),
                mac: None,
                mtu: 65536,
                up: true,
                carrier: true,
                kind: LinkKind::Loopback,
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: Some([2; 6]),
                mtu: 1500,
                up: false,
                carrier: false,
                kind: LinkKind::Wired,
            },
        ];
        let addresses = vec![
            Address {
                index: 1,
                net: "127.0.0.1/8".parse().unwrap(),
                valid_s: None,
                preferred_s: None,
                tentative: false,
                local_scope: true,
            },
            Address {
                index: 2,
                net: "10.0.2.15/24".parse().unwrap(),
                valid_s: Some(86400),
                preferred_s: Some(86400),
                tentative: false,
                local_scope: false,
            },
        ];
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            classless_routes: vec![],
            dns: vec![],
            domain: None,
            hostname: None,
            ntp: vec![],
            mtu: None,
            lease_time: Some(Duration::from_secs(86400)),
            t1: Some(Duration::from_secs(43200)),
            t2: Some(Duration::from_secs(75600)),
            start: now,
            obtained_in: Duration::from_millis(12),
        };
        let mut managed = BTreeMap::new();
        managed.insert(
            2,
            Managed {
                method: "dhcp",
                lease: Some(lease),
                error: None,
            },
        );
        managed.insert(
            3,
            Managed {
                method: "static",
                lease: None,
                error: Some("cannot add address".into()),
            },
        );
        let st = interfaces(&links, &addresses, &managed, now);
        assert_eq!(
            st.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["lo", "eth0", "eth1"]
        );
        assert_eq!(st[0].method, "loopback");
        let l = st[1].lease.as_ref().unwrap();
        assert_eq!(
            (
                l.renew_in_s,
                l.rebind_in_s,
                l.expires_in_s,
                l.obtained_in_ms
            ),
            (43200, 75600, 86400, 12)
        );
        assert_eq!(st[1].mac, "52:54:00:12:34:56");
        assert_eq!(summary_line(&st[0]), "lo loopback 127.0.0.1/8");
        assert_eq!(
            summary_line(&st[1]),
            "eth0 dhcp 10.0.2.15/24 via 10.0.2.2 (lease from 10.0.2.2, renew in 43200 s)"
        );
        assert_eq!(
            summary_line(&st[2]),
            "eth1 static down (no address) [error: cannot add address]"
        );
    }
}
