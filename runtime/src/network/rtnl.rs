//! rtnetlink requests the bridge needs: links (bridge, veth pairs), IPv4
//! addresses and the default route, over a socket opened in one network
//! namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::SockProtocol;

use super::netlink::{
    attrs, ne_u32, Msg, Socket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use super::NetworkError;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// A link as the bridge cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    /// `bridge`, `veth`, … (IFLA_INFO_KIND).
    pub kind: Option<String>,
}

/// `struct ifinfomsg`: family, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = AF_UNSPEC;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// An rtnetlink socket; every call names what it did in its error.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, NetworkError> {
        Socket::open(SockProtocol::NetlinkRoute)
            .map(|sock| Rtnl { sock })
            .map_err(|source| NetworkError::Socket {
                protocol: "rtnetlink",
                source,
            })
    }

    fn request(
        &mut self,
        what: impl FnOnce() -> String,
        msg: Msg,
        seq: u32,
    ) -> Result<(), NetworkError> {
        self.sock
            .request(&msg.finish(), &[seq])
            .map_err(|(_, source)| NetworkError::Netlink {
                what: what(),
                source,
            })
    }

    fn begin(&mut self, ty: u16, flags: u16, fixed: &[u8]) -> (Msg, u32) {
        let seq = self.sock.next_seq();
        (
            Msg::new(ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq, fixed),
            seq,
        )
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetworkError> {
        let seq = self.sock.next_seq();
        let msg = Msg::new(
            RTM_GETLINK,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            &ifinfomsg(0, 0, 0),
        );
        let answers =
            self.sock
                .dump(&msg.finish(), seq)
                .map_err(|source| NetworkError::Netlink {
                    what: "list links".into(),
                    source,
                })?;
        Ok(answers
            .iter()
            .filter(|m| m.ty == RTM_NEWLINK && m.payload.len() >= 16)
            .map(|m| parse_link(&m.payload))
            .collect())
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetworkError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Creates bridge `name`; `Ok(false)` if a link of that name exists.
    pub fn create_bridge(&mut self, name: &str) -> Result<bool, NetworkError> {
        let (mut msg, seq) =
            self.begin(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
        msg.attr_str(IFLA_IFNAME, name).nest(IFLA_LINKINFO, |m| {
            m.attr_str(IFLA_INFO_KIND, "bridge");
        });
        match self.request(|| format!("create bridge {name}"), msg, seq) {
            Ok(()) => Ok(true),
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(nix::libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair: `host` here, a port of `master`, up; `peer` in
    /// the namespace `peer_netns` (created there directly, so its name
    /// never clashes with one of ours).
    pub fn create_veth(
        &mut self,
        host: &str,
        master: u32,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<(), NetworkError> {
        let (mut msg, seq) = self.begin(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, IFF_UP, IFF_UP),
        );
        let fd = peer_netns.as_raw_fd() as u32;
        msg.attr_str(IFLA_IFNAME, host)
            .attr_u32(IFLA_MASTER, master)
            .nest(IFLA_LINKINFO, |m| {
                m.attr_str(IFLA_INFO_KIND, "veth")
                    .nest(IFLA_INFO_DATA, |m| {
                        m.nest(VETH_INFO_PEER, |m| {
                            m.raw(&ifinfomsg(0, 0, 0))
                                .attr_str(IFLA_IFNAME, peer)
                                .attr_u32(IFLA_NET_NS_FD, fd);
                        });
                    });
            });
        self.request(|| format!("create veth pair {host} / {peer}"), msg, seq)
    }

    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetworkError> {
        let (msg, seq) = self.begin(RTM_NEWLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP));
        self.request(|| format!("set link {name} up"), msg, seq)
    }

    /// Deletes link `name`; `Ok(false)` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetworkError> {
        let (mut msg, seq) = self.begin(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
        msg.attr_str(IFLA_IFNAME, name);
        match self.request(|| format!("delete link {name}"), msg, seq) {
            Ok(()) => Ok(true),
            Err(NetworkError::Netlink { source, .. })
                if source.raw_os_error() == Some(nix::libc::ENODEV) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds (or keeps) `addr/prefix` on link `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut fixed = [0u8; 8];
        fixed[0] = AF_INET;
        fixed[1] = prefix;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        let (mut msg, seq) = self.begin(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &fixed);
        msg.attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.request(
            || format!("add address {addr}/{prefix} to {name}"),
            msg,
            seq,
        )
    }

    /// Adds (or replaces) the default route via `gateway` out of `index`.
    pub fn add_default_route(
        &mut self,
        index: u32,
        name: &str,
        gateway: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags (u32).
        let fixed = [
            AF_INET,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let (mut msg, seq) = self.begin(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &fixed);
        msg.attr(RTA_GATEWAY, &gateway.octets())
            .attr_u32(RTA_OIF, index);
        self.request(
            || format!("add default route via {gateway} on {name}"),
            msg,
            seq,
        )
    }
}

fn parse_link(payload: &[u8]) -> Link {
    let index = ne_u32(&payload[4..8]);
    let mut link = Link {
        index,
        name: String::new(),
        master: None,
        kind: None,
    };
    for (ty, data) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => link.name = c_string(data),
            IFLA_MASTER if data.len() == 4 => link.master = Some(ne_u32(data)),
            IFLA_LINKINFO => {
                for (ty, data) in attrs(data) {
                    if ty == IFLA_INFO_KIND {
                        link.kind = Some(c_string(data));
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn c_string(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_link_answer() {
        let mut m = Msg::new(RTM_NEWLINK, 0, 1, &ifinfomsg(7, 0, 0));
        m.attr_str(IFLA_IFNAME, "ve-0123456789ab")
            .attr_u32(IFLA_MASTER, 3)
            .nest(IFLA_LINKINFO, |m| {
                m.attr_str(IFLA_INFO_KIND, "veth");
            });
        let b = m.finish();
        assert_eq!(
            parse_link(&b[16..]),
            Link {
                index: 7,
                name: "ve-0123456789ab".into(),
                master: Some(3),
                kind: Some("veth".into()),
            }
        );
    }
}
