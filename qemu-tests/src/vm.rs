//! One QEMU guest: [`VmBuilder`] sets it up (firmware, disk, console, QMP
//! and the host API on virtio-serial, all in a private temp dir) and [`Vm`]
//! drives it (console waits, power button, API requests). QEMU is killed
//! when the [`Vm`] is dropped, and its console log is copied to the log
//! directory ([`log_dir`]) so a failed test leaves it behind.
//!
//! Every error of a running VM carries what was awaited and the last
//! [`TAIL_LINES`] console lines.
//!
//! By default the guest has no NIC (`-nodefaults`); [`VmBuilder::net_user`]
//! adds a virtio-net NIC on QEMU user networking ([`NetUser`]), with
//! guest→host TCP forwards to servers the test runs on the host loopback
//! (see [`crate::servers`]). [`VmBuilder::fw_cfg_string`],
//! [`VmBuilder::smbios_type1`] and [`VmBuilder::extra_disk`] give the guest
//! what its provisioning sources look for.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atoll_common::api::{LogRecord, Request, Response, Status};
use atoll_common::layout::{self, Slot};

use crate::api_client::{self, ApiError};
use crate::console::{Console, ConsoleError, Match, Pattern, WaitError};
use crate::disk::{self, DiskError};
use crate::qmp::{self, QmpError};

/// A generous bound for one boot to ready under TCG (5-8 s typically, more
/// when two guests and a build share the two cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// From a shutdown request to QEMU exiting.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// One host API exchange.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
/// One QMP command.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Console lines quoted in error messages.
pub const TAIL_LINES: usize = 40;

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// QEMU's machine type: the PCIe one (ICH9, Q35). Its DSDT hands the
/// kernel PCI interrupt routing (`_PRT`) as a ready table, where the older
/// `pc` machine (i440fx) builds 128 entries in an AML loop, which cost 79 ms
/// of guest time per PCI function with an interrupt under TCG
/// (docs/BENCHMARKS.md).
pub const MACHINE: &str = "q35";

/// The CPU model: everything TCG can emulate (SSSE3, AVX2, RDRAND, …), as
/// the x86-64 hosts Atoll runs on have. QEMU's default, `qemu64`, has
/// neither SSSE3 nor RDRAND, so the kernel hashes with its generic SHA-256
/// (module signatures, dm-verity) and seeds its entropy pool slowly.
pub const CPU: &str = "max";

/// Where console logs are kept: `$ATOLL_QEMU_LOGS`, or
/// `target/qemu-tests/logs` in the workspace.
pub fn log_dir() -> PathBuf {
    match std::env::var_os("ATOLL_QEMU_LOGS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => disk::workspace_root().join("target/qemu-tests/logs"),
    }
}

/// The last console lines, for error messages.
#[derive(Debug, Clone)]
pub struct ConsoleTail {
    pub vm: String,
    pub log: PathBuf,
    pub lines: String,
}

impl std::fmt::Display for ConsoleTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n--- last {TAIL_LINES} console lines of VM {} (whole log: {}) ---\n{}\n--- end of console ---",
            self.vm,
            self.log.display(),
            if self.lines.is_empty() {
                "(no console output)"
            } else {
                &self.lines
            }
        )
    }
}

