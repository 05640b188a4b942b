//! Bridge networking for containers: a Linux bridge on the host with the
//! gateway address, one veth pair per container, NAT and published ports
//! in one nftables table (docs/container-networking.md).
//!
//! All of it is netlink, synchronous, with no helper binaries: rtnetlink
//! for links, addresses and routes ([`rtnl`]), nfnetlink batches for
//! nftables ([`nft`]), both built by the small encoder in [`netlink`].
//!
//! ```no_run
//! # use atoll_common::config::workload::{PortMapping, Protocol};
//! # use atoll_runtime::network::{Bridge, BridgeConfig};
//! let bridge = Bridge::setup(&BridgeConfig::default())?;
//! let pid = 1234; // the container's init, in its own network namespace
//! let ports = [PortMapping { host: 8080, container: 80, protocol: Protocol::Tcp }];
//! let att = bridge.attach("web", pid, &ports)?;
//! // ... the container runs; 10.88.0.2:80 is reachable as HOST:8080
//! bridge.detach(&att)?;
//! # Ok::<(), atoll_runtime::network::NetworkError>(())
//! ```

mod netlink;
mod nft;
mod rtnl;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use atoll_common::config::workload::{PortMapping, Protocol};
use ipnet::Ipv4Net;
use nix::sys::socket::SockProtocol;
use sha2::{Digest, Sha256};

use self::netlink::Socket;
use self::nft::{Batch, Dnat};
use self::rtnl::Rtnl;

/// Host veth names: this prefix and 12 hex digits of sha256(id).
const VETH_PREFIX: &str = "ve-";
/// The container's end of the pair.
const CONTAINER_IF: &str = "eth0";
const IFNAMSIZ_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("opening a {protocol} socket")]
    Socket {
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables: cannot {what}")]
    Nftables {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the network namespace of process {pid}")]
    Netns {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter the network namespace of process {pid}")]
    Setns {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("the thread configuring the network namespace of process {pid} panicked")]
    Thread { pid: i32 },
    #[error(
        "bridge name `{0}` is not a usable interface name (1 to 15 bytes, no `/`, space or NUL)"
    )]
    BridgeName(String),
    #[error("link {name} exists but is a {kind}, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("subnet {0} is too small for a gateway and containers (at most /30)")]
    Subnet(Ipv4Net),
    #[error("no free address left in {0}")]
    AddressesExhausted(Ipv4Net),
    #[error("host port {port}/{protocol} is already published by {by}")]
    PortInUse {
        port: u16,
        protocol: &'static str,
        by: String,
    },
    #[error("container id `{0}` is empty or already attached")]
    Id(String),
}

/// The bridge's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Interface name, also named in the masquerade rules.
    pub name: String,
    /// Container addresses; the gateway (the bridge's address) is the
    /// first host address.
    pub subnet: Ipv4Net,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            name: "atoll0".into(),
            subnet: "10.88.0.0/16".parse().expect("a valid prefix"),
        }
    }
}

/// One container's connection to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub address: std::net::Ipv4Addr,
    pub host_veth: String,
    pub ports: Vec<PortMapping>,
}

/// A published port's owner.
#[derive(Debug, Clone)]
struct Published {
    id: String,
    address: Ipv4Addr,
    port: u16,
}

#[derive(Debug)]
struct State {
    /// Sockets opened by `setup` in the host's namespace: they stay there
    /// whichever thread later calls `attach`.
    rtnl: Rtnl,
    nft: Socket,
    bridge_index: u32,
    used: BTreeSet<Ipv4Addr>,
    ids: BTreeSet<String>,
    /// (IP protocol number, host port) -> where it goes.
    published: BTreeMap<(u8, u16), Published>,
}

/// The host's container bridge. `Send + Sync`: every operation takes one
/// lock, so attaches and detaches from several threads are serialised.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    gateway: Ipv4Addr,
    state: Mutex<State>,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

fn proto_name(p: u8) -> &'static str {
    if p == 6 {
        "tcp"
    } else {
        "udp"
    }
}

