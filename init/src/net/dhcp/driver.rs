//! Runs one [`Client`] on one link: the sockets, the timers, and the lease
//! applied through rtnetlink (address with the lease's lifetimes, routes,
//! MTU), removed again when the lease is lost or released.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, oneshot};

use super::client::{Client, Config, Destination, Event, LostReason, State, Transmit};
use super::frame;
use super::lease::Lease;
use super::socket::{self, PacketSocket};
use crate::net::netlink::{self, Lifetime, Netlink, NetlinkError, Route, RouteOrigin};
use atoll_common::error::error_chain;

/// Metric of DHCP routes unless the plan sets one (as systemd-networkd).
pub const DEFAULT_METRIC: u32 = 1024;
/// How long to wait for carrier before the first DISCOVER.
const CARRIER_WAIT: Duration = Duration::from_secs(2);
/// How long a DHCPRELEASE may take to leave before the address goes.
const RELEASE_FLUSH: Duration = Duration::from_millis(500);
/// Pause before reopening a socket that failed.
const SOCKET_RETRY: Duration = Duration::from_secs(5);

/// One link's DHCP client settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub hostname: Option<String>,
    /// Where the lease is kept for INIT-REBOOT on the next boot.
    pub lease_file: Option<PathBuf>,
    pub route_metric: u32,
    /// Apply the lease's MTU option (off when the plan sets an MTU).
    pub apply_mtu: bool,
}

/// What the driver tells the manager.
#[derive(Debug, Clone, PartialEq)]
pub enum DhcpUpdate {
    /// A lease is in force (new, or renewed with new times and options).
    Lease(Box<Lease>),
    /// No lease any more; asking again.
    Lost,
    /// The lease was given back (shutdown).
    Released,
    /// The current problem, or `None` when it went away.
    Error(Option<String>),
}

#[derive(Debug)]
pub enum DhcpCommand {
    /// Send DHCPRELEASE, remove the address and routes, stop; then answer.
    Release(oneshot::Sender<()>),
}

/// What the driver configured for the current lease.
#[derive(Debug, Clone, Default, PartialEq)]
struct Applied {
    net: Option<Ipv4Net>,
    routes: Vec<Route>,
}

/// The routes a lease asks for, as rtnetlink routes.
fn lease_routes(lease: &Lease, index: u32, metric: u32) -> Vec<Route> {
    let net = lease.net();
    let wanted = lease.routes();
    wanted
        .iter()
        .map(|r| {
            // A gateway outside our prefix and not covered by an on-link
            // route of the lease (e.g. a /32 address) is reached on the link.
            let onlink = r.gateway.is_some_and(|gw| {
                !net.contains(&gw)
                    && !wanted
                        .iter()
                        .any(|o| o.gateway.is_none() && o.dest.contains(&gw))
            });
            Route::new(IpNet::V4(r.dest), r.gateway.map(IpAddr::V4), index)
                .metric(Some(metric))
                .origin(RouteOrigin::Dhcp)
                .source(Some(IpAddr::V4(lease.address)))
                .onlink(onlink)
        })
        .collect()
}

