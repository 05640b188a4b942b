//! SNTPv4 client (RFC 4330): asks the configured servers in order, takes
//! the first good answer, and corrects CLOCK_REALTIME.
//!
//! Policy: an offset above [`STEP_THRESHOLD`] (0.5 s) steps the clock with
//! `clock_settime`; a smaller one is slewed with `adjtime(3)` (the kernel
//! skews the clock by at most 0.5 ms per second, so time never jumps or
//! runs backwards for small corrections). Each server gets at most
//! [`PER_SERVER`] (name lookup included) and two requests.
//!
//! The clock is behind the [`Clock`] trait so the tests run the client
//! against a local responder without touching the machine's clock.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use atoll_common::error::error_chain;
use nix::libc;
use tokio::net::UdpSocket;

/// Offsets above this are stepped, smaller ones slewed.
pub const STEP_THRESHOLD: Duration = Duration::from_millis(500);
/// The most one server may take, name lookup included.
pub const PER_SERVER: Duration = Duration::from_secs(3);
/// Wait for an answer before asking again.
const RETRY_AFTER: Duration = Duration::from_millis(1200);
const NTP_PORT: u16 = 123;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: i128 = 2_208_988_800;
const NS: i128 = 1_000_000_000;
const PACKET: usize = 48;

#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("{server}: cannot resolve the name")]
    Resolve {
        server: String,
        #[source]
        source: io::Error,
    },
    #[error("{server}: the name has no address")]
    NoAddress { server: String },
    #[error("{server} ({addr}): {source}")]
    Io {
        server: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{server}: no valid answer within {} s", PER_SERVER.as_secs())]
    Timeout { server: String },
    #[error("{server}: {reason}")]
    Invalid { server: String, reason: ReplyError },
    #[error("setting the clock")]
    Clock(#[source] io::Error),
    #[error("no NTP servers")]
    NoServers,
    #[error("{0}")]
    AllFailed(String),
}

/// Why a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("short reply ({0} bytes)")]
    Short(usize),
    #[error("not a server reply (mode {0})")]
    Mode(u8),
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("the server is not synchronised (leap indicator 3)")]
    Unsynchronised,
    #[error("kiss-o'-death {0:?}")]
    Kiss(String),
    #[error("bad stratum {0}")]
    Stratum(u8),
    #[error("the originate timestamp is not ours")]
    Originate,
    #[error("no transmit timestamp")]
    NoTransmit,
}

/// A 32.32 fixed-point NTP timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// From nanoseconds since the Unix epoch.
    pub fn from_unix_ns(ns: i128) -> Self {
        let secs = ns.div_euclid(NS) + NTP_UNIX_OFFSET;
        let frac = (ns.rem_euclid(NS) << 32) / NS;
        NtpTimestamp(((secs as u64) << 32) | frac as u64)
    }

    /// To nanoseconds since the Unix epoch. The era follows RFC 4330
    /// section 3: with the top bit clear the time is in 2036–2104.
    pub fn to_unix_ns(self) -> i128 {
        let secs = i128::from(self.0 >> 32);
        let frac = i128::from(self.0 & 0xffff_ffff);
        let era = if secs & 0x8000_0000 == 0 {
            1i128 << 32
        } else {
            0
        };
        (secs + era - NTP_UNIX_OFFSET) * NS + ((frac * NS) >> 32)
    }
}

/// The wall clock the client reads and corrects.
pub trait Clock: Send + Sync {
    /// CLOCK_REALTIME in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i128;
    /// Jumps the clock by `offset_ns`.
    fn step(&self, offset_ns: i128) -> io::Result<()>;
    /// Skews the clock gradually by `offset_ns`.
    fn slew(&self, offset_ns: i128) -> io::Result<()>;
}