/// The host veth name for container `id`: at most 15 bytes, stable.
pub fn host_veth_name(id: &str) -> String {
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    format!("{VETH_PREFIX}{}", &hash[..IFNAMSIZ_MAX - VETH_PREFIX.len()])
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Sends an nftables batch on `sock` and names the refused message.
fn apply(sock: &mut Socket, fill: impl FnOnce(&mut Batch)) -> Result<(), NetworkError> {
    let mut batch = Batch::new(sock.next_seq());
    fill(&mut batch);
    sock.used_seq(batch.last_seq());
    sock.request(&batch.bytes(), &batch.seqs())
        .map_err(|(seq, source)| NetworkError::Nftables {
            what: seq
                .and_then(|s| batch.describe(s))
                .unwrap_or("send a batch to the kernel")
                .to_string(),
            source,
        })
}

impl Bridge {
    /// In the caller's network namespace (the host): creates the bridge
    /// (or adopts an existing bridge of that name), gives it the gateway
    /// address, sets it up, enables IPv4 forwarding (and route_localnet on
    /// the bridge, for published ports on 127.0.0.1), deletes the veths of
    /// an earlier run, and recreates the `ip atoll` nftables table.
    pub fn setup(cfg: &BridgeConfig) -> Result<Bridge, NetworkError> {
        let name = &cfg.name;
        if name.is_empty()
            || name.len() > IFNAMSIZ_MAX
            || name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(NetworkError::BridgeName(name.clone()));
        }
        let subnet = cfg.subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(NetworkError::Subnet(subnet));
        }
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);

        let mut rtnl = Rtnl::open()?;
        if rtnl.create_bridge(name)? {
            log::info!("network: created bridge {name}");
        }
        let link = rtnl.link(name)?.ok_or_else(|| NetworkError::Netlink {
            what: format!("find bridge {name} after creating it"),
            source: io::ErrorKind::NotFound.into(),
        })?;
        match link.kind.as_deref() {
            Some("bridge") => {}
            other => {
                return Err(NetworkError::NotABridge {
                    name: name.clone(),
                    kind: other.unwrap_or("link of unknown kind").to_string(),
                })
            }
        }
        // Leftovers of an earlier run: the bridge's ports and our veths.
        for l in rtnl.links()? {
            let ours = l.master == Some(link.index)
                || (l.kind.as_deref() == Some("veth") && l.name.starts_with(VETH_PREFIX));
            if ours && l.index != link.index {
                log::warn!("network: removing leftover container link {}", l.name);
                rtnl.delete_link(&l.name)?;
            }
        }
        rtnl.add_address(link.index, name, gateway, subnet.prefix_len())?;
        rtnl.set_up(link.index, name)?;

        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        // Lets the output chain's DNAT send 127.0.0.1:PORT to a container
        // (masqueraded to the gateway address on the way out).
        write_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"),
            "1",
        )?;

        let mut nft = Socket::open(SockProtocol::NetlinkNetFilter).map_err(|source| {
            NetworkError::Socket {
                protocol: "nfnetlink",
                source,
            }
        })?;
        apply(&mut nft, |b| b.recreate_table(subnet, name))?;
        log::info!(
            "network: bridge {name} up with {gateway}/{}",
            subnet.prefix_len()
        );

        Ok(Bridge {
            cfg: BridgeConfig {
                name: name.clone(),
                subnet,
            },
            gateway,
            state: Mutex::new(State {
                rtnl,
                nft,
                bridge_index: link.index,
                used: BTreeSet::new(),
                ids: BTreeSet::new(),
                published: BTreeMap::new(),
            }),
        })
    }

    /// The bridge's address, the containers' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-changed in a way
        // that matters more than refusing all networking would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn allocate(&self, state: &State) -> Result<Ipv4Addr, NetworkError> {
        let net = u32::from(self.cfg.subnet.network());
        let broadcast = u32::from(self.cfg.subnet.broadcast());
        // network + 1 is the gateway.
        (net + 2..broadcast)
            .map(Ipv4Addr::from)
            .find(|a| !state.used.contains(a))
            .ok_or(NetworkError::AddressesExhausted(self.cfg.subnet))
    }

    /// Connects the network namespace of process `pid` to the bridge: a
    /// veth pair (host end [`host_veth_name`], a bridge port; the other
    /// end `eth0` in the container), an address from the subnet, the
    /// default route via the gateway, lo up, and DNAT rules for `ports`.
    /// On failure everything it created is removed again.
    pub fn attach(
        &self,
        id: &str,
        pid: i32,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetworkError> {
        let mut state = self.lock();
        if id.is_empty() || state.ids.contains(id) {
            return Err(NetworkError::Id(id.to_string()));
        }
        let mut wanted = BTreeMap::new();
        for p in ports {
            let key = (proto_number(p.protocol), p.host);
            let by = match (state.published.get(&key), wanted.contains_key(&key)) {
                (Some(other), _) => Some(format!("container {}", other.id)),
                (None, true) => Some(format!("container {id} twice")),
                (None, false) => None,
            };
            if let Some(by) = by {
                return Err(NetworkError::PortInUse {
                    port: p.host,
                    protocol: proto_name(key.0),
                    by,
                });
            }
            wanted.insert(key, p.container);
        }
        let address = self.allocate(&state)?;
        let host_veth = host_veth_name(id);

        let netns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|source| NetworkError::Netns { pid, source })?;
        let bridge_index = state.bridge_index;
        state
            .rtnl
            .create_veth(&host_veth, bridge_index, CONTAINER_IF, netns.as_fd())?;

        let undo = |state: &mut State| {
            if let Err(e) = state.rtnl.delete_link(&host_veth) {
                log::warn!("network: undoing attach of {id}: {e}");
            }
        };
        let prefix = self.cfg.subnet.prefix_len();
        if let Err(e) = configure_inside(netns, pid, address, prefix, self.gateway) {
            undo(&mut state);
            return Err(e);
        }

        for (&(proto, host), &port) in &wanted {
            state.published.insert(
                (proto, host),
                Published {
                    id: id.to_string(),
                    address,
                    port,
                },
            );
        }
        if !wanted.is_empty() {
            if let Err(e) = self.sync_dnat(&mut state) {
                state.published.retain(|_, p| p.id != id);
                undo(&mut state);
                return Err(e);
            }
        }
        state.used.insert(address);
        state.ids.insert(id.to_string());
        log::info!("network: attached {id} as {address} ({host_veth})");
        Ok(Attachment {
            id: id.to_string(),
            address,
            host_veth,
            ports: ports.to_vec(),
        })
    }

    /// Rewrites the DNAT chains from the published ports.
    fn sync_dnat(&self, state: &mut State) -> Result<(), NetworkError> {
        let rules: Vec<Dnat> = state
            .published
            .iter()
            .map(|(&(l4proto, host_port), p)| Dnat {
                l4proto,
                host_port,
                address: p.address,
                port: p.port,
            })
            .collect();
        apply(&mut state.nft, |b| b.replace_dnat(&rules))
    }

    /// Removes the attachment's DNAT rules and host veth and frees its
    /// address. A veth already gone (the container's namespace vanished
    /// and took the pair with it) is not an error; detaching twice is not
    /// either. If the kernel refuses the new DNAT rules, the veth is still
    /// removed but the ports and the address stay taken, and detaching
    /// again retries.
    pub fn detach(&self, attachment: &Attachment) -> Result<(), NetworkError> {
        let mut state = self.lock();
        let id = attachment.id.as_str();
        let removed: Vec<_> = state
            .published
            .iter()
            .filter(|(_, p)| p.id == id)
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        state.published.retain(|_, p| p.id != id);
        let dnat = if removed.is_empty() {
            Ok(())
        } else {
            let r = self.sync_dnat(&mut state);
            if r.is_err() {
                // Kept, so that detaching again retries the rewrite.
                state.published.extend(removed);
            }
            r
        };
        let veth = state.rtnl.delete_link(&attachment.host_veth);
        // While the kernel may still hold DNAT rules to the address, it is
        // not handed out again (the next successful rewrite drops them).
        if dnat.is_ok() && state.ids.remove(id) {
            state.used.remove(&attachment.address);
        }
        match (&dnat, &veth) {
            (Ok(_), Ok(_)) => log::info!("network: detached {id}"),
            _ => log::warn!("network: detaching {id} left something behind"),
        }
        dnat?;
        veth.map(|_| ())
    }
}

