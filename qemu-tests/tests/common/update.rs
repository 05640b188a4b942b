//! The update agent through the host API, for the update tests.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use atoll_common::api::{BootMode, Request, Response, UpdateAction, UpdateReport, UpdateStatus};
use atoll_common::layout::Slot;
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::UpdateRepo;
use qemu_tests::vm::{Vm, VmError};

/// Where the test's update repository appears to the guest (guestfwd).
pub const REPO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const REPO_PORT: u16 = 8080;

/// How long the agent may take to run a scheduled check (1m ± 10 s) and
/// report it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(150);

/// One update request; its report, or the host's refusal as an error.
pub fn update(vm: &Vm, action: UpdateAction) -> Result<UpdateReport, VmError> {
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

/// The agent's status.
pub fn update_status(vm: &Vm) -> Result<UpdateStatus, VmError> {
    update(vm, UpdateAction::Status)?
        .status
        .ok_or_else(|| vm.fail("update status: no status in the report"))
}

/// Polls `update status` every 2 s until `done` holds for it (the service
/// answers only once the boot is marked good).
pub fn wait_update_status(
    vm: &Vm,
    what: &str,
    timeout: Duration,
    done: impl Fn(&UpdateStatus) -> bool,
) -> Result<UpdateStatus, VmError> {
    let until = Instant::now() + timeout;
    loop {
        let last = match update_status(vm) {
            Ok(s) if done(&s) => return Ok(s),
            Ok(s) => format!("{s:?}"),
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

/// Whether the agent's history has an event saying `text`.
pub fn history_has(s: &UpdateStatus, text: &str) -> bool {
    s.history.iter().any(|e| e.what.contains(text))
}

/// Serves a copy of `repo` (made under `dir`, so a test may change it).
pub fn serve_copy(
    repo: &UpdateRepo,
    dir: &std::path::Path,
) -> Result<HttpFileServer, Box<dyn std::error::Error>> {
    let copy = repo.copy_to(&dir.join("repo"))?;
    Ok(HttpFileServer::serve(&copy)?)
}

/// How many payload requests the repository has answered.
pub fn payload_requests(server: &HttpFileServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path_only().starts_with("/targets/"))
        .count()
}

/// After the trial boots of `version` in slot B failed and GRUB fell back:
/// the host runs `v1` from slot A (good), B is not good with no tries left;
/// the agent has recorded `version` as rolled back and bad and says so (its
/// status, a reason saying `why`, and history); and a check finds
/// `version` again and leaves it alone: nothing fetched from `server`,
/// nothing offered.
pub fn check_rolled_back_for_good(
    vm: &Vm,
    server: &HttpFileServer,
    version: &str,
    v1: &str,
    why: &str,
) -> Result<(), VmError> {
    // The host's slot table: A booted (good), B not good, no tries left.
    let host = super::settled_status(vm)?;
    let b = host.slots.iter().find(|x| x.slot == Slot::B);
    vm.check(
        host.booted_slot == Some(Slot::A)
            && host.boot_mode == BootMode::Good
            && b.is_some_and(|b| !b.good && b.tries_left == 0),
        || format!("unexpected boot state after the fallback: {host:?}"),
    )?;

    // The agent settles the install at its start: rolled back, bad.
    let s = wait_update_status(vm, "the rollback recorded", CHECK_TIMEOUT, |s| {
        s.current.slot == Slot::A && s.bad.contains_key(version)
    })?;
    let reason = s.bad.get(version).map(|b| b.reason.clone());
    vm.check(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("came back on slot A") && r.contains(why)),
        || format!("the bad release's reason should say what happened and {why:?}: {reason:?}"),
    )?;
    vm.check(
        s.current.version.as_deref() == Some(v1)
            && s.next_boot == Slot::A
            && !s.other.good
            && s.other.tries == 0
            && s.pending.is_none(),
        || format!("unexpected update status after the fallback: {s:?}"),
    )?;
    let h = update(vm, UpdateAction::History)?;
    let h = h
        .status
        .ok_or_else(|| vm.fail("no status with the history"))?;
    for text in [
        format!("installed {version}"),
        format!("{version} rolled back"),
    ] {
        vm.check(history_has(&h, &text), || {
            format!("the history should say {text:?}: {:?}", h.history)
        })?;
    }

    // A check finds the release again and leaves it alone: nothing
    // fetched, nothing offered, no reboot.
    let fetched = payload_requests(server);
    let r = update(vm, UpdateAction::Check)?;
    vm.check(r.outcome == "up to date", || {
        format!("a check after the rollback should find nothing to take: {r:?}")
    })?;
    let s = r
        .status
        .ok_or_else(|| vm.fail("no status after the check"))?;
    vm.check(
        s.last_check.is_some()
            && s.last_error.is_none()
            && s.pending.is_none()
            && s.download.is_none()
            && s.next_boot == Slot::A
            && s.bad.contains_key(version),
        || format!("the agent took the bad release again: {s:?}"),
    )?;
    vm.check(payload_requests(server) == fetched, || {
        "the bad release's payload was fetched again".into()
    })
}