#[derive(thiserror::Error)]
pub enum VmError {
    #[error("setting up the VM disk")]
    Disk(#[from] DiskError),
    #[error("cannot create a temporary directory for the VM")]
    TempDir(#[source] std::io::Error),
    #[error("cannot copy the UEFI variable store {from} to {to}")]
    Firmware {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid VM set-up: {0}")]
    Config(String),
    #[error("the {what} {path} given to the VM builder does not exist")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("cannot write {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the console")]
    Console(#[from] ConsoleError),
    #[error("timed out after {timeout:?} waiting for {awaited}{tail}")]
    Timeout {
        awaited: String,
        timeout: Duration,
        tail: Box<ConsoleTail>,
    },
    #[error("QEMU exited ({status}) while waiting for {awaited}{stderr}{tail}")]
    Exited {
        awaited: String,
        status: String,
        /// QEMU's own error output, if any.
        stderr: String,
        tail: Box<ConsoleTail>,
    },
    #[error("QMP {command} failed{tail}")]
    Qmp {
        command: String,
        tail: Box<ConsoleTail>,
        #[source]
        source: Box<QmpError>,
    },
    #[error("host API request failed{tail}")]
    Api {
        tail: Box<ConsoleTail>,
        #[source]
        source: Box<ApiError>,
    },
    #[error("{message}{tail}")]
    Check {
        message: String,
        tail: Box<ConsoleTail>,
    },
}

/// Debug shows the whole chain readably, so that `unwrap()` and tests
/// returning `Result<_, VmError>` print the console tail and every cause.
impl std::fmt::Debug for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            write!(f, "\ncaused by: {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// The boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default: GRUB from the MBR and BIOS-BOOT.
    #[default]
    Bios,
    /// OVMF through pflash: GRUB from `EFI/BOOT/BOOTX64.EFI` on the ESP.
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The VM's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSpec {
    /// A fresh qcow2 overlay in the VM's temp dir on a raw base image
    /// (`None` = [`disk::base_image`]), optionally grown to `size` bytes.
    Overlay {
        base: Option<PathBuf>,
        size: Option<u64>,
    },
    /// A prepared file used as it is (writes land in it).
    File { path: PathBuf, format: DiskFormat },
}

/// The cloud metadata service's address (EC2, OpenStack and others).
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// A guest→host TCP forward: connections the guest opens to
/// `guest_ip:guest_port` reach `127.0.0.1:host_port` on the host.
///
/// Each guest connection becomes its own host connection (QEMU's
/// `guestfwd=…-cmd:` form with a `bash` `/dev/tcp` relay), and the guest
/// sees the host side close. QEMU's plainer `guestfwd=…-tcp:HOST:PORT` form is
/// not used: it connects once when QEMU starts (QEMU fails to start if
/// nothing listens yet), every guest connection shares that one host
/// stream, and a host-side close never reaches the guest — after a
/// server's first `Connection: close` answer, later guest connections hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFwd {
    pub guest_ip: Ipv4Addr,
    pub guest_port: u16,
    pub host_port: u16,
}

impl GuestFwd {
    /// The `guestfwd=` value (without the key).
    fn arg(&self) -> String {
        // bash's stdin/stdout (and stderr) are the guest's connection: the
        // background cat copies guest→host, the foreground one host→guest;
        // when the host closes, the writer is killed and bash exits, which
        // closes the guest's connection. Errors must not reach the guest.
        format!(
            "tcp:{}:{}-cmd:bash -c 'exec 2>/dev/null 3<>/dev/tcp/127.0.0.1/{} || exit 1; cat <&0 >&3 & cat <&3; kill $!'",
            self.guest_ip, self.guest_port, self.host_port
        )
    }
}

/// QEMU user networking (slirp) for [`VmBuilder::net_user`]: the guest gets
/// a virtio-net NIC, DHCP and a gateway, and nothing beyond (`restrict=on`:
/// no route to the host or the outside, and no DNS answers) except the
/// [`GuestFwd`]s.
///
/// The default network is 10.0.2.0/24: guest 10.0.2.15 by DHCP, gateway
/// 10.0.2.2, DNS 10.0.2.3. A forward's guest address must lie inside the
/// network (slirp refuses it otherwise), so a forward to the metadata
/// address needs a link-local network: [`NetUser::metadata`] uses
/// 169.254.0.0/16, where the guest gets 169.254.0.15, gateway 169.254.0.2,
/// DNS 169.254.0.3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetUser {
    /// The network and prefix length (`net=`).
    pub net: Option<(Ipv4Addr, u8)>,
    /// The gateway's address (`host=`).
    pub host: Option<Ipv4Addr>,
    /// The DNS server's address (`dns=`).
    pub dns: Option<Ipv4Addr>,
    /// The first address DHCP hands out (`dhcpstart=`).
    pub dhcp_start: Option<Ipv4Addr>,
    pub guestfwds: Vec<GuestFwd>,
    /// TCP `(host port on 127.0.0.1, guest port)` pairs: the host's
    /// connections reach the guest's port (`hostfwd=`).
    pub hostfwds: Vec<(u16, u16)>,
    /// The NIC's MAC address (QEMU's default: 52:54:00:12:34:56).
    pub mac: Option<[u8; 6]>,
    /// Let the guest out through the host (`restrict=off`): a gateway and
    /// DNS, as an ordinary QEMU VM has. For `qemu-tests run` only; tests
    /// keep the guest in (the default).
    pub open: bool,
}

impl NetUser {
    /// QEMU's default network, 10.0.2.0/24, with no forwards.
    pub fn new() -> Self {
        Self::default()
    }

    /// 169.254.0.0/16 with [`METADATA_IP`]:80 forwarded to the host's
    /// `127.0.0.1:host_port` (a [`crate::servers::MetadataServer`]).
    pub fn metadata(host_port: u16) -> Self {
        Self::new()
            .net(Ipv4Addr::new(169, 254, 0, 0), 16)
            .guestfwd(METADATA_IP, 80, host_port)
    }

    pub fn net(mut self, addr: Ipv4Addr, prefix: u8) -> Self {
        self.net = Some((addr, prefix));
        self
    }

    pub fn host(mut self, gateway: Ipv4Addr) -> Self {
        self.host = Some(gateway);
        self
    }

    pub fn dns(mut self, dns: Ipv4Addr) -> Self {
        self.dns = Some(dns);
        self
    }

    pub fn dhcp_start(mut self, first: Ipv4Addr) -> Self {
        self.dhcp_start = Some(first);
        self
    }

    /// Guest connections to `guest_ip:guest_port` reach `127.0.0.1:host_port`.
    pub fn guestfwd(mut self, guest_ip: Ipv4Addr, guest_port: u16, host_port: u16) -> Self {
        self.guestfwds.push(GuestFwd {
            guest_ip,
            guest_port,
            host_port,
        });
        self
    }

    /// Connections to the host's `127.0.0.1:host_port` reach the guest's
    /// `guest_port` (TCP).
    pub fn hostfwd(mut self, host_port: u16, guest_port: u16) -> Self {
        self.hostfwds.push((host_port, guest_port));
        self
    }

    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// See [`NetUser::open`].
    pub fn open(mut self) -> Self {
        self.open = true;
        self
    }

    /// The network and prefix length in force (QEMU's default when unset).
    pub fn network(&self) -> (Ipv4Addr, u8) {
        self.net.unwrap_or((Ipv4Addr::new(10, 0, 2, 0), 24))
    }

    /// Refuses what QEMU would refuse with a less helpful message.
    fn validate(&self) -> Result<(), VmError> {
        let (net, prefix) = self.network();
        if !(1..=30).contains(&prefix) {
            return Err(VmError::Config(format!(
                "user network {net}/{prefix}: the prefix length must be 1..=30"
            )));
        }
        let inside = |ip: Ipv4Addr| {
            let mask = u32::MAX << (32 - u32::from(prefix));
            u32::from(ip) & mask == u32::from(net) & mask
        };
        for f in &self.guestfwds {
            if !inside(f.guest_ip) {
                return Err(VmError::Config(format!(
                    "guestfwd to {}:{} lies outside the user network {net}/{prefix} \
                     (slirp only forwards addresses inside it; e.g. NetUser::metadata \
                     uses 169.254.0.0/16)",
                    f.guest_ip, f.guest_port
                )));
            }
        }
        let named = [
            ("host", self.host),
            ("dns", self.dns),
            ("dhcpstart", self.dhcp_start),
        ];
        for (what, ip) in named {
            if let Some(ip) = ip.filter(|ip| !inside(*ip)) {
                return Err(VmError::Config(format!(
                    "user network {what}={ip} lies outside {net}/{prefix}"
                )));
            }
        }
        Ok(())
    }

    /// The `-netdev` value.
    fn netdev_arg(&self) -> String {
        let mut a = String::from(if self.open {
            "user,id=n0,restrict=off"
        } else {
            "user,id=n0,restrict=on"
        });
        if let Some((net, prefix)) = self.net {
            a += &format!(",net={net}/{prefix}");
        }
        if let Some(host) = self.host {
            a += &format!(",host={host}");
        }
        if let Some(dns) = self.dns {
            a += &format!(",dns={dns}");
        }
        if let Some(first) = self.dhcp_start {
            a += &format!(",dhcpstart={first}");
        }
        for f in &self.guestfwds {
            a += ",guestfwd=";
            a += &f.arg();
        }
        for (host, guest) in &self.hostfwds {
            a += &format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}");
        }
        a
    }

    /// The `-device` value.
    fn device_arg(&self) -> String {
        let mut a = String::from("virtio-net-pci,netdev=n0");
        if let Some(m) = self.mac {
            a += &format!(
                ",mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
        }
        a
    }
}

/// What a fw_cfg file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FwCfgData {
    /// A host file, given as it is.
    File(PathBuf),
    /// Bytes the builder writes to a file in the VM's temp dir.
    Bytes(Vec<u8>),
}

/// Longest fw_cfg file name QEMU takes (`FW_CFG_MAX_FILE_PATH` - 1).
const FW_CFG_NAME_MAX: usize = 55;

/// Escapes a value inside a QEMU `-opt a=b,c=d` list: commas are doubled.
pub fn qemu_opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// Sets up a [`Vm`].
#[derive(Debug, Clone)]
pub struct VmBuilder {
    name: String,
    firmware: Firmware,
    disk: DiskSpec,
    memory_mib: u32,
    net: Option<NetUser>,
    fw_cfg: Vec<(String, FwCfgData)>,
    smbios_type1: Option<(String, String)>,
    extra_disks: Vec<(PathBuf, DiskFormat)>,
    extra: Vec<String>,
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsoleTo {
    /// A file the harness tails.
    File,
    /// The terminal, multiplexed with the QEMU monitor (Ctrl-A X quits).
    Stdio,
}

/// Paths inside a VM's temp dir.
#[derive(Debug, Clone)]
struct Paths {
    /// The temp dir itself.
    dir: PathBuf,
    disk: PathBuf,
    format: DiskFormat,
    console: PathBuf,
    stderr: PathBuf,
    qmp: PathBuf,
    api: PathBuf,
    vars: PathBuf,
}

impl VmBuilder {
    /// A VM named `name` (names its console log: use the test's name),
    /// BIOS, 512 MiB, on a fresh overlay of the base image.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            firmware: Firmware::Bios,
            disk: DiskSpec::Overlay {
                base: None,
                size: None,
            },
            memory_mib: 512,
            net: None,
            fw_cfg: Vec::new(),
            smbios_type1: None,
            extra_disks: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    pub fn uefi(self) -> Self {
        self.firmware(Firmware::Uefi)
    }

