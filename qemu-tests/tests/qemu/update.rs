//! Whole-system updates (docs/updates.md): PID 1 runs the update agent,
//! which finds a newer signed release in a repository served from the
//! host's loopback (through guestfwd), writes it into the other slot and
//! reboots into it; the trial boot is marked good once the containers are
//! healthy; a manual rollback through the API brings the old slot back and
//! keeps the release off; a tampered repository is refused with the slot
//! left alone; a release whose container stays unhealthy on its trial
//! boots is rolled back by the boot loader once its tries are spent, and
//! stays on the bad list.
//!
//! The release is cut from the same binaries by `image-build disk
//! --os-version` + `image-build release` ([`qemu_tests::update_repo`]).
//!
//! The tests here run the agent's checks through the host API
//! ([`common::update::start_check`]) instead of waiting a minute or more
//! for its scheduled ones; that the agent checks on its own schedule is
//! shown by `a_maintenance_window_defers_the_reboot` in update_power.rs,
//! which waits for its schedule anyway (its reboot is armed by the agent's
//! own checks).

use crate::common;

use std::error::Error;
use std::time::{Duration, Instant};

use crate::common::update::{
    check_installs_and_reboots, check_now, history_has, payload_requests, serve_copy, start_check,
    update, wait_update_status, CHECK_TIMEOUT, REPO_IP, REPO_PORT,
};
use atoll_common::api::{ContainerStatus, Request, Response, UpdateAction};
use atoll_common::layout::{Slot, FW_CFG_CONFIG};
use qemu_tests::console::Pattern;
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo;
use qemu_tests::vm::{NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// The download and install of a ~21 MiB payload under TCG and the reboot
/// take a few minutes.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);

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

/// a. A check on version 1 finds version 2, installs it into slot B and
/// reboots into it; the trial boot becomes good once the containers are
/// healthy; /var (the machine id, the agent's state) is kept. c. A manual
/// rollback through the API brings slot A back at the next reboot and puts
/// the release on the bad list, which the agent then leaves alone.
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

    // A check through the API installs into B and PID 1 reboots into it.
    let ready_b = Pattern::regex(&format!(
        r"atoll: ready version={} slot=B\b",
        regex::escape(&repo.version)
    ))?;
    check_installs_and_reboots(&vm, &repo.version, UPDATE_TIMEOUT)?;
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
    // A check leaves the bad release alone: nothing fetched, nothing
    // installed.
    let fetched = payload_requests(&server);
    let r = check_now(&vm, CHECK_TIMEOUT)?;
    vm.check(r.outcome == "up to date", || {
        format!("a check after the rollback should find nothing to take: {r:?}")
    })?;
    let s = r
        .status
        .ok_or_else(|| vm.fail("no status after the check"))?;
    vm.check(
        s.last_check.is_some()
            && s.last_check != checked_before
            && s.pending.is_none()
            && s.download.is_none()
            && s.last_error.is_none(),
        || format!("the agent took the bad release again: {s:?}"),
    )?;
    vm.check(payload_requests(&server) == fetched, || {
        "the bad release's payload was fetched again".into()
    })?;
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
    let answer = start_check(&vm, CHECK_TIMEOUT)?.answer(&vm)?;
    vm.check(
        answer.as_ref().is_err_and(|m| m.contains("signature")),
        || format!("the check should be refused naming the signature: {answer:?}"),
    )?;
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
    let answer = start_check(&vm, UPDATE_TIMEOUT)?.answer(&vm)?;
    vm.check(
        answer
            .as_ref()
            .is_err_and(|m| m.contains(&format!("release {} (", repo.version))),
        || format!("the check should refuse {}: {answer:?}", repo.version),
    )?;
    let s = wait_update_status(&vm, "the tampered payload refused", CHECK_TIMEOUT, |s| {
        history_has(s, &format!("refused {}", repo.version))
    })?;
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

/// The container of [`unhealthy_trial_boots_roll_back_and_the_release_stays_bad`]:
/// healthy while `/state/fail` does not exist, on a named volume (on /var,
/// so the marker outlives reboots and slot changes).
const GATED_CONTAINER: &str = "gated";
/// Its health check fails 2 × 2 s after the marker appears.
const GATED_HEALTH_DEADLINE: Duration = Duration::from_secs(30);

fn gated_config() -> String {
    format!(
        r#"
[update]
server = "http://{REPO_IP}:{REPO_PORT}"
strategy = "immediate"
check_interval = "1m"
health_deadline = "{}s"

[[containers]]
name = "{GATED_CONTAINER}"
image = "localhost/atoll/busybox:latest"
network = "none"
volumes = ["gated-state:/state"]
command = ["/bin/sh", "-c"]
args = ["trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
healthcheck = {{ command = ["/bin/sh", "-c", "test ! -e /state/fail"], interval = "2s", retries = 2 }}
"#,
        GATED_HEALTH_DEADLINE.as_secs()
    )
}

fn containers(vm: &Vm) -> Result<Vec<ContainerStatus>, VmError> {
    for r in vm.api(&Request::Containers)? {
        if let Response::Containers(c) = r {
            return Ok(c);
        }
    }
    Err(vm.fail("containers gave no list"))
}

/// Polls the container list until `name` has the health `health`.
fn wait_health(vm: &Vm, name: &str, health: &str, timeout: Duration) -> Result<(), VmError> {
    let until = Instant::now() + timeout;
    loop {
        let list = containers(vm)?;
        let row = list.iter().find(|c| c.name == name);
        if row.and_then(|c| c.health.as_deref()) == Some(health) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(vm.fail(format!(
                "container {name} not {health} within {} s: {row:?}",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `exec` in a container; its exit code.
fn exec(vm: &Vm, name: &str, args: &[&str]) -> Result<Option<i32>, VmError> {
    let req = Request::Exec {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        timeout_ms: Some(20_000),
    };
    let mut code = None;
    for r in vm.api(&req)? {
        match r {
            Response::ExecExit { code: c, .. } => code = c,
            Response::Error { message } => {
                return Err(vm.fail(format!("exec {args:?} in {name}: {message}")))
            }
            _ => {}
        }
    }
    Ok(code)
}

/// d. Boot assessment: the configured container is made unhealthy (a
/// marker file on its volume) before the agent installs 0.2.0; each trial
/// boot of slot B fails its health check and reboots unmarked, GRUB spends
/// the 3 tries and boots slot A (0.1.0) again. The agent then records
/// 0.2.0 as rolled back and bad, the API says so (status, history, the
/// host's slot table), and a check leaves the bad release alone.
#[test]
fn unhealthy_trial_boots_roll_back_and_the_release_stays_bad() -> TestResult {
    let repo = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let server = serve_copy(&repo, tmp.path())?;
    let vm = Vm::builder("update_unhealthy_trial")
        .net_user(NetUser::new().guestfwd(REPO_IP, REPO_PORT, server.port()))
        .fw_cfg_string(FW_CFG_CONFIG, gated_config())
        .start()?;
    let first = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(first.slot == Slot::A, || {
        format!("version 1 should boot from slot A: {:?}", first.line)
    })?;
    let v1 = first.version.clone();

    // Healthy until the marker exists; the marker goes in before any
    // check (the agent's first comes a minute after the boot is marked
    // good), then a check runs through the API.
    let health_timeout = Duration::from_secs(90);
    wait_health(&vm, GATED_CONTAINER, "healthy", health_timeout)?;
    let code = exec(&vm, GATED_CONTAINER, &["touch", "/state/fail"])?;
    vm.check(code == Some(0), || {
        format!("touch /state/fail exited with {code:?}")
    })?;
    wait_health(&vm, GATED_CONTAINER, "unhealthy", health_timeout)?;
    vm.check(
        vm.console_matches("atoll-updater: installing").is_empty(),
        || "the agent installed before the container was made unhealthy".into(),
    )?;

    // The check installs 0.2.0 into B and PID 1 reboots into it; every
    // trial boot fails its health check and reboots without marking B.
    check_installs_and_reboots(&vm, &repo.version, UPDATE_TIMEOUT)?;
    vm.wait_for("atoll-updater: installing", UPDATE_TIMEOUT)?;
    let ready_b = Pattern::regex(&format!(
        r"atoll: ready version={} slot=B\b",
        regex::escape(&repo.version)
    ))?;
    for left in [2, 1, 0] {
        let booting = format!("atoll-grub: booting slot B (trial, tries left {left})");
        vm.wait_for(booting.as_str(), UPDATE_TIMEOUT)?;
        vm.wait_for(ready_b.clone(), BOOT_TIMEOUT)?;
        let failed = vm.wait_for(
            "trial boot of slot B failed its health check",
            GATED_HEALTH_DEADLINE + BOOT_TIMEOUT,
        )?;
        vm.check(
            failed
                .line
                .contains(&format!("unhealthy: {GATED_CONTAINER}")),
            || {
                format!(
                    "the failed trial should name the unhealthy container: {:?}",
                    failed.line
                )
            },
        )?;
    }
    // Tries spent: GRUB boots slot A, still marked good.
    vm.wait_for("atoll-grub: booting slot A (good)", BOOT_TIMEOUT)?;
    let back = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(back.slot == Slot::A && back.version == v1, || {
        format!("the fallback should boot {v1} in slot A: {:?}", back.line)
    })?;
    for never in [
        "trial boot of slot B: containers healthy",
        "slot B marked good",
    ] {
        vm.check(vm.console_matches(never).is_empty(), || {
            format!("a failed trial boot went on: {never:?} on the console")
        })?;
    }

    let why = format!("its trial boot failed: containers unhealthy: {GATED_CONTAINER}");
    common::update::check_rolled_back_for_good(&vm, &server, &repo.version, &v1, &why)?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    vm.check(
        vm.console_matches("atoll-updater: installing").len() == 1,
        || "the agent installed the bad release again".into(),
    )?;
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
