//! Host networking for PID 1: links, addresses and routes through
//! rtnetlink ([`netlink`]), a DHCPv4 client ([`dhcp`]), static
//! configuration ([`static_ip`]), /etc/resolv.conf ([`resolv`]) and clock
//! synchronisation over SNTP ([`sntp`]), all driven by a [`NetPlan`].
//!
//! [`start`] runs the manager on the current tokio runtime and returns a
//! [`NetHandle`]:
//!
//! 1. `lo` up with 127.0.0.1/8 and ::1;
//! 2. waits (at most [`NetPlan::wait`]) for the links the plan names by
//!    exact name or MAC (NIC drivers may still be probing);
//! 3. for every link an entry matches (or every wired link, with
//!    [`NetPlan::dhcp_default`]): IPv6 SLAAC sysctls, MTU, link up; static
//!    entries are applied at once, DHCP entries get one client each;
//! 4. "configured" ([`NetHandle::configured`]) flips once every DHCP link
//!    has a lease or [`NetPlan::wait`] ran out; boot goes on either way and
//!    the clients keep asking;
//! 5. then SNTP once ("time set", [`NetHandle::time_set`], flips after that
//!    first attempt whatever its outcome) and every
//!    [`NetPlan::ntp_interval`] after.
//!
//! The status ([`NetStatus`]) is rewritten on every change and every
//! [`STATUS_EVERY`]; /etc/resolv.conf whenever the name servers change.
//! [`NetHandle::shutdown`] releases the DHCP leases.
//!
//! Hotplug: links are not watched through rtnetlink events. Wired links
//! that appear later are picked up by the periodic rescan (every
//! [`STATUS_EVERY`]); links that go away are simply dropped from the status.

pub mod dhcp;
pub mod netlink;
#[cfg(test)]
mod peer_tests;
pub mod plan;
pub mod resolv;
pub mod sntp;
pub mod static_ip;
pub mod status;
pub mod sysctl;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atoll_common::api::{InterfaceStatus, NetStatus, NtpStatus};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};

use self::dhcp::driver::{self, DhcpCommand, DhcpUpdate, DriverConfig};
use self::netlink::{Address, Lifetime, Link, LinkKind, Route};
pub use self::plan::{InterfacePlan, LinkMatch, Method, NetPlan, StaticPlan, StaticRoute};
pub use self::resolv::render_resolv_conf;
pub use self::status::summary_line;
use self::status::Managed;
use atoll_common::error::error_chain;

/// How often the status is refreshed (and new wired links looked for).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long [`NetHandle::shutdown`] waits for the DHCP releases.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the manager looks for the expected links while waiting.
const LINK_POLL: Duration = Duration::from_millis(25);

/// The running network manager.
#[derive(Debug, Clone)]
pub struct NetHandle {
    configured: watch::Receiver<bool>,
    time_set: watch::Receiver<bool>,
    changes: watch::Receiver<u64>,
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Mutex<NetStatus>>,
}

#[derive(Debug)]
enum Command {
    Shutdown(oneshot::Sender<()>),
    Refresh(oneshot::Sender<()>),
}

