//! Bridge networking for real, as root, in throwaway network namespaces:
//! a "host" namespace where the bridge is set up, "containers" attached
//! to it, and an "outside" namespace joined to the host by a veth pair
//! (host 192.0.2.1, outside 192.0.2.2), standing for the world.
//!
//! Every namespace belongs to an `unshare -n sleep` process killed when
//! the test ends, so nothing touches the machine's own network. Skipped
//! (with a message) when not root or when iproute2/util-linux are missing.
//!
//! cargo test -p atoll-runtime --test network -- --test-threads=1

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use atoll_common::config::workload::{PortMapping, Protocol};
use atoll_runtime::network::{host_veth_name, Bridge, BridgeConfig, NetworkError};

const HOST_OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const WAIT: Duration = Duration::from_secs(5);

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (network namespaces, bridges, nftables)");
        return false;
    }
    for tool in ["ip", "unshare", "nsenter", "sleep"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("skipped: `{tool}` not found");
            return false;
        }
    }
    true
}

/// A process alone in a new network namespace.
struct Netns {
    child: Child,
}

impl Netns {
    fn new() -> Netns {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "120"])
            .spawn()
            .expect("spawning unshare -n sleep");
        let pid = child.id();
        let deadline = Instant::now() + WAIT;
        // The namespace exists once unshare has exec'd sleep.
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(Instant::now() < deadline, "unshare -n sleep did not start");
            thread::sleep(Duration::from_millis(10));
        }
        Netns { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs `f` on a thread inside this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid())).expect("open the netns");
        thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// `ip ARGS` in this namespace; its stdout, or None if it failed.
    fn ip(&self, args: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "ip"])
            .args(args.split_whitespace())
            .output()
            .expect("running nsenter ip");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn must_ip(&self, args: &str) -> String {
        self.ip(args)
            .unwrap_or_else(|| panic!("ip {args} failed in netns of {}", self.pid()))
    }

    /// `nft list table ip atoll` here, when nft is installed (a cross-check
    /// only; the code under test never runs nft).
    fn nft_table(&self) -> Option<String> {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &self.pid().to_string(),
                "-n",
                "nft",
                "list",
                "table",
                "ip",
                "atoll",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host namespace with an outside world on 192.0.2.0/24.
struct World {
    host: Netns,
    outside: Netns,
}

impl World {
    fn new() -> World {
        let host = Netns::new();
        let outside = Netns::new();
        host.must_ip(&format!(
            "link add out0 type veth peer name eth1 netns {}",
            outside.pid()
        ));
        host.must_ip(&format!("addr add {HOST_OUT}/24 dev out0"));
        host.must_ip("link set out0 up");
        host.must_ip("link set lo up");
        outside.must_ip(&format!("addr add {OUTSIDE}/24 dev eth1"));
        outside.must_ip("link set eth1 up");
        outside.must_ip("link set lo up");
        World { host, outside }
    }

    fn setup(&self) -> Result<Bridge, NetworkError> {
        self.host.run(|| Bridge::setup(&BridgeConfig::default()))
    }
}

fn tcp(host: u16, container: u16) -> PortMapping {
    PortMapping {
        host,
        container,
        protocol: Protocol::Tcp,
    }
}

/// A TCP listener on `port` in `ns`, accepting one connection within
/// WAIT; answers "ok" and gives back the peer's address.
fn listen(ns: &Netns, port: u16) -> (mpsc::Receiver<Option<SocketAddr>>, impl Drop) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let nsfile = File::open(format!("/proc/{}/ns/net", ns.pid())).expect("open the netns");
    let handle = thread::spawn(move || {
        nix::sched::setns(nsfile.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        // The last connection on this port may still be closing (its
        // peer's FIN not in yet): wait for the port rather than fail.
        let bind_until = Instant::now() + WAIT;
        let l = loop {
            match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < bind_until =>
                {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("bind listener on {port}: {e}"),
            }
        };
        l.set_nonblocking(true).expect("nonblocking listener");
        ready_tx.send(()).expect("listener ready");
        let deadline = Instant::now() + WAIT;
        let peer = loop {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).expect("blocking stream");
                    let _ = s.write_all(b"ok");
                    break Some(peer);
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => break None,
            }
        };
        let _ = tx.send(peer);
    });
    ready_rx.recv_timeout(WAIT).expect("listener did not start");
    struct Joiner(Option<thread::JoinHandle<()>>);
    impl Drop for Joiner {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                let _ = h.join();
            }
        }
    }
    (rx, Joiner(Some(handle)))
}

/// Connects from `ns` to `to` and reads the listener's "ok".
fn connect(ns: &Netns, to: SocketAddrV4) -> Result<(), String> {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .map_err(|e| format!("connect to {to}: {e}"))?;
        s.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf)
            .map_err(|e| format!("read from {to}: {e}"))?;
        if &buf == b"ok" {
            Ok(())
        } else {
            Err(format!("{to} answered {buf:?}"))
        }
    })
}

