//! A DHCPv4 lease: what a DHCPACK gave, and when it runs out.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use ipnet::Ipv4Net;

/// Leases shorter than this are treated as this long, so a misconfigured
/// server cannot make the client renew in a tight loop.
pub const MIN_LEASE: Duration = Duration::from_secs(20);

/// Why an ACK could not be turned into a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("no usable address (yiaddr {0})")]
    Address(Ipv4Addr),
    #[error("no server identifier")]
    NoServer,
    #[error("no lease time")]
    NoLeaseTime,
}

/// One route the lease asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRoute {
    pub dest: Ipv4Net,
    /// `None`: directly on the link.
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The server identifier (option 54).
    pub server: Ipv4Addr,
    /// Option 3.
    pub routers: Vec<Ipv4Addr>,
    /// Option 121 (RFC 3442); when present the router option is ignored.
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    /// Option 26, when it is a usable MTU (576 or more).
    pub mtu: Option<u16>,
    /// `None`: an infinite lease.
    pub lease_time: Option<Duration>,
    pub t1: Option<Duration>,
    pub t2: Option<Duration>,
    /// When the request that got this lease was sent: the lease times count from here.
    pub start: Instant,
    /// From the first DISCOVER (or INIT-REBOOT REQUEST) to the ACK.
    pub obtained_in: Duration,
}

/// Whether `a` can be a host's unicast address.
pub fn usable_address(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
        && a.octets()[0] != 0
}

/// The prefix length of a contiguous netmask.
pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (ones + m.trailing_zeros() == 32 && ones > 0).then_some(ones as u8)
}

/// The classful prefix, for servers that send no subnet mask.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// The server identifier of a message, if any.
pub fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    }
}

fn secs(v: u32) -> Option<Duration> {
    (v != u32::MAX).then(|| Duration::from_secs(u64::from(v)))
}

impl Lease {
    /// The lease a DHCPACK grants, counted from `start`.
    pub fn from_ack(
        msg: &Message,
        start: Instant,
        obtained_in: Duration,
    ) -> Result<Lease, LeaseError> {
        let address = msg.yiaddr();
        if !usable_address(address) {
            return Err(LeaseError::Address(address));
        }
        let server = server_id(msg).ok_or(LeaseError::NoServer)?;
        let mut lease = Lease {
            address,
            prefix: classful_prefix(address),
            server,
            routers: Vec::new(),
            classless_routes: Vec::new(),
            dns: Vec::new(),
            domain: None,
            hostname: None,
            ntp: Vec::new(),
            mtu: None,
            lease_time: None,
            t1: None,
            t2: None,
            start,
            obtained_in,
        };
        let mut have_time = false;
        let (mut t1, mut t2) = (None, None);
        for (_, opt) in msg.opts().iter() {
            match opt {
                DhcpOption::SubnetMask(m) => {
                    if let Some(p) = mask_prefix(*m) {
                        lease.prefix = p;
                    }
                }
                DhcpOption::Router(r) => lease.routers = r.clone(),
                DhcpOption::ClasslessStaticRoute(r) => lease.classless_routes = r.clone(),
                DhcpOption::DomainNameServer(d) => lease.dns = d.clone(),
                DhcpOption::DomainName(d) => lease.domain = Some(d.clone()),
                DhcpOption::Hostname(h) => lease.hostname = Some(h.clone()),
                DhcpOption::NtpServers(n) => lease.ntp = n.clone(),
                DhcpOption::InterfaceMtu(m) if *m >= 576 => lease.mtu = Some(*m),
                DhcpOption::AddressLeaseTime(t) => {
                    have_time = true;
                    lease.lease_time = secs(*t);
                }
                DhcpOption::Renewal(t) => t1 = secs(*t),
                DhcpOption::Rebinding(t) => t2 = secs(*t),
                _ => {}
            }
        }
        if !have_time {
            return Err(LeaseError::NoLeaseTime);
        }
        lease.dns.retain(|a| usable_address(*a));
        lease.ntp.retain(|a| usable_address(*a));
        lease.routers.retain(|a| usable_address(*a));
        if let Some(total) = lease.lease_time {
            let total = total.max(MIN_LEASE);
            lease.lease_time = Some(total);
            // RFC 2131 4.4.5: T1 = 0.5 and T2 = 0.875 of the lease unless the
            // server says otherwise (and what it says makes sense).
            let d1 = total / 2;
            let d2 = total * 7 / 8;
            let (t1, t2) = match (t1, t2) {
                (Some(a), Some(b)) if a < b && b < total => (a, b),
                (Some(a), None) if a < d2 => (a, d2),
                (None, Some(b)) if d1 < b && b < total => (d1, b),
                _ => (d1, d2),
            };
            lease.t1 = Some(t1);
            lease.t2 = Some(t2);
        }
        Ok(lease)
    }

