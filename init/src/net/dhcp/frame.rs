//! IPv4 + UDP framing for the packet socket, which sends and receives
//! whole IP datagrams (the kernel adds and strips only the Ethernet header).

use std::net::Ipv4Addr;

const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const PROTO_UDP: u8 = 17;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{0} bytes is too short for an IPv4 header")]
    Short(usize),
    #[error("not IPv4 (version {0})")]
    Version(u8),
    #[error("bad IPv4 header length {0}")]
    HeaderLength(usize),
    #[error("IPv4 total length {total} does not fit the {got} bytes received")]
    TotalLength { total: usize, got: usize },
    #[error("bad IPv4 header checksum")]
    HeaderChecksum,
    #[error("a fragment")]
    Fragment,
    #[error("not UDP (protocol {0})")]
    NotUdp(u8),
    #[error("bad UDP length {0}")]
    UdpLength(usize),
    #[error("bad UDP checksum")]
    UdpChecksum,
}

/// A received UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// The Internet checksum (RFC 1071) of `data`, continuing from `sum`.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> u32 {
    let mut sum = sum16(0, &src.octets());
    sum = sum16(sum, &dst.octets());
    sum + u32::from(PROTO_UDP) + udp_len as u32
}

/// An IPv4 datagram carrying UDP `payload`, checksums filled in.
pub fn build(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HEADER + payload.len();
    let total = IPV4_HEADER + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x00]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // id, flags, fragment offset
    p.extend_from_slice(&[64, PROTO_UDP, 0, 0]); // ttl, protocol, checksum
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let csum = fold(sum16(0, &p[..IPV4_HEADER]));
    p[10..12].copy_from_slice(&csum.to_be_bytes());

    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut ucsum = fold(sum16(pseudo_sum(src, dst, udp_len), &p[IPV4_HEADER..]));
    if ucsum == 0 {
        ucsum = 0xffff;
    }
    p[IPV4_HEADER + 6..IPV4_HEADER + 8].copy_from_slice(&ucsum.to_be_bytes());
    p
}

/// Parses and checks an IPv4 datagram carrying UDP. `csum_not_ready`: the
/// kernel says the UDP checksum was never filled in (the packet came from
/// this host through a veth with checksum offload), so it is not checked.
pub fn parse(packet: &[u8], csum_not_ready: bool) -> Result<Datagram<'_>, FrameError> {
    if packet.len() < IPV4_HEADER {
        return Err(FrameError::Short(packet.len()));
    }
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(FrameError::Version(version));
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < IPV4_HEADER || ihl > packet.len() {
        return Err(FrameError::HeaderLength(ihl));
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl || total > packet.len() {
        return Err(FrameError::TotalLength {
            total,
            got: packet.len(),
        });
    }
    if fold(sum16(0, &packet[..ihl])) != 0 {
        return Err(FrameError::HeaderChecksum);
    }
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 {
        // More fragments, or an offset: DHCP replies are never fragmented.
        return Err(FrameError::Fragment);
    }
    if packet[9] != PROTO_UDP {
        return Err(FrameError::NotUdp(packet[9]));
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[ihl..total];
    if udp.len() < UDP_HEADER {
        return Err(FrameError::UdpLength(udp.len()));
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > udp.len() {
        return Err(FrameError::UdpLength(udp_len));
    }
    let udp = &udp[..udp_len];
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    if csum != 0 && !csum_not_ready && fold(sum16(pseudo_sum(src, dst, udp_len), udp)) != 0 {
        return Err(FrameError::UdpChecksum);
    }
    Ok(Datagram {
        src,
        dst,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[UDP_HEADER..],
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip() {
        let p = build(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            68,
            67,
            b"hello, dhcp",
        );
        assert_eq!(p.len(), 20 + 8 + 11);
        let d = parse(&p, false).unwrap();
        assert_eq!(d.src, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.dst, Ipv4Addr::BROADCAST);
        assert_eq!((d.src_port, d.dst_port), (68, 67));
        assert_eq!(d.payload, b"hello, dhcp");
        // Odd and even payload lengths both check out.
        let p = build(
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            67,
            68,
            b"ab",
        );
        assert!(parse(&p, false).is_ok());
    }

    #[test]
    fn known_checksum() {
        // The IPv4 header example from RFC 1071 / Wikipedia.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum16(0, &h)), 0xb861);
    }

    #[test]
    fn rejects_damage() {
        let good = build(
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"xyz",
        );
        let mut p = good.clone();
        p[30] ^= 1;
        assert_eq!(parse(&p, false), Err(FrameError::UdpChecksum));
        // Unless the kernel said the checksum was never computed.
        assert!(parse(&p, true).is_ok());
        let mut p = good.clone();
        p[15] ^= 1;
        assert_eq!(parse(&p, false), Err(FrameError::HeaderChecksum));
        let mut p = good.clone();
        p[9] = 6;
        assert!(parse(&p, false).is_err());
        assert_eq!(parse(&good[..19], false), Err(FrameError::Short(19)));
        assert!(parse(&good[..good.len() - 1], false).is_err());
        // A zero UDP checksum means "none".
        let mut p = good.clone();
        p[26] = 0;
        p[27] = 0;
        assert!(parse(&p, false).is_ok());
        // Trailing link-layer padding after the IP datagram is ignored.
        let mut p = good;
        p.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&p, false).unwrap().payload, b"xyz");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), nr in any::<bool>()) {
            let _ = parse(&bytes, nr);
        }

        #[test]
        fn builds_what_it_parses(payload in proptest::collection::vec(any::<u8>(), 0..600),
                                 src in any::<u32>(), dst in any::<u32>(), sp in any::<u16>(), dp in any::<u16>()) {
            let p = build(Ipv4Addr::from(src), Ipv4Addr::from(dst), sp, dp, &payload);
            let d = parse(&p, false).unwrap();
            prop_assert_eq!(d.payload, &payload[..]);
            prop_assert_eq!((d.src_port, d.dst_port), (sp, dp));
        }
    }
}