/// A connection from `from` to `to` reaches a listener on `port` in `at`;
/// returns the peer address the listener saw.
fn reach(from: &Netns, to: SocketAddrV4, at: &Netns, port: u16) -> Ipv4Addr {
    let (rx, _join) = listen(at, port);
    connect(from, to).unwrap_or_else(|e| panic!("{e}"));
    match rx.recv_timeout(WAIT * 2).expect("listener result") {
        Some(SocketAddr::V4(a)) => *a.ip(),
        other => panic!("listener on {port} saw {other:?}"),
    }
}

#[test]
fn container_gets_address_route_nat_and_published_port() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let bridge = w.setup().expect("bridge setup");
    assert_eq!(bridge.gateway(), Ipv4Addr::new(10, 88, 0, 1));
    let br = w.host.must_ip("-4 addr show dev atoll0");
    assert!(br.contains("inet 10.88.0.1/16"), "bridge address: {br}");
    let forward = w
        .host
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"));
    assert_eq!(forward.unwrap().trim(), "1");

    let c1 = Netns::new();
    let att = bridge
        .attach("c1", c1.pid(), &[tcp(8080, 80)])
        .expect("attach c1");
    assert_eq!(att.address, Ipv4Addr::new(10, 88, 0, 2));
    assert_eq!(att.host_veth, host_veth_name("c1"));
    assert!(att.host_veth.len() <= 15);

    // The container's side: address, up, default route, lo up.
    let addr = c1.must_ip("-4 addr show dev eth0");
    assert!(
        addr.contains("inet 10.88.0.2/16"),
        "container address: {addr}"
    );
    assert!(addr.contains("UP"), "eth0 not up: {addr}");
    let route = c1.must_ip("-4 route show");
    assert!(
        route.contains("default via 10.88.0.1 dev eth0"),
        "container routes: {route}"
    );
    assert!(c1.must_ip("link show lo").contains("UP"));
    // The host's side: the veth is a port of the bridge, up.
    let veth = w.host.must_ip(&format!("link show dev {}", att.host_veth));
    assert!(veth.contains("master atoll0"), "host veth: {veth}");
    assert!(veth.contains("state UP"), "host veth: {veth}");

    // Masquerade: the outside sees the host's address.
    let seen = reach(&c1, SocketAddrV4::new(OUTSIDE, 9000), &w.outside, 9000);
    assert_eq!(seen, HOST_OUT, "masquerade");

    // Published port from the outside: the container sees the real client.
    let seen = reach(&w.outside, SocketAddrV4::new(HOST_OUT, 8080), &c1, 80);
    assert_eq!(seen, OUTSIDE, "DNAT from outside");

    // From the host itself, to its own address and to 127.0.0.1.
    reach(&w.host, SocketAddrV4::new(HOST_OUT, 8080), &c1, 80);
    reach(
        &w.host,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080),
        &c1,
        80,
    );

    // From another container through the host's address (hairpin).
    let c2 = Netns::new();
    let udp = PortMapping {
        host: 5300,
        container: 53,
        protocol: Protocol::Udp,
    };
    let att2 = bridge.attach("c2", c2.pid(), &[udp]).expect("attach c2");
    assert_eq!(att2.address, Ipv4Addr::new(10, 88, 0, 3));
    // A published UDP port, answered back through the NAT.
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            c2.run(|| {
                let sock = UdpSocket::bind(("0.0.0.0", 53)).unwrap();
                sock.set_read_timeout(Some(WAIT)).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 16];
                let (n, peer) = sock.recv_from(&mut buf).expect("datagram in container");
                sock.send_to(&buf[..n], peer).unwrap();
                peer
            })
        });
        rx.recv_timeout(WAIT).unwrap();
        let answer = w.outside.run(|| {
            let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            sock.set_read_timeout(Some(WAIT)).unwrap();
            sock.send_to(b"ping", (HOST_OUT, 5300)).unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = sock.recv_from(&mut buf).expect("UDP answer");
            (buf[..n].to_vec(), from)
        });
        assert_eq!(answer.0, b"ping");
        assert_eq!(answer.1, SocketAddr::from((HOST_OUT, 5300)));
    });
    reach(&c2, SocketAddrV4::new(HOST_OUT, 8080), &c1, 80);
    // And container to container directly on the bridge.
    let seen = reach(&c2, SocketAddrV4::new(att.address, 80), &c1, 80);
    assert_eq!(seen, att2.address);

    if let Some(table) = w.host.nft_table() {
        eprintln!("{table}");
        assert!(table.contains("dnat to 10.88.0.2:80"), "nft: {table}");
        assert!(table.contains("masquerade"), "nft: {table}");
    }
    bridge.detach(&att2).expect("detach c2");
    bridge.detach(&att).expect("detach c1");
}