    pub fn disk(mut self, disk: DiskSpec) -> Self {
        self.disk = disk;
        self
    }

    /// An overlay on `base` instead of the default image.
    pub fn base(mut self, base: &Path) -> Self {
        let size = match &self.disk {
            DiskSpec::Overlay { size, .. } => *size,
            DiskSpec::File { .. } => None,
        };
        self.disk = DiskSpec::Overlay {
            base: Some(base.to_path_buf()),
            size,
        };
        self
    }

    /// An overlay of `bytes` (larger than the base: the guest sees a bigger disk).
    pub fn overlay_size(mut self, bytes: u64) -> Self {
        let base = match &self.disk {
            DiskSpec::Overlay { base, .. } => base.clone(),
            DiskSpec::File { .. } => None,
        };
        self.disk = DiskSpec::Overlay {
            base,
            size: Some(bytes),
        };
        self
    }

    /// Boots from `path` directly (e.g. a [`disk::RawCopy`]), so the host can
    /// read the disk afterwards.
    pub fn disk_file(self, path: &Path, format: DiskFormat) -> Self {
        self.disk(DiskSpec::File {
            path: path.to_path_buf(),
            format,
        })
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// A virtio-net NIC on QEMU user networking (without it the guest has
    /// no NIC at all).
    pub fn net_user(mut self, net: NetUser) -> Self {
        self.net = Some(net);
        self
    }

    /// The fw_cfg file `name` (e.g. `opt/dev.atoll/config`) with the
    /// contents of the host file `path` (read when QEMU starts).
    pub fn fw_cfg_file(mut self, name: &str, path: &Path) -> Self {
        self.fw_cfg
            .push((name.to_string(), FwCfgData::File(path.to_path_buf())));
        self
    }

    /// The fw_cfg file `name` holding `contents`, written to a file in the
    /// VM's temp dir (QEMU's `string=` cannot hold every byte).
    pub fn fw_cfg_string(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.fw_cfg
            .push((name.to_string(), FwCfgData::Bytes(contents.into())));
        self
    }

    /// SMBIOS type 1 (system) strings the guest reads as
    /// `/sys/class/dmi/id/sys_vendor` and `product_name`, e.g.
    /// `("Amazon EC2", "t3.micro")` or `("OpenStack Foundation", "OpenStack Nova")`.
    pub fn smbios_type1(mut self, manufacturer: &str, product: &str) -> Self {
        self.smbios_type1 = Some((manufacturer.to_string(), product.to_string()));
        self
    }

    /// One more disk, read-only on virtio-blk after the boot disk: the first
    /// is the guest's `/dev/vdb`, the next `/dev/vdc`, and so on.
    pub fn extra_disk(mut self, path: &Path, format: DiskFormat) -> Self {
        self.extra_disks.push((path.to_path_buf(), format));
        self
    }

    /// One more QEMU argument, passed as is.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_string());
        self
    }

