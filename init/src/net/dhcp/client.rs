//! The DHCPv4 client state machine (RFC 2131 section 4.4), sans I/O.
//!
//! The driver feeds it received DHCP messages ([`Client::handle_packet`])
//! and timer expiries ([`Client::handle_timeout`]) and asks it what to send
//! ([`Client::poll_transmit`]), when to wake it next
//! ([`Client::poll_timeout`]) and what happened ([`Client::poll_event`]).
//! Time is passed in, so the tests drive it through whole leases at once.
//!
//! ```text
//!            start ──(previous lease)──> REBOOTING (INIT-REBOOT's wait)
//!              │                              │ ACK ─────────────┐
//!              v                              │ NAK / no answer  │
//!   INIT ──> SELECTING ──OFFER──> REQUESTING ─┤                  v
//!    ^                                        └──── ACK ──────> BOUND
//!    │                                                            │ T1
//!    │  NAK, expiry                                            RENEWING (unicast)
//!    └──────────────────────────────────────────────────────      │ T2
//!                                                              REBINDING (broadcast)
//! ```
//!
//! Retransmission while acquiring: the first message at once, then after
//! about 1, 2, 4, … up to 64 s, each with jitter (RFC 2131 4.1 asks for ±1 s;
//! here ±1/8 of the delay, at most 1 s, so the fast early retries stay
//! fast). While renewing and rebinding: half the time left to T2 or to
//! expiry, at least 60 s (4.4.5).
//!
//! Replies are checked strictly (BOOTREPLY, our xid and hardware address, a
//! message type that fits the state, a server identifier, a usable
//! `yiaddr`); anything else is ignored with the reason, never panicked on.
//! No DHCPDECLINE: the client does no ARP probe of the offered address
//! (as with systemd-networkd's default), so it never has a reason to decline.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

use super::lease::{server_id, usable_address, Lease};

/// DHCP's magic cookie, after the 236-byte fixed header.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The largest message we accept (option 57): an Ethernet frame's worth.
pub const MAX_MESSAGE: u16 = 1500;
/// REQUESTs sent in REQUESTING before starting over.
const REQUEST_TRIES: u32 = 4;
/// INIT-REBOOT REQUESTs sent before falling back to DISCOVER.
const REBOOT_TRIES: u32 = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(64);
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);

/// What the client starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mac: [u8; 6],
    /// Sent as option 12.
    pub hostname: Option<String>,
    /// The address of a lease from an earlier boot: try INIT-REBOOT first.
    pub previous: Option<Ipv4Addr>,
    /// Seed for the transaction ids and the jitter.
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Selecting,
    Requesting,
    /// INIT-REBOOT: asking to keep the previous address.
    Rebooting,
    Bound,
    Renewing,
    Rebinding,
    /// Stopped after [`Client::release`].
    Released,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255 on the link, through the packet socket.
    Broadcast,
    /// Unicast to the server, through the IP stack (the client has an address).
    Server(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The encoded DHCP message (UDP payload, port 68 to 67).
    pub payload: Vec<u8>,
    /// IP source address: 0.0.0.0 until the client holds a lease.
    pub src: Ipv4Addr,
    pub dst: Destination,
    pub kind: MessageType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    Expired,
    Nak,
    /// A renewal gave a different address.
    Replaced,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new lease: configure it.
    Bound(Lease),
    /// The same address again, with new times (and maybe new options).
    Renewed(Lease),
    /// Stop using this lease.
    Lost(Lease, LostReason),
    /// The lease was given back; stop using it.
    Released(Lease),
    /// A server refused our request before we had a lease.
    Nak { server: Ipv4Addr },
}

/// Why a received message was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("not a DHCP message")]
    NotDhcp,
    #[error("undecodable: {0}")]
    Undecodable(String),
    #[error("not a BOOTREPLY")]
    NotReply,
    #[error("another transaction (xid {0:#010x})")]
    OtherXid(u32),
    #[error("for another hardware address")]
    OtherClient,
    #[error("no message type")]
    NoType,
    #[error("a {kind:?} is not expected in {state:?}")]
    Unexpected { kind: MessageType, state: State },
    #[error("no server identifier")]
    NoServer,
    #[error("from server {got}, expected {want}")]
    OtherServer { got: Ipv4Addr, want: Ipv4Addr },
    #[error("offers no usable address ({0})")]
    BadAddress(Ipv4Addr),
    #[error("unusable lease: {0}")]
    BadLease(String),
}

/// The fixed BOOTP header and the cookie.
const HEADER: usize = 240;

/// Whether an option we use has a well-formed value.
fn option_ok(code: u8, data: &[u8]) -> bool {
    let n = data.len();
    match code {
        // Subnet mask, lease time, server id, T1, T2.
        1 | 51 | 54 | 58 | 59 => n == 4,
        // Router, DNS, NTP: addresses.
        3 | 6 | 42 => n >= 4 && n.is_multiple_of(4),
        // Host name, domain name.
        12 | 15 => n >= 1,
        // Interface MTU.
        26 => n == 2,
        // Message type.
        53 => n == 1,
        121 => classless_ok(data),
        _ => false,
    }
}