/// Configures `lease` on the link, replacing what `old` configured.
/// Returns what is now in force and the problems met on the way.
fn apply(
    nl: &mut Netlink,
    cfg: &DriverConfig,
    lease: &Lease,
    old: &Applied,
    now: Instant,
) -> (Applied, Vec<String>) {
    let mut errors = Vec::new();
    let mut note = |e: NetlinkError| errors.push(error_chain(&e));
    if cfg.apply_mtu {
        if let Some(mtu) = lease.mtu {
            if let Err(e) = nl.set_mtu(cfg.index, u32::from(mtu)) {
                note(e);
            }
        }
    }
    let net = lease.net();
    if let Some(prev) = old.net.filter(|p| *p != net) {
        if let Err(e) = nl.del_address(cfg.index, IpNet::V4(prev)) {
            if !e.is_not_found() {
                note(e);
            }
        }
    }
    let left = lease.remaining_s(now);
    let lifetime = if left == u32::MAX {
        Lifetime::Forever
    } else {
        Lifetime::Limited {
            valid: left,
            preferred: left,
        }
    };
    if let Err(e) = nl.add_address(cfg.index, IpNet::V4(net), lifetime) {
        note(e);
        return (old.clone(), errors);
    }
    let routes = lease_routes(lease, cfg.index, cfg.route_metric);
    for r in old.routes.iter().filter(|r| !routes.contains(r)) {
        if let Err(e) = nl.del_route(r) {
            if !e.is_not_found() {
                note(e);
            }
        }
    }
    let mut added = Vec::new();
    for r in routes {
        match nl.add_route(&r) {
            Ok(()) => added.push(r),
            Err(e) => note(e),
        }
    }
    (
        Applied {
            net: Some(net),
            routes: added,
        },
        errors,
    )
}

/// Removes what [`apply`] configured.
fn unapply(nl: &mut Netlink, index: u32, applied: &Applied) -> Vec<String> {
    let mut errors = Vec::new();
    for r in &applied.routes {
        match nl.del_route(r) {
            Err(e) if !e.is_not_found() => errors.push(error_chain(&e)),
            _ => {}
        }
    }
    if let Some(net) = applied.net {
        match nl.del_address(index, IpNet::V4(net)) {
            Err(e) if !e.is_not_found() => errors.push(error_chain(&e)),
            _ => {}
        }
    }
    errors
}

/// The lease kept for the next boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedLease {
    address: Ipv4Addr,
    server: Ipv4Addr,
}

fn load_previous(path: Option<&PathBuf>) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string(path?).ok()?;
    let saved: SavedLease = serde_json::from_str(&text).ok()?;
    super::lease::usable_address(saved.address).then_some(saved.address)
}

fn save(path: Option<&PathBuf>, lease: &Lease) {
    let Some(path) = path else { return };
    let saved = SavedLease {
        address: lease.address,
        server: lease.server,
    };
    let write = || -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&saved).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        log::warn!("cannot keep the DHCP lease in {}: {e}", path.display());
    }
}

