//! Netlink messages by hand: a builder for `nlmsghdr` + fixed header +
//! attributes (nested or not), and a blocking socket that sends a request
//! and collects the kernel's acks or dump.
//!
//! rtnetlink ([`super::rtnl`]) and nf_tables ([`super::nft`]) share it, so
//! the bytes we send are built and unit-tested in one place.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
/// How long to wait for the kernel's answer: it answers at once, the
/// timeout only keeps a lost answer from hanging PID 1.
const ANSWER_TIMEOUT_S: i64 = 5;
/// Receive buffer for one datagram (dump parts are at most 32 KiB; an
/// error echoes the request, a batch of rules included).
const RECV_BUF: usize = 256 * 1024;

/// A host-order u32 from the first four bytes of `b` (callers check the
/// length).
pub fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message being built. Attributes are appended in order;
/// [`Msg::nest`] wraps the ones added by its closure.
#[derive(Debug, Clone)]
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    /// A message of `ty` with `flags` and `seq`, followed by the fixed
    /// header `fixed` (ifinfomsg, nfgenmsg, …; padded to 4 bytes).
    pub fn new(ty: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        let mut msg = Msg { buf };
        msg.raw(fixed);
        msg
    }

    /// Appends bytes as they are, padded to 4.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(pad4(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.raw(data)
    }

    /// A NUL-terminated string.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data)
    }

    /// A u32 in host order (rtnetlink).
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A u32 in network order (nf_tables' NLA_BE32).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A nested attribute holding what `f` adds.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Msg)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The message's bytes, its length set.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Attributes of a received message: (type without flag bits, payload).
pub fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((ty, &data[4..len]));
        data = &data[pad4(len).min(data.len())..];
    }
    out
}

/// A received message: its type and what follows the nlmsghdr.
#[derive(Debug)]
pub struct Received {
    pub ty: u16,
    pub payload: Vec<u8>,
}

/// A blocking netlink socket, bound in the network namespace of the thread
/// that opened it (and staying there whatever that thread does later).
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn open(protocol: SockProtocol) -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(ANSWER_TIMEOUT_S, 0),
        )?;
        Ok(Socket {
            fd,
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            buf: vec![0; RECV_BUF],
        })
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Marks every number up to `last` as used (by a batch).
    pub fn used_seq(&mut self, last: u32) {
        self.seq = last;
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let n = send(self.fd.as_raw_fd(), bytes, MsgFlags::empty())?;
        if n != bytes.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    /// Every message in the next datagram.
    fn recv(&mut self) -> io::Result<Vec<(u16, u32, Vec<u8>)>> {
        let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
        let mut out = Vec::new();
        let mut data = &self.buf[..n];
        while data.len() >= NLMSG_HDRLEN {
            let len = ne_u32(&data[0..4]) as usize;
            if len < NLMSG_HDRLEN || len > data.len() {
                break;
            }
            let ty = u16::from_ne_bytes([data[4], data[5]]);
            let seq = ne_u32(&data[8..12]);
            out.push((ty, seq, data[NLMSG_HDRLEN..len].to_vec()));
            data = &data[pad4(len).min(data.len())..];
        }
        Ok(out)
    }

    /// Sends `bytes` (one message or a batch) and waits for an ack of each
    /// of `seqs`. The first refusal is returned with its sequence number;
    /// the others are still read, so the socket stays in step.
    pub fn request(&mut self, bytes: &[u8], seqs: &[u32]) -> Result<(), (Option<u32>, io::Error)> {
        self.send(bytes).map_err(|e| (None, e))?;
        let mut pending: Vec<u32> = seqs.to_vec();
        let mut first_err = None;
        while !pending.is_empty() {
            let msgs = self.recv().map_err(|e| (None, e))?;
            for (ty, seq, payload) in msgs {
                if ty != NLMSG_ERROR || payload.len() < 4 {
                    continue;
                }
                let errno = ne_u32(&payload[0..4]) as i32;
                let Some(pos) = pending.iter().position(|s| *s == seq) else {
                    // A refusal of a message we expected no answer for
                    // (a batch's BEGIN): nothing else will come.
                    if errno != 0 && seqs.first().is_some_and(|f| seq == f.wrapping_sub(1)) {
                        return Err((Some(seq), io::Error::from_raw_os_error(-errno)));
                    }
                    continue;
                };
                pending.swap_remove(pos);
                if errno != 0 && first_err.is_none() {
                    first_err = Some((Some(seq), io::Error::from_raw_os_error(-errno)));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends a dump request (`seq` is its sequence number) and returns
    /// every answer until NLMSG_DONE.
    pub fn dump(&mut self, bytes: &[u8], seq: u32) -> io::Result<Vec<Received>> {
        self.send(bytes)?;
        let mut out = Vec::new();
        loop {
            for (ty, s, payload) in self.recv()? {
                if s != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR if payload.len() >= 4 => {
                        let errno = ne_u32(&payload[0..4]) as i32;
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                    }
                    _ => out.push(Received { ty, payload }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_attributes_and_nesting() {
        let mut m = Msg::new(16, NLM_F_REQUEST | NLM_F_ACK, 7, &[1, 2, 3]);
        m.attr_str(3, "ab").nest(18, |m| {
            m.attr_be32(2, 0x0102_0304);
        });
        let b = m.finish();
        let mut want = Vec::new();
        want.extend_from_slice(&40u32.to_ne_bytes());
        want.extend_from_slice(&16u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 2, 3, 0]); // fixed header, padded
        want.extend_from_slice(&7u16.to_ne_bytes()); // "ab\0": 4 + 3
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(b"ab\0\0");
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&(18u16 | NLA_F_NESTED).to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(b, want);
    }

    #[test]
    fn parses_attributes() {
        let mut m = Msg::new(0, 0, 0, &[]);
        m.attr_str(3, "eth0").attr_u32(10, 5);
        let b = m.finish();
        let a = attrs(&b[16..]);
        assert_eq!(a, vec![(3, &b"eth0\0"[..]), (10, &5u32.to_ne_bytes()[..])]);
        // A truncated attribute ends the walk instead of panicking.
        assert_eq!(attrs(&[200, 0, 1, 0, 9]), vec![]);
    }
}
