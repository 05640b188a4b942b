//! Apply throughput of the update agent against `curl | sha256sum | dd`,
//! side by side, and the payload size of a release (docs/BENCHMARKS.md,
//! "Updates").
//!
//! `cargo bench -p atoll-updater --bench apply`, after
//! `./scripts/build-image.sh` (it needs `target/release/image-build` and the
//! slot image, build.json and development keys it leaves in
//! `target/atoll/`). `ATOLL_BENCH_RUNS=N` sets the rounds (default 9);
//! `ATOLL_BENCH_DIR` where the scratch files go (default the system's
//! temporary directory; the slot files are written there, fsync'd);
//! `ATOLL_BENCH_KEEP=1` keeps that directory.
//!
//! 1. A real release is cut from the built slot image with `image-build
//!    release` into a fresh repository (zstd frames of 4 MiB of slot,
//!    signed metadata), and its sizes are printed.
//! 2. The repository is served on 127.0.0.1 by `python3 -m http.server`.
//! 3. Each round runs these three, the first one rotating:
//!    - the agent: the release binary `atoll-updater check-once` (the
//!      agent's whole check: the signed metadata fetched and verified, the
//!      payload streamed, decompressed, both sha256s checked, written into
//!      a regular file standing in for slot B with an fsync every 4 MiB
//!      frame and at the end, then grubenv offered) on a fresh host
//!      directory (ESP with the grubenv pair, /var state, slot files);
//!    - the issue's peer, the same payload through
//!      `curl -s URL | tee >(sha256sum) | zstd -dc | tee >(sha256sum) | dd of=FILE bs=1M conv=fsync`:
//!      the same transfer, both hashes, the same decompression and one
//!      fsync at the end, without the metadata;
//!    - the same pipeline with `openssl dgst -sha256` for both hashes
//!      (coreutils 9.1's sha256sum does not use the CPU's SHA extensions;
//!      OpenSSL and the agent's sha2 do), so that the agent also meets
//!      the fastest hasher the machine has.
//!
//!    Both write into a new sparse file of the slot's size; both results
//!    are checked against the release's hashes after the clock stops.
//!
//! Figures are slot MB/s (10^6 bytes of slot image written per second of
//! wall time, process start to exit) and their ratio; medians over the
//! rounds. The machine is shared: read them side by side.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use atoll_common::bootstate::BootState;
use atoll_common::grubenv::Grubenv;
use sha2::{Digest, Sha256};