impl NetHandle {
    /// Waits until the network is configured (see the module doc). Returns
    /// at once if the manager is gone.
    pub async fn configured(&self) {
        let mut rx = self.configured.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Waits until the first clock synchronisation was tried.
    pub async fn time_set(&self) {
        let mut rx = self.time_set.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// The "configured" flag, to select on.
    pub fn configured_watch(&self) -> watch::Receiver<bool> {
        self.configured.clone()
    }

    /// The "time set" flag, to select on.
    pub fn time_set_watch(&self) -> watch::Receiver<bool> {
        self.time_set.clone()
    }

    /// A counter that goes up whenever an interface's state changes (a
    /// lease, a loss, an error, a new link): the moment to print
    /// [`NetHandle::summary`] again.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Refreshes the status now (lease times, addresses, routes).
    pub async fn refresh(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Refresh(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// One line per interface for the console (see [`summary_line`]).
    pub fn summary(&self) -> Vec<String> {
        lock(&self.status)
            .interfaces
            .iter()
            .map(summary_line)
            .collect()
    }

    /// Releases every DHCP lease (DHCPRELEASE, address and routes removed)
    /// and stops the manager; waits at most [`RELEASE_TIMEOUT`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, rx).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Starts the network manager on the current tokio runtime (call it from
/// within one: it spawns its tasks there); `status` is kept up to date
/// (its `ntp` part by the clock synchronisation).
pub fn start(plan: NetPlan, status: Arc<Mutex<NetStatus>>) -> NetHandle {
    let (configured_tx, configured) = watch::channel(false);
    let (time_tx, time_set) = watch::channel(false);
    let (changes_tx, changes) = watch::channel(0u64);
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let m = Manager {
        started: Instant::now(),
        plan,
        status: status.clone(),
        configured: configured_tx,
        time_set: Some(time_tx),
        changes: changes_tx,
        ifaces: BTreeMap::new(),
        updates_tx,
        resolv: None,
        ntp_servers: Arc::default(),
    };
    tokio::spawn(m.run(commands_rx, updates));
    NetHandle {
        configured,
        time_set,
        changes,
        commands,
        status,
    }
}

/// One interface the manager configured.
#[derive(Debug)]
struct Iface {
    name: String,
    entry: InterfacePlan,
    managed: Managed,
    driver: Option<mpsc::UnboundedSender<DhcpCommand>>,
}

struct Manager {
    started: Instant,
    plan: NetPlan,
    status: Arc<Mutex<NetStatus>>,
    configured: watch::Sender<bool>,
    time_set: Option<watch::Sender<bool>>,
    changes: watch::Sender<u64>,
    ifaces: BTreeMap<u32, Iface>,
    updates_tx: mpsc::UnboundedSender<(u32, DhcpUpdate)>,
    /// The resolv.conf last written.
    resolv: Option<String>,
    /// The servers the clock task uses, kept current by the manager.
    ntp_servers: Arc<Mutex<Vec<String>>>,
}

/// Brings `lo` up with its addresses; returns the problems.
fn setup_loopback(nl: &mut netlink::Netlink) -> Result<Vec<String>, netlink::NetlinkError> {
    let mut errors = Vec::new();
    let Some(lo) = nl
        .links()?
        .into_iter()
        .find(|l| l.kind == LinkKind::Loopback)
    else {
        return Ok(vec!["no loopback link".into()]);
    };
    nl.set_up(lo.index)?;
    let v4: IpNet =
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).unwrap_or_default());
    let v6: IpNet = IpNet::V6(ipnet::Ipv6Net::from(std::net::Ipv6Addr::LOCALHOST));
    for a in [v4, v6] {
        match nl.add_address(lo.index, a, Lifetime::Forever) {
            // IPv6 may be disabled on the kernel command line.
            Err(e) if a.addr().is_ipv6() && e.errno() == Some(nix::libc::EAFNOSUPPORT) => {}
            Err(e) => errors.push(error_chain(&e)),
            Ok(()) => {}
        }
    }
    Ok(errors)
}

/// Sets up one link for `entry` (sysctls, MTU, up, static config).
fn prepare_link(nl: &mut netlink::Netlink, link: &Link, entry: &InterfacePlan) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = sysctl::set_ipv6_slaac(&link.name, entry.ipv6_slaac) {
        // No IPv6 in this kernel: nothing to switch.
        if e.source.kind() != std::io::ErrorKind::NotFound {
            errors.push(error_chain(&e));
        }
    }
    if let Some(mtu) = entry.mtu {
        if let Err(e) = nl.set_mtu(link.index, mtu) {
            errors.push(error_chain(&e));
        }
    }
    if let Err(e) = nl.set_up(link.index) {
        errors.push(error_chain(&e));
        return errors;
    }
    if let Method::Static(s) = &entry.method {
        errors.extend(static_ip::apply(nl, link.index, s, entry.route_metric));
    }
    errors
}

/// The kernel's view: links, addresses, routes.
type Tables = (Vec<Link>, Vec<Address>, Vec<Route>);

async fn dump() -> Result<Tables, netlink::NetlinkError> {
    netlink::blocking(|nl| Ok((nl.links()?, nl.addresses()?, nl.routes()?))).await
}

async fn list_links() -> Vec<Link> {
    match netlink::blocking(|nl| nl.links()).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("network: {}", error_chain(&e));
            Vec::new()
        }
    }
}