/// The machine's real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i128 {
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME) {
            Ok(ts) => i128::from(ts.tv_sec()) * NS + i128::from(ts.tv_nsec()),
            Err(_) => 0,
        }
    }

    fn step(&self, offset_ns: i128) -> io::Result<()> {
        let t = self.now_ns() + offset_ns;
        let ts = nix::sys::time::TimeSpec::new(t.div_euclid(NS) as _, t.rem_euclid(NS) as _);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(io::Error::from)
    }

    fn slew(&self, offset_ns: i128) -> io::Result<()> {
        let us = offset_ns / 1000;
        let tv = libc::timeval {
            tv_sec: us.div_euclid(1_000_000) as _,
            tv_usec: us.rem_euclid(1_000_000) as _,
        };
        // SAFETY: `tv` is a valid timeval; a null old-delta pointer is allowed.
        let r = unsafe { libc::adjtime(&tv, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A client request (LI 0, version 4, mode 3) carrying `transmit`.
pub fn request(transmit: NtpTimestamp) -> [u8; PACKET] {
    let mut p = [0u8; PACKET];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    p
}

/// The fields of a server reply that the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub stratum: u8,
    pub originate: NtpTimestamp,
    pub receive: NtpTimestamp,
    pub transmit: NtpTimestamp,
}

fn ts(b: &[u8]) -> NtpTimestamp {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    NtpTimestamp(u64::from_be_bytes(a))
}

/// Parses and checks a reply: mode 4, version 3 or 4, leap indicator not 3,
/// stratum 1–15, a non-zero transmit time. The originate timestamp is
/// returned for the caller to match against what it sent.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, ReplyError> {
    if buf.len() < PACKET {
        return Err(ReplyError::Short(buf.len()));
    }
    let li = buf[0] >> 6;
    let vn = (buf[0] >> 3) & 7;
    let mode = buf[0] & 7;
    if mode != 4 {
        return Err(ReplyError::Mode(mode));
    }
    if !(3..=4).contains(&vn) {
        return Err(ReplyError::Version(vn));
    }
    let stratum = buf[1];
    if stratum == 0 {
        let code: String = buf[12..16]
            .iter()
            .map(|b| {
                if b.is_ascii_graphic() {
                    *b as char
                } else {
                    '?'
                }
            })
            .collect();
        return Err(ReplyError::Kiss(code));
    }
    if li == 3 {
        return Err(ReplyError::Unsynchronised);
    }
    if stratum > 15 {
        return Err(ReplyError::Stratum(stratum));
    }
    let r = Reply {
        stratum,
        originate: ts(&buf[24..]),
        receive: ts(&buf[32..]),
        transmit: ts(&buf[40..]),
    };
    if r.transmit.0 == 0 {
        return Err(ReplyError::NoTransmit);
    }
    Ok(r)
}

/// Clock offset and round-trip delay, in nanoseconds, from the client's
/// send (t1) and receive (t4) times and the server's receive (t2) and
/// transmit (t3) times: offset = ((t2 − t1) + (t3 − t4)) / 2,
/// delay = (t4 − t1) − (t3 − t2).
pub fn offset_delay(t1: i128, t2: i128, t3: i128, t4: i128) -> (i128, i128) {
    (((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2))
}

/// One good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub server: String,
    pub addr: SocketAddr,
    pub stratum: u8,
    pub offset_ns: i128,
    pub delay_ns: i128,
}

/// What was done with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stepped,
    Slewed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub sample: Sample,
    pub action: Action,
}

/// `host`, `host:port`, `addr`, `v4:port` or `[v6]:port`.
fn split_server(s: &str) -> (String, u16) {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return (ip.to_string(), NTP_PORT);
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if let Ok(p) = port.parse() {
            if !host.contains(':') {
                return (host.to_string(), p);
            }
        }
    }
    (s.to_string(), NTP_PORT)
}

async fn resolve(server: &str) -> Result<SocketAddr, SntpError> {
    let (host, port) = split_server(server);
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|source| SntpError::Resolve {
            server: server.to_string(),
            source,
        })?
        .collect();
    // IPv4 first: the host may well have no IPv6 route.
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.first().copied().ok_or_else(|| SntpError::NoAddress {
        server: server.to_string(),
    })
}

async fn exchange(server: &str, clock: &dyn Clock) -> Result<Sample, SntpError> {
    let addr = resolve(server).await?;
    let io_err = |source| SntpError::Io {
        server: server.to_string(),
        addr,
        source,
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    let sock = UdpSocket::bind(bind).await.map_err(io_err)?;
    sock.connect(addr).await.map_err(io_err)?;
    let mut sent: Vec<(NtpTimestamp, i128)> = Vec::new();
    let mut last_invalid = None;
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        let t1 = clock.now_ns();
        let stamp = NtpTimestamp::from_unix_ns(t1);
        sent.push((stamp, t1));
        sock.send(&request(stamp)).await.map_err(io_err)?;
        let deadline = tokio::time::Instant::now() + RETRY_AFTER;
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP errors (port unreachable) come back here: try again.
                Ok(Err(e)) => {
                    last_invalid = Some(SntpError::Io {
                        server: server.to_string(),
                        addr,
                        source: e,
                    });
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Ok(n)) => n,
            };
            let t4 = clock.now_ns();
            let reply = match parse_reply(&buf[..n]) {
                Ok(r) => r,
                Err(reason) => {
                    last_invalid = Some(SntpError::Invalid {
                        server: server.to_string(),
                        reason,
                    });
                    continue;
                }
            };
            let Some((_, t1)) = sent.iter().find(|(s, _)| *s == reply.originate) else {
                last_invalid = Some(SntpError::Invalid {
                    server: server.to_string(),
                    reason: ReplyError::Originate,
                });
                continue;
            };
            let (offset_ns, delay_ns) = offset_delay(
                *t1,
                reply.receive.to_unix_ns(),
                reply.transmit.to_unix_ns(),
                t4,
            );
            return Ok(Sample {
                server: server.to_string(),
                addr,
                stratum: reply.stratum,
                offset_ns,
                delay_ns,
            });
        }
    }
    Err(last_invalid.unwrap_or_else(|| SntpError::Timeout {
        server: server.to_string(),
    }))
}

