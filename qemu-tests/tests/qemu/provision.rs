//! Networking and provisioning in real guests (docs/config.md,
//! docs/networking.md): DHCP from QEMU user networking and a TCP request to
//! a server on the host's loopback through guestfwd; the config from fw_cfg
//! (static addresses), a CIDATA volume (vfat with `#cloud-config`, iso9660
//! with gzip), and an EC2-style metadata service; a broken config keeps the
//! last good one.

use std::error::Error;
use std::io::Write;
use std::net::Ipv4Addr;

use atoll_common::api::{ConfigReport, ConnectReport, NetStatus, Request, Response};
use atoll_common::layout::FW_CFG_CONFIG;
use qemu_tests::cidata::Cidata;
use qemu_tests::disk;
use qemu_tests::servers::{EchoServer, MetadataServer};
use qemu_tests::vm::{DiskFormat, NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// Where the echo server appears to the guest.
const ECHO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const ECHO_PORT: u16 = 8080;

fn config_show(vm: &Vm) -> Result<ConfigReport, VmError> {
    for r in vm.api(&Request::ConfigShow)? {
        if let Response::Config(c) = r {
            return Ok(*c);
        }
    }
    Err(vm.fail("config show gave no config"))
}

fn net_status(vm: &Vm) -> Result<NetStatus, VmError> {
    for r in vm.api(&Request::NetStatus)? {
        if let Response::Net(n) = r {
            return Ok(*n);
        }
    }
    Err(vm.fail("net status gave no status"))
}

fn connect(vm: &Vm, addr: &str, send: &str) -> Result<ConnectReport, VmError> {
    let req = Request::NetConnect {
        addr: addr.into(),
        send: Some(send.into()),
        timeout_ms: Some(10_000),
    };
    for r in vm.api(&req)? {
        if let Response::Connect(c) = r {
            return Ok(c);
        }
    }
    Err(vm.fail("net connect gave no report"))
}

/// The guest reaches the echo server on the host's loopback.
fn check_echo(vm: &Vm, echo: &EchoServer, text: &str) -> Result<(), VmError> {
    let r = connect(vm, &format!("{ECHO_IP}:{ECHO_PORT}"), &format!("{text}\n"))?;
    vm.check(
        r.connected && r.received == format!("atoll-test-echo: {text}\n"),
        || format!("the guest's request through guestfwd failed: {r:?}"),
    )?;
    vm.check(echo.lines().iter().any(|l| l == text), || {
        format!("the echo server did not get {text:?}: {:?}", echo.lines())
    })
}

fn echo_net(echo: &EchoServer) -> NetUser {
    NetUser::new().guestfwd(ECHO_IP, ECHO_PORT, echo.port())
}

/// The interface with `addr` in `net status`.
fn has_address(n: &NetStatus, method: &str, addr: &str) -> bool {
    n.interfaces
        .iter()
        .any(|i| i.method == method && i.addresses.iter().any(|a| a == addr))
}

#[test]
fn dhcp_lease_then_a_tcp_request_to_the_host_through_guestfwd() -> TestResult {
    let echo = EchoServer::start()?;
    let vm = Vm::builder("dhcp_and_guestfwd")
        .net_user(echo_net(&echo))
        .start()?;
    vm.wait_for("atoll: net: eth0 dhcp 10.0.2.15/24", BOOT_TIMEOUT)?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let n = net_status(&vm)?;
    vm.check(has_address(&n, "dhcp", "10.0.2.15/24"), || {
        format!("no DHCP address 10.0.2.15/24: {n:?}")
    })?;
    let eth0 = n.interfaces.iter().find(|i| i.name == "eth0");
    let lease = eth0.and_then(|i| i.lease.clone());
    // restrict=on: slirp's DHCP offers no router and no DNS server.
    vm.check(
        lease.as_ref().is_some_and(|l| l.server == "10.0.2.2"),
        || format!("eth0's lease is not from 10.0.2.2: {lease:?}"),
    )?;
    check_echo(&vm, &echo, "hello from the host test")?;
    // No config anywhere: the built-in default, said so.
    let c = config_show(&vm)?;
    vm.check(c.source == "built-in default", || {
        format!("config source {:?}, not the built-in default", c.source)
    })?;
    // The boot time split names the network step.
    let s = vm.status()?;
    vm.check(
        s.boot_times
            .steps
            .iter()
            .any(|st| st.name.ends_with("network configured")),
        || format!("no network step in {:?}", s.boot_times.steps),
    )?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

#[test]
fn static_addresses_from_fw_cfg() -> TestResult {
    let echo = EchoServer::start()?;
    let config = r#"
hostname = "static-host"

[network]
dhcp_default = false

[[network.interfaces]]
mac = "52:54:00:12:34:56"
addresses = ["10.0.2.20/24"]
gateway4 = "10.0.2.2"
dns = ["10.0.2.3"]
"#;
    let vm = Vm::builder("static_from_fw_cfg")
        .net_user(echo_net(&echo).mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        .fw_cfg_string(FW_CFG_CONFIG, config)
        .start()?;
    vm.wait_for(
        "atoll: config: using fw_cfg opt/dev.atoll/config",
        BOOT_TIMEOUT,
    )?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let n = net_status(&vm)?;
    vm.check(has_address(&n, "static", "10.0.2.20/24"), || {
        format!("no static 10.0.2.20/24: {n:?}")
    })?;
    vm.check(n.interfaces.iter().all(|i| i.lease.is_none()), || {
        format!("a DHCP lease despite dhcp_default = false: {n:?}")
    })?;
    check_echo(&vm, &echo, "static")?;
    let s = vm.status()?;
    vm.check(s.hostname == "static-host", || {
        format!("hostname {:?}, not static-host", s.hostname)
    })?;
    let c = config_show(&vm)?;
    vm.check(
        c.state == "applied" && c.toml.contains("static-host"),
        || format!("config show: {c:?}"),
    )?;
    Ok(())
}

const CLOUD_CONFIG: &str = "#cloud-config
hostname: cidata-host
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJxVm9uZXkgYXRvbGwgdGVzdCBrZXkgMDAwMDAw test@atoll
write_files:
  - path: /var/lib/provisioned/hello.txt
    content: hello from cloud-config
    permissions: '0640'
";

/// Boots with `seed` as a second disk (/dev/vdb) and waits for ready,
/// checking the config came from it.
fn boot_with_seed(name: &str, seed: &std::path::Path) -> Result<Vm, VmError> {
    let vm = Vm::builder(name)
        .extra_disk(seed, DiskFormat::Raw)
        .start()?;
    vm.wait_for(
        "atoll: config: using CIDATA /dev/vdb user-data",
        BOOT_TIMEOUT,
    )?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    Ok(vm)
}

#[test]
fn cloud_config_from_a_vfat_cidata_volume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let seed = Cidata::vfat(
        dir.path(),
        &[
            ("user-data", CLOUD_CONFIG.as_bytes()),
            ("meta-data", b"instance-id: i-1\n"),
        ],
    )?;
    let vm = boot_with_seed("cidata_vfat_cloud_config", &seed)?;
    let s = vm.status()?;
    vm.check(s.hostname == "cidata-host", || {
        format!("hostname {:?}, not cidata-host", s.hostname)
    })?;
    let c = config_show(&vm)?;
    vm.check(
        c.toml.contains("/var/lib/provisioned/hello.txt") && c.toml.contains("ssh-ed25519"),
        || format!("the cloud-config keys are not in the config in force: {c:?}"),
    )?;
    let logs = vm.logs(0)?;
    vm.check(
        logs.iter()
            .any(|r| r.message == "wrote /var/lib/provisioned/hello.txt"),
        || "no log line for the written file".into(),
    )?;
    Ok(())
}

#[test]
fn gzip_toml_from_an_iso9660_cidata_volume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"hostname = \"iso-host\"\n")?;
    let user_data = gz.finish()?;
    let seed = Cidata::iso(
        dir.path(),
        &[
            ("user-data", &user_data),
            ("meta-data", b"instance-id: i-2\n"),
        ],
    )?;
    let vm = boot_with_seed("cidata_iso_gzip", &seed)?;
    let s = vm.status()?;
    vm.check(s.hostname == "iso-host", || {
        format!("hostname {:?}, not iso-host", s.hostname)
    })?;
    Ok(())
}