impl Manager {
    /// Whether the links the plan expects are all there.
    /// Every link the plan names (by exact name or MAC) is there. Links
    /// matched only by a glob or by DHCP-everywhere are not waited for:
    /// PID 1 starts the network after the driver coldplug, so the wired
    /// links present at boot exist by then, and later ones (USB) are picked
    /// up by the rescan. A host without a NIC is configured at once.
    fn links_ready(&self, links: &[Link]) -> bool {
        self.plan.interfaces.iter().all(|e| match &e.matches {
            LinkMatch::Mac(_) => links.iter().any(|l| e.matches.matches(l)),
            m => match m.exact_name() {
                Some(n) => links.iter().any(|l| l.name == n),
                None => true,
            },
        })
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Configures one link the plan wants.
    async fn configure(&mut self, link: Link, entry_index: Option<usize>) {
        let entry = self.plan.entry(entry_index);
        let (l, e) = (link.clone(), entry.clone());
        let errors = match netlink::blocking(move |nl| Ok(prepare_link(nl, &l, &e))).await {
            Ok(errors) => errors,
            Err(e) => vec![error_chain(&e)],
        };
        for e in &errors {
            log::warn!("{}: {e}", link.name);
        }
        let method = match entry.method {
            Method::Dhcp => "dhcp",
            Method::Static(_) => "static",
        };
        let mut iface = Iface {
            name: link.name.clone(),
            entry: entry.clone(),
            managed: Managed {
                method,
                lease: None,
                error: (!errors.is_empty()).then(|| errors.join("; ")),
            },
            driver: None,
        };
        match (&entry.method, link.mac) {
            (Method::Dhcp, Some(mac)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let cfg = DriverConfig {
                    index: link.index,
                    name: link.name.clone(),
                    mac,
                    hostname: self.plan.hostname.clone(),
                    lease_file: self
                        .plan
                        .lease_dir
                        .as_ref()
                        .map(|d| d.join(format!("{}.json", link.name))),
                    route_metric: entry.route_metric.unwrap_or(driver::DEFAULT_METRIC),
                    apply_mtu: entry.mtu.is_none(),
                };
                tokio::spawn(driver::run(cfg, self.updates_tx.clone(), rx));
                iface.driver = Some(tx);
            }
            (Method::Dhcp, None) => {
                let msg = "DHCP needs a link with a MAC address".to_string();
                log::warn!("{}: {msg}", link.name);
                iface.managed.error = Some(msg);
            }
            (Method::Static(s), _) => {
                if errors.is_empty() {
                    let addrs: Vec<String> = s.addresses.iter().map(|a| a.to_string()).collect();
                    log::info!("{}: static {}", link.name, addrs.join(", "));
                }
            }
        }
        self.ifaces.insert(link.index, iface);
        self.bump();
    }

    /// Configures the links the plan wants that are not configured yet.
    /// Later links are taken only if wired (container veths and bridges
    /// come and go, and are not the host's to configure).
    async fn configure_new(&mut self, links: &[Link], initial: bool) {
        for link in links {
            if self.ifaces.contains_key(&link.index) {
                continue;
            }
            if !initial && link.kind != LinkKind::Wired {
                continue;
            }
            if let plan::Decision::Configure(entry) = self.plan.decide(link) {
                if !initial {
                    log::info!("{}: new link", link.name);
                }
                self.configure(link.clone(), entry).await;
            }
        }
    }

    /// Every DHCP interface has a lease.
    fn all_leased(&self) -> bool {
        self.ifaces
            .values()
            .all(|i| i.driver.is_none() || i.managed.lease.is_some())
    }

    /// Name servers and search domains, in order: the plan's, each
    /// interface's own, then what DHCP gave.
    fn dns(&self) -> (Vec<IpAddr>, Vec<String>) {
        let mut ns = self.plan.dns.clone();
        let mut search = self.plan.search.clone();
        for i in self.ifaces.values() {
            ns.extend(&i.entry.dns);
            search.extend(i.entry.search.iter().cloned());
        }
        for i in self.ifaces.values() {
            if let Some(l) = &i.managed.lease {
                ns.extend(l.dns.iter().map(|a| IpAddr::V4(*a)));
                search.extend(l.domain.iter().cloned());
            }
        }
        let mut seen = Vec::new();
        ns.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        search.retain(|d| resolv::valid_domain(d));
        let mut seen: Vec<String> = Vec::new();
        search.retain(|d| {
            let k = d.to_ascii_lowercase();
            let new = !seen.contains(&k);
            seen.push(k);
            new
        });
        (ns, search)
    }

    /// Rewrites resolv.conf if what it should say changed.
    fn write_resolv(&mut self) {
        let (ns, search) = self.dns();
        let text = render_resolv_conf(&ns, &search);
        if self.resolv.as_ref() == Some(&text) {
            return;
        }
        match resolv::write_atomic(&self.plan.resolv_conf, &text) {
            Ok(()) => {
                if self.resolv.is_some() || !ns.is_empty() {
                    let list: Vec<String> = ns
                        .iter()
                        .take(resolv::MAX_NAMESERVERS)
                        .map(|a| a.to_string())
                        .collect();
                    log::info!(
                        "name servers: {}",
                        if list.is_empty() {
                            "none".into()
                        } else {
                            list.join(" ")
                        }
                    );
                }
                self.resolv = Some(text);
            }
            Err(e) => log::warn!("{}", error_chain(&e)),
        }
    }

    /// The NTP servers to use now: the plan's, else those DHCP gave.
    fn update_ntp_servers(&self) {
        let servers = if !self.plan.ntp_enabled {
            Vec::new()
        } else if self.plan.ntp_servers.is_empty() {
            let mut s: Vec<String> = Vec::new();
            for i in self.ifaces.values() {
                for a in i.managed.lease.iter().flat_map(|l| l.ntp.iter()) {
                    let a = a.to_string();
                    if !s.contains(&a) {
                        s.push(a);
                    }
                }
            }
            s
        } else {
            self.plan.ntp_servers.clone()
        };
        *lock(&self.ntp_servers) = servers;
    }

    /// Rewrites the status from the kernel's tables and what the manager knows.
    async fn refresh(&mut self, rescan: bool) {
        let (links, addresses, routes) = match dump().await {
            Ok(t) => t,
            Err(e) => {
                log::warn!("network status: {}", error_chain(&e));
                return;
            }
        };
        if rescan {
            self.configure_new(&links, false).await;
        }
        let managed: BTreeMap<u32, Managed> = self
            .ifaces
            .iter()
            .map(|(i, f)| (*i, f.managed.clone()))
            .collect();
        let interfaces: Vec<InterfaceStatus> =
            status::interfaces(&links, &addresses, &managed, Instant::now());
        let routes = status::routes(&routes, &links);
        let (ns, search) = self.dns();
        let mut s = lock(&self.status);
        s.interfaces = interfaces;
        s.routes = routes;
        s.dns = ns.iter().map(|a| a.to_string()).collect();
        s.search = search;
    }

    fn handle(&mut self, index: u32, update: DhcpUpdate) {
        let Some(i) = self.ifaces.get_mut(&index) else {
            return;
        };
        match update {
            DhcpUpdate::Lease(l) => i.managed.lease = Some(*l),
            DhcpUpdate::Lost | DhcpUpdate::Released => i.managed.lease = None,
            DhcpUpdate::Error(e) => i.managed.error = e,
        }
        self.write_resolv();
        self.update_ntp_servers();
        self.bump();
    }

    /// Flips "configured" and starts the clock task.
    fn set_configured(&mut self, timed_out: bool) {
        if *self.configured.borrow() {
            return;
        }
        let ms = self.started.elapsed().as_millis();
        if timed_out {
            for i in self
                .ifaces
                .values()
                .filter(|i| i.driver.is_some() && i.managed.lease.is_none())
            {
                log::warn!(
                    "{}: no DHCP lease after {} s; boot goes on, the client keeps asking",
                    i.name,
                    self.plan.wait.as_secs()
                );
            }
        }
        log::info!("network configured in {ms} ms");
        let _ = self.configured.send(true);
        if let Some(time_tx) = self.time_set.take() {
            tokio::spawn(clock_task(
                self.ntp_servers.clone(),
                self.status.clone(),
                self.plan.ntp_interval,
                time_tx,
            ));
        }
    }

    async fn shutdown(&mut self, updates: &mut mpsc::UnboundedReceiver<(u32, DhcpUpdate)>) {
        let mut waits = Vec::new();
        for i in self.ifaces.values_mut() {
            if let Some(d) = i.driver.take() {
                let (tx, rx) = oneshot::channel();
                if d.send(DhcpCommand::Release(tx)).is_ok() {
                    waits.push(rx);
                }
            }
        }
        for w in waits {
            let _ = w.await;
        }
        // The drivers reported the releases before they answered.
        while let Ok((index, update)) = updates.try_recv() {
            self.handle(index, update);
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut updates: mpsc::UnboundedReceiver<(u32, DhcpUpdate)>,
    ) {
        match netlink::blocking(setup_loopback).await {
            Ok(errors) => {
                for e in errors {
                    log::warn!("lo: {e}");
                }
            }
            Err(e) => log::error!("lo: {}", error_chain(&e)),
        }
        // The links the plan expects may still be on their way (drivers):
        // configure each as it shows up, until all are there or time is up.
        let deadline = self.started + self.plan.wait;
        loop {
            let links = list_links().await;
            self.configure_new(&links, true).await;
            if self.links_ready(&links) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(LINK_POLL).await;
        }
        if self.ifaces.is_empty() {
            log::warn!("network: no link to configure");
        }
        self.update_ntp_servers();
        self.write_resolv();
        self.refresh(false).await;
        if self.all_leased() {
            self.set_configured(false);
        }

        let mut tick = tokio::time::interval(STATUS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let give_up = tokio::time::Instant::from_std(deadline.max(Instant::now()));
        loop {
            let waiting = !*self.configured.borrow();
            tokio::select! {
                u = updates.recv() => {
                    if let Some((index, update)) = u {
                        self.handle(index, update);
                        self.refresh(false).await;
                        if waiting && self.all_leased() {
                            self.set_configured(false);
                        }
                    }
                }
                _ = tokio::time::sleep_until(give_up), if waiting => self.set_configured(true),
                _ = tick.tick() => self.refresh(true).await,
                c = commands.recv() => match c {
                    Some(Command::Refresh(done)) => {
                        self.refresh(false).await;
                        let _ = done.send(());
                    }
                    Some(Command::Shutdown(done)) => {
                        self.shutdown(&mut updates).await;
                        self.refresh(false).await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
    }
}

/// Synchronises the clock once, flips "time set", then again every `every`.
async fn clock_task(
    servers: Arc<Mutex<Vec<String>>>,
    status: Arc<Mutex<NetStatus>>,
    every: Duration,
    time_set: watch::Sender<bool>,
) {
    loop {
        let list = lock(&servers).clone();
        let mut ntp = NtpStatus {
            servers: list.clone(),
            ..lock(&status).ntp.clone()
        };
        match sntp::sync(&list, &sntp::SystemClock).await {
            Ok(r) => {
                let ms = (r.sample.offset_ns / 1_000_000) as i64;
                match r.action {
                    sntp::Action::Stepped => log::info!(
                        "clock set from {} ({}): moved by {ms} ms",
                        r.sample.server,
                        r.sample.addr
                    ),
                    sntp::Action::Slewed => log::debug!(
                        "clock synchronised with {}: slewing {ms} ms",
                        r.sample.server
                    ),
                }
                ntp.synced_from = Some(r.sample.server);
                ntp.last_offset_ms = Some(ms);
                ntp.error = None;
            }
            Err(e) => {
                let msg = error_chain(&e);
                if !matches!(e, sntp::SntpError::NoServers) || ntp.error.is_none() {
                    log::warn!("clock not synchronised: {msg}");
                }
                ntp.error = Some(msg);
            }
        }
        lock(&status).ntp = ntp;
        let _ = time_set.send(true);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    /// Runs the manager on this machine with a plan that matches no link
    /// (no DHCP by default): lo is up, resolv.conf written, the flags flip.
    /// Needs root for lo (it is up on any normal machine already).
    #[tokio::test]
    async fn manager_with_nothing_to_do() {
        let dir = TempDir::new("net-manager");
        let resolv = dir.path().join("resolv.conf");
        let plan = NetPlan {
            dhcp_default: false,
            dns: vec!["192.0.2.53".parse().unwrap()],
            search: vec!["example.test".into()],
            wait: Duration::from_millis(200),
            ntp_interval: Duration::from_secs(3600),
            resolv_conf: resolv.clone(),
            ..Default::default()
        };
        let status = Arc::new(Mutex::new(NetStatus::default()));
        let h = start(plan, status.clone());
        tokio::time::timeout(Duration::from_secs(5), h.configured())
            .await
            .expect("configured in time");
        tokio::time::timeout(Duration::from_secs(5), h.time_set())
            .await
            .expect("time set in time");
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            "# Written by Atoll's init from the network config and DHCP.\nnameserver 192.0.2.53\nsearch example.test\n"
        );
        h.refresh().await;
        let s = status.lock().unwrap().clone();
        assert!(s.interfaces.iter().any(|i| i.method == "loopback"));
        assert_eq!(s.dns, ["192.0.2.53"]);
        assert_eq!(s.ntp.error.as_deref(), Some("no NTP servers"));
        assert!(h.summary().iter().any(|l| l.starts_with("lo loopback")));
        h.shutdown().await;
    }
}