/// RFC 3442: (width ≤ 32, ceil(width / 8) destination octets, 4 router octets)*.
fn classless_ok(mut data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    while let Some((&width, rest)) = data.split_first() {
        if width > 32 {
            return false;
        }
        let need = usize::from(width).div_ceil(8) + 4;
        if rest.len() < need {
            return false;
        }
        data = &rest[need..];
    }
    true
}

/// The message with only the options the client uses, each checked for
/// its length (and split options joined, RFC 3396). dhcproto's decoder
/// trusts option lengths (debug assertions, unchecked arithmetic), so
/// nothing else ever reaches it. `None` if the option area is malformed.
/// Option overload (52) is not followed: servers use it only for options
/// that do not fit, which the ones asked for here always do.
fn sanitize(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut opts: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut rest = bytes.get(HEADER..)?;
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let data = tail.get(..usize::from(len))?;
                rest = &tail[usize::from(len)..];
                match opts.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, d)) => d.extend_from_slice(data),
                    None => opts.push((code, data.to_vec())),
                }
            }
        }
    }
    let mut out = bytes[..HEADER].to_vec();
    for (code, data) in opts {
        let mut data = data;
        if code == 12 || code == 15 {
            // Names: printable ASCII only (some servers add a trailing NUL).
            while data.last() == Some(&0) {
                data.pop();
            }
            if !data.iter().all(|b| b.is_ascii_graphic()) {
                continue;
            }
        }
        if data.len() <= 255 && option_ok(code, &data) {
            out.push(code);
            out.push(data.len() as u8);
            out.extend_from_slice(&data);
        }
    }
    out.push(255);
    Some(out)
}

