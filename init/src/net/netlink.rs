//! rtnetlink, synchronously: links, addresses and routes of the host's
//! network namespace, through the rust-netlink project's packet crates
//! (`netlink-packet-route`, `netlink-packet-core`) over a plain
//! `netlink-sys` socket.
//!
//! Every call sends one request and reads the kernel's answer before it
//! returns; the kernel answers rtnetlink requests at once, but the socket
//! still has a receive timeout so a lost answer can never hang PID 1. Call
//! it from a blocking thread (`tokio::task::spawn_blocking`), not from the
//! event loop. The API is kept small and general so the container runtime
//! can reuse it for bridges and veth pairs.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// How long to wait for the kernel's answer to one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer for one datagram; dump parts are at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// The main routing table.
const TABLE_MAIN: u8 = RouteHeader::RT_TABLE_MAIN;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening an rtnetlink socket")]
    Open(#[source] io::Error),
    #[error("rtnetlink: sending the request to {what}")]
    Send {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink: reading the answer to {what}")]
    Recv {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink: cannot decode the answer to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("rtnetlink: the blocking task failed: {0}")]
    Task(String),
    #[error("cannot {what}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object was already there (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
    }

    /// The object was not there (ESRCH, ENOENT, EADDRNOTAVAIL): nothing to remove.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(nix::libc::ESRCH | nix::libc::ENOENT | nix::libc::EADDRNOTAVAIL)
        )
    }
}

/// What a link is, as far as host networking cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    /// An Ethernet-like device backed by hardware (or a virtual NIC such as
    /// virtio-net): the links DHCP runs on by default.
    Wired,
    /// A software link (bridge, veth, tun, …), named by its kind when known.
    Other(String),
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier detected (IFF_LOWER_UP).
    pub carrier: bool,
    pub kind: LinkKind,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
    /// Valid and preferred lifetimes left, in seconds; `None` = forever.
    pub valid_s: Option<u32>,
    pub preferred_s: Option<u32>,
    /// Still doing duplicate address detection (IPv6).
    pub tentative: bool,
    /// Link-local or host scope (fe80::/10, 127.0.0.0/8).
    pub local_scope: bool,
}

/// Lifetimes for a new address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Forever,
    /// Seconds: the kernel removes the address when `valid` runs out.
    Limited {
        valid: u32,
        preferred: u32,
    },
}

/// Who put a route there (the kernel's `proto` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    Kernel,
    Boot,
    Static,
    Dhcp,
    Ra,
    Other(u8),
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
    /// The output link.
    pub index: Option<u32>,
    /// Priority; `None` leaves the kernel's default (0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    pub origin: RouteOrigin,
    /// The gateway is on the link even though no address's prefix covers it.
    pub onlink: bool,
    /// `scope link` (a directly connected prefix) rather than universe.
    pub link_scope: bool,
}

impl Route {
    /// A route through `gateway` (or directly on the link when `None`) out of `index`.
    pub fn new(dest: IpNet, gateway: Option<IpAddr>, index: u32) -> Self {
        Route {
            dest,
            gateway,
            index: Some(index),
            metric: None,
            source: None,
            origin: RouteOrigin::Static,
            onlink: false,
            link_scope: gateway.is_none(),
        }
    }

    pub fn metric(mut self, metric: Option<u32>) -> Self {
        self.metric = metric;
        self
    }

    pub fn origin(mut self, origin: RouteOrigin) -> Self {
        self.origin = origin;
        self
    }

    pub fn source(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
    }

