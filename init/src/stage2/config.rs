//! The boot's provisioning step (docs/config.md): find the config
//! ([`crate::provision::sources`]), decide which one is in force
//! ([`crate::provision::decide`]), apply it ([`crate::provision::apply`]),
//! and start the network ([`crate::net`]) with the plan it gives.
//!
//! Order: fw_cfg and a CIDATA volume are local and read first. Only when
//! neither has a config and the DMI tables name a cloud does the network
//! come up with the default plan (DHCP everywhere) to ask the metadata
//! service; if the config found there plans the network differently, the
//! manager is restarted with the new plan.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::api::{ConfigReport, NetStatus};
use atoll_common::config::{self, Config};
use ipnet::IpNet;

use super::status::Steps;
use super::{console, etc, loghub};
use crate::modules::ModuleDb;
use crate::net::plan::{InterfacePlan, LinkMatch, Method, StaticPlan, StaticRoute};
use crate::net::{self, NetHandle, NetPlan};
use crate::provision::apply::{self, FileSpec};
use crate::provision::sources::{self, Probe};
use crate::provision::store::Store;
use crate::provision::{self as prov, Decision};
use atoll_common::error::error_chain;

/// Where DHCP leases are kept for the next boot (INIT-REBOOT).
pub const LEASE_DIR: &str = "/var/lib/atoll/dhcp";
/// How long the boot waits for the first clock synchronisation.
pub const TIME_WAIT: Duration = Duration::from_secs(10);

fn say(priority: u8, line: String) {
    console::line(&line);
    loghub::LogHub::global().push_quiet(loghub::init_record(priority, line));
}

/// The network plan a config asks for.
pub fn net_plan(cfg: &Config, hostname: &str) -> NetPlan {
    let n = &cfg.network;
    let interfaces = n
        .interfaces
        .iter()
        .filter_map(|i| {
            let matches = match (&i.name, i.mac.as_ref().and_then(|m| m.get())) {
                (Some(name), _) => LinkMatch::Name(name.clone()),
                (None, Some(mac)) => LinkMatch::Mac(mac.0),
                // Validation requires one of the two.
                (None, None) => return None,
            };
            let addresses: Vec<IpNet> = i
                .addresses
                .iter()
                .filter_map(|a| a.get())
                .filter_map(|c| IpNet::new(c.addr, c.prefix).ok())
                .collect();
            let method = if i.dhcp4() {
                Method::Dhcp
            } else {
                Method::Static(StaticPlan {
                    addresses,
                    gateway4: i.gateway4.as_ref().and_then(|g| g.get()).copied(),
                    gateway6: i.gateway6.as_ref().and_then(|g| g.get()).copied(),
                    routes: i
                        .routes
                        .iter()
                        .filter_map(|r| {
                            let to = r.to.get()?;
                            Some(StaticRoute {
                                to: IpNet::new(to.addr, to.prefix).ok()?,
                                via: r.via.get().copied(),
                                metric: r.metric,
                            })
                        })
                        .collect(),
                })
            };
            Some(InterfacePlan {
                matches,
                method,
                mtu: i.mtu,
                dns: i.dns.iter().filter_map(|d| d.get()).copied().collect(),
                search: Vec::new(),
                ipv6_slaac: i.ipv6_slaac,
                route_metric: None,
            })
        })
        .collect();
    NetPlan {
        interfaces,
        dhcp_default: n.dhcp_default,
        dns: n
            .dns
            .iter()
            .filter_map(|d| d.get())
            .copied()
            .collect::<Vec<IpAddr>>(),
        search: n.search.clone(),
        ntp_servers: if cfg.ntp.enabled {
            cfg.ntp.servers.clone()
        } else {
            Vec::new()
        },
        ntp_enabled: cfg.ntp.enabled,
        hostname: Some(hostname.to_string()),
        lease_dir: Some(LEASE_DIR.into()),
        ..NetPlan::default()
    }
}

/// What the provisioning step leaves running.
#[derive(Debug)]
pub struct Provisioned {
    pub config: Config,
    pub hostname: String,
    pub net: NetHandle,
}

/// Looks for the config in the local sources (blocking: reads devices).
fn probe_local(db: Option<&ModuleDb>) -> (Option<sources::Found>, Vec<String>) {
    let mut tried = Vec::new();
    if let Some(db) = db {
        // Coldplug normally loaded it (its ACPI device QEMU0002 has a modalias).
        let _ = db.load("qemu_fw_cfg");
    }
    let p = sources::fw_cfg(Path::new(sources::FW_CFG_SYSFS));
    tried.push(p.summary("fw_cfg"));
    if let Probe::Found(f) = p {
        return (Some(f), tried);
    }
    let load = |fs: sources::SeedFs| {
        if let Some(db) = db {
            for m in fs.modules() {
                if let Err(e) = db.load(m) {
                    log::warn!("module {m}: {}", error_chain(&e));
                }
            }
        }
    };
    let mut p = sources::cidata(Path::new("/sys/class/block"), Path::new("/dev"), &load);
    if let (Probe::Absent(_), Some(db)) = (&p, db) {
        // The seed may sit behind a controller whose driver is not loaded
        // yet (only the NICs and fw_cfg load before this step).
        let report = db.coldplug();
        if !report.loaded.is_empty() {
            p = sources::cidata(Path::new("/sys/class/block"), Path::new("/dev"), &load);
        }
    }
    tried.push(p.summary("CIDATA"));
    if let Probe::Found(f) = p {
        return (Some(f), tried);
    }
    (None, tried)
}