/// Asks one server, within [`PER_SERVER`].
pub async fn query(server: &str, clock: &dyn Clock) -> Result<Sample, SntpError> {
    match tokio::time::timeout(PER_SERVER, exchange(server, clock)).await {
        Ok(r) => r,
        Err(_) => Err(SntpError::Timeout {
            server: server.to_string(),
        }),
    }
}

/// Asks the servers in order and corrects the clock from the first good
/// answer (see the module doc for step versus slew).
pub async fn sync(servers: &[String], clock: &dyn Clock) -> Result<SyncReport, SntpError> {
    if servers.is_empty() {
        return Err(SntpError::NoServers);
    }
    let mut errors = Vec::new();
    for s in servers {
        match query(s, clock).await {
            Ok(sample) => {
                let big = sample.offset_ns.unsigned_abs() > STEP_THRESHOLD.as_nanos();
                let action = if big {
                    clock.step(sample.offset_ns).map_err(SntpError::Clock)?;
                    Action::Stepped
                } else {
                    clock.slew(sample.offset_ns).map_err(SntpError::Clock)?;
                    Action::Slewed
                };
                return Ok(SyncReport { sample, action });
            }
            Err(e) => {
                log::debug!("ntp: {}", error_chain(&e));
                errors.push(error_chain(&e));
            }
        }
    }
    Err(SntpError::AllFailed(errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// The real time, and a record of what the client asked to change.
    #[derive(Debug, Default)]
    struct TestClock {
        steps: Mutex<Vec<i128>>,
        slews: Mutex<Vec<i128>>,
    }

    impl Clock for TestClock {
        fn now_ns(&self) -> i128 {
            SystemClock.now_ns()
        }
        fn step(&self, offset_ns: i128) -> io::Result<()> {
            self.steps.lock().unwrap().push(offset_ns);
            Ok(())
        }
        fn slew(&self, offset_ns: i128) -> io::Result<()> {
            self.slews.lock().unwrap().push(offset_ns);
            Ok(())
        }
    }

    fn reply(
        req: &[u8],
        li: u8,
        stratum: u8,
        server_time: NtpTimestamp,
        originate: Option<NtpTimestamp>,
    ) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (li << 6) | (4 << 3) | 4;
        p[1] = stratum;
        p[12..16].copy_from_slice(b"RATE");
        let orig = originate.unwrap_or(ts(&req[40..]));
        p[24..32].copy_from_slice(&orig.0.to_be_bytes());
        p[32..40].copy_from_slice(&server_time.0.to_be_bytes());
        p[40..48].copy_from_slice(&server_time.0.to_be_bytes());
        p
    }

    /// A responder on 127.0.0.1 that answers each request with its own
    /// clock plus `ahead_s`, after `bad` wrong answers.
    fn responder(
        ahead_s: i128,
        li: u8,
        stratum: u8,
        bad_originate: bool,
    ) -> (String, std::thread::JoinHandle<()>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            for _ in 0..2 {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    return;
                };
                assert_eq!(n, 48);
                assert_eq!(buf[0], 0x23, "LI 0, version 4, mode 3");
                let now = SystemClock.now_ns() + ahead_s * NS;
                let orig = bad_originate.then_some(NtpTimestamp(12345));
                let r = reply(
                    &buf[..n],
                    li,
                    stratum,
                    NtpTimestamp::from_unix_ns(now),
                    orig,
                );
                sock.send_to(&r, from).unwrap();
            }
        });
        (addr, h)
    }

    #[test]
    fn timestamps() {
        // 2024-01-01T00:00:00Z.
        let t = 1_704_067_200 * NS + 250_000_000;
        let n = NtpTimestamp::from_unix_ns(t);
        assert_eq!(n.0 >> 32, 1_704_067_200 + 2_208_988_800);
        assert_eq!(n.0 & 0xffff_ffff, 1 << 30);
        assert_eq!(n.to_unix_ns(), t);
        // After the 2036 era rollover.
        let later = (1i128 << 32) * NS - NTP_UNIX_OFFSET * NS + 10 * NS;
        let n = NtpTimestamp::from_unix_ns(later);
        assert_eq!(n.0 >> 32, 10);
        assert_eq!(n.to_unix_ns(), later);
    }

    #[test]
    fn offset_math() {
        // Server 10 s ahead, 20 ms each way, 1 ms in the server.
        let t1 = 1_000 * NS;
        let t2 = t1 + 10 * NS + 20_000_000;
        let t3 = t2 + 1_000_000;
        let t4 = t1 + 41_000_000;
        assert_eq!(offset_delay(t1, t2, t3, t4), (10 * NS, 40_000_000));
        // Behind.
        let (o, _) = offset_delay(100 * NS, 50 * NS, 50 * NS, 100 * NS);
        assert_eq!(o, -50 * NS);
    }

    #[test]
    fn reply_checks() {
        let req = request(NtpTimestamp(7));
        let now = NtpTimestamp::from_unix_ns(1_704_067_200 * NS);
        assert!(parse_reply(&reply(&req, 0, 2, now, None)).is_ok());
        assert_eq!(
            parse_reply(&reply(&req, 3, 2, now, None)),
            Err(ReplyError::Unsynchronised)
        );
        assert_eq!(
            parse_reply(&reply(&req, 0, 0, now, None)),
            Err(ReplyError::Kiss("RATE".into()))
        );
        assert_eq!(
            parse_reply(&reply(&req, 0, 16, now, None)),
            Err(ReplyError::Stratum(16))
        );
        assert_eq!(
            parse_reply(&reply(&req, 0, 1, NtpTimestamp(0), None)),
            Err(ReplyError::NoTransmit)
        );
        assert_eq!(parse_reply(&req), Err(ReplyError::Mode(3)));
        assert_eq!(parse_reply(&req[..47]), Err(ReplyError::Short(47)));
        let mut v2 = reply(&req, 0, 2, now, None);
        v2[0] = (2 << 3) | 4;
        assert_eq!(parse_reply(&v2), Err(ReplyError::Version(2)));
        assert_eq!(
            parse_reply(&reply(&req, 0, 2, now, None))
                .unwrap()
                .originate,
            NtpTimestamp(7)
        );
    }

    #[test]
    fn servers() {
        assert_eq!(split_server("pool.ntp.org"), ("pool.ntp.org".into(), 123));
        assert_eq!(
            split_server("pool.ntp.org:1123"),
            ("pool.ntp.org".into(), 1123)
        );
        assert_eq!(split_server("10.0.2.2"), ("10.0.2.2".into(), 123));
        assert_eq!(split_server("127.0.0.1:9"), ("127.0.0.1".into(), 9));
        assert_eq!(split_server("2001:db8::1"), ("2001:db8::1".into(), 123));
        assert_eq!(split_server("[2001:db8::1]:99"), ("2001:db8::1".into(), 99));
    }

    #[tokio::test]
    async fn steps_a_clock_100s_behind() {
        let (addr, h) = responder(100, 0, 2, false);
        let clock = TestClock::default();
        let r = sync(std::slice::from_ref(&addr), &clock).await.unwrap();
        h.join().unwrap();
        assert_eq!(r.action, Action::Stepped);
        assert_eq!(r.sample.server, addr);
        assert_eq!(r.sample.stratum, 2);
        let steps = clock.steps.lock().unwrap().clone();
        assert_eq!(steps.len(), 1);
        assert!((steps[0] - 100 * NS).abs() < 100_000_000, "{steps:?}");
        assert!(clock.slews.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn slews_a_small_offset_and_skips_a_bad_server() {
        let (bad, hb) = responder(0, 3, 2, false);
        let (good, hg) = responder(0, 0, 1, false);
        let clock = TestClock::default();
        let r = sync(&[bad, good.clone()], &clock).await.unwrap();
        assert_eq!(r.sample.server, good);
        assert_eq!(r.action, Action::Slewed);
        assert!(r.sample.offset_ns.abs() < STEP_THRESHOLD.as_nanos() as i128);
        assert!(clock.steps.lock().unwrap().is_empty());
        assert_eq!(clock.slews.lock().unwrap().len(), 1);
        hg.join().unwrap();
        drop(hb);
    }

    #[tokio::test]
    async fn a_foreign_originate_is_not_an_answer() {
        let (addr, h) = responder(100, 0, 2, true);
        let clock = TestClock::default();
        let e = sync(&[addr], &clock).await.unwrap_err();
        assert!(e.to_string().contains("originate"), "{e}");
        assert!(clock.steps.lock().unwrap().is_empty());
        h.join().unwrap();
        assert!(matches!(sync(&[], &clock).await, Err(SntpError::NoServers)));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn timestamp_round_trip(ns in 0i128..(4_000_000_000i128 * NS)) {
            let back = NtpTimestamp::from_unix_ns(ns).to_unix_ns();
            prop_assert!((back - ns).abs() <= 1, "{} {}", ns, back);
        }
    }
}