/// The agent under test, built with the bench (release) profile.
const AGENT: &str = env!("CARGO_BIN_EXE_atoll-updater");
/// Every round's process is killed after this long.
const ROUND_TIMEOUT: Duration = Duration::from_secs(180);
/// The issue's targets.
const TARGET_RATIO: f64 = 0.90;
const TARGET_PAYLOAD: u64 = 40_000_000;
/// The peers: the issue's `sha256sum` (coreutils), and OpenSSL's, which
/// uses the CPU's SHA extensions as the agent's sha2 does.
const PEERS: [(&str, &str); 2] = [
    ("sha256sum", "sha256sum"),
    ("openssl", "openssl dgst -sha256 -r"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("apply bench: {what}");
    std::process::exit(1);
}

fn need(path: &Path, hint: &str) {
    if !path.exists() {
        fail(format!("{} is missing: {hint}", path.display()));
    }
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The first `len` bytes of `path`, hashed.
fn sha256_prefix(path: &Path, len: u64) -> String {
    let f = std::fs::File::open(path).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
    let mut r = f.take(len);
    let mut h = Sha256::new();
    std::io::copy(&mut r, &mut h).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
    hex::encode(h.finalize())
}

/// Waits for `child`, killing it after [`ROUND_TIMEOUT`].
fn wait_bounded(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > ROUND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                fail(format!("{what}: no result within {ROUND_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => fail(format!("{what}: {e}")),
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| fail(format!("{what}: {e}")))
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("{what}: cannot start: {e}")));
    let out = wait_bounded(child, what);
    if !out.status.success() {
        fail(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    out
}

/// The release as targets.json lists it.
#[derive(Debug)]
struct Cut {
    repo: PathBuf,
    name: String,
    version: String,
    payload_len: u64,
    payload_sha: String,
    slot_len: u64,
    slot_sha: String,
    /// Bytes of metadata a host fetches for this release (timestamp,
    /// snapshot, targets).
    metadata_len: u64,
    seconds: f64,
}

fn cut_release(scratch: &Path) -> Cut {
    let root = workspace();
    let image_build = root.join("target/release/image-build");
    let keys = root.join("target/atoll/keys");
    let slot = root.join("target/atoll/work/slot.img");
    let build_json = root.join("target/atoll/build.json");
    let hint = "run ./scripts/build-image.sh first";
    for p in [&image_build, &keys, &slot, &build_json] {
        need(p, hint);
    }
    // Copies, so that a rebuild in target/atoll meanwhile cannot mix two
    // builds.
    let (slot_copy, build_copy) = (scratch.join("slot.img"), scratch.join("build.json"));
    for (from, to) in [(&slot, &slot_copy), (&build_json, &build_copy)] {
        std::fs::copy(from, to).unwrap_or_else(|e| fail(format!("{from:?}: {e}")));
    }
    let repo = scratch.join("repo");
    let start = Instant::now();
    run(
        Command::new(&image_build)
            .current_dir(&root)
            .arg("release")
            .arg("--keys")
            .arg(&keys)
            .arg("--repo")
            .arg(&repo)
            .arg("--slot")
            .arg(&slot_copy)
            .arg("--build-json")
            .arg(&build_copy),
        "image-build release",
    );
    let seconds = start.elapsed().as_secs_f64();
    let read_json = |name: &str| -> serde_json::Value {
        let path = repo.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| fail(format!("{path:?}: {e}")))
    };
    let timestamp = read_json("timestamp.json");
    let snap_v = timestamp["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap_or_else(|| fail("timestamp.json names no snapshot version"));
    let snapshot_name = format!("{snap_v}.snapshot.json");
    let snapshot = read_json(&snapshot_name);
    let targets_v = snapshot["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap_or_else(|| fail("snapshot.json names no targets version"));
    let targets_name = format!("{targets_v}.targets.json");
    let targets = read_json(&targets_name);
    let listed = targets["signed"]["targets"]
        .as_object()
        .unwrap_or_else(|| fail("targets.json lists no targets"));
    let (name, t) = listed
        .iter()
        .next()
        .unwrap_or_else(|| fail("targets.json lists no targets"));
    let metadata_len = ["timestamp.json", &snapshot_name, &targets_name]
        .iter()
        .map(|f| std::fs::metadata(repo.join(f)).map_or(0, |m| m.len()))
        .sum();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or_default();
    Cut {
        name: name.clone(),
        version: s(&t["custom"]["version"]),
        payload_len: u(&t["length"]),
        payload_sha: s(&t["hashes"]["sha256"]),
        slot_len: u(&t["custom"]["slot_length"]),
        slot_sha: s(&t["custom"]["slot_sha256"]),
        metadata_len,
        repo,
        seconds,
    }
}

/// `python3 -m http.server` on 127.0.0.1, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Server {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| fail(format!("no free port: {e}")))
        .port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(format!("python3 -m http.server: {e}")));
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}/"),
    };
    let start = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            fail("python3 -m http.server did not listen within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// A new sparse file of `len` bytes standing in for a slot partition.
fn slot_file(path: &Path, len: u64) {
    let _ = std::fs::remove_file(path);
    let f = std::fs::File::create(path).unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
    f.set_len(len)
        .unwrap_or_else(|e| fail(format!("{path:?}: {e}")));
}

/// A fresh host for the agent: slot A booted and good, B empty; returns
/// the host directory.
fn host(dir: &Path, cut: &Cut) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/atoll")).unwrap_or_else(|e| fail(e));
    std::fs::create_dir_all(dir.join("state")).unwrap_or_else(|e| fail(e));
    let mut state = BootState::fresh(&"0".repeat(64));
    state.b.good = false;
    state.b.verity.clear();
    let mut env = Grubenv::new();
    state.to_env(&mut env).unwrap_or_else(|e| fail(e));
    let bytes = env.to_bytes().unwrap_or_else(|e| fail(e));
    std::fs::write(esp.join("EFI/atoll/grubenv"), &bytes).unwrap_or_else(|e| fail(e));
    std::fs::write(esp.join("EFI/atoll/grubenv.good"), &bytes).unwrap_or_else(|e| fail(e));
    slot_file(&dir.join("slot-a.img"), cut.slot_len);
    slot_file(&dir.join("slot-b.img"), cut.slot_len);
    dir.to_path_buf()
}

/// One install by the agent; returns its wall time.
fn agent_round(scratch: &Path, server: &Server, cut: &Cut) -> Duration {
    let dir = host(&scratch.join("host"), cut);
    let root_json = workspace().join("target/atoll/keys/root.json");
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config")
        .arg(dir.join("no-config.toml"))
        .arg("--server")
        .arg(&server.url)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--machine-id", "bench", "--slot", "A", "--boot-id", "bench"])
        .args(["--running-version", "0.0.1", "--strategy", "immediate"])
        .arg("--esp")
        .arg(dir.join("esp"))
        .arg("--device-a")
        .arg(dir.join("slot-a.img"))
        .arg("--device-b")
        .arg(dir.join("slot-b.img"))
        .arg("--trusted-root")
        .arg(&root_json)
        .arg("check-once");
    let start = Instant::now();
    let out = run(&mut cmd, "atoll-updater check-once");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.contains("reboot_now") {
        fail(format!(
            "the agent did not install: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let written = sha256_prefix(&dir.join("slot-b.img"), cut.slot_len);
    if written != cut.slot_sha {
        fail("the agent's slot B does not hash to slot_sha256");
    }
    took
}

/// One `curl | HASH | zstd -dc | HASH | dd` with `hash` (`sha256sum`, or
/// `openssl dgst -sha256 -r`); returns its wall time.
fn peer_round(scratch: &Path, server: &Server, cut: &Cut, hash: &str) -> Duration {
    let out = scratch.join("peer-slot.img");
    slot_file(&out, cut.slot_len);
    let payload_sum = scratch.join("peer-payload.sha256");
    let slot_sum = scratch.join("peer-slot.sha256");
    let _ = std::fs::remove_file(&payload_sum);
    let _ = std::fs::remove_file(&slot_sum);
    let url = format!("{}targets/{}", server.url, cut.name);
    // bash does not wait for process substitutions: the clock runs until
    // both sums are written (a sum is one write at the hasher's end).
    let script = format!(
        r#"set -euo pipefail
curl -s --fail --max-time 120 "$1" | tee >({hash} > "$2") | zstd -dc \
  | tee >({hash} > "$3") | dd of="$4" bs=1M conv=fsync status=none
until [ -s "$2" ] && [ -s "$3" ]; do sleep 0.001; done"#
    );
    let start = Instant::now();
    run(
        Command::new("bash")
            .args(["-c", &script, "peer"])
            .arg(&url)
            .arg(&payload_sum)
            .arg(&slot_sum)
            .arg(&out),
        &format!("curl | {hash} | zstd -dc | {hash} | dd"),
    );
    let took = start.elapsed();
    let first_word = |p: &Path| -> String {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    if first_word(&payload_sum) != cut.payload_sha || first_word(&slot_sum) != cut.slot_sha {
        fail(format!("the peer's sums ({hash}) do not match the release"));
    }
    if sha256_prefix(&out, cut.slot_len) != cut.slot_sha {
        fail("the peer's slot file does not hash to slot_sha256");
    }
    took
}

/// The machine is shared: its load goes with the figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mb(bytes: u64) -> String {
    format!(
        "{bytes} bytes = {:.2} MB = {:.2} MiB",
        bytes as f64 / 1e6,
        bytes as f64 / f64::from(1 << 20)
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: run
    // only under `cargo bench`, and skip for a filter that is not ours.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench")
        || args
            .iter()
            .any(|a| !a.starts_with("--") && !"apply".contains(a.as_str()))
    {
        return;
    }
    let runs: usize = std::env::var("ATOLL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9)
        .max(1);
    for tool in [
        "python3",
        "curl",
        "zstd",
        "dd",
        "sha256sum",
        "openssl",
        "tee",
        "bash",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            fail(format!("{tool} is not installed"));
        }
    }
    let scratch = match std::env::var_os("ATOLL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .unwrap_or_else(|e| fail(format!("scratch directory: {e}")));
    // ATOLL_BENCH_KEEP=1 leaves the repository and the last host behind.
    let scratch = if std::env::var_os("ATOLL_BENCH_KEEP").is_some() {
        let kept = scratch.keep();
        eprintln!("apply bench: keeping {}", kept.display());
        kept
    } else {
        scratch.path().to_path_buf()
    };
    let scratch = &scratch;

    let cut = cut_release(scratch);
    println!(
        "Release {} ({}), cut by image-build release in {:.2} s:",
        cut.version, cut.name, cut.seconds
    );
    println!("  payload (zstd, transferred): {}", mb(cut.payload_len));
    println!("  slot image (written):        {}", mb(cut.slot_len));
    println!(
        "  metadata per check:          {} bytes (timestamp, snapshot, targets)",
        cut.metadata_len
    );
    let transfer = cut.payload_len + cut.metadata_len;
    println!(
        "  payload target < 40 MB:      {} ({:.2} MB transferred per release)",
        if transfer < TARGET_PAYLOAD {
            "met"
        } else {
            "NOT met"
        },
        transfer as f64 / 1e6
    );
    if sha256_file(&cut.repo.join("targets").join(&cut.name)) != cut.payload_sha {
        fail("the payload does not hash to targets.json's sha256");
    }

    let server = serve(&cut.repo);
    println!("load average at the start: {}", loadavg());
    println!(
        "\nServing {} at {} (python3 -m http.server); {runs} rounds after one warm-up, \
         rotating the order",
        cut.repo.display(),
        server.url
    );
    // Warm-up: page cache, the server's imports, the binaries.
    agent_round(scratch, &server, &cut);
    for (_, hash) in PEERS {
        peer_round(scratch, &server, &cut, hash);
    }

    let rate = |d: Duration| cut.slot_len as f64 / 1e6 / d.as_secs_f64();
    // [agent, peers...] MB/s per round.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 1 + PEERS.len()];
    println!(
        "round  {:>12}  {:>12}  {:>12}  (seconds, slot MB/s)",
        "agent", PEERS[0].0, PEERS[1].0
    );
    for i in 0..runs {
        let mut took = vec![Duration::ZERO; 1 + PEERS.len()];
        // Rotate who goes first, so that load drifts fall on all alike.
        for k in 0..took.len() {
            let who = (i + k) % took.len();
            took[who] = match who {
                0 => agent_round(scratch, &server, &cut),
                p => peer_round(scratch, &server, &cut, PEERS[p - 1].1),
            };
        }
        let cells: Vec<String> = took
            .iter()
            .map(|d| format!("{:>5.3} {:>6.1}", d.as_secs_f64(), rate(*d)))
            .collect();
        println!("{:>5}  {}", i + 1, cells.join("  "));
        for (r, d) in rates.iter_mut().zip(&took) {
            r.push(rate(*d));
        }
    }
    println!("load average at the end: {}", loadavg());
    let agent = median(rates[0].clone());
    println!("\nmedians of {runs} rounds (slot MB/s = 10^6 slot bytes written per second):");
    println!("  {:<34}{agent:>7.1} MB/s", "atoll-updater check-once");
    for (p, (name, hash)) in PEERS.iter().enumerate() {
        let ratios: Vec<f64> = rates[0]
            .iter()
            .zip(&rates[p + 1])
            .map(|(a, b)| a / b)
            .collect();
        let peer = median(rates[p + 1].clone());
        println!(
            "  {:<34}{peer:>7.1} MB/s   agent/peer {:.2} \
             (median of per-round ratios; {:.2} from the medians)  [{hash}]",
            format!("curl | {name} | zstd -dc | dd"),
            median(ratios),
            agent / peer
        );
    }
    let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| a / b).collect();
    let r = median(ratios);
    println!(
        "apply throughput target (>= {:.0}% of curl | sha256sum | dd): {} ({:.0}%)",
        TARGET_RATIO * 100.0,
        if r >= TARGET_RATIO { "met" } else { "NOT met" },
        r * 100.0
    );
}