    pub fn onlink(mut self, onlink: bool) -> Self {
        self.onlink = onlink;
        self
    }
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        let tv = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NetlinkError::Open(e.into()))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every link, with its kind (see [`classify`]).
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let answers = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "list links",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l, Path::new("/sys/class/net"))),
                _ => None,
            })
            .collect())
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
            &format!("set link {index} up"),
        )
        .map(drop)
    }

    /// Sets a link administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
            &format!("set link {index} down"),
        )
        .map(drop)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
            &format!("set the MTU of link {index} to {mtu}"),
        )
        .map(drop)
    }

    /// Adds an address, or updates its lifetimes if it is already there.
    pub fn add_address(
        &mut self,
        index: u32,
        net: IpNet,
        lifetime: Lifetime,
    ) -> Result<(), NetlinkError> {
        let mut msg = address_message(index, net);
        if let (IpNet::V4(n), p) = (net, net.prefix_len()) {
            if p < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        }
        if let Lifetime::Limited { valid, preferred } = lifetime {
            let mut ci = CacheInfo::default();
            ci.ifa_valid = valid;
            ci.ifa_preferred = preferred.min(valid);
            msg.attributes.push(AddressAttribute::CacheInfo(ci));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &format!("add address {net} to link {index}"),
        )
        .map(drop)
    }

    pub fn del_address(&mut self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelAddress(address_message(index, net)),
            NLM_F_ACK,
            &format!("remove address {net} from link {index}"),
        )
        .map(drop)
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let answers = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "list addresses",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_from(&a),
                _ => None,
            })
            .collect())
    }

    /// Removes the addresses of a link: all of them, or only IPv4 or IPv6
    /// ones; IPv6 link-local addresses stay (the kernel owns them).
    pub fn flush_addresses(&mut self, index: u32, v4: bool, v6: bool) -> Result<(), NetlinkError> {
        for a in self.addresses()? {
            let keep = a.index != index
                || (a.net.addr().is_ipv4() && !v4)
                || (a.net.addr().is_ipv6() && (!v6 || a.local_scope));
            if keep {
                continue;
            }
            match self.del_address(index, a.net) {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Adds a route; one that is already there in the same form is fine.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        // NLM_F_CREATE without EXCL or REPLACE: the same prefix and metric
        // through another link is added beside it instead of replacing it,
        // and an identical route answers EEXIST, which is success here.
        match self.request(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_ACK | NLM_F_CREATE,
            &format!("add route {}", describe_route(route)),
        ) {
            Err(e) if e.is_exists() => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::DelRoute(route_message(route)),
            NLM_F_ACK,
            &format!("remove route {}", describe_route(route)),
        )
        .map(drop)
    }

    /// The routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let answers = self.request(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
            "list routes",
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_from(&r),
                _ => None,
            })
            .collect())
    }

    /// Sends one request and collects the answers: the parts of a dump, or
    /// nothing for an acknowledged change.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = seq;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| NetlinkError::Send {
                what: what.to_string(),
                source,
            })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let n = loop {
                let mut slice = &mut self.buf[..];
                match self.socket.recv(&mut slice, nix::libc::MSG_TRUNC) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(NetlinkError::Recv {
                            what: what.to_string(),
                            source,
                        })
                    }
                    Ok(n) => break n,
                }
            };
            if n > self.buf.len() {
                return Err(NetlinkError::Decode {
                    what: what.to_string(),
                    message: format!("a {n}-byte message did not fit the buffer"),
                });
            }
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let reply: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode {
                        what: what.to_string(),
                        message: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len.div_ceil(4) * 4;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(_) => {
                            return Err(NetlinkError::Kernel {
                                what: what.to_string(),
                                source: e.to_io(),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }
}

/// Runs `f` with a fresh rtnetlink socket on a blocking thread, so the
/// event loop never waits on a syscall.
pub async fn blocking<T, F>(f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce(&mut Netlink) -> Result<T, NetlinkError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .await
    .unwrap_or_else(|e| Err(NetlinkError::Task(e.to_string())))
}

/// Sorts a link into [`LinkKind`]: loopback by its link type; wired when it
/// has a MAC address and either a device behind it in sysfs or, failing
/// that, Ethernet framing and no software `kind`; anything else by its kind.
pub fn classify(
    link_type: LinkLayerType,
    loopback_flag: bool,
    kind: Option<&str>,
    mac: Option<[u8; 6]>,
    has_device: bool,
) -> LinkKind {
    if loopback_flag || link_type == LinkLayerType::Loopback {
        return LinkKind::Loopback;
    }
    let has_mac = mac.is_some_and(|m| m != [0; 6]);
    if has_mac && (has_device || (link_type == LinkLayerType::Ether && kind.is_none())) {
        return LinkKind::Wired;
    }
    LinkKind::Other(kind.unwrap_or("unknown").to_string())
}

fn link_from(msg: &LinkMessage, sys_class_net: &Path) -> Link {
    let mut name = String::new();
    let mut mac = None;
    let mut mtu = 0;
    let mut kind = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                mac = Some(m);
            }
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(match k {
                            InfoKind::Other(s) => s.clone(),
                            k => k.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let flags = msg.header.flags;
    let has_device = !name.is_empty() && sys_class_net.join(&name).join("device").exists();
    let kind = classify(
        msg.header.link_layer_type,
        flags.contains(LinkFlags::Loopback),
        kind.as_deref(),
        mac,
        has_device,
    );
    Link {
        index: msg.header.index,
        name,
        mac: mac.filter(|m| *m != [0; 6]),
        mtu,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        kind,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The scope `ip addr add` would give: host for 127/8 and ::1, link for fe80::/10.
fn default_scope(ip: IpAddr) -> AddressScope {
    match ip {
        IpAddr::V4(a) if a.is_loopback() => AddressScope::Host,
        IpAddr::V6(a) if a.is_loopback() => AddressScope::Host,
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => AddressScope::Link,
        _ => AddressScope::Universe,
    }
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.header.scope = default_scope(net.addr());
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    msg
}

fn address_from(msg: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut cache = None;
    let mut flags = AddressFlags::from_bits_truncate(u32::from(msg.header.flags.bits()));
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::CacheInfo(c) => cache = Some(*c),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and the same address otherwise.
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    let left = |v: u32| (v != u32::MAX).then_some(v);
    Some(Address {
        index: msg.header.index,
        net,
        valid_s: cache.and_then(|c| left(c.ifa_valid)),
        preferred_s: cache.and_then(|c| left(c.ifa_preferred)),
        tentative: flags.contains(AddressFlags::Tentative),
        local_scope: matches!(msg.header.scope, AddressScope::Link | AddressScope::Host),
    })
}

fn protocol_of(origin: RouteOrigin) -> RouteProtocol {
    match origin {
        RouteOrigin::Kernel => RouteProtocol::Kernel,
        RouteOrigin::Boot => RouteProtocol::Boot,
        RouteOrigin::Static => RouteProtocol::Static,
        RouteOrigin::Dhcp => RouteProtocol::Dhcp,
        RouteOrigin::Ra => RouteProtocol::Ra,
        RouteOrigin::Other(p) => RouteProtocol::from(p),
    }
}

fn origin_of(p: RouteProtocol) -> RouteOrigin {
    match p {
        RouteProtocol::Kernel => RouteOrigin::Kernel,
        RouteProtocol::Boot => RouteOrigin::Boot,
        RouteProtocol::Static => RouteOrigin::Static,
        RouteProtocol::Dhcp => RouteOrigin::Dhcp,
        RouteProtocol::Ra => RouteOrigin::Ra,
        p => RouteOrigin::Other(u8::from(p)),
    }
}

fn route_message(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(r.dest.addr());
    msg.header.destination_prefix_length = r.dest.prefix_len();
    msg.header.table = TABLE_MAIN;
    msg.header.protocol = protocol_of(r.origin);
    msg.header.scope = if r.link_scope && r.gateway.is_none() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    msg.header.kind = RouteType::Unicast;
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if r.dest.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dest.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(src) = r.source {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    if let Some(i) = r.index {
        msg.attributes.push(RouteAttribute::Oif(i));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    msg
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_from(msg: &RouteMessage) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dest = None;
    let mut gateway = None;
    let mut index = None;
    let mut metric = None;
    let mut source = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dest = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => index = Some(*i),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::PrefSource(s) => source = ip_of(s),
            _ => {}
        }
    }
    if table != u32::from(TABLE_MAIN) {
        return None;
    }
    let dest = match (dest, msg.header.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(Route {
        dest: IpNet::new(dest, msg.header.destination_prefix_length).ok()?,
        gateway,
        index,
        metric,
        source,
        origin: origin_of(msg.header.protocol),
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        link_scope: msg.header.scope == RouteScope::Link,
    })
}

fn describe_route(r: &Route) -> String {
    let mut s = render_route(r, |i| format!("if{i}"));
    if s.is_empty() {
        s = r.dest.to_string();
    }
    s
}

/// A route as `ip route` prints it, naming links with `name_of`.
pub fn render_route(r: &Route, name_of: impl Fn(u32) -> String) -> String {
    let mut s = if r.dest.prefix_len() == 0 {
        "default".to_string()
    } else {
        r.dest.to_string()
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(i) = r.index {
        s.push_str(&format!(" dev {}", name_of(i)));
    }
    let proto = match r.origin {
        RouteOrigin::Kernel => "kernel".to_string(),
        RouteOrigin::Boot => "boot".to_string(),
        RouteOrigin::Static => "static".to_string(),
        RouteOrigin::Dhcp => "dhcp".to_string(),
        RouteOrigin::Ra => "ra".to_string(),
        RouteOrigin::Other(p) => p.to_string(),
    };
    s.push_str(&format!(" proto {proto}"));
    if r.link_scope {
        s.push_str(" scope link");
    }
    if let Some(src) = r.source {
        s.push_str(&format!(" src {src}"));
    }
    if let Some(m) = r.metric {
        s.push_str(&format!(" metric {m}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// A MAC address as `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, Parseable};

    use super::*;

    #[test]
    fn classify_links() {
        let mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let lo = classify(LinkLayerType::Loopback, true, None, None, false);
        assert_eq!(lo, LinkKind::Loopback);
        // virtio-net: a device in sysfs.
        assert_eq!(
            classify(LinkLayerType::Ether, false, None, mac, true),
            LinkKind::Wired
        );
        // No sysfs (a container's view): Ethernet without a kind still counts.
        assert_eq!(
            classify(LinkLayerType::Ether, false, None, mac, false),
            LinkKind::Wired
        );
        assert_eq!(
            classify(LinkLayerType::Ether, false, Some("veth"), mac, false),
            LinkKind::Other("veth".into())
        );
        assert_eq!(
            classify(LinkLayerType::Ether, false, Some("bridge"), mac, false),
            LinkKind::Other("bridge".into())
        );
        // tun: no MAC.
        assert_eq!(
            classify(LinkLayerType::None, false, Some("tun"), None, false),
            LinkKind::Other("tun".into())
        );
        // An all-zero MAC is no MAC.
        assert_eq!(
            classify(LinkLayerType::Ether, false, None, Some([0; 6]), true),
            LinkKind::Other("unknown".into())
        );
    }

    #[test]
    fn route_message_round_trip() {
        let r = Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.0.2.2".parse().unwrap()),
            2,
        )
        .metric(Some(1024))
        .origin(RouteOrigin::Dhcp)
        .source(Some("10.0.2.15".parse().unwrap()));
        let msg = route_message(&r);
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        let back = RouteMessage::parse(&buf[..]).unwrap();
        assert_eq!(route_from(&back), Some(r.clone()));
        assert_eq!(
            render_route(&r, |_| "eth0".into()),
            "default via 10.0.2.2 dev eth0 proto dhcp src 10.0.2.15 metric 1024"
        );
        let link = Route::new("10.0.2.0/24".parse().unwrap(), None, 2).origin(RouteOrigin::Kernel);
        assert_eq!(
            render_route(&link, |_| "eth0".into()),
            "10.0.2.0/24 dev eth0 proto kernel scope link"
        );
    }

    #[test]
    fn address_message_fields() {
        let net: IpNet = "127.0.0.1/8".parse().unwrap();
        let m = address_message(1, net);
        assert_eq!(m.header.scope, AddressScope::Host);
        assert_eq!(m.header.prefix_len, 8);
        let a = address_from(&m).unwrap();
        assert_eq!(a.net, net);
        assert!(a.local_scope);
        assert_eq!(a.valid_s, None);
        let ll = address_message(2, "fe80::1/64".parse().unwrap());
        assert_eq!(ll.header.scope, AddressScope::Link);
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "52:54:00:12:34:56"
        );
    }

    /// Reads the host's own links and routes (no privileges needed).
    #[test]
    fn dump_host_tables() {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(links.iter().any(|l| l.kind == LinkKind::Loopback));
        nl.addresses().unwrap();
        nl.routes().unwrap();
    }
}