#[test]
fn config_from_an_ec2_metadata_service() -> TestResult {
    let md = MetadataServer::ec2(b"hostname = \"ec2-host\"\n".to_vec())?;
    let vm = Vm::builder("metadata_ec2")
        .net_user(md.net_user())
        .smbios_type1("Amazon EC2", "t3.micro")
        .start()?;
    vm.wait_for(
        "atoll: config: using metadata http://169.254.169.254 (ec2)",
        BOOT_TIMEOUT,
    )?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let s = vm.status()?;
    vm.check(s.hostname == "ec2-host", || {
        format!("hostname {:?}, not ec2-host", s.hostname)
    })?;
    let reqs = md.requests();
    let token = reqs
        .iter()
        .position(|r| r.method == "PUT" && r.path_only() == "/latest/api/token");
    let data = reqs
        .iter()
        .position(|r| r.method == "GET" && r.path_only() == "/latest/user-data" && r.status == 200);
    vm.check(matches!((token, data), (Some(t), Some(d)) if t < d), || {
        format!("no IMDSv2 token flow: {reqs:?}")
    })?;
    let n = net_status(&vm)?;
    // slirp hands out an address in the link-local /16.
    let leased = n.interfaces.iter().any(|i| {
        i.method == "dhcp"
            && i.addresses
                .iter()
                .any(|a| a.starts_with("169.254.") && a.ends_with("/16"))
    });
    vm.check(leased, || {
        format!("no DHCP address on the link-local network: {n:?}")
    })?;
    Ok(())
}

