//! Updates against power cuts and maintenance windows (docs/updates.md).
//!
//! - Power cuts: QEMU is killed (SIGKILL: no shutdown of any kind) while
//!   the agent streams the release into slot B, twice at chosen payload
//!   offsets, and once the install is done and waits for its reboot. The
//!   repository is reached through a [`Gate`], a relay that holds the
//!   payload's answer at a given offset, so that each cut falls where the
//!   test wants it (inside a zstd frame) and the resume point is known
//!   exactly. Every time the host must boot slot A, good, and the agent
//!   must resume with an HTTP Range from the last frame boundary before
//!   the cut; the download and the slot write are one stream, so these
//!   cuts fall during both.
//! - The grubenv change cannot be hit by a kill (a few milliseconds), so
//!   the disk states such a cut leaves are made from the real disk after
//!   the last cut, offline: grubenv before the offer (as the install's
//!   first step left it), each sector-torn mix of before and after, after
//!   the offer with the agent's state not yet saved, and as it was. Each
//!   must boot a good slot (A, or B on trial once the offer is written),
//!   and the update must complete or be taken again.
//! - A maintenance window: the release is installed at once, the reboot
//!   waits for the window (the history says until when), no reboot
//!   before it opens, then 0.2.0 boots in slot B.
//!
//! Disks are private raw copies of the image (`disk::prepare_raw_copy`),
//! booted again by new VMs after each cut and edited with mtools and
//! e2fsprogs between boots.
//!
//! The power-cut test starts each download with a check through the host
//! API rather than waiting a minute or more for the agent's scheduled
//! check; the maintenance window test leaves the agent to its schedule
//! (its reboot is armed by the agent's own checks) and is the one that
//! shows the agent checks on its own.

use crate::common;