fn forget(path: Option<&PathBuf>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

/// 64 random bits for the transaction ids and jitter.
/// The seed of the client's transaction ids and retransmission jitter. It
/// is no key: it must only differ between hosts and boots. GRND_INSECURE
/// (Linux 5.6) never waits for the kernel's entropy pool: reading
/// /dev/urandom before the pool was seeded (every boot but the first, which
/// draws the machine id) made the kernel generate jitter entropy first,
/// about 350 ms of guest time under TCG with PID 1's event loop stopped.
fn seed(mac: &[u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the pointer and length describe `b`, which lives across the
    // call; the kernel writes at most `b.len()` bytes.
    let n =
        unsafe { nix::libc::getrandom(b.as_mut_ptr().cast(), b.len(), nix::libc::GRND_INSECURE) };
    if usize::try_from(n) == Ok(b.len()) {
        return u64::from_ne_bytes(b);
    }
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(mac);
    u64::from_ne_bytes(m) ^ crate::clock::boottime_us().rotate_left(17)
}

/// The one-line lease report: `eth0: 10.0.2.15/24 via 10.0.2.2 from 10.0.2.2 (lease 86400 s, 12 ms)`.
pub fn lease_line(name: &str, lease: &Lease) -> String {
    let via = lease
        .gateway()
        .map(|g| format!(" via {g}"))
        .unwrap_or_default();
    let time = match lease.lease_time {
        Some(t) => format!("lease {} s", t.as_secs()),
        None => "infinite lease".to_string(),
    };
    format!(
        "{name}: {}{via} from {} ({time}, {} ms)",
        lease.net(),
        lease.server,
        lease.obtained_in.as_millis()
    )
}

struct Driver {
    cfg: DriverConfig,
    client: Client,
    updates: mpsc::UnboundedSender<(u32, DhcpUpdate)>,
    packet: Option<PacketSocket>,
    packet_retry: Option<Instant>,
    udp: Option<std::net::UdpSocket>,
    applied: Applied,
    error: Option<String>,
}

impl Driver {
    fn report(&self, u: DhcpUpdate) {
        let _ = self.updates.send((self.cfg.index, u));
    }

    fn set_error(&mut self, e: Option<String>) {
        if self.error != e {
            if let Some(msg) = &e {
                log::warn!("{}: {msg}", self.cfg.name);
            }
            self.error = e.clone();
            self.report(DhcpUpdate::Error(e));
        }
    }

    /// Opens or closes the sockets the client's state needs.
    fn sockets(&mut self, now: Instant) {
        if self.client.expects_replies() {
            if self.packet.is_none() && self.packet_retry.is_none_or(|t| t <= now) {
                match PacketSocket::open(self.cfg.index) {
                    Ok(s) => {
                        self.packet = Some(s);
                        self.packet_retry = None;
                    }
                    Err(e) => {
                        self.packet_retry = Some(now + SOCKET_RETRY);
                        let msg = format!("DHCP: {}", error_chain(&e));
                        self.set_error(Some(msg));
                    }
                }
            }
        } else {
            self.packet = None;
        }
        if self.client.state() == State::Renewing {
            if self.udp.is_none() {
                if let Some(l) = self.client.lease() {
                    match socket::unicast_socket(&self.cfg.name, l.address) {
                        Ok(s) => self.udp = Some(s),
                        Err(e) => log::warn!("{}: {}", self.cfg.name, error_chain(&e)),
                    }
                }
            }
        } else {
            self.udp = None;
        }
    }

    async fn transmit(&mut self, t: Transmit) {
        let r = match t.dst {
            Destination::Broadcast => match &self.packet {
                Some(p) => {
                    let dg = frame::build(t.src, Ipv4Addr::BROADCAST, 68, 67, &t.payload);
                    p.send_broadcast(&dg)
                }
                None => Err(io::Error::other("no packet socket")),
            },
            Destination::Server(server) => {
                let fresh;
                let sock = match &self.udp {
                    Some(s) => Ok(s),
                    None => {
                        fresh = socket::unicast_socket(&self.cfg.name, t.src);
                        fresh.as_ref().map_err(|e| io::Error::other(e.to_string()))
                    }
                };
                let r = match &sock {
                    Ok(s) => s.send_to(&t.payload, (server, 67)).map(drop),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                if let (Ok(()), Ok(s), MessageType::Release) = (&r, sock, t.kind) {
                    // The address goes right after the release: let the
                    // datagram leave first (it may wait for an ARP answer).
                    let until = Instant::now() + RELEASE_FLUSH;
                    while socket::unsent(s).unwrap_or(0) > 0 && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                r
            }
        };
        match r {
            Ok(()) => log::debug!("{}: sent DHCP {:?}", self.cfg.name, t.kind),
            Err(e) => self.set_error(Some(format!("DHCP: sending a {:?}: {e}", t.kind))),
        }
    }

    /// Applies the client's events to the link and tells the manager.
    async fn events(&mut self) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                Event::Bound(lease) | Event::Renewed(lease) => {
                    let renewed = self.applied.net == Some(lease.net());
                    let (cfg, l, old) = (self.cfg.clone(), lease.clone(), self.applied.clone());
                    let r =
                        netlink::blocking(move |nl| Ok(apply(nl, &cfg, &l, &old, Instant::now())))
                            .await;
                    let errors = match r {
                        Ok((applied, errors)) => {
                            self.applied = applied;
                            errors
                        }
                        Err(e) => vec![error_chain(&e)],
                    };
                    if renewed {
                        log::debug!("{}: lease on {} renewed", self.cfg.name, lease.address);
                    } else {
                        log::info!("{}", lease_line(&self.cfg.name, &lease));
                        save(self.cfg.lease_file.as_ref(), &lease);
                    }
                    self.set_error((!errors.is_empty()).then(|| errors.join("; ")));
                    self.report(DhcpUpdate::Lease(Box::new(lease)));
                }
                Event::Lost(lease, reason) => {
                    let why = match reason {
                        LostReason::Expired => "expired",
                        LostReason::Nak => "was refused (DHCPNAK)",
                        LostReason::Replaced => "was replaced by another address",
                    };
                    log::warn!(
                        "{}: the lease on {} {why}; address removed, asking again",
                        self.cfg.name,
                        lease.address
                    );
                    self.remove().await;
                    forget(self.cfg.lease_file.as_ref());
                    self.report(DhcpUpdate::Lost);
                }
                Event::Released(lease) => {
                    log::info!(
                        "{}: released {} to {}",
                        self.cfg.name,
                        lease.address,
                        lease.server
                    );
                    self.remove().await;
                    forget(self.cfg.lease_file.as_ref());
                    self.report(DhcpUpdate::Released);
                }
                Event::Nak { server } => {
                    log::warn!(
                        "{}: {server} refused the request (DHCPNAK); starting over",
                        self.cfg.name
                    );
                    forget(self.cfg.lease_file.as_ref());
                }
            }
        }
    }

    async fn remove(&mut self) {
        let applied = std::mem::take(&mut self.applied);
        let index = self.cfg.index;
        match netlink::blocking(move |nl| Ok(unapply(nl, index, &applied))).await {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => self.set_error(Some(errors.join("; "))),
            Err(e) => self.set_error(Some(error_chain(&e))),
        }
    }

    /// Sends what the client wants sent and applies what happened.
    /// Sending comes first: a DHCPRELEASE must leave while the address
    /// it is sent from is still configured. A failed send changes nothing
    /// in the client; its retransmission timer covers it.
    async fn flush(&mut self) {
        self.sockets(Instant::now());
        while let Some(t) = self.client.poll_transmit() {
            self.transmit(t).await;
        }
        self.events().await;
        self.sockets(Instant::now());
    }
}

async fn recv(packet: &Option<PacketSocket>, buf: &mut [u8]) -> io::Result<socket::Received> {
    match packet {
        Some(p) => p.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Waits (briefly) until the link reports carrier, so the first DISCOVER
/// is not dropped by a link that is still coming up.
async fn wait_for_carrier(index: u32, name: &str) {
    let start = Instant::now();
    let until = start + CARRIER_WAIT;
    while Instant::now() < until {
        let up = netlink::blocking(move |nl| {
            Ok(nl
                .links()?
                .into_iter()
                .any(|l| l.index == index && l.carrier))
        })
        .await;
        if up.unwrap_or(true) {
            let ms = start.elapsed().as_millis();
            if ms >= 100 {
                log::info!("{name}: carrier after {ms} ms");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log::warn!(
        "{name}: no carrier after {} s; asking anyway",
        CARRIER_WAIT.as_secs()
    );
}

/// Runs the client on one link until told to release (or the manager goes away).
pub async fn run(
    cfg: DriverConfig,
    updates: mpsc::UnboundedSender<(u32, DhcpUpdate)>,
    mut commands: mpsc::UnboundedReceiver<DhcpCommand>,
) {
    let previous = load_previous(cfg.lease_file.as_ref());
    let client = Client::new(
        Config {
            mac: cfg.mac,
            hostname: cfg.hostname.clone(),
            previous,
            seed: seed(&cfg.mac),
        },
        Instant::now(),
    );
    let mut d = Driver {
        cfg,
        client,
        updates,
        packet: None,
        packet_retry: None,
        udp: None,
        applied: Applied::default(),
        error: None,
    };
    wait_for_carrier(d.cfg.index, &d.cfg.name).await;
    // The socket first, so no reply can come before it listens.
    d.client.start(Instant::now());
    d.flush().await;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(u) = &d.udp {
            socket::drain(u);
        }
        let wake = match (
            d.client.poll_timeout(),
            d.packet_retry.filter(|_| d.packet.is_none()),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = recv(&d.packet, &mut buf) => match r {
                Ok(rx) => {
                    let now = Instant::now();
                    match frame::parse(&buf[..rx.len], rx.csum_not_ready) {
                        Ok(dg) if dg.dst_port == 68 => {
                            if let Err(why) = d.client.handle_packet(now, dg.payload) {
                                log::debug!("{}: ignored a DHCP message from {}: {why}", d.cfg.name, dg.src);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => log::debug!("{}: ignored a packet: {e}", d.cfg.name),
                    }
                }
                Err(e) => {
                    d.packet = None;
                    d.packet_retry = Some(Instant::now() + SOCKET_RETRY);
                    d.set_error(Some(format!("DHCP: receiving: {e}")));
                }
            },
            _ = sleep_until(wake) => d.client.handle_timeout(Instant::now()),
            cmd = commands.recv() => match cmd {
                Some(DhcpCommand::Release(done)) => {
                    d.client.release(Instant::now());
                    d.flush().await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
        }
        d.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_between_calls() {
        let mac = [2, 0, 0, 0, 0, 1];
        assert_ne!(seed(&mac), seed(&mac));
    }

    fn lease(routers: Vec<Ipv4Addr>, classless: Vec<(Ipv4Net, Ipv4Addr)>, prefix: u8) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers,
            classless_routes: classless,
            dns: vec![],
            domain: None,
            hostname: None,
            ntp: vec![],
            mtu: None,
            lease_time: Some(Duration::from_secs(86400)),
            t1: None,
            t2: None,
            start: Instant::now(),
            obtained_in: Duration::from_millis(12),
        }
    }

    #[test]
    fn routes_from_router_option() {
        let l = lease(vec![Ipv4Addr::new(10, 0, 2, 2)], vec![], 24);
        let r = lease_routes(&l, 2, 1024);
        assert_eq!(r.len(), 1);
        assert_eq!(
            netlink::render_route(&r[0], |_| "eth0".into()),
            "default via 10.0.2.2 dev eth0 proto dhcp src 10.0.2.15 metric 1024"
        );
        assert_eq!(
            lease_line("eth0", &l),
            "eth0: 10.0.2.15/24 via 10.0.2.2 from 10.0.2.2 (lease 86400 s, 12 ms)"
        );
    }

    #[test]
    fn gateway_outside_the_prefix_is_onlink() {
        // A /32 lease (as some clouds give) with a plain router option.
        let l = lease(vec![Ipv4Addr::new(10, 0, 0, 1)], vec![], 32);
        let r = lease_routes(&l, 2, 1024);
        assert!(r[0].onlink);
        // Option 121 with a host route to the gateway first: no onlink needed.
        let l = lease(
            vec![Ipv4Addr::new(192, 0, 2, 1)],
            vec![
                ("10.0.0.1/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
                ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1)),
            ],
            32,
        );
        let r = lease_routes(&l, 2, 100);
        assert_eq!(r.len(), 2);
        assert!(r[0].gateway.is_none() && r[0].link_scope);
        assert!(!r[1].onlink);
        assert_eq!(r[1].gateway, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    }

    #[test]
    fn saved_lease_round_trip() {
        let dir = crate::stage2::testutil::TempDir::new("lease");
        let path = dir.path().join("leases/eth0.json");
        let l = lease(vec![], vec![], 24);
        save(Some(&path), &l);
        assert_eq!(load_previous(Some(&path)), Some(l.address));
        forget(Some(&path));
        assert_eq!(load_previous(Some(&path)), None);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(load_previous(Some(&path)), None);
    }
}
