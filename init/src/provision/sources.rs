//! Where a host's config comes from (docs/config.md, "Sources"), tried in
//! this order, first found wins:
//!
//! 1. QEMU fw_cfg: the file `opt/dev.atoll/config`
//!    (`-fw_cfg name=opt/dev.atoll/config,file=host.toml`);
//! 2. a NoCloud volume: any block device whose vfat or iso9660 file system
//!    is labelled `CIDATA` (or `cidata`), file `user-data`;
//! 3. the cloud's metadata service at 169.254.169.254, asked only when the
//!    firmware's DMI tables name a cloud that has one: EC2 (IMDSv2 token
//!    flow, `/latest/user-data`) or OpenStack (`/openstack/latest/user_data`).
//!    Asking anywhere else would only wait for a timeout on every boot.
//!
//! Each probe says what it found, or why it found nothing; those lines go
//! into `config show` ("tried").

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http;
use atoll_common::error::error_chain as chain;

/// The fw_cfg file name QEMU users pass the config under.
pub const FW_CFG_NAME: &str = atoll_common::layout::FW_CFG_CONFIG;
/// Where the qemu_fw_cfg driver shows fw_cfg files.
pub const FW_CFG_SYSFS: &str = "/sys/firmware/qemu_fw_cfg";
/// File-system label of a NoCloud seed volume.
pub const CIDATA_LABEL: &str = "CIDATA";
/// Where the seed volume is mounted (read-only) while it is read.
pub const CIDATA_MOUNT: &str = "/run/atoll/cidata";
/// The metadata service's address.
pub const METADATA_ADDR: &str = "169.254.169.254:80";
/// The most user data a source may give (before any gzip is undone).
pub const MAX_USER_DATA: usize = 1024 * 1024;

/// A config found by a source, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Names the source for logs and errors, e.g. `fw_cfg opt/dev.atoll/config`.
    pub source: String,
    pub data: Vec<u8>,
}

/// What one source gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Found(Found),
    /// Nothing there (the normal case for the sources a platform lacks).
    Absent(String),
    /// Something there that could not be read.
    Failed(String),
}

impl Probe {
    /// One line for `config show`'s "tried" list.
    pub fn summary(&self, name: &str) -> String {
        match self {
            Probe::Found(f) => format!("{name}: found {} bytes at {}", f.data.len(), f.source),
            Probe::Absent(why) => format!("{name}: {why}"),
            Probe::Failed(why) => format!("{name}: FAILED: {why}"),
        }
    }
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut data = Vec::new();
    f.take(MAX_USER_DATA as u64 + 1).read_to_end(&mut data)?;
    if data.len() > MAX_USER_DATA {
        return Err(std::io::Error::other(format!(
            "larger than the {MAX_USER_DATA} bytes user data may have"
        )));
    }
    Ok(data)
}

/// Source 1: the fw_cfg file, under `sysfs` (normally [`FW_CFG_SYSFS`];
/// the qemu_fw_cfg module must be loaded).
pub fn fw_cfg(sysfs: &Path) -> Probe {
    if !sysfs.exists() {
        return Probe::Absent("no QEMU fw_cfg device".into());
    }
    let raw = sysfs.join("by_name").join(FW_CFG_NAME).join("raw");
    if !raw.exists() {
        return Probe::Absent(format!("fw_cfg has no {FW_CFG_NAME}"));
    }
    match read_capped(&raw) {
        Ok(data) => Probe::Found(Found {
            source: format!("fw_cfg {FW_CFG_NAME}"),
            data,
        }),
        Err(e) => Probe::Failed(format!("reading {}: {e}", raw.display())),
    }
}

/// A file system a NoCloud volume may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFs {
    Vfat,
    Iso9660,
}

impl SeedFs {
    /// The name `mount(2)` knows it by.
    pub fn fstype(self) -> &'static str {
        match self {
            SeedFs::Vfat => "vfat",
            SeedFs::Iso9660 => "iso9660",
        }
    }

    /// The kernel modules that provide it (in load order).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            SeedFs::Vfat => &["vfat", "nls_cp437", "nls_ascii"],
            SeedFs::Iso9660 => &["isofs"],
        }
    }
}