    pub fn net(&self) -> Ipv4Net {
        // The prefix is at most 32 by construction.
        Ipv4Net::new(self.address, self.prefix.min(32))
            .unwrap_or_else(|_| Ipv4Net::from(self.address))
    }

    /// The routes to install: the classless static routes when the server
    /// sent any (RFC 3442: they replace the router option), else a default
    /// route through the first router.
    pub fn routes(&self) -> Vec<LeaseRoute> {
        if !self.classless_routes.is_empty() {
            return self
                .classless_routes
                .iter()
                .map(|(dest, gw)| LeaseRoute {
                    dest: dest.trunc(),
                    gateway: (!gw.is_unspecified()).then_some(*gw),
                })
                .collect();
        }
        self.routers
            .first()
            .map(|gw| LeaseRoute {
                dest: Ipv4Net::default(),
                gateway: Some(*gw),
            })
            .into_iter()
            .collect()
    }

    /// The gateway of the default route, if the lease gives one.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.routes()
            .into_iter()
            .find(|r| r.dest.prefix_len() == 0)
            .and_then(|r| r.gateway)
    }

    pub fn renew_at(&self) -> Option<Instant> {
        self.t1.map(|t| self.start + t)
    }

    pub fn rebind_at(&self) -> Option<Instant> {
        self.t2.map(|t| self.start + t)
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.lease_time.map(|t| self.start + t)
    }

    /// Seconds of validity left at `now` (`u32::MAX` for an infinite lease),
    /// for the address's lifetimes.
    pub fn remaining_s(&self, now: Instant) -> u32 {
        match self.expires_at() {
            None => u32::MAX,
            Some(e) => e
                .saturating_duration_since(now)
                .as_secs()
                .min(u64::from(u32::MAX - 1)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::MessageType;

    use super::*;

    fn ack(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn qemu_like_ack() {
        let m = ack(vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::AddressLeaseTime(86400),
        ]);
        let now = Instant::now();
        let l = Lease::from_ack(&m, now, Duration::from_millis(12)).unwrap();
        assert_eq!(l.net().to_string(), "10.0.2.15/24");
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(l.gateway(), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.t1, Some(Duration::from_secs(43200)));
        assert_eq!(l.t2, Some(Duration::from_secs(75600)));
        assert_eq!(l.expires_at(), Some(now + Duration::from_secs(86400)));
        assert_eq!(l.remaining_s(now), 86400);
    }

    #[test]
    fn classless_routes_win() {
        let gw = Ipv4Addr::new(192, 168, 1, 1);
        let m = ack(vec![
            DhcpOption::ServerIdentifier(gw),
            DhcpOption::AddressLeaseTime(600),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 99)]),
            DhcpOption::ClasslessStaticRoute(vec![
                ("10.0.2.2/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
                ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 2, 2)),
            ]),
        ]);
        let l = Lease::from_ack(&m, Instant::now(), Duration::ZERO).unwrap();
        let r = l.routes();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].gateway, None);
        assert_eq!(l.gateway(), Some(Ipv4Addr::new(10, 0, 2, 2)));
        // No mask: classful.
        assert_eq!(l.prefix, 8);
    }

    #[test]
    fn times() {
        let base = vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2))];
        let lease = |extra: Vec<DhcpOption>| {
            let mut o = base.clone();
            o.extend(extra);
            Lease::from_ack(&ack(o), Instant::now(), Duration::ZERO)
        };
        assert_eq!(lease(vec![]).unwrap_err(), LeaseError::NoLeaseTime);
        let l = lease(vec![DhcpOption::AddressLeaseTime(u32::MAX)]).unwrap();
        assert_eq!((l.lease_time, l.t1, l.t2), (None, None, None));
        // Nonsense T1/T2 fall back to the defaults.
        let l = lease(vec![
            DhcpOption::AddressLeaseTime(1000),
            DhcpOption::Renewal(900),
            DhcpOption::Rebinding(800),
        ])
        .unwrap();
        assert_eq!(l.t1, Some(Duration::from_secs(500)));
        assert_eq!(l.t2, Some(Duration::from_secs(875)));
        let l = lease(vec![
            DhcpOption::AddressLeaseTime(1000),
            DhcpOption::Renewal(100),
            DhcpOption::Rebinding(200),
        ])
        .unwrap();
        assert_eq!(l.t1, Some(Duration::from_secs(100)));
        assert_eq!(l.t2, Some(Duration::from_secs(200)));
        // Tiny leases are stretched.
        let l = lease(vec![DhcpOption::AddressLeaseTime(1)]).unwrap();
        assert_eq!(l.lease_time, Some(MIN_LEASE));
    }

    #[test]
    fn masks() {
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), None);
        assert!(!usable_address(Ipv4Addr::new(0, 1, 2, 3)));
        assert!(!usable_address(Ipv4Addr::new(224, 0, 0, 1)));
        assert!(usable_address(Ipv4Addr::new(10, 0, 2, 15)));
    }
}
