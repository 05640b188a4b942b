//! Atoll's runtime against its peers on this machine, side by side
//! (docs/BENCHMARKS.md):
//!
//! 1. create + start + wait + delete of one busybox `true` bundle:
//!    `atoll-runtime run`, `crun run`, `runc run`, the same bundle and
//!    config.json, alternating, N times each;
//! 2. a pull of a multi-layer image from a loopback `docker-registry`:
//!    `atoll-runtime pull` into a fresh store against
//!    `skopeo copy docker://… oci:…` into a fresh layout.
//!
//! `cargo bench -p atoll-runtime --bench peers` (root; needs busybox-static,
//! runc, crun, skopeo, docker-registry). `ATOLL_BENCH_RUNS=N` sets the
//! lifecycle runs (default 30). Wall-clock medians: run it on a quiet
//! machine and read the figures side by side, not against a fixed target.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

const BUSYBOX: &str = "/bin/busybox";
const REGISTRY: &str = "/usr/bin/docker-registry";

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A bundle: busybox rootfs and runc's default spec running `/bin/true`.
fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    let rootfs = b.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).expect("symlink");
    let ok = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&b)
        .status()
        .expect("runc spec");
    assert!(ok.success(), "runc spec failed");
    let path = b.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    // Build hosts may have hybrid cgroups (v1 and v2), where a cgroup2
    // mount in the container is refused (EBUSY); Atoll hosts are pure v2.
    // The same spec, without that mount, for every runtime.
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write");
    b
}

/// On a build host with hybrid cgroups (v1 controllers and a v2
/// `unified` tree), crun refuses to run at all. The benchmark gives itself
/// a private mount namespace with only cgroup2 on /sys/fs/cgroup, mounted
/// with `favordynmods` as an Atoll host's PID 1 mounts it
/// (init/src/stage2/mounts.rs), for all three runtimes alike. The flag
/// belongs to the hierarchy, so it holds for the whole machine while the
/// benchmark runs; [`restore_cgroup2`] clears it again if it was not set.
/// Returns whether it must be cleared afterwards.
fn pure_cgroup2() -> bool {
    let before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" - cgroup2 ") && l.contains("favordynmods"));
    if !Path::new("/sys/fs/cgroup/unified").exists() {
        return false;
    }
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::empty(),
        Some("favordynmods"),
    )
    .expect("mount cgroup2 on /sys/fs/cgroup");
    println!(
        "(hybrid cgroup host: the runtimes run in a mount namespace with only cgroup2, \
         favordynmods as on Atoll)"
    );
    !before
}

/// Clears `favordynmods` on the cgroup2 hierarchy again (a remount with no
/// options), when [`pure_cgroup2`] set it.
fn restore_cgroup2(clear: bool) {
    if !clear {
        return;
    }
    use nix::mount::{mount, MsFlags};
    if let Err(e) = mount(
        None::<&str>,
        "/sys/fs/cgroup",
        None::<&str>,
        MsFlags::MS_REMOUNT,
        Some(""),
    ) {
        println!("(could not clear favordynmods on cgroup2 again: {e})");
    }
}

/// atoll-runtime makes no cgroup for a spec without limits (runc's
/// default spec has none); crun is told to do the same, which also spares
/// it the eBPF device filter that needs CAP_SYS_RESOURCE (RLIMIT_MEMLOCK)
/// on cgroup v2. runc makes its cgroup as always.
fn global_flags(runtime: &Path) -> Vec<&'static str> {
    if runtime.ends_with("crun") {
        vec!["--cgroup-manager=disabled"]
    } else {
        Vec::new()
    }
}

