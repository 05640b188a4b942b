//! The sockets the DHCP client talks through (all the FFI of the client).
//!
//! - [`PacketSocket`]: AF_PACKET/SOCK_DGRAM for ETH_P_IP, bound to one
//!   link, as dhcpcd, udhcpc and systemd-networkd do: it works before the
//!   link has an address and sees replies whatever their IP destination.
//!   A classic BPF program lets through only unfragmented UDP to port 68;
//!   the rest is still checked in user space ([`super::frame::parse`]).
//! - [`unicast_socket`]: a UDP socket bound to the leased address and the
//!   link, for renewals and the release, once the link has an address.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::unix::AsyncFd;

const CLIENT_PORT: u16 = 68;

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Accept unfragmented IPv4 UDP to port 68, drop the rest. Offsets count
/// from the IP header (SOCK_DGRAM packet sockets see no link header).
const FILTER: [libc::sock_filter; 9] = [
    insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 9),   // A = protocol
    insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 6, 17), // UDP? else drop
    insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 6),   // A = flags + fragment offset
    insn(BPF_JMP | BPF_JSET | BPF_K, 4, 0, 0x1fff), // a later fragment: drop
    insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),  // X = IP header length
    insn(BPF_LD | BPF_H | BPF_IND, 0, 0, 2),   // A = UDP destination port
    insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, CLIENT_PORT as u32), // port 68? else drop
    insn(BPF_RET | BPF_K, 0, 0, 0x0004_0000),  // accept (whole packet)
    insn(BPF_RET | BPF_K, 0, 0, 0),            // drop
];

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating a packet socket")]
    Create(#[source] io::Error),
    #[error("attaching the DHCP filter")]
    Filter(#[source] io::Error),
    #[error("binding the packet socket to link {index}")]
    Bind {
        index: u32,
        #[source]
        source: io::Error,
    },
    #[error("setting up the packet socket")]
    Setup(#[source] io::Error),
    #[error("setting up a UDP socket on {ifname} from {addr}:68")]
    Udp {
        ifname: String,
        addr: Ipv4Addr,
        #[source]
        source: io::Error,
    },
}

/// One received IP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    /// The kernel never computed the checksum (a local sender with offload).
    pub csum_not_ready: bool,
}

#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    index: u32,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn link_addr(index: u32, broadcast: bool) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sa.sll_ifindex = index as i32;
    if broadcast {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    }
    sa
}

impl PacketSocket {
    /// Opens the socket on link `index`. Needs a tokio runtime (the socket
    /// is registered with its reactor) and CAP_NET_RAW.
    pub fn open(index: u32) -> Result<Self, SocketError> {
        // Protocol 0 at first: the socket receives nothing until it is bound,
        // so no unfiltered packet slips in before the filter is attached.
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(SocketError::Create(last_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let prog = libc::sock_fprog {
            len: FILTER.len() as u16,
            filter: FILTER.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at FILTER (static) with its true length; the
        // kernel copies the program and never writes through the pointer.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SocketError::Filter(last_error()));
        }
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SocketError::Setup(last_error()));
        }
        let sa = link_addr(index, false);
        // SAFETY: `sa` is a valid sockaddr_ll and the length is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(SocketError::Bind {
                index,
                source: last_error(),
            });
        }
        // SAFETY: the AsyncFd owns `fd`, which stays open and the same
        // descriptor until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| SocketError::Setup(e.into()))?;
        Ok(PacketSocket { fd, index })
    }

    /// Sends an IP datagram to the link's broadcast address.
    pub fn send_broadcast(&self, datagram: &[u8]) -> io::Result<()> {
        let sa = link_addr(self.index, true);
        // SAFETY: the buffer and `sa` are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Waits for the next incoming datagram (outgoing copies are skipped).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_once(fd.get_ref().as_raw_fd(), buf)) {
                Ok(Ok(Some(r))) => return Ok(r),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// One recvmsg(2); `None` for a packet this host sent.
fn recv_once(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // Room for one cmsghdr with a tpacket_auxdata, generously aligned.
    let mut control = [0u64; 16];
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: every pointer in `msg` refers to a live local buffer of the
    // length given, and they outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(last_error());
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    let mut csum_not_ready = false;
    // SAFETY: CMSG_LEN only computes a length.
    let aux_len = unsafe { libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) } as usize;
    // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR/NXTHDR walk the
    // control buffer within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points into `control`.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_PACKET
            && hdr.cmsg_type == libc::PACKET_AUXDATA
            && hdr.cmsg_len as usize >= aux_len
        {
            // SAFETY: the length check above guarantees a whole
            // tpacket_auxdata behind CMSG_DATA; it may be unaligned.
            let aux: libc::tpacket_auxdata =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            csum_not_ready = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Some(Received {
        len: (n as usize).min(buf.len()),
        csum_not_ready,
    }))
}

/// A UDP socket on `addr`:68, bound to the link, non-blocking, for
/// unicast to the server once the lease's address is configured.
pub fn unicast_socket(ifname: &str, addr: Ipv4Addr) -> Result<UdpSocket, SocketError> {
    let err = |source: io::Error| SocketError::Udp {
        ifname: ifname.to_string(),
        addr,
        source,
    };
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| err(e.into()))?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(|e| err(e.into()))?;
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = CLIENT_PORT.to_be();
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    // SAFETY: `sa` is a valid sockaddr_in and the length is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(err(last_error()));
    }
    Ok(UdpSocket::from(fd))
}

/// Bytes a socket has handed to the kernel that are not sent yet
/// (SIOCOUTQ): a datagram waiting for the gateway's ARP answer counts.
pub fn unsent(sock: &UdpSocket) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer, which is live.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(last_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Reads and drops whatever waits on a non-blocking UDP socket (the
/// packet socket already saw the same replies).
pub fn drain(sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    while sock.recv(&mut buf).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter program on a packet, as the kernel would.
    fn run_filter(p: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let ld = |off: usize, n: usize| -> Option<u32> {
            p.get(off..off + n)
                .map(|b| b.iter().fold(0u32, |acc, v| acc << 8 | u32::from(*v)))
        };
        loop {
            let i = &FILTER[pc];
            pc += 1;
            match i.code {
                c if c == BPF_LD | BPF_B | BPF_ABS => match ld(i.k as usize, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_ABS => match ld(i.k as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_IND => match ld((x + i.k) as usize, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LDX | BPF_B | BPF_MSH => match ld(i.k as usize, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf })
                }
                c if c == BPF_JMP | BPF_JSET | BPF_K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf })
                }
                c if c == BPF_RET | BPF_K => return i.k,
                c => panic!("opcode {c:#x} not emulated"),
            }
        }
    }

    #[test]
    fn filter_accepts_only_udp_to_68() {
        use super::super::frame::build;
        let src = Ipv4Addr::new(10, 0, 2, 2);
        let to68 = build(src, Ipv4Addr::BROADCAST, 67, 68, b"reply");
        assert!(run_filter(&to68) > 0);
        let to67 = build(src, Ipv4Addr::BROADCAST, 68, 67, b"request");
        assert_eq!(run_filter(&to67), 0);
        let mut tcp = to68.clone();
        tcp[9] = 6;
        assert_eq!(run_filter(&tcp), 0);
        let mut frag = to68.clone();
        frag[7] = 1;
        assert_eq!(run_filter(&frag), 0);
        // IP options move the UDP header.
        let mut opts = to68[..20].to_vec();
        opts[0] = 0x46;
        opts.extend_from_slice(&[1, 1, 1, 1]);
        opts.extend_from_slice(&to68[20..]);
        assert!(run_filter(&opts) > 0);
    }
}