/// xorshift64*: enough for transaction ids and jitter.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug)]
pub struct Client {
    cfg: Config,
    state: State,
    rng: Rng,
    xid: u32,
    /// When the current exchange began (for `secs` and the lease start).
    exchange_start: Instant,
    /// The first message of the current acquisition (for `obtained_in`).
    acquisition_start: Option<Instant>,
    /// Messages sent in this state.
    attempts: u32,
    next_send: Option<Instant>,
    /// The offer being requested: (address, server).
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    lease: Option<Lease>,
    naks: u32,
    restart_at: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Client {
    pub fn new(cfg: Config, now: Instant) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let xid = rng.next() as u32;
        Client {
            cfg,
            state: State::Init,
            rng,
            xid,
            exchange_start: now,
            acquisition_start: None,
            attempts: 0,
            next_send: None,
            offer: None,
            lease: None,
            naks: 0,
            restart_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Whether replies may come now (the driver listens only then).
    pub fn expects_replies(&self) -> bool {
        matches!(
            self.state,
            State::Selecting
                | State::Requesting
                | State::Rebooting
                | State::Renewing
                | State::Rebinding
        )
    }

    /// Starts acquiring: INIT-REBOOT with a previous address, else DISCOVER.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Init {
            return;
        }
        match self.cfg.previous {
            Some(_) => self.enter(State::Rebooting, now, true),
            None => self.enter(State::Selecting, now, true),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lease = self.lease.as_ref();
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.state {
            State::Init => self.restart_at,
            State::Selecting | State::Requesting | State::Rebooting => self.next_send,
            State::Bound => lease.and_then(|l| l.renew_at()),
            State::Renewing => min(
                self.next_send,
                min(
                    lease.and_then(|l| l.rebind_at()),
                    lease.and_then(|l| l.expires_at()),
                ),
            ),
            State::Rebinding => min(self.next_send, lease.and_then(|l| l.expires_at())),
            State::Released => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Init => {
                if due(self.restart_at) {
                    self.restart_at = None;
                    self.enter(State::Selecting, now, true);
                }
            }
            State::Selecting => {
                if due(self.next_send) {
                    self.send(now);
                }
            }
            State::Requesting => {
                if due(self.next_send) {
                    if self.attempts >= REQUEST_TRIES {
                        log::debug!("dhcp: no answer to REQUEST; starting over");
                        self.offer = None;
                        self.enter(State::Selecting, now, false);
                    } else {
                        self.send(now);
                    }
                }
            }
            State::Rebooting => {
                if due(self.next_send) {
                    if self.attempts >= REBOOT_TRIES {
                        log::debug!("dhcp: no answer to INIT-REBOOT; discovering");
                        self.cfg.previous = None;
                        self.enter(State::Selecting, now, false);
                    } else {
                        self.send(now);
                    }
                }
            }
            State::Bound | State::Renewing | State::Rebinding => {
                let Some(lease) = self.lease.clone() else {
                    self.enter(State::Selecting, now, true);
                    return;
                };
                if due(lease.expires_at()) {
                    self.lose(LostReason::Expired, now);
                } else if due(lease.rebind_at()) && self.state != State::Rebinding {
                    self.enter(State::Rebinding, now, false);
                } else if due(lease.renew_at()) && self.state == State::Bound {
                    self.enter(State::Renewing, now, false);
                } else if self.state != State::Bound && due(self.next_send) {
                    self.send(now);
                }
            }
            State::Released => {}
        }
    }

    /// Gives the lease back (DHCPRELEASE) and stops.
    pub fn release(&mut self, now: Instant) {
        if let Some(lease) = self.lease.take() {
            self.new_xid();
            self.exchange_start = now;
            let mut msg = self.message(MessageType::Release, now);
            msg.set_ciaddr(lease.address);
            msg.opts_mut()
                .insert(DhcpOption::ServerIdentifier(lease.server));
            self.push(msg, lease.address, Destination::Server(lease.server));
            self.events.push_back(Event::Released(lease));
        }
        self.state = State::Released;
        self.next_send = None;
    }

    /// Feeds one received DHCP message (the UDP payload).
    pub fn handle_packet(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Ignored> {
        let msg = self.check(bytes)?;
        let kind = msg.opts().msg_type().ok_or(Ignored::NoType)?;
        let server = server_id(&msg);
        let state = self.state;
        let unexpected = || Ignored::Unexpected { kind, state };
        match (state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let server = server.ok_or(Ignored::NoServer)?;
                let addr = msg.yiaddr();
                if !usable_address(addr) {
                    return Err(Ignored::BadAddress(addr));
                }
                self.offer = Some((addr, server));
                self.enter(State::Requesting, now, false);
                Ok(())
            }
            (
                State::Requesting | State::Rebooting | State::Renewing | State::Rebinding,
                MessageType::Ack,
            ) => {
                let server = server.ok_or(Ignored::NoServer)?;
                self.expect_server(server)?;
                let started = self.acquisition_start.unwrap_or(self.exchange_start);
                let obtained_in = match (&self.lease, state) {
                    (Some(l), State::Renewing | State::Rebinding) => l.obtained_in,
                    _ => now.saturating_duration_since(started),
                };
                let lease = Lease::from_ack(&msg, self.exchange_start, obtained_in)
                    .map_err(|e| Ignored::BadLease(e.to_string()))?;
                self.bind(lease);
                Ok(())
            }
            (
                State::Requesting | State::Rebooting | State::Renewing | State::Rebinding,
                MessageType::Nak,
            ) => {
                let server = server.ok_or(Ignored::NoServer)?;
                self.expect_server(server)?;
                self.naks += 1;
                if self.lease.is_some() {
                    self.lose(LostReason::Nak, now);
                } else {
                    self.events.push_back(Event::Nak { server });
                    self.cfg.previous = None;
                    self.offer = None;
                    self.restart(now);
                }
                Ok(())
            }
            _ => Err(unexpected()),
        }
    }

    /// Decodes and checks what every reply must satisfy.
    fn check(&self, bytes: &[u8]) -> Result<Message, Ignored> {
        if bytes.len() < HEADER || bytes[236..HEADER] != MAGIC {
            return Err(Ignored::NotDhcp);
        }
        let clean = sanitize(bytes).ok_or(Ignored::NotDhcp)?;
        let msg = Message::decode(&mut Decoder::new(&clean))
            .map_err(|e| Ignored::Undecodable(e.to_string()))?;
        if msg.opcode() != Opcode::BootReply {
            return Err(Ignored::NotReply);
        }
        if msg.xid() != self.xid {
            return Err(Ignored::OtherXid(msg.xid()));
        }
        // Message::chaddr() slices by hlen, which must be checked first.
        if msg.hlen() != 6 || msg.chaddr() != self.cfg.mac {
            return Err(Ignored::OtherClient);
        }
        Ok(msg)
    }

    /// The server a reply in this state must come from: the one we asked
    /// (REQUESTING) or hold the lease from (RENEWING); any while rebooting
    /// or rebinding, which broadcast.
    fn expect_server(&self, got: Ipv4Addr) -> Result<(), Ignored> {
        let want = match self.state {
            State::Requesting => self.offer.map(|(_, s)| s),
            State::Renewing => self.lease.as_ref().map(|l| l.server),
            _ => None,
        };
        match want {
            Some(want) if want != got => Err(Ignored::OtherServer { got, want }),
            _ => Ok(()),
        }
    }

    fn bind(&mut self, lease: Lease) {
        let event = match self.lease.take() {
            Some(old) if old.address == lease.address => Event::Renewed(lease.clone()),
            Some(old) => {
                self.events
                    .push_back(Event::Lost(old, LostReason::Replaced));
                Event::Bound(lease.clone())
            }
            None => Event::Bound(lease.clone()),
        };
        self.events.push_back(event);
        self.lease = Some(lease);
        self.state = State::Bound;
        self.naks = 0;
        self.offer = None;
        self.next_send = None;
        self.acquisition_start = None;
    }

    fn lose(&mut self, reason: LostReason, now: Instant) {
        if let Some(l) = self.lease.take() {
            self.events.push_back(Event::Lost(l, reason));
        }
        self.offer = None;
        self.cfg.previous = None;
        match reason {
            LostReason::Nak => self.restart(now),
            _ => self.enter(State::Selecting, now, true),
        }
    }

    /// Back to INIT after a NAK: at once the first time, then backing off
    /// so a server that keeps refusing is not flooded.
    fn restart(&mut self, now: Instant) {
        self.acquisition_start = None;
        if self.naks <= 1 {
            self.enter(State::Selecting, now, true);
        } else {
            let wait = Duration::from_secs(1 << (self.naks - 2).min(6)).min(MAX_BACKOFF);
            self.state = State::Init;
            self.next_send = None;
            self.restart_at = Some(now + wait);
        }
    }

    fn new_xid(&mut self) {
        self.xid = self.rng.next() as u32;
    }

    /// Enters a sending state and sends its first message.
    fn enter(&mut self, state: State, now: Instant, new_acquisition: bool) {
        self.state = state;
        self.attempts = 0;
        if (new_acquisition || self.acquisition_start.is_none())
            && matches!(state, State::Selecting | State::Rebooting)
        {
            self.acquisition_start = Some(now);
        }
        // The REQUEST after an OFFER keeps the DISCOVER's xid (RFC 2131 4.4.1).
        if state != State::Requesting {
            self.new_xid();
        }
        self.exchange_start = now;
        self.send(now);
    }

    /// Sends the current state's message and schedules its retransmission.
    fn send(&mut self, now: Instant) {
        let (kind, dst) = match self.state {
            State::Selecting => (MessageType::Discover, Destination::Broadcast),
            State::Requesting | State::Rebooting | State::Rebinding => {
                (MessageType::Request, Destination::Broadcast)
            }
            State::Renewing => match &self.lease {
                Some(l) => (MessageType::Request, Destination::Server(l.server)),
                None => return,
            },
            State::Init | State::Bound | State::Released => return,
        };
        let mut msg = self.message(kind, now);
        let mut src = Ipv4Addr::UNSPECIFIED;
        match self.state {
            State::Requesting => {
                if let Some((addr, server)) = self.offer {
                    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
                    msg.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                }
            }
            State::Rebooting => {
                if let Some(addr) = self.cfg.previous {
                    msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
                }
            }
            State::Renewing | State::Rebinding => {
                if let Some(l) = &self.lease {
                    msg.set_ciaddr(l.address);
                    src = l.address;
                }
            }
            _ => {}
        }
        self.push(msg, src, dst);
        self.attempts += 1;
        let delay = self.retransmit_delay(now);
        self.next_send = Some(now + delay);
    }

    fn retransmit_delay(&mut self, now: Instant) -> Duration {
        let until = |t: Option<Instant>| {
            t.map(|t| t.saturating_duration_since(now) / 2)
                .unwrap_or(MIN_RENEW_RETRY)
                .max(MIN_RENEW_RETRY)
        };
        match self.state {
            State::Renewing => until(self.lease.as_ref().and_then(|l| l.rebind_at())),
            State::Rebinding => until(self.lease.as_ref().and_then(|l| l.expires_at())),
            _ => {
                let shift = self.attempts.saturating_sub(1).min(6);
                let base = Duration::from_secs(1 << shift).min(MAX_BACKOFF);
                let spread = (base / 8).min(Duration::from_secs(1));
                let spread_ms = spread.as_millis() as u64;
                let r = self.rng.next() % (2 * spread_ms + 1);
                base - spread + Duration::from_millis(r)
            }
        }
    }

    /// A request with the options every client message carries.
    fn message(&self, kind: MessageType, now: Instant) -> Message {
        let mut msg = blank_request(self.xid, &self.cfg.mac);
        let secs = now.saturating_duration_since(self.exchange_start).as_secs();
        msg.set_secs(secs.min(u64::from(u16::MAX)) as u16);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.cfg.mac);
        opts.insert(DhcpOption::ClientIdentifier(id));
        if kind != MessageType::Release {
            opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE));
            if let Some(h) = self.cfg.hostname.as_ref().filter(|h| !h.is_empty()) {
                opts.insert(DhcpOption::Hostname(h.clone()));
            }
            opts.insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::ClasslessStaticRoute,
                OptionCode::Router,
                OptionCode::DomainNameServer,
                OptionCode::DomainName,
                OptionCode::Hostname,
                OptionCode::NtpServers,
                OptionCode::InterfaceMtu,
                OptionCode::AddressLeaseTime,
                OptionCode::Renewal,
                OptionCode::Rebinding,
            ]));
        }
        msg
    }

    fn push(&mut self, msg: Message, src: Ipv4Addr, dst: Destination) {
        let kind = msg.opts().msg_type().unwrap_or(MessageType::Unknown(0));
        match msg.to_vec() {
            Ok(payload) => self.transmits.push_back(Transmit {
                payload,
                src,
                dst,
                kind,
            }),
            Err(e) => log::warn!("dhcp: cannot encode a {kind:?}: {e}"),
        }
    }
}

