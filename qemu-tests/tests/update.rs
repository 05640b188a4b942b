//! Whole-system updates (docs/updates.md): PID 1 runs the update agent,
//! which finds a newer signed release in a repository served from the
//! host's loopback (through guestfwd), writes it into the other slot and
//! reboots into it; the trial boot is marked good once the containers are
//! healthy; a manual rollback through the API brings the old slot back and
//! keeps the release off; a tampered repository is refused with the slot
//! left alone.
//!
//! The release is cut from the same binaries by `image-build disk
//! --os-version` + `image-build release` ([`qemu_tests::update_repo`]).

mod common;

use std::error::Error;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use atoll_common::api::{Request, Response, UpdateAction, UpdateReport, UpdateStatus};
use atoll_common::layout::{Slot, FW_CFG_CONFIG};
use qemu_tests::console::Pattern;
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::{self, UpdateRepo};
use qemu_tests::vm::{NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// Where the repository appears to the guest.
const REPO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const REPO_PORT: u16 = 8080;
/// The agent's first check comes within check_interval (1m) plus 10 s of
/// jitter; the download and install of a ~21 MiB payload under TCG and the
/// reboot take a few minutes more.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the agent may take to run a scheduled check (1m ± 10 s) and
/// report it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(150);

fn config(strategy: &str) -> String {
    format!(
        r#"
[update]
server = "http://{REPO_IP}:{REPO_PORT}"
strategy = "{strategy}"
check_interval = "1m"
health_deadline = "3m"

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

fn boot(name: &str, server: &HttpFileServer, strategy: &str) -> Result<Vm, VmError> {
    Vm::builder(name)
        .net_user(NetUser::new().guestfwd(REPO_IP, REPO_PORT, server.port()))
        .fw_cfg_string(FW_CFG_CONFIG, config(strategy))
        .start()
}

fn update(vm: &Vm, action: UpdateAction) -> Result<UpdateReport, VmError> {
    let out = vm.api(&Request::Update { action })?;
    for r in &out {
        match r {
            Response::Update(u) => return Ok((**u).clone()),
            Response::Error { message } => {
                return Err(vm.fail(format!("update {action:?} refused: {message}")))
            }
            _ => {}
        }
    }
    Err(vm.fail(format!("no update report for {action:?}: {out:?}")))
}

/// Polls `update status` every 2 s until `done` holds for it.
fn wait_update_status(
    vm: &Vm,
    what: &str,
    timeout: Duration,
    done: impl Fn(&UpdateStatus) -> bool,
) -> Result<UpdateStatus, VmError> {
    let until = Instant::now() + timeout;
    loop {
        // The service answers only once the boot is marked good.
        let last = match update(vm, UpdateAction::Status) {
            Ok(UpdateReport {
                status: Some(s), ..
            }) => {
                if done(&s) {
                    return Ok(s);
                }
                format!("{s:?}")
            }
            Ok(r) => format!("{r:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= until {
            return Err(vm.fail(format!(
                "{what}: not within {} s; last update status: {last}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn history_has(s: &UpdateStatus, text: &str) -> bool {
    s.history.iter().any(|e| e.what.contains(text))
}

fn serve_copy(repo: &UpdateRepo, dir: &Path) -> Result<HttpFileServer, Box<dyn Error>> {
    let copy = repo.copy_to(&dir.join("repo"))?;
    Ok(HttpFileServer::serve(&copy)?)
}

/// a. Version 1 finds version 2, installs it into slot B and reboots into
/// it; the trial boot becomes good once the containers are healthy; /var
/// (the machine id, the agent's state) is kept. c. A manual rollback
/// through the API brings slot A back at the next reboot and puts the
/// release on the bad list, which the agent then leaves alone.
#[test]
fn finds_installs_and_boots_the_next_release_then_rolls_back_by_hand() -> TestResult {
    let repo = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let server = serve_copy(&repo, tmp.path())?;
    let vm = boot("update_and_rollback", &server, "immediate")?;
    let first = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(first.slot == Slot::A, || {
        format!("version 1 should boot from slot A: {:?}", first.line)
    })?;
    let v1 = first.version.clone();
    vm.check(v1 != repo.version, || {
        format!("the base image already says {v1}")
    })?;
    let before = common::settled_status(&vm)?;

    // The agent checks, installs into B and PID 1 reboots into it.
    let ready_b = Pattern::regex(&format!(
        r"atoll: ready version={} slot=B\b",
        regex::escape(&repo.version)
    ))?;
    vm.wait_for("atoll-updater: installing", UPDATE_TIMEOUT)?;
    vm.wait_for("atoll-grub: booting slot B (trial", UPDATE_TIMEOUT)?;
    vm.wait_for(ready_b, BOOT_TIMEOUT)?;
    vm.wait_for("trial boot of slot B: containers healthy", BOOT_TIMEOUT)?;
    let after = vm.wait_status("slot B marked good", common::SETTLE_TIMEOUT, |s| {
        s.slots.iter().any(|x| x.slot == Slot::B && x.good)
    })?;
    vm.check(after.machine_id == before.machine_id, || {
        format!(
            "/var was not kept: machine id {} became {}",
            before.machine_id, after.machine_id
        )
    })?;
    vm.check(after.version == repo.version, || {
        format!("status.version {} after the update", after.version)
    })?;
    // The agent's state from before the reboot (on /var) says it installed
    // the release; the agent settles it as booted good.
    let s = wait_update_status(&vm, "the update settled", CHECK_TIMEOUT, |s| {
        history_has(s, &format!("{} booted good in slot B", repo.version))
    })?;
    vm.check(
        history_has(&s, &format!("installed {}", repo.version)),
        || format!("the install from before the reboot is not in the history: {s:?}"),
    )?;
    vm.check(
        s.current.slot == Slot::B
            && s.current.version.as_deref() == Some(repo.version.as_str())
            && s.other.good,
        || format!("unexpected slots after the update: {s:?}"),
    )?;

    // c. Roll back by hand.
    let r = update(&vm, UpdateAction::Rollback)?;
    vm.check(r.outcome.contains("slot A"), || {
        format!("the rollback should name slot A: {r:?}")
    })?;
    let s = r
        .status
        .ok_or_else(|| vm.fail("no status after the rollback"))?;
    vm.check(s.next_boot == Slot::A, || {
        format!("slot A should boot next: {s:?}")
    })?;
    vm.check(s.bad.contains_key(&repo.version), || {
        format!("{} should be on the bad list: {s:?}", repo.version)
    })?;
    let checked_before = s.last_check.clone();
    vm.reboot()?;
    let back = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(back.slot == Slot::A && back.version == v1, || {
        format!("the rollback should boot {v1} in slot A: {:?}", back.line)
    })?;
    let s = wait_update_status(&vm, "the rollback reported", CHECK_TIMEOUT, |s| {
        s.current.slot == Slot::A && history_has(s, "manual rollback")
    })?;
    vm.check(s.bad.contains_key(&repo.version), || {
        format!("{} left the bad list: {s:?}", repo.version)
    })?;
    // The next scheduled check leaves the bad release alone.
    let s = wait_update_status(&vm, "a check after the rollback", CHECK_TIMEOUT, |s| {
        s.last_check.is_some() && s.last_check != checked_before
    })?;
    vm.check(
        s.pending.is_none() && s.download.is_none() && s.last_error.is_none(),
        || format!("the agent took the bad release again: {s:?}"),
    )?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

/// b. A repository whose timestamp signature does not verify, then one
/// whose payload does not match its hash: both refused with a clear log
/// line, nothing offered to the boot loader, slot A still boots next.
#[test]
fn tampered_metadata_and_payload_are_refused() -> TestResult {
    let repo = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let server = serve_copy(&repo, tmp.path())?;
    let served = tmp.path().join("repo");

    // A bad signature: one hex digit of timestamp.json's signature changed.
    let ts_path = served.join("timestamp.json");
    let ts = std::fs::read_to_string(&ts_path)?;
    std::fs::write(&ts_path, tamper_signature(&ts)?)?;

    let vm = boot("update_refused", &server, "immediate")?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(ready.slot == Slot::A, || format!("{:?}", ready.line))?;
    let s = wait_update_status(&vm, "the bad signature refused", CHECK_TIMEOUT, |s| {
        s.last_error.is_some()
    })?;
    let e = s.last_error.clone().unwrap_or_default();
    vm.check(e.contains("signature"), || {
        format!("the refusal should name the signature: {e:?}")
    })?;
    vm.check(s.pending.is_none() && s.next_boot == Slot::A, || {
        format!("something was offered after a refused signature: {s:?}")
    })?;
    vm.wait_for(
        "atoll-updater: update check failed",
        Duration::from_secs(10),
    )?;
    vm.check(
        !server
            .requests()
            .iter()
            .any(|r| r.path_only().starts_with("/targets/")),
        || "the payload was fetched although the metadata was refused".into(),
    )?;

    // Good metadata, a payload that differs from its hash (same length).
    std::fs::write(&ts_path, ts)?;
    let payload = served.join("targets").join(repo.target_name());
    let mut bytes = std::fs::read(&payload)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&payload, bytes)?;
    let s = wait_update_status(
        &vm,
        "the tampered payload refused",
        CHECK_TIMEOUT + UPDATE_TIMEOUT,
        |s| history_has(s, &format!("refused {}", repo.version)),
    )?;
    let e = s.last_error.clone().unwrap_or_default();
    // Caught by the zstd frame checksum or the payload's sha256.
    vm.check(e.contains("sha256") || e.contains("tampered"), || {
        format!("the refusal should name the hash: {e:?}")
    })?;
    vm.check(
        s.pending.is_none() && s.next_boot == Slot::A && !s.other.good && s.other.tries == 0,
        || format!("the refused slot B was offered to the boot loader: {s:?}"),
    )?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

/// `timestamp.json` with the last hex digit of its first signature changed.
fn tamper_signature(text: &str) -> Result<String, Box<dyn Error>> {
    let key = "\"sig\"";
    let at = text.find(key).ok_or("no signature in timestamp.json")?;
    let open = text[at + key.len()..]
        .find('"')
        .map(|i| at + key.len() + i + 1)
        .ok_or("no signature value")?;
    let len = text[open..].find('"').ok_or("unterminated signature")?;
    let last = open + len - 1;
    let c = text.as_bytes()[last];
    let swapped = if c == b'0' { '1' } else { '0' };
    let mut out = text.to_string();
    out.replace_range(last..=last, &swapped.to_string());
    Ok(out)
}