/// Configures the container's side from inside its namespace.
///
/// A dedicated short-lived thread enters the namespace with
/// setns(CLONE_NEWNET), which changes only that thread, opens an
/// rtnetlink socket there and exits when done: no other thread ever runs
/// in the container's namespace, and nothing has to switch back (a
/// failed switch back would leave a PID 1 thread in a container's
/// namespace).
fn configure_inside(
    netns: File,
    pid: i32,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetworkError> {
    let worker = std::thread::Builder::new()
        .name("atoll-netns".into())
        .spawn(move || -> Result<(), NetworkError> {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetworkError::Setns { pid, source })?;
            let mut rtnl = Rtnl::open()?;
            let links = rtnl.links()?;
            let find = |name: &str| {
                links
                    .iter()
                    .find(|l| l.name == name)
                    .map(|l| l.index)
                    .ok_or_else(|| NetworkError::Netlink {
                        what: format!("find {name} in the namespace of process {pid}"),
                        source: io::ErrorKind::NotFound.into(),
                    })
            };
            let lo = find("lo")?;
            let eth = find(CONTAINER_IF)?;
            rtnl.set_up(lo, "lo")?;
            rtnl.add_address(eth, CONTAINER_IF, address, prefix)?;
            rtnl.set_up(eth, CONTAINER_IF)?;
            rtnl.add_default_route(eth, CONTAINER_IF, gateway)
        })
        .map_err(|_| NetworkError::Thread { pid })?;
    worker.join().map_err(|_| NetworkError::Thread { pid })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_veth_name("web");
        let b = host_veth_name("db");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("ve-"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("web"));
    }

    #[test]
    fn default_config() {
        let c = BridgeConfig::default();
        assert_eq!(c.name, "atoll0");
        assert_eq!(c.subnet.to_string(), "10.88.0.0/16");
    }

    #[test]
    fn bridge_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Bridge>();
    }
}
