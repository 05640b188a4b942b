//! The network manager against a real DHCP server: dnsmasq in one network
//! namespace, the manager (re-running this test binary) in another, joined
//! by a veth pair. Nothing touches the host's own network.
//!
//! Needs root and dnsmasq (Debian `dnsmasq-base`):
//! `cargo test -p atoll-init --lib net::peer_tests -- --ignored --nocapture`

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::api::NetStatus;

use super::*;
use crate::stage2::testutil::TempDir;

/// Set in the child that runs the manager inside the client namespace.
const INNER: &str = "ATOLL_NET_PEER_TEST_DIR";
const TEST: &str = "net::peer_tests::dhcp_against_dnsmasq";

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the namespaces (and with them the veth pair) and stops dnsmasq.
struct Cleanup {
    namespaces: Vec<String>,
    dnsmasq: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
#[ignore = "needs root and dnsmasq (Debian dnsmasq-base); run with --ignored"]
fn dhcp_against_dnsmasq() {
    if let Some(dir) = std::env::var_os(INNER) {
        return inner(Path::new(&dir));
    }
    let id = std::process::id();
    let (cns, sns) = (format!("atoll-c{id}"), format!("atoll-s{id}"));
    let (cif, sif) = (format!("vc{id}"), format!("vs{id}"));
    let mut cleanup = Cleanup {
        namespaces: vec![cns.clone(), sns.clone()],
        dnsmasq: None,
    };
    run(&["ip", "netns", "add", &cns]);
    run(&["ip", "netns", "add", &sns]);
    run(&[
        "ip", "link", "add", &cif, "type", "veth", "peer", "name", &sif,
    ]);
    run(&["ip", "link", "set", &cif, "netns", &cns]);
    run(&["ip", "link", "set", &sif, "netns", &sns]);
    run(&[
        "ip",
        "-n",
        &sns,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        &sif,
    ]);
    run(&["ip", "-n", &sns, "link", "set", &sif, "up"]);

    let dir = TempDir::new("dhcp-peer");
    let leases = dir.path().join("dnsmasq.leases");
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &sns,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
        ])
        .args([
            "--port=0",
            "--bind-interfaces",
            "--no-ping",
            "--dhcp-authoritative",
        ])
        .arg(format!("--interface={sif}"))
        .arg("--user=root")
        .arg("--dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,1h")
        .arg("--dhcp-option=option:router,192.168.77.1")
        .arg("--dhcp-option=option:dns-server,192.168.77.53")
        .arg("--dhcp-option=option:domain-name,atoll.test")
        .arg("--dhcp-option=option:ntp-server,192.168.77.123")
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg("--log-dhcp")
        .arg(format!(
            "--log-facility={}",
            dir.path().join("dnsmasq.log").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dnsmasq");
    cleanup.dnsmasq = Some(dnsmasq);
    std::thread::sleep(Duration::from_millis(300));

    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &cns])
        .arg(exe)
        .args([
            "--exact",
            TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(dir.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the manager in {cns} failed:\n{text}\ndnsmasq:\n{log}"
    );
    assert!(text.contains("1 passed"), "{text}");
    // Both leases were released: dnsmasq forgot them.
    let mut left = String::new();
    for _ in 0..20 {
        left = std::fs::read_to_string(&leases).unwrap_or_default();
        if !left.contains("192.168.77.") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !left.contains("192.168.77."),
        "leases left: {left}\ndnsmasq:\n{log}"
    );
    drop(cleanup);
}

fn plan(dir: &Path) -> NetPlan {
    NetPlan {
        interfaces: vec![InterfacePlan::dhcp(LinkMatch::Name("vc*".into()))],
        dhcp_default: false,
        hostname: Some("atoll-test".into()),
        wait: Duration::from_secs(5),
        resolv_conf: dir.join("resolv.conf"),
        lease_dir: Some(dir.join("leases")),
        ..Default::default()
    }
}

/// One manager run: a lease, the address, routes and resolv.conf in
/// place; then the release takes them away again.
async fn one_run(dir: &Path, want: Option<Ipv4Addr>) -> Ipv4Addr {
    let status = Arc::new(Mutex::new(NetStatus::default()));
    let h = start(plan(dir), status.clone());
    tokio::time::timeout(Duration::from_secs(6), h.configured())
        .await
        .expect("configured");
    h.refresh().await;
    let s = status.lock().unwrap().clone();
    let i = s
        .interfaces
        .iter()
        .find(|i| i.name.starts_with("vc"))
        .expect("the veth in the status");
    let lease = i
        .lease
        .clone()
        .unwrap_or_else(|| panic!("no lease: {s:#?}"));
    println!("{}", summary_line(i));
    let addr: Ipv4Addr = lease.address.split('/').next().unwrap().parse().unwrap();
    if let Some(w) = want {
        assert_eq!(addr, w, "INIT-REBOOT got the address it asked for");
    }
    assert!(lease.address.ends_with("/24"), "{lease:?}");
    assert_eq!(lease.server, "192.168.77.1");
    assert_eq!(lease.gateway.as_deref(), Some("192.168.77.1"));
    assert!(
        lease.expires_in_s > 3500 && lease.expires_in_s <= 3600,
        "{lease:?}"
    );
    assert!(lease.obtained_in_ms < 1000, "{lease:?}");
    assert!(i.addresses.contains(&lease.address), "{i:?}");
    let default = format!(
        "default via 192.168.77.1 dev {} proto dhcp src {addr} metric 1024",
        i.name
    );
    assert!(s.routes.contains(&default), "{:#?}", s.routes);
    assert_eq!(s.dns, ["192.168.77.53"]);
    assert_eq!(s.search, ["atoll.test"]);
    let resolv = std::fs::read_to_string(dir.join("resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 192.168.77.53\nsearch atoll.test\n"),
        "{resolv}"
    );
    let saved = dir.join("leases").join(format!("{}.json", i.name));
    assert!(saved.exists(), "the lease is kept for the next boot");

    // No NTP server answers there: "time set" still comes, with the error.
    tokio::time::timeout(Duration::from_secs(5), h.time_set())
        .await
        .expect("time set");
    let ntp = status.lock().unwrap().ntp.clone();
    assert_eq!(ntp.servers, ["192.168.77.123"]);
    assert!(ntp.error.is_some() && ntp.synced_from.is_none(), "{ntp:?}");

    h.shutdown().await;
    let s = status.lock().unwrap().clone();
    let i = s
        .interfaces
        .iter()
        .find(|i| i.name.starts_with("vc"))
        .unwrap();
    assert!(i.lease.is_none(), "{i:?}");
    assert!(!i.addresses.contains(&lease.address), "released: {i:?}");
    assert!(
        !s.routes.iter().any(|r| r.starts_with("default")),
        "{:?}",
        s.routes
    );
    assert!(!saved.exists());
    addr
}

fn inner(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // DISCOVER, OFFER, REQUEST, ACK.
        let first = one_run(dir, None).await;
        // INIT-REBOOT: a lease kept from an earlier boot is asked for again.
        let want = Ipv4Addr::new(192, 168, 77, 57);
        let leases = dir.join("leases");
        std::fs::create_dir_all(&leases).unwrap();
        let name = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("vc"))
            .unwrap();
        std::fs::write(
            leases.join(format!("{name}.json")),
            format!(r#"{{"address":"{want}","server":"192.168.77.1"}}"#),
        )
        .unwrap();
        let second = one_run(dir, Some(want)).await;
        assert_ne!(first, Ipv4Addr::UNSPECIFIED);
        assert_eq!(second, want);
    });
}