fn trimmed_label(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// The file system and label found in the first 36 KiB of a device.
pub fn probe_label(head: &[u8]) -> Option<(SeedFs, String)> {
    // iso9660: the primary volume descriptor at 32 KiB.
    if head.len() >= 0x8048 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return Some((SeedFs::Iso9660, trimmed_label(&head[0x8028..0x8048])));
    }
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return None;
    }
    // FAT32 keeps its extended boot record further in than FAT12/16.
    if &head[0x52..0x5a] == b"FAT32   " && head[0x42] == 0x29 {
        return Some((SeedFs::Vfat, trimmed_label(&head[0x47..0x52])));
    }
    if &head[0x36..0x39] == b"FAT" && head[0x26] == 0x29 {
        return Some((SeedFs::Vfat, trimmed_label(&head[0x2b..0x36])));
    }
    None
}

fn read_head(dev: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(dev)?;
    f.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(0x8800);
    f.take(0x8800).read_to_end(&mut head)?;
    Ok(head)
}

/// The block devices that could be seed volumes: every disk and partition
/// in `sys_class_block` except device-mapper, loop, RAM and zram devices.
fn candidates(sys_class_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    !["dm-", "loop", "ram", "zram", "sr"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default();
    // CD-ROMs last: reading an empty drive can be slow.
    let mut cds: Vec<String> = std::fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("sr"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    cds.sort();
    names.extend(cds);
    names
}

/// Finds the seed volume: `(device, file system)`.
pub fn find_cidata(sys_class_block: &Path, dev_dir: &Path) -> Option<(PathBuf, SeedFs)> {
    for name in candidates(sys_class_block) {
        let dev = dev_dir.join(&name);
        let Ok(head) = read_head(&dev) else { continue };
        if let Some((fs, label)) = probe_label(&head) {
            if label.eq_ignore_ascii_case(CIDATA_LABEL) {
                return Some((dev, fs));
            }
        }
    }
    None
}

/// Source 2: `user-data` on the seed volume. `load_modules` loads the
/// file system's modules; the volume is mounted read-only at
/// [`CIDATA_MOUNT`] and unmounted again.
pub fn cidata(sys_class_block: &Path, dev_dir: &Path, load_modules: &dyn Fn(SeedFs)) -> Probe {
    let Some((dev, fs)) = find_cidata(sys_class_block, dev_dir) else {
        return Probe::Absent(format!("no volume labelled {CIDATA_LABEL}"));
    };
    load_modules(fs);
    let mnt = Path::new(CIDATA_MOUNT);
    if let Err(e) = std::fs::create_dir_all(mnt) {
        return Probe::Failed(format!("creating {}: {e}", mnt.display()));
    }
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some(&dev), mnt, Some(fs.fstype()), flags, None::<&str>) {
        return Probe::Failed(format!(
            "mounting {} ({}) read-only: {e}",
            dev.display(),
            fs.fstype()
        ));
    }
    // vfat matches names case-insensitively; iso9660 without Rock Ridge
    // may show `USER_DATA` or `user_data.`: try the usual spellings.
    let found = ["user-data", "USER-DATA", "user_data", "USER_DAT"]
        .iter()
        .map(|n| mnt.join(n))
        .find(|p| p.is_file());
    let probe = match found {
        Some(p) => match read_capped(&p) {
            Ok(data) => Probe::Found(Found {
                source: format!("CIDATA {} user-data", dev.display()),
                data,
            }),
            Err(e) => Probe::Failed(format!("reading user-data on {}: {e}", dev.display())),
        },
        None => Probe::Failed(format!(
            "{} is labelled {CIDATA_LABEL} but holds no user-data",
            dev.display()
        )),
    };
    if let Err(e) = umount2(mnt, MntFlags::MNT_DETACH) {
        log::warn!("unmounting {}: {e}", mnt.display());
    }
    probe
}

/// A cloud with a metadata service Atoll knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Ec2,
    OpenStack,
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cloud::Ec2 => "ec2",
            Cloud::OpenStack => "openstack",
        })
    }
}