fn parse(data: &[u8], source: &str) -> Result<Config, config::ConfigError> {
    config::parse(data, source)
}

/// The config step's outcome, before the network is configured.
pub struct ConfigStep {
    pub config: Config,
    pub hostname: String,
    /// The network, if the metadata service needed it already.
    running: Option<(NetPlan, NetHandle)>,
}

impl std::fmt::Debug for ConfigStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStep")
            .field("hostname", &self.hostname)
            .field("network_running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

/// The first half of provisioning: finds the config (starting the network
/// first only if a cloud's metadata service must be asked) and applies
/// what PID 1 owns. `report` and `net_status` are what the API shows.
/// [`provision_network`] does the rest.
pub async fn provision_config(
    db: Option<Arc<ModuleDb>>,
    machine_id: &str,
    report: &Arc<Mutex<ConfigReport>>,
    net_status: &Arc<Mutex<NetStatus>>,
    nic_drivers: &mut Option<tokio::sync::oneshot::Receiver<()>>,
    steps: &mut Steps,
) -> ConfigStep {
    let default_host = etc::default_hostname(machine_id);
    let d = db.clone();
    let (mut found, mut tried) = tokio::task::spawn_blocking(move || probe_local(d.as_deref()))
        .await
        .unwrap_or_else(|e| (None, vec![format!("local sources: FAILED: {e}")]));

    steps.done("config: local sources");
    // The metadata service needs the network first.
    let mut running: Option<(NetPlan, NetHandle)> = None;
    if found.is_none() {
        match sources::detect_cloud(Path::new("/sys/class/dmi/id")) {
            Some(cloud) => {
                // The metadata service is on the network: its drivers first.
                if let Some(task) = nic_drivers.take() {
                    let _ = task.await;
                }
                let plan = net_plan(&config::builtin_default(), &default_host);
                let handle = net::start(plan.clone(), net_status.clone());
                handle.configured().await;
                let p =
                    sources::metadata(cloud, sources::METADATA_ADDR, sources::METADATA_DEADLINE)
                        .await;
                tried.push(p.summary("metadata"));
                if let Probe::Found(f) = p {
                    found = Some(f);
                }
                running = Some((plan, handle));
                steps.done("config: metadata");
            }
            None => tried.push("metadata: the DMI tables name no known cloud".into()),
        }
    }

    let store = Store::default();
    let last_good = tokio::task::spawn_blocking(move || Store::default().load())
        .await
        .unwrap_or(None);
    let Decision {
        mut config,
        report: mut rep,
        keep,
    } = prov::decide(found, tried, last_good, config::builtin_default, parse);
    config.fill_defaults();
    for e in &rep.errors {
        say(3, format!("atoll: config: ERROR: {e}"));
    }
    if rep.state.starts_with("fallback") {
        say(
            4,
            format!("atoll: config: {}; using the {}", rep.state, rep.source),
        );
    } else {
        say(6, format!("atoll: config: using {}", rep.source));
    }

    // Apply what PID 1 owns.
    let hostname = config.hostname.clone().unwrap_or(default_host);
    let c = config.clone();
    let h = hostname.clone();
    let id = machine_id.to_string();
    let problems = tokio::task::spawn_blocking(move || apply_config(&c, &h, &id))
        .await
        .unwrap_or_else(|e| vec![format!("applying the config: {e}")]);
    for p in &problems {
        say(4, format!("atoll: config: WARNING: {p}"));
    }
    rep.toml = config.to_toml_redacted();
    if problems.is_empty() {
        if let Some(k) = keep {
            let now = crate::clock::unix_now();
            match tokio::task::spawn_blocking(move || store.save(&k.source, &k.data, now)).await {
                Ok(Ok(true)) => log::info!("kept as the last good config"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => log::warn!("{}", error_chain(&e)),
                Err(e) => log::warn!("saving the last good config: {e}"),
            }
        }
    } else {
        rep.state = format!("{} with {} problem(s)", rep.state, problems.len());
        rep.errors.extend(problems);
    }
    *lock(report) = rep;
    steps.done("config: applied");
    ConfigStep {
        config,
        hostname,
        running,
    }
}

/// The second half: configures the network as the config plans it and
/// waits for it (and briefly for the clock). Returns the config in force,
/// the host name, and the running network manager.
pub async fn provision_network(
    step: ConfigStep,
    net_status: &Arc<Mutex<NetStatus>>,
    steps: &mut Steps,
) -> Provisioned {
    let ConfigStep {
        config,
        hostname,
        running,
    } = step;
    let plan = net_plan(&config, &hostname);
    let net = match running {
        Some((p, h)) if p == plan => h,
        Some((_, h)) => {
            log::info!("the config plans the network differently; restarting it");
            h.shutdown().await;
            net::start(plan, net_status.clone())
        }
        None => net::start(plan, net_status.clone()),
    };
    net.configured().await;
    steps.done("network configured");
    for line in net.summary() {
        say(6, format!("atoll: net: {line}"));
    }
    if tokio::time::timeout(TIME_WAIT, net.time_set())
        .await
        .is_err()
    {
        log::warn!("the clock is not synchronised yet; going on");
    }
    steps.done("clock");
    Provisioned {
        config,
        hostname,
        net,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Applies the parts of the config PID 1 owns; returns the problems.
fn apply_config(cfg: &Config, hostname: &str, machine_id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = etc::render(Path::new("/etc"), hostname, machine_id) {
        problems.push(error_chain(&e));
    }
    if let Err(e) = apply::set_hostname(hostname) {
        problems.push(error_chain(&e));
    }
    for (name, value) in &cfg.sysctl {
        if let Err(e) = apply::write_sysctl(Path::new("/proc/sys"), name, value.as_str()) {
            problems.push(error_chain(&e));
        }
    }
    for f in &cfg.files {
        let spec = f.bytes().and_then(|content| {
            let (uid, gid) = f.owner_ids()?;
            let mode = f.mode.get().map(|m| m.0).ok_or("bad mode")?;
            Ok(FileSpec {
                path: f.path.clone().into(),
                content,
                mode,
                uid,
                gid,
            })
        });
        match spec {
            Ok(spec) => match apply::write_file(Path::new("/"), &spec) {
                Ok(()) => log::info!("wrote {}", f.path),
                Err(e) => problems.push(error_chain(&e)),
            },
            Err(e) => problems.push(format!("file {}: {e}", f.path)),
        }
    }
    if !cfg.ca_certs.is_empty() {
        let bundle = apply::ca_bundle(&cfg.ca_certs);
        if let Err(e) = apply::write_text(Path::new(apply::CA_BUNDLE), &bundle, 0o644) {
            problems.push(error_chain(&e));
        }
    }
    if !cfg.admin.ssh_authorized_keys.is_empty() {
        let keys = cfg.admin.ssh_authorized_keys.join("\n") + "\n";
        if let Err(e) = apply::write_text(Path::new(apply::ADMIN_KEYS), &keys, 0o600) {
            problems.push(error_chain(&e));
        }
    }
    // The effective config for the runtime and the update agent (secrets
    // included, so root only).
    if let Err(e) = apply::write_text(Path::new(apply::EFFECTIVE_CONFIG), &cfg.to_toml(), 0o600) {
        problems.push(error_chain(&e));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_plans_dhcp_everywhere() {
        let p = net_plan(&config::builtin_default(), "atoll-1");
        assert!(p.dhcp_default);
        assert!(p.interfaces.is_empty());
        assert_eq!(p.hostname.as_deref(), Some("atoll-1"));
        assert_eq!(p.lease_dir.as_deref(), Some(Path::new(LEASE_DIR)));
    }

    #[test]
    fn maps_static_interfaces() {
        let cfg = config::parse(
            br#"
[network]
dhcp_default = false
dns = ["10.0.2.3"]
search = ["example.net"]

[[network.interfaces]]
mac = "52:54:00:12:34:56"
addresses = ["10.0.2.20/24", "fd00::20/64"]
gateway4 = "10.0.2.2"
mtu = 1400
routes = [{ to = "192.168.0.0/16", via = "10.0.2.1", metric = 10 }]

[[network.interfaces]]
name = "eth1"

[ntp]
servers = ["10.0.2.2"]
"#,
            "test",
        )
        .unwrap();
        let p = net_plan(&cfg, "h");
        assert!(!p.dhcp_default);
        assert_eq!(p.dns, vec!["10.0.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.search, vec!["example.net".to_string()]);
        assert_eq!(p.ntp_servers, vec!["10.0.2.2".to_string()]);
        assert_eq!(p.interfaces.len(), 2);
        let i = &p.interfaces[0];
        assert_eq!(i.matches, LinkMatch::Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(i.mtu, Some(1400));
        match &i.method {
            Method::Static(s) => {
                assert_eq!(s.addresses.len(), 2);
                assert_eq!(s.gateway4, Some("10.0.2.2".parse().unwrap()));
                assert_eq!(s.routes.len(), 1);
                assert_eq!(s.routes[0].metric, Some(10));
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(p.interfaces[1].matches, LinkMatch::Name("eth1".into()));
        assert_eq!(p.interfaces[1].method, Method::Dhcp);
    }
}