/// Boots `disk` (an overlay kept between boots) with `config` in fw_cfg,
/// waits for ready and returns the running VM.
fn boot_with(name: &str, disk: &std::path::Path, config: &str) -> Result<Vm, VmError> {
    let vm = Vm::builder(name)
        .disk_file(disk, DiskFormat::Qcow2)
        .fw_cfg_string(FW_CFG_CONFIG, config)
        .start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    Ok(vm)
}

fn stop(vm: Vm) -> Result<(), VmError> {
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

#[test]
fn a_broken_config_keeps_the_last_good_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let overlay = dir.path().join("disk.qcow2");
    disk::create_overlay(&disk::base_image()?, &overlay, None)?;

    // 1. A good config: applied and kept.
    let vm = boot_with(
        "broken_config_1_good",
        &overlay,
        "hostname = \"good-host\"\n",
    )?;
    let c = config_show(&vm)?;
    vm.check(c.state == "applied", || format!("first boot: {c:?}"))?;
    stop(vm)?;

    // 2-4. Each broken config is reported with source, line and key, and
    // the last good one stays in force.
    let broken = [
        (
            "unknown_key",
            "hostname = \"bad-host\"\n[network]\nnot_a_key = 1\n",
            ":3:",
            "network.not_a_key",
        ),
        (
            "bad_toml",
            "hostname = \"bad-host\"\nthis is not toml\n",
            ":2:",
            "",
        ),
        (
            "wrong_type",
            "hostname = \"bad-host\"\n[network]\ndhcp_default = \"yes\"\n",
            ":3:",
            "network.dhcp_default",
        ),
    ];
    for (what, config, line, key) in broken {
        let vm = boot_with(&format!("broken_config_{what}"), &overlay, config)?;
        // The error came before ready.
        let want = format!("atoll: config: ERROR: fw_cfg {FW_CFG_CONFIG}{line}");
        let m = vm.console_matches(want.as_str());
        vm.check(m.iter().any(|m| m.line.contains(key)), || {
            format!("{what}: no console line {want:?} naming {key:?}: {m:?}")
        })?;
        let c = config_show(&vm)?;
        vm.check(
            c.source.starts_with("last good config (from fw_cfg")
                && c.state.starts_with("fallback")
                && !c.errors.is_empty(),
            || format!("{what}: config show: {c:?}"),
        )?;
        let s = vm.status()?;
        vm.check(s.hostname == "good-host", || {
            format!(
                "{what}: hostname {:?}, not the last good good-host",
                s.hostname
            )
        })?;
        stop(vm)?;
    }
    Ok(())
}