/// An empty BOOTREQUEST for Ethernet with transaction id `xid`, decoded
/// from bytes. dhcproto's constructors (`new_with_id` too, through
/// `..Default::default()`) draw an id from `rand`, whose first use waits
/// for the kernel's entropy pool to be seeded: on every boot but the first
/// that stopped PID 1's event loop for ~350 ms of guest time (TCG) in the
/// middle of the lease. The client draws its own ids.
fn blank_request(xid: u32, chaddr: &[u8]) -> Message {
    // op BOOTREQUEST, htype Ethernet, the magic cookie, the end option.
    let mut bytes = [0u8; 241];
    bytes[0] = 1;
    bytes[1] = 1;
    bytes[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bytes[240] = 255;
    let mut msg = match Message::decode(&mut Decoder::new(&bytes)) {
        Ok(m) => m,
        // Not expected (fixed bytes); the constructor is right, only slower.
        Err(_) => Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            chaddr,
        ),
    };
    msg.set_xid(xid).set_chaddr(chaddr);
    msg
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn blank_request_is_what_the_constructor_makes() {
        let mac = [2, 0, 0, 0, 0, 7];
        let ours = blank_request(0x1234_5678, &mac);
        let theirs = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        assert_eq!(ours, theirs);
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn client(previous: Option<Ipv4Addr>, now: Instant) -> Client {
        Client::new(
            Config {
                mac: MAC,
                hostname: Some("atoll-1".into()),
                previous,
                seed: 42,
            },
            now,
        )
    }

    fn decode(t: &Transmit) -> Message {
        Message::decode(&mut Decoder::new(&t.payload)).unwrap()
    }

    /// A server's reply to `req`.
    fn reply(req: &Message, kind: MessageType, server: Ipv4Addr, lease_s: u32) -> Vec<u8> {
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            ADDR,
            server,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(server));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![SERVER]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
            o.insert(DhcpOption::AddressLeaseTime(lease_s));
        }
        m.to_vec().unwrap()
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    /// DISCOVER → OFFER → REQUEST → ACK, at t0 + 5 ms.
    fn bind(c: &mut Client, t0: Instant) -> Lease {
        c.start(t0);
        let d = c.poll_transmit().unwrap();
        let dm = decode(&d);
        c.handle_packet(t0, &reply(&dm, MessageType::Offer, SERVER, 3600))
            .unwrap();
        let r = c.poll_transmit().unwrap();
        let rm = decode(&r);
        c.handle_packet(
            t0 + Duration::from_millis(5),
            &reply(&rm, MessageType::Ack, SERVER, 3600),
        )
        .unwrap();
        match c.poll_event() {
            Some(Event::Bound(l)) => l,
            e => panic!("expected Bound, got {e:?}"),
        }
    }

    #[test]
    fn discover_offer_request_ack() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        assert_eq!(c.poll_timeout(), None);
        c.start(t0);
        assert_eq!(c.state(), State::Selecting);
        let d = c.poll_transmit().expect("DISCOVER at once");
        assert_eq!(
            (d.kind, d.dst, d.src),
            (
                MessageType::Discover,
                Destination::Broadcast,
                Ipv4Addr::UNSPECIFIED
            )
        );
        let dm = decode(&d);
        assert_eq!(dm.opcode(), Opcode::BootRequest);
        assert_eq!(dm.chaddr(), MAC);
        assert_eq!(
            opt(&dm, OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
            ]))
        );
        assert_eq!(
            opt(&dm, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("atoll-1".into()))
        );
        assert_eq!(
            opt(&dm, OptionCode::MaxMessageSize),
            Some(&DhcpOption::MaxMessageSize(1500))
        );
        match opt(&dm, OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => {
                for code in [
                    OptionCode::SubnetMask,
                    OptionCode::Router,
                    OptionCode::ClasslessStaticRoute,
                    OptionCode::NtpServers,
                    OptionCode::InterfaceMtu,
                ] {
                    assert!(l.contains(&code), "{code:?}");
                }
            }
            o => panic!("{o:?}"),
        }
        // First retransmission after about a second.
        let t = c.poll_timeout().unwrap() - t0;
        assert!(
            t >= Duration::from_millis(875) && t <= Duration::from_millis(1125),
            "{t:?}"
        );

        c.handle_packet(t0, &reply(&dm, MessageType::Offer, SERVER, 3600))
            .unwrap();
        assert_eq!(c.state(), State::Requesting);
        let r = c.poll_transmit().unwrap();
        let rm = decode(&r);
        assert_eq!(rm.xid(), dm.xid(), "REQUEST keeps the DISCOVER's xid");
        assert_eq!(
            opt(&rm, OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(
            opt(&rm, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(rm.ciaddr(), Ipv4Addr::UNSPECIFIED);

        let t1 = t0 + Duration::from_millis(12);
        c.handle_packet(t1, &reply(&rm, MessageType::Ack, SERVER, 3600))
            .unwrap();
        assert_eq!(c.state(), State::Bound);
        let Some(Event::Bound(l)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(l.address, ADDR);
        assert_eq!(l.obtained_in, Duration::from_millis(12));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1800)));
        assert!(c.poll_transmit().is_none());
        assert!(!c.expects_replies());
    }

    #[test]
    fn backoff_doubles_to_64s() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        c.start(t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            c.poll_transmit().unwrap();
            let next = c.poll_timeout().unwrap();
            gaps.push((next - now).as_secs_f64());
            now = next;
            c.handle_timeout(now);
        }
        let want = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0, 64.0];
        for (g, w) in gaps.iter().zip(want) {
            assert!((g - w).abs() <= (w / 8.0).min(1.0) + 1e-3, "{gaps:?}");
        }
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn strict_validation() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        c.start(t0);
        let dm = decode(&c.poll_transmit().unwrap());
        let good = reply(&dm, MessageType::Offer, SERVER, 3600);

        let mut other_xid = good.clone();
        other_xid[4] ^= 0xff;
        assert!(matches!(
            c.handle_packet(t0, &other_xid),
            Err(Ignored::OtherXid(_))
        ));
        let mut other_mac = good.clone();
        other_mac[28 + 5] ^= 1;
        assert_eq!(c.handle_packet(t0, &other_mac), Err(Ignored::OtherClient));
        let mut request = good.clone();
        request[0] = 1;
        assert_eq!(c.handle_packet(t0, &request), Err(Ignored::NotReply));
        let mut hlen = good.clone();
        hlen[2] = 200;
        assert_eq!(c.handle_packet(t0, &hlen), Err(Ignored::OtherClient));
        assert_eq!(c.handle_packet(t0, &good[..100]), Err(Ignored::NotDhcp));
        // An ACK while selecting.
        let ack = reply(&dm, MessageType::Ack, SERVER, 3600);
        assert!(matches!(
            c.handle_packet(t0, &ack),
            Err(Ignored::Unexpected { .. })
        ));
        // No server id.
        let mut m = Message::decode(&mut Decoder::new(&good)).unwrap();
        m.opts_mut().remove(OptionCode::ServerIdentifier);
        assert_eq!(
            c.handle_packet(t0, &m.to_vec().unwrap()),
            Err(Ignored::NoServer)
        );
        // yiaddr 0.
        let mut m = Message::decode(&mut Decoder::new(&good)).unwrap();
        m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(matches!(
            c.handle_packet(t0, &m.to_vec().unwrap()),
            Err(Ignored::BadAddress(_))
        ));
        assert_eq!(c.state(), State::Selecting);
        assert!(c.poll_transmit().is_none());

        // In REQUESTING, an ACK from another server is not ours.
        c.handle_packet(t0, &good).unwrap();
        let rm = decode(&c.poll_transmit().unwrap());
        let other = reply(&rm, MessageType::Ack, Ipv4Addr::new(10, 0, 2, 9), 3600);
        assert!(matches!(
            c.handle_packet(t0, &other),
            Err(Ignored::OtherServer { .. })
        ));
        assert_eq!(c.state(), State::Requesting);
    }

    #[test]
    fn renew_rebind_expire() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        let lease = bind(&mut c, t0);
        let t1 = lease.renew_at().unwrap();
        c.handle_timeout(t1);
        assert_eq!(c.state(), State::Renewing);
        let r = c.poll_transmit().unwrap();
        assert_eq!(r.dst, Destination::Server(SERVER), "renewal is unicast");
        assert_eq!(r.src, ADDR);
        let rm = decode(&r);
        assert_eq!(rm.ciaddr(), ADDR);
        assert!(opt(&rm, OptionCode::ServerIdentifier).is_none());
        assert!(opt(&rm, OptionCode::RequestedIpAddress).is_none());
        // Renewal retries: half the time to T2, at least 60 s.
        let next = c.poll_timeout().unwrap();
        assert_eq!(next - t1, (lease.rebind_at().unwrap() - t1) / 2);

        // An ACK renews.
        let now = t1 + Duration::from_secs(1);
        c.handle_packet(now, &reply(&rm, MessageType::Ack, SERVER, 3600))
            .unwrap();
        let Some(Event::Renewed(l2)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(l2.start, t1);
        assert_eq!(l2.obtained_in, lease.obtained_in);
        assert_eq!(c.state(), State::Bound);

        // No answers: T2 → REBINDING (broadcast), then expiry → lost and DISCOVER.
        c.handle_timeout(l2.renew_at().unwrap());
        c.poll_transmit().unwrap();
        c.handle_timeout(l2.rebind_at().unwrap());
        assert_eq!(c.state(), State::Rebinding);
        let rb = c.poll_transmit().unwrap();
        assert_eq!(rb.dst, Destination::Broadcast);
        assert_eq!(decode(&rb).ciaddr(), ADDR);
        let mut now = l2.rebind_at().unwrap();
        while c.state() == State::Rebinding {
            now = c.poll_timeout().unwrap();
            assert!(now <= l2.expires_at().unwrap());
            c.handle_timeout(now);
        }
        assert_eq!(now, l2.expires_at().unwrap());
        assert!(matches!(
            c.poll_event(),
            Some(Event::Lost(_, LostReason::Expired))
        ));
        assert_eq!(c.state(), State::Selecting);
        let mut last = None;
        while let Some(t) = c.poll_transmit() {
            last = Some(t.kind);
        }
        assert_eq!(last, Some(MessageType::Discover));
        assert!(c.lease().is_none());
    }

    #[test]
    fn rebinding_accepts_any_server() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        let lease = bind(&mut c, t0);
        c.handle_timeout(lease.renew_at().unwrap());
        c.poll_transmit().unwrap();
        c.handle_timeout(lease.rebind_at().unwrap());
        let rm = decode(&c.poll_transmit().unwrap());
        let other = Ipv4Addr::new(10, 0, 2, 4);
        c.handle_packet(
            lease.rebind_at().unwrap(),
            &reply(&rm, MessageType::Ack, other, 3600),
        )
        .unwrap();
        let Some(Event::Renewed(l)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(l.server, other);
    }

    #[test]
    fn nak_restarts() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        let lease = bind(&mut c, t0);
        c.handle_timeout(lease.renew_at().unwrap());
        let rm = decode(&c.poll_transmit().unwrap());
        c.handle_packet(
            lease.renew_at().unwrap(),
            &reply(&rm, MessageType::Nak, SERVER, 0),
        )
        .unwrap();
        assert!(matches!(
            c.poll_event(),
            Some(Event::Lost(_, LostReason::Nak))
        ));
        assert_eq!(c.state(), State::Selecting);
        assert_eq!(c.poll_transmit().unwrap().kind, MessageType::Discover);

        // NAKs in a row back off.
        let now = lease.renew_at().unwrap();
        let mut c = client(None, t0);
        c.start(t0);
        for n in 0..3 {
            let dm = loop {
                match c.poll_transmit() {
                    Some(t) if t.kind == MessageType::Discover => break decode(&t),
                    Some(_) => {}
                    None => {
                        let t = c.poll_timeout().unwrap();
                        c.handle_timeout(t);
                    }
                }
            };
            c.handle_packet(now, &reply(&dm, MessageType::Offer, SERVER, 3600))
                .unwrap();
            let rm = decode(&c.poll_transmit().unwrap());
            c.handle_packet(now, &reply(&rm, MessageType::Nak, SERVER, 0))
                .unwrap();
            assert!(matches!(c.poll_event(), Some(Event::Nak { .. })));
            if n == 0 {
                assert_eq!(c.state(), State::Selecting);
            } else {
                assert_eq!(c.state(), State::Init);
                assert_eq!(
                    c.poll_timeout(),
                    Some(now + Duration::from_secs(1 << (n - 1)))
                );
            }
        }
    }

    #[test]
    fn init_reboot() {
        let t0 = Instant::now();
        let mut c = client(Some(ADDR), t0);
        c.start(t0);
        assert_eq!(c.state(), State::Rebooting);
        let r = c.poll_transmit().unwrap();
        assert_eq!(
            (r.kind, r.dst),
            (MessageType::Request, Destination::Broadcast)
        );
        let rm = decode(&r);
        assert_eq!(
            opt(&rm, OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert!(opt(&rm, OptionCode::ServerIdentifier).is_none());
        assert_eq!(rm.ciaddr(), Ipv4Addr::UNSPECIFIED);
        c.handle_packet(
            t0 + Duration::from_millis(3),
            &reply(&rm, MessageType::Ack, SERVER, 600),
        )
        .unwrap();
        let Some(Event::Bound(l)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(l.obtained_in, Duration::from_millis(3));

        // A NAK sends it to DISCOVER at once.
        let mut c = client(Some(ADDR), t0);
        c.start(t0);
        let rm = decode(&c.poll_transmit().unwrap());
        c.handle_packet(
            t0,
            &reply(&rm, MessageType::Nak, Ipv4Addr::new(10, 0, 2, 9), 0),
        )
        .unwrap();
        assert_eq!(c.state(), State::Selecting);
        assert_eq!(c.poll_transmit().unwrap().kind, MessageType::Discover);

        // Silence: two tries, then DISCOVER.
        let mut c = client(Some(ADDR), t0);
        c.start(t0);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            while let Some(t) = c.poll_transmit() {
                kinds.push(t.kind);
            }
            c.handle_timeout(c.poll_timeout().unwrap());
        }
        assert_eq!(
            &kinds[..3],
            &[
                MessageType::Request,
                MessageType::Request,
                MessageType::Discover
            ]
        );
    }

    #[test]
    fn requesting_gives_up() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        c.start(t0);
        let dm = decode(&c.poll_transmit().unwrap());
        c.handle_packet(t0, &reply(&dm, MessageType::Offer, SERVER, 3600))
            .unwrap();
        let mut kinds = Vec::new();
        for _ in 0..5 {
            while let Some(t) = c.poll_transmit() {
                kinds.push(t.kind);
            }
            c.handle_timeout(c.poll_timeout().unwrap());
        }
        assert_eq!(
            kinds.iter().filter(|k| **k == MessageType::Request).count(),
            4
        );
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn sanitizer() {
        let mut m = vec![0u8; 236];
        m.extend_from_slice(&MAGIC);
        // A split router option (RFC 3396), a bad mask, an unknown option, padding.
        m.extend_from_slice(&[
            3, 4, 10, 0, 2, 2, 0, 3, 4, 10, 0, 2, 3, 1, 3, 255, 255, 0, 200, 1, 9, 255,
        ]);
        let s = sanitize(&m).unwrap();
        assert_eq!(&s[240..], &[3, 8, 10, 0, 2, 2, 10, 0, 2, 3, 255]);
        // An option running past the end.
        let mut bad = m[..240].to_vec();
        bad.extend_from_slice(&[6, 8, 1, 2]);
        assert_eq!(sanitize(&bad), None);
        assert!(classless_ok(&[
            24, 192, 168, 1, 10, 0, 0, 1, 0, 10, 0, 0, 1
        ]));
        assert!(!classless_ok(&[33, 1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(!classless_ok(&[24, 192, 168, 1, 10, 0, 0]));
    }

    #[test]
    fn release() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        bind(&mut c, t0);
        c.release(t0 + Duration::from_secs(5));
        let r = c.poll_transmit().unwrap();
        assert_eq!(
            (r.kind, r.dst, r.src),
            (MessageType::Release, Destination::Server(SERVER), ADDR)
        );
        let m = decode(&r);
        assert_eq!(m.ciaddr(), ADDR);
        assert_eq!(
            opt(&m, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(matches!(c.poll_event(), Some(Event::Released(_))));
        assert_eq!(c.state(), State::Released);
        assert_eq!(c.poll_timeout(), None);
        // Releasing without a lease sends nothing.
        let mut c = client(None, t0);
        c.start(t0);
        c.poll_transmit();
        c.release(t0);
        assert!(c.poll_transmit().is_none());
    }

    #[test]
    fn infinite_lease_never_wakes() {
        let t0 = Instant::now();
        let mut c = client(None, t0);
        c.start(t0);
        let dm = decode(&c.poll_transmit().unwrap());
        c.handle_packet(t0, &reply(&dm, MessageType::Offer, SERVER, u32::MAX))
            .unwrap();
        let rm = decode(&c.poll_transmit().unwrap());
        c.handle_packet(t0, &reply(&rm, MessageType::Ack, SERVER, u32::MAX))
            .unwrap();
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.poll_timeout(), None);
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder path, in any state.
        #[test]
        fn garbage_is_ignored(bytes in proptest::collection::vec(any::<u8>(), 0..700), state in 0..3u8) {
            let t0 = Instant::now();
            let mut c = client(None, t0);
            if state >= 1 {
                bind(&mut c, t0);
            }
            if state == 2 {
                let t = c.poll_timeout().unwrap();
                c.handle_timeout(t);
            }
            let before = c.state();
            if c.handle_packet(t0, &bytes).is_err() {
                prop_assert_eq!(c.state(), before);
            }
        }

        /// A valid header with arbitrary options after the cookie.
        #[test]
        fn garbage_options_are_ignored(opts in proptest::collection::vec(any::<u8>(), 0..400)) {
            let t0 = Instant::now();
            let mut c = client(None, t0);
            c.start(t0);
            let dm = decode(&c.poll_transmit().unwrap());
            let mut bytes = reply(&dm, MessageType::Offer, SERVER, 60);
            bytes.truncate(240);
            bytes.extend_from_slice(&opts);
            let _ = c.handle_packet(t0, &bytes);
        }

        /// The options the client reads, with arbitrary lengths and contents.
        #[test]
        fn mangled_known_options(opts in proptest::collection::vec(
            (prop_oneof![Just(1u8), Just(3), Just(6), Just(12), Just(15), Just(26), Just(42),
                         Just(51), Just(52), Just(53), Just(54), Just(58), Just(59), Just(121), any::<u8>()],
             proptest::collection::vec(any::<u8>(), 0..40)), 0..12)) {
            let t0 = Instant::now();
            let mut c = client(None, t0);
            c.start(t0);
            let dm = decode(&c.poll_transmit().unwrap());
            let mut bytes = reply(&dm, MessageType::Offer, SERVER, 60);
            bytes.truncate(240);
            for (code, data) in &opts {
                bytes.push(*code);
                bytes.push(data.len() as u8);
                bytes.extend_from_slice(data);
            }
            bytes.push(255);
            let _ = c.handle_packet(t0, &bytes);
        }
    }
}