#[test]
fn second_attach_duplicate_port_and_detach() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let bridge = w.setup().expect("bridge setup");
    let c1 = Netns::new();
    let c2 = Netns::new();
    let c3 = Netns::new();
    let a1 = bridge.attach("c1", c1.pid(), &[tcp(8080, 80)]).unwrap();
    let a2 = bridge
        .attach("c2", c2.pid(), &[tcp(8081, 80)])
        .expect("attach c2");
    assert_ne!(a1.address, a2.address);

    // The same host port again is refused, and leaves nothing behind.
    let err = bridge
        .attach("c3", c3.pid(), &[tcp(9090, 90), tcp(8080, 80)])
        .unwrap_err();
    assert!(
        matches!(err, NetworkError::PortInUse { port: 8080, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("container c1"), "{err}");
    assert!(w
        .host
        .ip(&format!("link show dev {}", host_veth_name("c3")))
        .is_none());
    assert!(c3.ip("link show dev eth0").is_none());
    // The same id twice is refused.
    assert!(matches!(
        bridge.attach("c1", c3.pid(), &[]),
        Err(NetworkError::Id(_))
    ));
    // A UDP port of the same number is another port.
    let a3 = bridge
        .attach(
            "c3",
            c3.pid(),
            &[PortMapping {
                host: 8080,
                container: 53,
                protocol: Protocol::Udp,
            }],
        )
        .expect("attach c3 with udp 8080");
    assert_eq!(a3.address, Ipv4Addr::new(10, 88, 0, 4));

    // A failing step leaves nothing behind: here the container already
    // has an eth0, so the pair cannot be made.
    let c5 = Netns::new();
    c5.must_ip("link add eth0 type veth peer name eth9");
    let err = bridge.attach("c5", c5.pid(), &[tcp(7070, 70)]).unwrap_err();
    assert!(err.to_string().contains("veth pair"), "{err}");
    assert!(w
        .host
        .ip(&format!("link show dev {}", host_veth_name("c5")))
        .is_none());
    if let Some(table) = w.host.nft_table() {
        assert!(!table.contains("7070"), "rule of a failed attach: {table}");
    }
    // A namespace that does not exist fails cleanly.
    let err = bridge.attach("ghost", 999_999_999, &[]).unwrap_err();
    assert!(matches!(err, NetworkError::Netns { .. }), "{err}");

    // Detach: veth and rules gone, the port and address free again.
    bridge.detach(&a1).expect("detach c1");
    assert!(w
        .host
        .ip(&format!("link show dev {}", a1.host_veth))
        .is_none());
    assert!(c1.ip("link show dev eth0").is_none());
    if let Some(table) = w.host.nft_table() {
        assert!(!table.contains("10.88.0.2"), "rules left: {table}");
        assert!(
            table.contains("dnat to 10.88.0.3:80"),
            "c2's rule lost: {table}"
        );
    }
    let err = connect(&w.outside, SocketAddrV4::new(HOST_OUT, 8080));
    assert!(err.is_err(), "8080 still forwarded after detach");
    let c4 = Netns::new();
    let a4 = bridge
        .attach("c4", c4.pid(), &[tcp(8080, 80)])
        .expect("8080 free again");
    assert_eq!(a4.address, a1.address, "address reused");
    reach(&w.outside, SocketAddrV4::new(HOST_OUT, 8080), &c4, 80);

    // A container whose namespace is gone can still be detached.
    drop(c2);
    let deadline = Instant::now() + WAIT;
    while w
        .host
        .ip(&format!("link show dev {}", a2.host_veth))
        .is_some()
    {
        assert!(Instant::now() < deadline, "veth of a dead netns stayed");
        thread::sleep(Duration::from_millis(20));
    }
    bridge.detach(&a2).expect("detach after the netns vanished");
    bridge.detach(&a2).expect("detach twice");
    bridge.detach(&a3).unwrap();
    bridge.detach(&a4).unwrap();
}

#[test]
fn setup_twice_is_idempotent() {
    if !can_run() {
        return;
    }
    let w = World::new();
    let first = w.setup().expect("first setup");
    let c1 = Netns::new();
    let a1 = first.attach("c1", c1.pid(), &[tcp(8080, 80)]).unwrap();
    let table_before = w.host.nft_table();

    // A second run (PID 1 restarted): same bridge, leftovers cleared.
    let second = w.setup().expect("second setup");
    let addrs = w.host.must_ip("-4 addr show dev atoll0");
    assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
    assert!(addrs.contains("inet 10.88.0.1/16"));
    assert_eq!(
        w.host
            .must_ip("link show type bridge")
            .matches("atoll0")
            .count(),
        1
    );
    assert!(
        w.host
            .ip(&format!("link show dev {}", a1.host_veth))
            .is_none(),
        "leftover veth kept"
    );
    if let (Some(before), Some(after)) = (table_before, w.host.nft_table()) {
        assert!(before.contains("dnat to"), "{before}");
        assert!(!after.contains("dnat to"), "leftover rules: {after}");
        assert_eq!(after.matches("masquerade").count(), 3, "{after}");
    }
    // And it works as the first did.
    let c2 = Netns::new();
    let a2 = second.attach("c2", c2.pid(), &[tcp(8080, 80)]).unwrap();
    assert_eq!(a2.address, Ipv4Addr::new(10, 88, 0, 2));
    reach(&w.outside, SocketAddrV4::new(HOST_OUT, 8080), &c2, 80);
    second.detach(&a2).unwrap();
    drop(first);
}