    /// Checks what QEMU would refuse, before anything is created.
    fn validate(&self) -> Result<(), VmError> {
        if let Some(net) = &self.net {
            net.validate()?;
        }
        for (name, data) in &self.fw_cfg {
            if name.is_empty() || name.len() > FW_CFG_NAME_MAX {
                return Err(VmError::Config(format!(
                    "fw_cfg file name {name:?} must be 1..={FW_CFG_NAME_MAX} bytes"
                )));
            }
            if !name.starts_with("opt/") {
                return Err(VmError::Config(format!(
                    "fw_cfg file name {name:?} must start with `opt/` (QEMU reserves the rest)"
                )));
            }
            if let FwCfgData::File(path) = data {
                if !path.is_file() {
                    return Err(VmError::MissingFile {
                        what: "fw_cfg file",
                        path: path.clone(),
                    });
                }
            }
        }
        for (path, _) in &self.extra_disks {
            if !path.is_file() {
                return Err(VmError::MissingFile {
                    what: "extra disk",
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Creates the temp dir and its disk, firmware vars, fw_cfg files and paths.
    fn prepare(&self) -> Result<(tempfile::TempDir, Paths), VmError> {
        self.validate()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("atoll-vm-{}-", sanitize(&self.name)))
            .tempdir()
            .map_err(VmError::TempDir)?;
        let d = dir.path();
        let (disk, format) = match &self.disk {
            DiskSpec::Overlay { base, size } => {
                let base = match base {
                    Some(b) => disk::checked_image(b, "given to the VM builder")?,
                    None => disk::base_image()?,
                };
                let overlay = d.join("disk.qcow2");
                disk::create_overlay(&base, &overlay, *size)?;
                (overlay, DiskFormat::Qcow2)
            }
            DiskSpec::File { path, format } => (
                disk::checked_image(path, "given to the VM builder")?,
                *format,
            ),
        };
        let vars = d.join("OVMF_VARS.fd");
        if self.firmware == Firmware::Uefi {
            std::fs::copy(OVMF_VARS, &vars).map_err(|source| VmError::Firmware {
                from: OVMF_VARS.into(),
                to: vars.clone(),
                source,
            })?;
        }
        for (i, (_, data)) in self.fw_cfg.iter().enumerate() {
            if let FwCfgData::Bytes(bytes) = data {
                let path = fw_cfg_bytes_path(d, i);
                std::fs::write(&path, bytes)
                    .map_err(|source| VmError::WriteFile { path, source })?;
            }
        }
        let paths = Paths {
            dir: d.to_path_buf(),
            disk,
            format,
            console: d.join("console.log"),
            stderr: d.join("qemu.stderr"),
            qmp: d.join("qmp.sock"),
            api: d.join("api.sock"),
            vars,
        };
        Ok((dir, paths))
    }

    /// The QEMU command line.
    fn command(&self, p: &Paths, console: ConsoleTo) -> Command {
        let mut c = Command::new(QEMU);
        c.args(["-name", &self.name, "-accel", "tcg"]);
        c.args(["-machine", MACHINE, "-cpu", CPU]);
        c.args(["-m", &self.memory_mib.to_string(), "-smp", "1"]);
        c.args(["-display", "none", "-nodefaults", "-no-user-config"]);
        if self.firmware == Firmware::Uefi {
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                p.vars.display()
            ));
        }
        c.arg("-drive").arg(format!(
            "file={},format={},if=none,id=disk0",
            p.disk.display(),
            p.format.name()
        ));
        c.args(["-device", "virtio-blk-pci,drive=disk0"]);
        for (i, (path, format)) in self.extra_disks.iter().enumerate() {
            let id = format!("disk{}", i + 1);
            c.arg("-drive").arg(format!(
                "file={},format={},if=none,id={id},readonly=on",
                qemu_opt_escape(&path.display().to_string()),
                format.name()
            ));
            c.arg("-device").arg(format!("virtio-blk-pci,drive={id}"));
        }
        if let Some(net) = &self.net {
            c.arg("-netdev").arg(net.netdev_arg());
            c.arg("-device").arg(net.device_arg());
        }
        for (i, (name, data)) in self.fw_cfg.iter().enumerate() {
            let file = match data {
                FwCfgData::File(path) => path.clone(),
                FwCfgData::Bytes(_) => fw_cfg_bytes_path(&p.dir, i),
            };
            c.arg("-fw_cfg").arg(format!(
                "name={},file={}",
                qemu_opt_escape(name),
                qemu_opt_escape(&file.display().to_string())
            ));
        }
        if let Some((manufacturer, product)) = &self.smbios_type1 {
            c.arg("-smbios").arg(format!(
                "type=1,manufacturer={},product={}",
                qemu_opt_escape(manufacturer),
                qemu_opt_escape(product)
            ));
        }
        match console {
            ConsoleTo::File => {
                c.arg("-chardev")
                    .arg(format!("file,id=con0,path={}", p.console.display()));
                c.args(["-serial", "chardev:con0"]);
            }
            ConsoleTo::Stdio => {
                c.args(["-serial", "mon:stdio"]);
            }
        }
        c.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", p.qmp.display()));
        c.args(["-device", "virtio-serial-pci,id=vser0"]);
        c.arg("-chardev").arg(format!(
            "socket,id=api,path={},server=on,wait=off",
            p.api.display()
        ));
        c.arg("-device").arg(format!(
            "virtserialport,bus=vser0.0,chardev=api,name={}",
            layout::API_VIRTIO_PORT
        ));
        c.args(&self.extra);
        c
    }

    /// Starts QEMU with the console in a file and returns at once.
    ///
    /// QEMU gets SIGKILL if the thread that called this ends, so a test
    /// killed mid-way leaves no guest behind: keep the [`Vm`] in that thread.
    pub fn start(self) -> Result<Vm, VmError> {
        let (dir, paths) = self.prepare()?;
        let console = Console::tail_file(&paths.console)?;
        let mut cmd = self.command(&paths, ConsoleTo::File);
        let stderr = File::create(&paths.stderr).map_err(|source| VmError::Spawn {
            command: QEMU.into(),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: between fork and exec only prctl(2) is called, which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().map_err(|source| VmError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        Ok(Vm {
            name: self.name,
            firmware: self.firmware,
            paths,
            dir: Some(dir),
            child: Mutex::new(child),
            console,
            started,
            exit: Mutex::new(None),
        })
    }

    /// Runs QEMU in the foreground with the console (and monitor) on this
    /// terminal until the guest powers off or the user quits (Ctrl-A X).
    pub fn run_interactive(self) -> Result<ExitStatus, VmError> {
        let (dir, paths) = self.prepare()?;
        let mut cmd = self.command(&paths, ConsoleTo::Stdio);
        eprintln!(
            "Booting {} ({}) with the console on this terminal; Ctrl-A X quits, Ctrl-A H lists the monitor keys.",
            paths.disk.display(),
            self.firmware
        );
        eprintln!(
            "Host API: target/release/atollctl --socket {} status",
            paths.api.display()
        );
        let status = cmd.status().map_err(|source| VmError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        drop(dir);
        Ok(status)
    }
}

/// Where [`VmBuilder::fw_cfg_string`]'s `i`th fw_cfg entry is written.
fn fw_cfg_bytes_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("fw_cfg{i}.bin"))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The ready line, parsed.
#[derive(Debug, Clone)]
pub struct Ready {
    pub version: String,
    pub slot: Slot,
    pub line: String,
    /// When the harness saw the line.
    pub seen_at: Instant,
}

/// A running guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Vm {
    name: String,
    firmware: Firmware,
    paths: Paths,
    dir: Option<tempfile::TempDir>,
    child: Mutex<Child>,
    console: Console,
    started: Instant,
    exit: Mutex<Option<ExitStatus>>,
}

impl Vm {
    /// A builder; see [`VmBuilder::new`].
    pub fn builder(name: &str) -> VmBuilder {
        VmBuilder::new(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn firmware(&self) -> Firmware {
        self.firmware
    }

    /// When QEMU was started.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The disk the guest sees (the overlay, or the given file).
    pub fn disk_path(&self) -> &Path {
        &self.paths.disk
    }

    /// Where the console log is copied when the VM is dropped.
    pub fn kept_log_path(&self) -> PathBuf {
        log_dir().join(format!("{}.console.log", sanitize(&self.name)))
    }

    /// The last console lines with the VM's name and log path.
    pub fn tail(&self) -> ConsoleTail {
        ConsoleTail {
            vm: self.name.clone(),
            log: self.kept_log_path(),
            lines: self.console.tail(TAIL_LINES),
        }
    }

    /// An error for a failed check in a test, with the console tail.
    pub fn fail(&self, message: impl Into<String>) -> VmError {
        VmError::Check {
            message: message.into(),
            tail: Box::new(self.tail()),
        }
    }

    /// `Ok` if `cond`, else [`Vm::fail`] with `message`.
    pub fn check(&self, cond: bool, message: impl FnOnce() -> String) -> Result<(), VmError> {
        if cond {
            Ok(())
        } else {
            Err(self.fail(message()))
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        match self.child.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// QEMU's exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut exit = match self.exit.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if exit.is_none() {
            if let Ok(Some(status)) = self.lock_child().try_wait() {
                *exit = Some(status);
            }
        }
        *exit
    }

    fn qemu_stderr(&self) -> String {
        match std::fs::read_to_string(&self.paths.stderr) {
            Ok(s) if !s.trim().is_empty() => format!("; QEMU said: {}", s.trim()),
            _ => String::new(),
        }
    }

    /// Waits for `pattern` on the console after the cursor and moves the
    /// cursor to the end of its line. Fails when `timeout` passes or QEMU exits first.
    pub fn wait_for(
        &self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Match, VmError> {
        let pattern = pattern.into();
        let mut abort = || self.exited().map(|s| s.to_string());
        match self.console.wait_for(&pattern, timeout, &mut abort) {
            Ok(m) => Ok(m),
            Err(WaitError::TimedOut) => Err(VmError::Timeout {
                awaited: format!("{pattern} on the console"),
                timeout,
                tail: Box::new(self.tail()),
            }),
            Err(WaitError::Aborted(status)) => Err(VmError::Exited {
                awaited: format!("{pattern} on the console"),
                status,
                stderr: self.qemu_stderr(),
                tail: Box::new(self.tail()),
            }),
        }
    }

    /// Waits for the next `atoll: ready version=<v> slot=<X>` line.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Ready, VmError> {
        let re = format!(
            r"{} version=(\S+) slot=([AB])\b",
            regex::escape(layout::READY_PREFIX)
        );
        let m = self.wait_for(Pattern::regex(&re)?, timeout)?;
        let version = m.captures.first().cloned().flatten().unwrap_or_default();
        let slot = m
            .captures
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| Slot::parse(&s))
            .ok_or_else(|| self.fail(format!("unreadable ready line {:?}", m.line)))?;
        Ok(Ready {
            version,
            slot,
            line: m.line,
            seen_at: m.seen_at,
        })
    }

    /// Every console line so far holding `pattern` (from the start; the
    /// cursor is not used or moved).
    pub fn console_matches(&self, pattern: impl Into<Pattern>) -> Vec<Match> {
        self.console.find_all(&pattern.into())
    }

    /// The whole console output so far.
    pub fn console_text(&self) -> String {
        self.console.text()
    }

    /// Where the next wait starts scanning.
    pub fn cursor(&self) -> usize {
        self.console.cursor()
    }

    pub fn set_cursor(&self, at: usize) {
        self.console.set_cursor(at)
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.console.sync(Duration::from_secs(1));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    awaited: "QEMU to exit".into(),
                    timeout,
                    tail: Box::new(self.tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a QMP command.
    pub fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmError> {
        qmp::execute(&self.paths.qmp, command, arguments, QMP_TIMEOUT).map_err(|source| {
            VmError::Qmp {
                command: command.into(),
                tail: Box::new(self.tail()),
                source: Box::new(source),
            }
        })
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn powerdown(&self) -> Result<(), VmError> {
        self.qmp("system_powerdown", None).map(|_| ())
    }

    /// Stops QEMU at once (QMP `quit`, SIGKILL if that fails) and waits for it.
    pub fn quit(&self) -> Result<ExitStatus, VmError> {
        if self.exited().is_none() {
            let quit = self.qmp("quit", None);
            if quit.is_err() || self.wait_exit(Duration::from_secs(10)).is_err() {
                let _ = self.lock_child().kill();
            }
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// Cuts the power: SIGKILL to QEMU at once, with no shutdown of any
    /// kind (what the guest had not written to its disk is lost; what
    /// QEMU had written to the disk file stays, as on a real disk), then
    /// waits for it to be gone. The disk file can be booted again by a new
    /// [`Vm`] ([`VmBuilder::disk_file`]).
    pub fn kill(&self) -> Result<ExitStatus, VmError> {
        if self.exited().is_none() {
            let _ = self.lock_child().kill();
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// The host side of the guest's API port (a unix socket), for a
    /// conversation longer than one request ([`api_client::Session`]).
    pub fn api_socket(&self) -> &Path {
        &self.paths.api
    }

    /// Sends one request to the host API and returns every response (the
    /// final `done`/`error` included).
    pub fn api(&self, request: &Request) -> Result<Vec<Response>, VmError> {
        api_client::request(&self.paths.api, request, API_TIMEOUT).map_err(|e| self.api_error(e))
    }

    fn api_error(&self, source: ApiError) -> VmError {
        VmError::Api {
            tail: Box::new(self.tail()),
            source: Box::new(source),
        }
    }

    /// The host's status.
    pub fn status(&self) -> Result<Status, VmError> {
        api_client::status_of(self.api(&Request::Status)?).map_err(|e| self.api_error(e))
    }

    /// Polls the status (every 250 ms, up to `timeout`) until `settled`
    /// holds for it: for what the host finishes after its ready line, such
    /// as marking the boot good. `what` names the awaited state in errors.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        settled: impl Fn(&Status) -> bool,
    ) -> Result<Status, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            if settled(&status) {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let last = serde_json::to_string(&status).unwrap_or_default();
                return Err(VmError::Timeout {
                    awaited: format!("{what} in the host status (last status: {last})"),
                    timeout,
                    tail: Box::new(self.tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The newest `lines` log records (0 = all kept), oldest first.
    pub fn logs(&self, lines: usize) -> Result<Vec<LogRecord>, VmError> {
        let req = Request::Logs {
            lines,
            follow: false,
            ident: None,
        };
        api_client::logs_of(self.api(&req)?).map_err(|e| self.api_error(e))
    }

    /// Asks the host to reboot cleanly (API `reboot`).
    pub fn reboot(&self) -> Result<(), VmError> {
        let r = self.api(&Request::Reboot)?;
        api_client::done_of(&Request::Reboot, &r).map_err(|e| self.api_error(e))
    }

    /// Asks the host to power off cleanly (API `poweroff`).
    pub fn poweroff(&self) -> Result<(), VmError> {
        let r = self.api(&Request::Poweroff)?;
        api_client::done_of(&Request::Poweroff, &r).map_err(|e| self.api_error(e))
    }

    fn keep_log(&self) {
        let dir = log_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let dest = self.kept_log_path();
        let tmp = dest.with_extension("log.tmp");
        if std::fs::copy(&self.paths.console, &tmp).is_ok() {
            let _ = std::fs::rename(&tmp, &dest);
        }
        let stderr = dir.join(format!("{}.qemu-stderr.log", sanitize(&self.name)));
        match std::fs::metadata(&self.paths.stderr) {
            Ok(m) if m.len() > 0 => {
                let _ = std::fs::copy(&self.paths.stderr, &stderr);
            }
            _ => {
                let _ = std::fs::remove_file(&stderr);
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let mut child = self.lock_child();
            let _ = child.kill();
            let _ = child.wait();
        }
        self.console.sync(Duration::from_millis(500));
        self.keep_log();
        let keep = std::env::var_os("ATOLL_KEEP_VM").is_some_and(|v| !v.is_empty() && v != "0");
        if let Some(dir) = self.dir.take() {
            if keep {
                eprintln!(
                    "ATOLL_KEEP_VM: VM {} kept in {}",
                    self.name,
                    dir.keep().display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(b: &VmBuilder, console: ConsoleTo) -> Vec<String> {
        let p = Paths {
            dir: "/t".into(),
            disk: "/t/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            console: "/t/console.log".into(),
            stderr: "/t/qemu.stderr".into(),
            qmp: "/t/qmp.sock".into(),
            api: "/t/api.sock".into(),
            vars: "/t/OVMF_VARS.fd".into(),
        };
        b.command(&p, console)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn bios_command_line() {
        let a = args(&VmBuilder::new("t"), ConsoleTo::File).join(" ");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-m 512 -smp 1"), "{a}");
        assert!(a.contains("-display none -nodefaults"), "{a}");
        assert!(!a.contains("pflash"), "{a}");
        assert!(
            a.contains("file=/t/disk.qcow2,format=qcow2,if=none,id=disk0"),
            "{a}"
        );
        assert!(
            a.contains("-chardev file,id=con0,path=/t/console.log -serial chardev:con0"),
            "{a}"
        );
        assert!(
            a.contains("-qmp unix:/t/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(
            a.contains("socket,id=api,path=/t/api.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(
            a.contains("virtserialport,bus=vser0.0,chardev=api,name=dev.atoll.api"),
            "{a}"
        );
    }

    #[test]
    fn uefi_and_interactive_command_line() {
        let a = args(&VmBuilder::new("t").uefi(), ConsoleTo::Stdio).join(" ");
        assert!(
            a.contains(&format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            )),
            "{a}"
        );
        assert!(
            a.contains("if=pflash,format=raw,unit=1,file=/t/OVMF_VARS.fd"),
            "{a}"
        );
        assert!(a.contains("-serial mon:stdio"), "{a}");
        assert!(!a.contains("console.log"), "{a}");
    }

    #[test]
    fn default_vm_has_no_nic_fw_cfg_smbios_or_extra_disk() {
        let a = args(&VmBuilder::new("t"), ConsoleTo::File).join(" ");
        for absent in ["-netdev", "virtio-net", "-fw_cfg", "-smbios", "disk1"] {
            assert!(!a.contains(absent), "{absent}: {a}");
        }
    }

    #[test]
    fn net_user_command_line() {
        let net = NetUser::new()
            .net(Ipv4Addr::new(169, 254, 0, 0), 16)
            .host(Ipv4Addr::new(169, 254, 0, 1))
            .guestfwd(METADATA_IP, 80, 40123)
            .guestfwd(Ipv4Addr::new(169, 254, 1, 1), 7, 40124)
            .mac([0x52, 0x54, 0, 0xab, 0xcd, 0x0e]);
        let a = args(&VmBuilder::new("t").net_user(net), ConsoleTo::File);
        let i = a.iter().position(|x| x == "-netdev").unwrap();
        assert_eq!(
            a[i + 1],
            "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.1,\
             guestfwd=tcp:169.254.169.254:80-cmd:bash -c 'exec 2>/dev/null \
             3<>/dev/tcp/127.0.0.1/40123 || exit 1; cat <&0 >&3 & cat <&3; kill $!',\
             guestfwd=tcp:169.254.1.1:7-cmd:bash -c 'exec 2>/dev/null \
             3<>/dev/tcp/127.0.0.1/40124 || exit 1; cat <&0 >&3 & cat <&3; kill $!'"
        );
        assert_eq!(a[i + 2], "-device");
        assert_eq!(a[i + 3], "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:0e");
        // The forwards' commands must not hold a comma: QEMU would split there.
        assert!(!a[i + 1].contains(",,"), "{}", a[i + 1]);

        let a = args(
            &VmBuilder::new("t").net_user(NetUser::new()),
            ConsoleTo::File,
        )
        .join(" ");
        assert!(
            a.contains("-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0 "),
            "{a}"
        );
    }

    #[test]
    fn metadata_network_forwards_169_254_169_254() {
        let net = NetUser::metadata(8080);
        assert_eq!(net.network(), (Ipv4Addr::new(169, 254, 0, 0), 16));
        assert_eq!(
            net.guestfwds,
            [GuestFwd {
                guest_ip: METADATA_IP,
                guest_port: 80,
                host_port: 8080
            }]
        );
        net.validate().unwrap();
    }

    #[test]
    fn guestfwd_outside_the_network_is_refused_before_qemu() {
        let net = NetUser::new().guestfwd(METADATA_IP, 80, 8080);
        let e = VmBuilder::new("t").net_user(net).validate().unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("169.254.169.254:80") && s.contains("10.0.2.0/24"),
            "{s}"
        );
        let net = NetUser::new().host(Ipv4Addr::new(192, 168, 0, 1));
        assert!(net.validate().is_err());
        let net = NetUser::new().net(Ipv4Addr::new(10, 0, 0, 0), 31);
        assert!(net.validate().is_err());
    }

    #[test]
    fn fw_cfg_smbios_and_extra_disk_command_line() {
        let b = VmBuilder::new("t")
            .fw_cfg_string("opt/dev.atoll/config", "a = 1,\nb = 2\n")
            .fw_cfg_file("opt/dev.atoll/other", Path::new("/h/x,y.toml"))
            .smbios_type1("Amazon EC2", "t3.micro")
            .extra_disk(Path::new("/h/cidata.iso"), DiskFormat::Raw)
            .extra_disk(Path::new("/h/b.qcow2"), DiskFormat::Qcow2);
        let a = args(&b, ConsoleTo::File).join(" ");
        assert!(
            a.contains("-fw_cfg name=opt/dev.atoll/config,file=/t/fw_cfg0.bin"),
            "{a}"
        );
        assert!(
            a.contains("-fw_cfg name=opt/dev.atoll/other,file=/h/x,,y.toml"),
            "{a}"
        );
        assert!(
            a.contains("-smbios type=1,manufacturer=Amazon EC2,product=t3.micro"),
            "{a}"
        );
        // The extra disks come right after the boot disk: vdb, vdc.
        assert!(
            a.contains(
                "-device virtio-blk-pci,drive=disk0 \
                 -drive file=/h/cidata.iso,format=raw,if=none,id=disk1,readonly=on \
                 -device virtio-blk-pci,drive=disk1 \
                 -drive file=/h/b.qcow2,format=qcow2,if=none,id=disk2,readonly=on \
                 -device virtio-blk-pci,drive=disk2 "
            ),
            "{a}"
        );
    }

    #[test]
    fn smbios_strings_escape_commas() {
        let b = VmBuilder::new("t").smbios_type1("Acme, Inc.", "Nova,x");
        let a = args(&b, ConsoleTo::File).join(" ");
        assert!(
            a.contains("-smbios type=1,manufacturer=Acme,, Inc.,product=Nova,,x"),
            "{a}"
        );
    }

    #[test]
    fn bad_fw_cfg_names_and_missing_files_are_refused() {
        let long = format!("opt/{}", "x".repeat(60));
        for name in ["", "dev.atoll/config", long.as_str()] {
            let e = VmBuilder::new("t").fw_cfg_string(name, "x").validate();
            assert!(matches!(e, Err(VmError::Config(_))), "{name:?}: {e:?}");
        }
        let e = VmBuilder::new("t")
            .fw_cfg_file("opt/a", Path::new("/nonexistent/a"))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/a"), "{e}");
        let e = VmBuilder::new("t")
            .extra_disk(Path::new("/nonexistent/seed.iso"), DiskFormat::Raw)
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("extra disk /nonexistent/seed.iso"),
            "{e}"
        );
    }

    /// QEMU itself takes the generated options: the NIC with a forward to
    /// the metadata address, fw_cfg, SMBIOS and an extra disk. The CPU is
    /// never started (`-S`), so no image is needed.
    #[test]
    fn qemu_accepts_net_fw_cfg_smbios_and_extra_disk() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot.raw");
        let seed = dir.path().join("seed,1.img");
        std::fs::write(&boot, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(&seed, vec![0u8; 1 << 20]).unwrap();
        let vm = VmBuilder::new("qemu_accepts_net_fw_cfg_smbios_and_extra_disk")
            .disk_file(&boot, DiskFormat::Raw)
            .memory_mib(64)
            .net_user(NetUser::metadata(9).mac([0x52, 0x54, 0, 1, 2, 3]))
            .fw_cfg_string("opt/dev.atoll/config", "hostname = \"a,b\"\n")
            .smbios_type1("Amazon EC2", "t3.micro")
            .extra_disk(&seed, DiskFormat::Raw)
            .arg("-S")
            .start()
            .unwrap();
        let status = vm.qmp("query-status", None).unwrap();
        assert_eq!(status["status"], "prelaunch", "{status}");
        assert!(vm.exited().is_none(), "{}", vm.qemu_stderr());
        let written = vm.paths.dir.join("fw_cfg0.bin");
        assert_eq!(
            std::fs::read_to_string(written).unwrap(),
            "hostname = \"a,b\"\n"
        );
        vm.quit().unwrap();
    }

    #[test]
    fn error_messages_carry_the_console_tail() {
        let e = VmError::Timeout {
            awaited: "\"atoll: ready\" on the console".into(),
            timeout: Duration::from_secs(120),
            tail: Box::new(ConsoleTail {
                vm: "boots_bios".into(),
                log: "/l/boots_bios.console.log".into(),
                lines: "Booting `Atoll'\nkernel panic".into(),
            }),
        };
        let s = format!("{e:?}");
        assert!(
            s.starts_with("timed out after 120s waiting for \"atoll: ready\""),
            "{s}"
        );
        assert!(s.contains("kernel panic"), "{s}");
        assert!(s.contains("/l/boots_bios.console.log"), "{s}");
    }

    #[test]
    fn missing_base_image_fails_before_qemu() {
        let e = VmBuilder::new("t")
            .base(Path::new("/nonexistent/atoll.raw"))
            .start()
            .unwrap_err();
        let s = format!("{e:?}");
        assert!(
            s.contains("/nonexistent/atoll.raw") && s.contains("./test.sh"),
            "{s}"
        );
    }
}