use std::error::Error;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::update::{
    check_installs_and_reboots, history_has, start_check, wait_update_status, REPO_IP, REPO_PORT,
};
use atoll_common::api::BootMode;
use atoll_common::bootstate::BootState;
use atoll_common::grubenv::{self, Grubenv};
use atoll_common::layout::{Slot, FW_CFG_CONFIG};
use qemu_tests::console::Pattern;
use qemu_tests::disk::{self, EnvFile, Ext4Image, RawCopy};
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::{self, UpdateRepo};
use qemu_tests::vm::{DiskFormat, NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// The agent's first check comes a minute (check_interval) plus up to 10 s
/// of jitter after it starts, which is after the boot is marked good; a
/// check through the API fetches the payload within seconds.
const CHECK_TIMEOUT: Duration = Duration::from_secs(150);
/// A whole download and install of the ~21 MiB payload under TCG, and
/// the reboot that follows.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the guest gets to take in what reached it before a cut: the
/// cut falls half a frame (~2 MiB) after the frame boundary the test
/// expects the resume from, so the guest must only have written and
/// checkpointed the frame before.
const SETTLE_BEFORE_CUT: Duration = Duration::from_secs(8);

/// The agent's state and progress files on DATA (the host's /var).
const STATE_JSON: &str = "/lib/atoll/update/state.json";
const PROGRESS_JSON: &str = "/lib/atoll/update/progress.json";

fn config(strategy: &str, window: &str) -> String {
    format!(
        r#"
[update]
server = "http://{REPO_IP}:{REPO_PORT}"
strategy = "{strategy}"
check_interval = "1m"
health_deadline = "3m"
{window}
[[containers]]
name = "probe"
image = "localhost/atoll/busybox:latest"
network = "none"
read_only = true
command = ["/bin/sh", "-c"]
args = ["trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
healthcheck = {{ command = ["test", "-d", "/"], interval = "2s" }}
"#
    )
}

/// A VM on `disk` (a raw file kept between boots) reaching the
/// repository at `port` on the host.
fn boot(name: &str, disk: &Path, port: u16, config: String) -> Result<Vm, VmError> {
    Vm::builder(name)
        .disk_file(disk, DiskFormat::Raw)
        .net_user(NetUser::new().guestfwd(REPO_IP, REPO_PORT, port))
        .fw_cfg_string(FW_CFG_CONFIG, config)
        .start()
}

fn ready_pattern(version: &str, slot: Slot) -> Result<Pattern, VmError> {
    Ok(Pattern::regex(&format!(
        r"atoll: ready version={} slot={slot}\b",
        regex::escape(version)
    ))?)
}

/// Waits for the ready line and checks the host booted `slot` in `mode`,
/// and that the boot before ended without a shutdown (a power cut).
fn ready_after_cut(vm: &Vm, slot: Slot, mode: BootMode) -> Result<String, VmError> {
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let status = common::check_ready_status(vm, &ready, slot, mode)?;
    vm.check(status.previous_shutdown == "unclean", || {
        format!(
            "the boot after a power cut should see an unclean shutdown, not {:?}",
            status.previous_shutdown
        )
    })?;
    Ok(ready.version)
}

// ---------------------------------------------------------------------------
// The payload's frames and the relay that holds it

/// The payload offsets where its zstd frames end (the last one is its
/// length): where the agent checkpoints and resumes. Parsed from the
/// frame headers and block headers (RFC 8878), without decompressing.
fn frame_ends(payload: &[u8]) -> Result<Vec<u64>, String> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    let byte = |i: usize| {
        payload
            .get(i)
            .copied()
            .ok_or_else(|| format!("payload ends inside a frame header at {i}"))
    };
    while at < payload.len() {
        if payload.get(at..at + 4) != Some(&[0x28, 0xb5, 0x2f, 0xfd][..]) {
            return Err(format!("no zstd frame magic at payload byte {at}"));
        }
        let fhd = byte(at + 4)?;
        let single_segment = fhd & 0x20 != 0;
        let checksum = fhd & 0x04 != 0;
        let dict_id = [0, 1, 2, 4][usize::from(fhd & 0x03)];
        let content_size = match fhd >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let mut i = at + 5 + usize::from(!single_segment) + dict_id + content_size;
        loop {
            let h =
                u32::from(byte(i)?) | u32::from(byte(i + 1)?) << 8 | u32::from(byte(i + 2)?) << 16;
            let last = h & 1 != 0;
            let size = (h >> 3) as usize;
            let body = match (h >> 1) & 3 {
                0 | 2 => size,
                1 => 1,
                _ => return Err(format!("reserved zstd block type at payload byte {i}")),
            };
            i += 3 + body;
            if last {
                break;
            }
        }
        if checksum {
            i += 4;
        }
        if i > payload.len() {
            return Err(format!("the frame at payload byte {at} runs past the end"));
        }
        at = i;
        ends.push(at as u64);
    }
    Ok(ends)
}

/// What a [`Gate`]'s connections share.
#[derive(Default)]
struct GateShared {
    /// Payload answers stop at this payload offset (u64::MAX: no hold).
    hold_at: AtomicU64,
    /// The highest payload offset sent to the guest.
    reached: AtomicU64,
    stop: AtomicBool,
}

/// A TCP relay on 127.0.0.1 between the guest's forward and the
/// repository's server. Metadata passes as it is; the body of a payload
/// answer (`GET /targets/…`) passes up to the payload offset set with
/// [`Gate::hold_at`] (counted from the request's `Range: bytes=N-`), then
/// waits there, as a stalled network would.
struct Gate {
    port: u16,
    shared: Arc<GateShared>,
}

impl Gate {
    fn start(upstream: u16) -> io::Result<Gate> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(GateShared::default());
        shared.hold_at.store(u64::MAX, Ordering::SeqCst);
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("gate-accept".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((guest, _)) => {
                            let s = Arc::clone(&s);
                            let _ = std::thread::Builder::new().name("gate-conn".into()).spawn(
                                move || {
                                    let _ = relay(guest, upstream, &s);
                                },
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Gate { port, shared })
    }

    fn hold_at(&self, offset: u64) {
        self.shared.hold_at.store(offset, Ordering::SeqCst);
    }

    fn open(&self) {
        self.hold_at(u64::MAX);
    }

    fn reached(&self) -> u64 {
        self.shared.reached.load(Ordering::SeqCst)
    }

    /// Waits until payload bytes up to `offset` went to the guest.
    fn wait_reached(&self, offset: u64, timeout: Duration) -> Result<(), String> {
        let until = Instant::now() + timeout;
        while self.reached() < offset {
            if Instant::now() >= until {
                return Err(format!(
                    "the guest did not fetch the payload up to byte {offset} within {} s \
                     (it got {})",
                    timeout.as_secs(),
                    self.reached()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The start of `Range: bytes=N-` in a request head, 0 without one.
fn range_start(head: &str) -> u64 {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
        .and_then(|(_, v)| v.trim().strip_prefix("bytes="))
        .and_then(|v| v.split('-').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn relay(guest: TcpStream, upstream: u16, s: &GateShared) -> io::Result<()> {
    guest.set_nonblocking(false)?;
    let up = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream))?;
    // Guest → server: the request (one per connection). The first chunk
    // tells a payload request and its Range; the answer waits for it.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut from_guest = guest.try_clone()?;
    let mut to_up = up.try_clone()?;
    std::thread::Builder::new()
        .name("gate-request".into())
        .spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            let mut head = String::new();
            let mut tx = Some(tx);
            loop {
                let n = match from_guest.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if tx.is_some() {
                    head.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if head.contains("\r\n\r\n") {
                        let payload = head.starts_with("GET /targets/");
                        if let Some(tx) = tx.take() {
                            let _ = tx.send((payload, range_start(&head)));
                        }
                    }
                }
                if to_up.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send((false, 0));
            }
            let _ = to_up.shutdown(Shutdown::Write);
        })?;
    let (payload, start) = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;

    // Server → guest: the head as it is, the body up to the hold.
    let mut from_up = up;
    let mut to_guest = guest;
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut head: Vec<u8> = Vec::new();
    let mut in_body = !payload;
    let mut offset = start;
    let mut eof = false;
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        if pending.is_empty() {
            if eof {
                break;
            }
            let n = from_up.read(&mut buf)?;
            if n == 0 {
                eof = true;
                if !head.is_empty() {
                    to_guest.write_all(&head)?;
                    head.clear();
                }
                continue;
            }
            if in_body {
                pending.extend_from_slice(&buf[..n]);
            } else {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending = head.split_off(end + 4);
                    to_guest.write_all(&head)?;
                    head.clear();
                    in_body = true;
                }
            }
            continue;
        }
        let n = if payload {
            let allowed = s.hold_at.load(Ordering::SeqCst).saturating_sub(offset);
            if allowed == 0 {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            pending
                .len()
                .min(usize::try_from(allowed).unwrap_or(usize::MAX))
        } else {
            pending.len()
        };
        to_guest.write_all(&pending[..n])?;
        pending.drain(..n);
        if payload {
            offset += n as u64;
            s.reached.fetch_max(offset, Ordering::SeqCst);
        }
    }
    let _ = to_guest.shutdown(Shutdown::Write);
    Ok(())
}

/// Payload requests the repository answered, oldest first: their Range
/// start (0 without one).
fn payload_ranges(server: &HttpFileServer) -> Vec<u64> {
    server
        .requests()
        .iter()
        .filter(|r| r.path_only().starts_with("/targets/"))
        .map(|r| {
            r.header("Range")
                .map_or(0, |v| range_start(&format!("Range: {v}")))
        })
        .collect()
}

fn serve_copy(repo: &UpdateRepo, dir: &Path) -> Result<(HttpFileServer, PathBuf), Box<dyn Error>> {
    let copy = repo.copy_to(&dir.join("repo"))?;
    let payload = copy.join("targets").join(repo.target_name());
    Ok((HttpFileServer::serve(&copy)?, payload))
}

/// The boot state a host shows the API: which slot is good, tries.
fn slot_good(vm: &Vm, slot: Slot) -> Result<(bool, u8), VmError> {
    let s = common::settled_status(vm)?;
    let st = common::slot_status(vm, &s, slot)?;
    Ok((st.good, st.tries_left))
}

// ---------------------------------------------------------------------------
// Power cuts

/// Cuts the power in the middle of frame `frame` (0-based) of the payload:
/// holds the payload there, lets the guest take in what it got, kills QEMU.
/// Returns the payload offset of the cut.
fn cut_inside_frame(
    vm: &Vm,
    gate: &Gate,
    ends: &[u64],
    frame: usize,
) -> Result<u64, Box<dyn Error>> {
    let from = if frame == 0 { 0 } else { ends[frame - 1] };
    let cut = from + (ends[frame] - from) / 2;
    gate.hold_at(cut);
    gate.wait_reached(cut, CHECK_TIMEOUT + UPDATE_TIMEOUT)
        .map_err(|e| vm.fail(e))?;
    std::thread::sleep(SETTLE_BEFORE_CUT);
    vm.kill()?;
    eprintln!(
        "power cut at payload byte {cut} (frame {} of {}), {} s after QEMU started",
        frame + 1,
        ends.len(),
        vm.started_at().elapsed().as_secs()
    );
    Ok(cut)
}

/// Waits for the payload request after the first `seen` ones and checks
/// that it resumes from `expected` (the last frame boundary, so the last
/// checkpoint, before the cut).
fn expect_resume(
    vm: &Vm,
    server: &HttpFileServer,
    ends: &[u64],
    seen: usize,
    expected: u64,
) -> Result<(), Box<dyn Error>> {
    let until = Instant::now() + CHECK_TIMEOUT;
    let mut ranges = payload_ranges(server);
    while ranges.len() <= seen {
        if Instant::now() >= until {
            return Err(vm
                .fail(format!(
                    "no payload request after the cut within {} s (so far: {ranges:?})",
                    CHECK_TIMEOUT.as_secs()
                ))
                .into());
        }
        std::thread::sleep(Duration::from_millis(500));
        ranges = payload_ranges(server);
    }
    let got = ranges[seen];
    vm.check(got == expected, || {
        format!(
            "the download should resume at byte {expected} (the frame boundary before the \
             cut; frames end at {ends:?}), it asked for Range bytes={got}- \
             (every payload request: {ranges:?})"
        )
    })?;
    Ok(())
}

/// A power cut twice during the download (and slot write), once after
/// the install, then every disk state a cut during the grubenv change can
/// leave: each boots a good slot, and the update completes.
#[test]
fn power_cuts_during_the_download_and_the_grubenv_change() -> TestResult {
    let started = Instant::now();
    let repo = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let (server, payload_path) = serve_copy(&repo, tmp.path())?;
    let payload = std::fs::read(&payload_path)?;
    let ends = frame_ends(&payload)?;
    if ends.len() < 4 {
        return Err(format!(
            "the test needs a payload of at least 4 zstd frames to cut inside, this one has {}",
            ends.len()
        )
        .into());
    }
    let gate = Gate::start(server.port())?;
    let disk = disk::prepare_raw_copy(&disk::base_image()?)?;
    let off = config("off", "");

    // 1. Version 1 on slot A starts the download; cut inside frame 2.
    let vm = boot(
        "update_power_1_first_cut",
        disk.path(),
        gate.port,
        off.clone(),
    )?;
    let first = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(first.slot == Slot::A, || format!("{:?}", first.line))?;
    let v1 = first.version.clone();
    // The check's answer never comes: the VM is killed while it downloads.
    let _check = start_check(&vm, CHECK_TIMEOUT + UPDATE_TIMEOUT)?;
    cut_inside_frame(&vm, &gate, &ends, 1)?;
    drop(vm);
    let seen = payload_ranges(&server).len();
    check_first_download(&server, seen)?;

    // 2. Slot A boots, good; the agent resumes at the end of frame 1;
    //    cut again inside frame 4.
    let vm = boot(
        "update_power_2_resume_and_cut",
        disk.path(),
        gate.port,
        off.clone(),
    )?;
    let v = ready_after_cut(&vm, Slot::A, BootMode::Good)?;
    vm.check(v == v1, || format!("slot A runs {v}, not {v1}"))?;
    let (b_good, b_tries) = slot_good(&vm, Slot::B)?;
    vm.check(!b_good && b_tries == 0, || {
        format!("the half-written slot B can boot: good {b_good}, tries {b_tries}")
    })?;
    let _check = start_check(&vm, CHECK_TIMEOUT + UPDATE_TIMEOUT)?;
    expect_resume(&vm, &server, &ends, seen, ends[0])?;
    cut_inside_frame(&vm, &gate, &ends, 3)?;
    drop(vm);
    let seen = payload_ranges(&server).len();

    // 3. Again slot A; the agent resumes at the end of frame 3 and
    //    finishes; strategy off: installed, waiting for a reboot. Cut.
    let vm = boot("update_power_3_finish", disk.path(), gate.port, off.clone())?;
    ready_after_cut(&vm, Slot::A, BootMode::Good)?;
    gate.open();
    let check = start_check(&vm, UPDATE_TIMEOUT)?;
    expect_resume(&vm, &server, &ends, seen, ends[2])?;
    let r = check.report(&vm)?;
    vm.check(
        r.outcome == format!("{} is installed; it boots at the next reboot", repo.version),
        || {
            format!(
                "the check should install {} and not reboot: {r:?}",
                repo.version
            )
        },
    )?;
    let s = wait_update_status(&vm, "the install finished", UPDATE_TIMEOUT, |s| {
        s.pending.is_some()
    })?;
    vm.check(
        s.next_boot == Slot::B
            && s.pending
                .as_ref()
                .is_some_and(|p| p.version == repo.version)
            && s.download.is_none()
            && history_has(&s, &format!("installed {}", repo.version)),
        || format!("unexpected status after the install: {s:?}"),
    )?;
    let installed = s
        .history
        .iter()
        .rev()
        .find(|e| e.what.starts_with("installed"))
        .map(|e| e.what.clone())
        .unwrap_or_default();
    vm.check(
        installed.contains(&format!("resumed at byte {}", ends[2])),
        || format!("the history should say where the install resumed: {installed:?}"),
    )?;
    vm.kill()?;
    drop(vm);
    eprintln!(
        "download cut twice and resumed: {} s so far",
        started.elapsed().as_secs()
    );

    // 4. The grubenv change, offline.
    grubenv_cuts(&repo, &disk, &server, &gate, &v1)?;
    eprintln!("whole test: {} s", started.elapsed().as_secs());
    Ok(())
}

fn check_first_download(server: &HttpFileServer, seen: usize) -> Result<(), Box<dyn Error>> {
    let ranges = payload_ranges(server);
    if seen != 1 || ranges.first() != Some(&0) {
        return Err(format!(
            "the first download should be one request from byte 0, got Range starts {ranges:?}"
        )
        .into());
    }
    Ok(())
}

/// The disk states a power cut during `BootEnv::offer` can leave.
///
/// The offer rewrites the live grubenv in place (one 1024-byte write and
/// an fsync; grubenv.good is not touched), after the slot was fsync'd and
/// progress.json removed, and before the agent saves its state with the
/// pending release. A disk writes whole sectors, so a cut leaves each of
/// the block's two sectors old or new: the states are the block before,
/// every sector mix, and after, with the agent's state either not yet
/// saved or saved.
fn grubenv_cuts(
    repo: &UpdateRepo,
    disk: &RawCopy,
    server: &HttpFileServer,
    gate: &Gate,
    v1: &str,
) -> TestResult {
    let image = disk.path();
    let after_bytes = disk::read_grubenv_bytes(image, EnvFile::Live)?;
    let after_env = Grubenv::parse(&after_bytes)?;
    let after = BootState::from_env(&after_env)?;
    let good = disk::read_boot_state(image, EnvFile::Good)?;
    // What the offer wrote: B on trial and first; the good copy keeps A.
    if !(after.order.first() == Some(&Slot::B)
        && !after.b.good
        && after.b.tries == atoll_common::bootstate::DEFAULT_TRIES
        && after.b.verity.len() == 64
        && after.a.good
        && good.order.first() == Some(&Slot::A)
        && !good.b.good
        && good.b.tries == 0
        && good.b.verity.is_empty())
    {
        return Err(format!(
            "unexpected grubenv after the install: live {after:?}, good copy {good:?}"
        )
        .into());
    }
    // Before the offer: the live block as the install's first step left
    // it (B unbootable, last), the rest as it is.
    let mut before = after.clone();
    before.b.good = false;
    before.b.tries = 0;
    before.b.verity.clear();
    before.order = vec![Slot::A, Slot::B];
    let mut before_env = after_env.clone();
    before.to_env(&mut before_env)?;
    let before_bytes = before_env.to_bytes()?;
    if before != good {
        return Err(format!(
            "the offer should change only slot B and ORDER: before {before:?}, good copy {good:?}"
        )
        .into());
    }

    // The agent's state as the cut found it: the release pending; no
    // progress file (removed before the offer).
    let data = Ext4Image::data(image);
    data.replay_journal()?;
    if data.exists(PROGRESS_JSON)? {
        return Err("progress.json is still there after the install".into());
    }
    let saved: serde_json::Value = serde_json::from_slice(&data.read(STATE_JSON)?)?;
    if saved["pending"]["version"] != repo.version.as_str() {
        return Err(format!("the saved state has no pending {}: {saved}", repo.version).into());
    }
    // Not yet saved: as it was during the install (the download at its
    // end, nothing pending, no history line for the install).
    let mut unsaved = saved.clone();
    let total = std::fs::metadata(repo.dir.join("targets").join(repo.target_name()))?.len();
    if let Some(o) = unsaved.as_object_mut() {
        o.remove("pending");
        o.insert(
            "download".into(),
            serde_json::json!({
                "name": repo.target_name(), "version": repo.version, "slot": "B",
                "done": total, "total": total,
            }),
        );
        if let Some(slots) = o.get_mut("slots").and_then(|s| s.as_object_mut()) {
            slots.remove("b");
        }
        if let Some(h) = o.get_mut("history").and_then(|h| h.as_array_mut()) {
            h.retain(|e| {
                !e["what"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("installed"))
            });
        }
    }
    let unsaved = serde_json::to_vec_pretty(&unsaved)?;

    // Sector-torn blocks that differ from both ends.
    let sectors = grubenv::SIZE / 512;
    let mut torn = Vec::new();
    for k in 1..sectors {
        for (head, tail) in [(&after_bytes, &before_bytes), (&before_bytes, &after_bytes)] {
            let mut mix = head[..512 * k].to_vec();
            mix.extend_from_slice(&tail[512 * k..]);
            if mix != before_bytes && mix != after_bytes && !torn.contains(&mix) {
                torn.push(mix);
            }
        }
    }
    eprintln!(
        "grubenv: the offer changes bytes {:?} of the block; {} distinct sector-torn states",
        changed_range(&before_bytes, &after_bytes),
        torn.len()
    );

    let copy = |name: &str, live: &[u8], state: Option<&[u8]>| -> Result<RawCopy, Box<dyn Error>> {
        let c = disk::prepare_raw_copy(image)?;
        disk::write_grubenv_bytes(c.path(), EnvFile::Live, live)?;
        if let Some(state) = state {
            Ext4Image::data(c.path()).write(STATE_JSON, state)?;
        }
        eprintln!("grubenv state {name}: prepared");
        Ok(c)
    };

    // a. Cut before the offer reached the disk: slot A, good; the agent
    //    installs the release again (from byte 0: no progress left) and,
    //    with strategy immediate, reboots into it.
    let c = copy("before the offer", &before_bytes, Some(&unsaved))?;
    before_offer_boot(c.path(), server, gate, repo, v1)?;

    // b. Torn blocks (none if the variables fit in one sector): GRUB
    //    boots a good slot whatever it reads.
    for (i, mix) in torn.iter().enumerate() {
        let c = copy("torn", mix, Some(&unsaved))?;
        let vm = boot(
            &format!("update_power_torn_{i}"),
            c.path(),
            gate.port,
            config("off", ""),
        )?;
        let ready = vm.wait_ready(BOOT_TIMEOUT)?;
        let mode = if ready.slot == Slot::A {
            BootMode::Good
        } else {
            BootMode::Trial
        };
        common::check_ready_status(&vm, &ready, ready.slot, mode)?;
        vm.quit()?;
    }

    // c. Cut after the offer, before the agent saved its state: slot B on
    //    trial, 0.2.0, marked good; no download left in the status.
    let c = copy(
        "after the offer, state not saved",
        &after_bytes,
        Some(&unsaved),
    )?;
    let vm = boot(
        "update_power_offered_unsaved",
        c.path(),
        gate.port,
        config("off", ""),
    )?;
    offered_boot(&vm, repo)?;
    // The agent forgets the download into the slot it now runs from when
    // it starts (before its first check).
    let s = wait_update_status(
        &vm,
        "the finished download gone from the status on slot B",
        CHECK_TIMEOUT,
        |s| s.current.slot == Slot::B && s.download.is_none(),
    )?;
    vm.check(s.pending.is_none() && s.next_boot == Slot::B, || {
        format!("unexpected status on slot B: {s:?}")
    })?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    drop(vm);

    // d. Cut after the state was saved (the disk as it is): slot B on
    //    trial, marked good, and the agent records the update.
    let vm = boot(
        "update_power_offered_saved",
        image,
        gate.port,
        config("off", ""),
    )?;
    offered_boot(&vm, repo)?;
    let s = wait_update_status(&vm, "the update settled", CHECK_TIMEOUT, |s| {
        history_has(s, &format!("{} booted good in slot B", repo.version))
    })?;
    vm.check(s.pending.is_none() && s.other.good, || {
        format!("unexpected status after the update: {s:?}")
    })?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

/// The first and last byte that differ.
fn changed_range(a: &[u8], b: &[u8]) -> Option<(usize, usize)> {
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let last = a.iter().zip(b).rposition(|(x, y)| x != y)?;
    Some((first, last))
}

/// Slot B on trial with 0.2.0 after a cut that left the offer written.
fn offered_boot(vm: &Vm, repo: &UpdateRepo) -> Result<(), VmError> {
    vm.wait_for(
        "atoll-grub: booting slot B (trial, tries left 2)",
        BOOT_TIMEOUT,
    )?;
    vm.wait_for(ready_pattern(&repo.version, Slot::B)?, BOOT_TIMEOUT)?;
    vm.wait_for("trial boot of slot B: containers healthy", BOOT_TIMEOUT)?;
    vm.wait_status("slot B marked good", common::SETTLE_TIMEOUT, |s| {
        s.slots.iter().any(|x| x.slot == Slot::B && x.good)
    })?;
    Ok(())
}

fn before_offer_boot(
    image: &Path,
    server: &HttpFileServer,
    gate: &Gate,
    repo: &UpdateRepo,
    v1: &str,
) -> TestResult {
    gate.open();
    let seen = payload_ranges(server).len();
    let vm = boot(
        "update_power_before_offer",
        image,
        gate.port,
        config("immediate", ""),
    )?;
    vm.wait_for("atoll-grub: booting slot A (good)", BOOT_TIMEOUT)?;
    let v = ready_after_cut(&vm, Slot::A, BootMode::Good)?;
    vm.check(v == v1, || format!("slot A runs {v}, not {v1}"))?;
    let (b_good, b_tries) = slot_good(&vm, Slot::B)?;
    vm.check(!b_good && b_tries == 0, || {
        format!("slot B can boot before the offer: good {b_good}, tries {b_tries}")
    })?;
    // A check takes the release again, from the start, and reboots.
    check_installs_and_reboots(&vm, &repo.version, UPDATE_TIMEOUT)?;
    vm.wait_for("atoll-updater: installing", CHECK_TIMEOUT)?;
    vm.wait_for(
        "atoll-grub: booting slot B (trial, tries left 2)",
        UPDATE_TIMEOUT,
    )?;
    vm.wait_for(ready_pattern(&repo.version, Slot::B)?, BOOT_TIMEOUT)?;
    vm.wait_for("trial boot of slot B: containers healthy", BOOT_TIMEOUT)?;
    vm.wait_status("slot B marked good", common::SETTLE_TIMEOUT, |s| {
        s.slots.iter().any(|x| x.slot == Slot::B && x.good)
    })?;
    let ranges = payload_ranges(server);
    vm.check(ranges.get(seen) == Some(&0), || {
        format!("the install after the cut should fetch from byte 0: {ranges:?}")
    })?;
    let s = wait_update_status(&vm, "the update settled", CHECK_TIMEOUT, |s| {
        history_has(s, &format!("{} booted good in slot B", repo.version))
    })?;
    vm.check(s.bad.is_empty() && s.download.is_none(), || {
        format!("unexpected status after the update: {s:?}")
    })?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Maintenance window

/// How long after the test starts the window opens: the agent's first
/// check (a minute after the boot is marked good) and the install must
/// be over by then.
const WINDOW_AFTER: Duration = Duration::from_secs(3 * 60);

/// The earliest the agent's first scheduled check may come after the
/// console says it started: check_interval (1m), less a little for the
/// console's timing.
const FIRST_CHECK_AFTER: Duration = Duration::from_secs(55);

/// `(hour, minute, weekday name)` of a UTC time in seconds since 1970.
fn utc_parts(secs: u64) -> (u64, u64, &'static str) {
    const DAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];
    let day = secs / 86_400;
    let in_day = secs % 86_400;
    (in_day / 3600, in_day % 3600 / 60, DAYS[(day % 7) as usize])
}

/// A window that opens a few minutes from now: the release is installed
/// at once, the reboot waits for the window (the history and the log say
/// until when), nothing reboots before it opens, then 0.2.0 boots in B.
#[test]
fn a_maintenance_window_defers_the_reboot() -> TestResult {
    let started = Instant::now();
    let repo = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let (server, _) = serve_copy(&repo, tmp.path())?;
    let disk = disk::prepare_raw_copy(&disk::base_image()?)?;

    // The next whole minute at least WINDOW_AFTER from now (the guest's
    // clock is the host's, UTC), on its own weekday (past midnight too).
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let opens = (now + WINDOW_AFTER.as_secs()).div_ceil(60) * 60;
    let (hour, minute, day) = utc_parts(opens);
    let window = format!(
        "\n[update.window]\ndays = [\"{day}\"]\nstart = \"{hour:02}:{minute:02}\"\n\
         length = \"30m\"\ntime_zone = \"UTC\"\n"
    );
    let opens_at = SystemTime::UNIX_EPOCH + Duration::from_secs(opens);
    let opens_text = atoll_common::time::format_utc(opens);
    eprintln!("window opens at {opens_text} ({day})");

    let vm = boot(
        "update_window",
        disk.path(),
        server.port(),
        config("window", &window),
    )?;
    let first = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(first.slot == Slot::A, || format!("{:?}", first.line))?;

    // Installed at once, the reboot waiting for the window.
    let s = wait_update_status(&vm, "the install", CHECK_TIMEOUT + UPDATE_TIMEOUT, |s| {
        s.pending.is_some()
    })?;
    let installed_at = SystemTime::now();
    // By the agent's own first check, a minute (check_interval) or more
    // after it started: the one test that shows the agent checks on its
    // schedule (the other update tests run their checks through the API).
    let agent = vm.console_matches("update agent started");
    let installing = vm.console_matches("atoll-updater: installing");
    let after = match (agent.first(), installing.first()) {
        (Some(a), Some(i)) => i.seen_at.checked_duration_since(a.seen_at),
        _ => None,
    };
    vm.check(after.is_some_and(|d| d >= FIRST_CHECK_AFTER), || {
        format!(
            "the install should come from the agent's first scheduled check, at least {} s \
             after it started: {after:?} after it",
            FIRST_CHECK_AFTER.as_secs()
        )
    })?;
    vm.check(installed_at < opens_at, || {
        format!(
            "the install finished only after the window opened at {opens_text}: \
             the test's margin ({} s) is too small for this machine",
            WINDOW_AFTER.as_secs()
        )
    })?;
    let waits = format!("the reboot waits for the maintenance window at {opens_text}");
    let s = if history_has(&s, &waits) {
        s
    } else {
        wait_update_status(
            &vm,
            "the reboot noted as waiting",
            Duration::from_secs(20),
            |s| history_has(s, &waits),
        )?
    };
    vm.check(
        s.next_boot == Slot::B
            && s.pending
                .as_ref()
                .is_some_and(|p| p.version == repo.version)
            && s.current.slot == Slot::A,
        || format!("unexpected status while waiting for the window: {s:?}"),
    )?;
    vm.wait_for(
        format!("{} is installed; rebooting at {opens_text}", repo.version).as_str(),
        Duration::from_secs(20),
    )?;
    eprintln!(
        "installed and waiting {} s after the start; the window opens in {} s",
        started.elapsed().as_secs(),
        opens_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
    );

    // No reboot before the window: B boots only once it is open.
    let booting_b = vm.wait_for(
        "atoll-grub: booting slot B (trial",
        opens_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + UPDATE_TIMEOUT,
    )?;
    let seen = SystemTime::now()
        .checked_sub(booting_b.seen_at.elapsed())
        .unwrap_or(UNIX_EPOCH);
    vm.check(seen >= opens_at, || {
        format!(
            "slot B booted {} s before the window opened at {opens_text}",
            opens_at.duration_since(seen).unwrap_or_default().as_secs()
        )
    })?;
    let boots = vm.console_matches("atoll-grub: booting");
    vm.check(boots.len() == 2, || {
        format!(
            "the host rebooted before the window: {:?}",
            boots.iter().map(|m| &m.line).collect::<Vec<_>>()
        )
    })?;
    vm.wait_for(ready_pattern(&repo.version, Slot::B)?, BOOT_TIMEOUT)?;
    vm.wait_for("trial boot of slot B: containers healthy", BOOT_TIMEOUT)?;
    vm.wait_status("slot B marked good", common::SETTLE_TIMEOUT, |s| {
        s.slots.iter().any(|x| x.slot == Slot::B && x.good)
    })?;
    let late = seen.duration_since(opens_at).unwrap_or_default();
    eprintln!(
        "rebooted {} s after the window opened; whole test {} s",
        late.as_secs(),
        started.elapsed().as_secs()
    );
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}