/// Which cloud the DMI tables (`/sys/class/dmi/id`) name, as cloud-init's
/// ds-identify reads them.
pub fn detect_cloud(dmi: &Path) -> Option<Cloud> {
    let read = |f: &str| {
        std::fs::read_to_string(dmi.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let vendor = read("sys_vendor");
    let product = read("product_name");
    let asset = read("chassis_asset_tag");
    let uuid = read("product_uuid").to_ascii_lowercase();
    if vendor == "Amazon EC2" || uuid.starts_with("ec2") {
        return Some(Cloud::Ec2);
    }
    if ["OpenStack Nova", "OpenStack Compute"].contains(&product.as_str())
        || asset == "OpenStack Nova"
    {
        return Some(Cloud::OpenStack);
    }
    None
}

/// How long the metadata service may take to answer once the network is
/// up: it may need a moment after the first lease.
pub const METADATA_DEADLINE: Duration = Duration::from_secs(10);
const METADATA_TRY: Duration = Duration::from_secs(2);

/// GETs user data: `None` when the service has none (404).
async fn user_data(
    addr: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Option<Vec<u8>>, String> {
    let r = http::request(addr, "GET", path, headers, METADATA_TRY)
        .await
        .map_err(|e| format!("user data: {}", chain(&e)))?;
    match r.status {
        200 => Ok(Some(r.body)),
        404 => Ok(None),
        s => Err(format!("{base}{path} answered {s}")),
    }
}

/// One attempt at the cloud's user data.
async fn metadata_once(cloud: Cloud, addr: &str) -> Result<Option<Vec<u8>>, String> {
    let base = format!("http://{}", addr.trim_end_matches(":80"));
    match cloud {
        Cloud::Ec2 => {
            let r = http::request(
                addr,
                "PUT",
                "/latest/api/token",
                &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
                METADATA_TRY,
            )
            .await
            .map_err(|e| format!("IMDSv2 token: {}", chain(&e)))?;
            if r.status != 200 {
                return Err(format!("{base}/latest/api/token answered {}", r.status));
            }
            let token = String::from_utf8(r.body)
                .map_err(|_| "the IMDSv2 token is not text".to_string())?;
            let token = token.trim();
            if token.is_empty() || token.contains(['\r', '\n']) {
                return Err("the IMDSv2 token is empty or malformed".into());
            }
            user_data(
                addr,
                &base,
                "/latest/user-data",
                &[("X-aws-ec2-metadata-token", token)],
            )
            .await
        }
        Cloud::OpenStack => user_data(addr, &base, "/openstack/latest/user_data", &[]).await,
    }
}

/// Source 3: the cloud's user data from its metadata service at `addr`,
/// retrying until `deadline` (the network may have just come up).
pub async fn metadata(cloud: Cloud, addr: &str, deadline: Duration) -> Probe {
    let start = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    let source = format!("metadata http://{} ({cloud})", addr.trim_end_matches(":80"));
    loop {
        match metadata_once(cloud, addr).await {
            Ok(Some(data)) if data.len() > MAX_USER_DATA => {
                return Probe::Failed(format!(
                    "{source}: user data larger than {MAX_USER_DATA} bytes"
                ))
            }
            Ok(Some(data)) => return Probe::Found(Found { source, data }),
            Ok(None) => return Probe::Absent(format!("{source} has no user data")),
            Err(e) if start.elapsed() + wait >= deadline => {
                return Probe::Failed(format!("{source}: {e}"))
            }
            Err(e) => {
                log::debug!("{source}: {e}; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    fn fat32_head(label: &[u8; 11]) -> Vec<u8> {
        let mut h = vec![0u8; 0x8800];
        h[0x42] = 0x29;
        h[0x47..0x52].copy_from_slice(label);
        h[0x52..0x5a].copy_from_slice(b"FAT32   ");
        h[510] = 0x55;
        h[511] = 0xaa;
        h
    }

    #[test]
    fn reads_fat_and_iso_labels() {
        assert_eq!(
            probe_label(&fat32_head(b"CIDATA     ")),
            Some((SeedFs::Vfat, "CIDATA".into()))
        );
        let mut h = vec![0u8; 0x8800];
        h[0x26] = 0x29;
        h[0x2b..0x36].copy_from_slice(b"cidata     ");
        h[0x36..0x3e].copy_from_slice(b"FAT16   ");
        h[510] = 0x55;
        h[511] = 0xaa;
        assert_eq!(probe_label(&h), Some((SeedFs::Vfat, "cidata".into())));
        let mut iso = vec![0u8; 0x8800];
        iso[0x8000] = 1;
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..6].copy_from_slice(b"CIDATA");
        iso[0x8028..0x8048].copy_from_slice(&id);
        assert_eq!(probe_label(&iso), Some((SeedFs::Iso9660, "CIDATA".into())));
        assert_eq!(probe_label(&[0u8; 0x8800]), None);
        assert_eq!(probe_label(&[0u8; 10]), None);
    }

    #[test]
    fn finds_the_seed_among_devices() {
        let dir = TempDir::new("cidata");
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for n in ["vda", "vda1", "vdb", "dm-0", "loop0"] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
        }
        std::fs::write(dev.join("vda"), vec![0u8; 1024]).unwrap();
        std::fs::write(dev.join("vda1"), fat32_head(b"ATOLL-ESP  ")).unwrap();
        std::fs::write(dev.join("dm-0"), fat32_head(b"CIDATA     ")).unwrap();
        assert_eq!(find_cidata(&sys, &dev), None, "dm devices are skipped");
        std::fs::write(dev.join("vdb"), fat32_head(b"CIDATA     ")).unwrap();
        assert_eq!(
            find_cidata(&sys, &dev),
            Some((dev.join("vdb"), SeedFs::Vfat))
        );
    }

    #[test]
    fn reads_fw_cfg() {
        let dir = TempDir::new("fwcfg");
        let sysfs = dir.path().join("qemu_fw_cfg");
        assert!(matches!(fw_cfg(&sysfs), Probe::Absent(_)));
        std::fs::create_dir_all(sysfs.join("by_name/opt")).unwrap();
        assert!(matches!(fw_cfg(&sysfs), Probe::Absent(_)));
        let raw = sysfs.join("by_name").join(FW_CFG_NAME);
        std::fs::create_dir_all(&raw).unwrap();
        std::fs::write(raw.join("raw"), b"hostname = \"a\"\n").unwrap();
        assert_eq!(
            fw_cfg(&sysfs),
            Probe::Found(Found {
                source: "fw_cfg opt/dev.atoll/config".into(),
                data: b"hostname = \"a\"\n".to_vec()
            })
        );
        std::fs::write(raw.join("raw"), vec![b'#'; MAX_USER_DATA + 1]).unwrap();
        assert!(matches!(fw_cfg(&sysfs), Probe::Failed(_)));
    }

    #[test]
    fn detects_clouds_from_dmi() {
        let dir = TempDir::new("dmi");
        let d = dir.path();
        std::fs::write(d.join("sys_vendor"), "QEMU\n").unwrap();
        std::fs::write(
            d.join("product_name"),
            "Standard PC (i440FX + PIIX, 1996)\n",
        )
        .unwrap();
        assert_eq!(detect_cloud(d), None);
        std::fs::write(d.join("sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(detect_cloud(d), Some(Cloud::Ec2));
        std::fs::write(d.join("sys_vendor"), "QEMU\n").unwrap();
        std::fs::write(d.join("product_name"), "OpenStack Nova\n").unwrap();
        assert_eq!(detect_cloud(d), Some(Cloud::OpenStack));
        assert_eq!(detect_cloud(&d.join("missing")), None);
    }

    /// A server that plays the EC2 metadata service's token rules.
    fn imds(user_data: Option<&'static [u8]>) -> (String, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let mut served = 0;
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut lines = Vec::new();
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    if l == "\r\n" || l.is_empty() {
                        break;
                    }
                    lines.push(l);
                }
                let mut s = s;
                let first = &lines[0];
                let answer: Vec<u8> = if first.starts_with("PUT /latest/api/token ") {
                    assert!(lines
                        .iter()
                        .any(|l| l.starts_with("X-aws-ec2-metadata-token-ttl-seconds: ")));
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ntoken".to_vec()
                } else if first.starts_with("GET /latest/user-data ") {
                    if !lines
                        .iter()
                        .any(|l| l == "X-aws-ec2-metadata-token: token\r\n")
                    {
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec()
                    } else if let Some(d) = user_data {
                        let mut a =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", d.len())
                                .into_bytes();
                        a.extend_from_slice(d);
                        a
                    } else {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
                    }
                } else {
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec()
                };
                s.write_all(&answer).unwrap();
                served += 1;
            }
            served
        });
        (addr, h)
    }

    #[tokio::test]
    async fn ec2_token_flow() {
        let (addr, h) = imds(Some(b"hostname = \"x\"\n"));
        let p = metadata(Cloud::Ec2, &addr, Duration::from_secs(5)).await;
        assert_eq!(h.join().unwrap(), 2);
        match p {
            Probe::Found(f) => {
                assert_eq!(f.data, b"hostname = \"x\"\n");
                assert!(f.source.contains("(ec2)"), "{}", f.source);
            }
            other => panic!("{other:?}"),
        }
        let (addr, h) = imds(None);
        let p = metadata(Cloud::Ec2, &addr, Duration::from_secs(5)).await;
        h.join().unwrap();
        assert!(matches!(p, Probe::Absent(_)), "{p:?}");
    }

    #[tokio::test]
    async fn metadata_gives_up_at_the_deadline() {
        // Nothing listens on this port once the listener is gone.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let p = metadata(Cloud::OpenStack, &addr, Duration::from_millis(500)).await;
        assert!(
            matches!(p, Probe::Failed(ref s) if s.contains("user data")),
            "{p:?}"
        );
    }
}