fn lifecycle(runtime: &Path, root: &Path, bundle: &Path, id: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new(runtime)
        .args(global_flags(runtime))
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} run failed: {}{}",
        runtime.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn bench_lifecycle(dir: &Path) {
    let runs: usize = std::env::var("ATOLL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let b = bundle(dir);
    let mut peers: Vec<(&str, PathBuf)> = vec![(
        "atoll-runtime",
        PathBuf::from(env!("CARGO_BIN_EXE_atoll-runtime")),
    )];
    for p in ["crun", "runc"] {
        match which(p) {
            Some(path) => peers.push((p, path)),
            None => println!("{p}: not installed, left out"),
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for i in 0..runs + 3 {
        for (n, (name, path)) in peers.iter().enumerate() {
            let root = dir.join(format!("root-{name}"));
            let t = lifecycle(path, &root, &b, &format!("bench-{i}"));
            if i >= 3 {
                times[n].push(t);
            }
        }
    }
    println!(
        "\ncreate+start+wait+delete of a busybox `true` bundle, {runs} runs each (alternating):"
    );
    println!(
        "{:<15} {:>10} {:>10} {:>10}",
        "runtime", "median", "min", "max"
    );
    for ((name, _), t) in peers.iter().zip(times) {
        let min = t.iter().min().copied().unwrap_or_default();
        let max = t.iter().max().copied().unwrap_or_default();
        println!(
            "{name:<15} {:>10} {:>10} {:>10}",
            ms(median(t)),
            ms(min),
            ms(max)
        );
    }
}

struct Registry {
    child: std::process::Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(dir: &Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )
    .expect("registry config");
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    // Dropping it kills and waits for the registry.
    let registry = Registry { child, port };
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return registry;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("docker-registry did not start");
}

/// An OCI archive of `layers` gzip layers of `size` pseudo-random bytes each.
fn multilayer_archive(path: &Path, layers: usize, size: usize) {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for l in 0..layers {
        let mut data = vec![0u8; size];
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, format!("data/layer{l}.bin"), &data[..])
            .expect("tar");
        let tar = tar.into_inner().expect("tar");
        diff_ids.push(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(&tar))
        ));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let digest = hex::encode(sha2::Sha256::digest(&gz));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{digest}"), "size": gz.len()}));
        blobs.push((digest, gz));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .expect("json");
    let config_digest = hex::encode(sha2::Sha256::digest(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": descs}))
    .expect("json");
    let manifest_digest = hex::encode(sha2::Sha256::digest(&manifest));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_digest}"), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    .expect("json");
    blobs.push((config_digest, config));
    blobs.push((manifest_digest, manifest));
    let mut tar = tar::Builder::new(std::fs::File::create(path).expect("archive"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, data).expect("tar");
    };
    for (d, b) in &blobs {
        add(&format!("blobs/sha256/{d}"), b);
    }
    add("index.json", &index);
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar.finish().expect("archive");
}

fn bench_pull(dir: &Path) {
    if !Path::new(REGISTRY).exists() || which("skopeo").is_none() {
        println!("pull: docker-registry or skopeo missing, left out");
        return;
    }
    let (layers, size) = (6, 8 << 20);
    let reg = registry(dir);
    let archive = dir.join("multi.tar");
    multilayer_archive(&archive, layers, size);
    let reference = format!("127.0.0.1:{}/bench/multi:1", reg.port);
    let ok = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{reference}"))
        .status()
        .expect("skopeo");
    assert!(ok.success(), "skopeo push failed");
    let runs = 5;
    let mut atoll = Vec::new();
    let mut skopeo = Vec::new();
    for i in 0..runs {
        let store = dir.join(format!("store-{i}"));
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_atoll-runtime"))
            .args(["pull", "--store"])
            .arg(&store)
            .arg(&reference)
            .output()
            .expect("atoll-runtime pull");
        atoll.push(start.elapsed());
        assert!(
            out.status.success(),
            "pull: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layout = dir.join(format!("skopeo-{i}"));
        let start = Instant::now();
        let ok = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:multi", layout.display()))
            .status()
            .expect("skopeo");
        skopeo.push(start.elapsed());
        assert!(ok.success(), "skopeo copy failed");
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_dir_all(&layout);
    }
    println!(
        "\npull of a {layers}-layer image ({} MiB gzip, random data) from a loopback docker-registry, {runs} runs each:",
        (layers * size) >> 20
    );
    println!("{:<36} {:>10}", "tool", "median");
    println!(
        "{:<36} {:>10}",
        "atoll-runtime pull (fresh store)",
        ms(median(atoll))
    );
    println!(
        "{:<36} {:>10}",
        "skopeo copy docker:// oci: (fresh)",
        ms(median(skopeo))
    );
    println!("(atoll-runtime also unpacks nothing here: layers unpack at first start)");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: run
    // only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() || !Path::new(BUSYBOX).exists() {
        println!("skipped: needs root and {BUSYBOX}");
        return;
    }
    let clear_favordynmods = pure_cgroup2();
    let dir = tempfile::tempdir().expect("temp dir");
    bench_lifecycle(dir.path());
    restore_cgroup2(clear_favordynmods);
    bench_pull(dir.path());
}
