//! The update agent through the host API, for the update tests.

use std::net::Ipv4Addr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atoll_common::api::{BootMode, Request, Response, UpdateAction, UpdateReport, UpdateStatus};
use atoll_common::error::error_chain;
use atoll_common::layout::Slot;
use qemu_tests::api_client::{self, ApiError};
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::UpdateRepo;
use qemu_tests::vm::{Vm, VmError};

/// Where the test's update repository appears to the guest (guestfwd).
pub const REPO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const REPO_PORT: u16 = 8080;

/// How long the agent may take to run a scheduled check (1m ± 10 s) and
/// report it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(150);

/// The first update report or refusal among an update request's
/// responses: `Some(Ok(report))`, `Some(Err(message))`, or `None`.
fn report_of(out: &[Response]) -> Option<Result<UpdateReport, String>> {
    out.iter().find_map(|r| match r {
        Response::Update(u) => Some(Ok((**u).clone())),
        Response::Error { message } => Some(Err(message.clone())),
        _ => None,
    })
}

/// One update request; its report, or the host's refusal as an error.
pub fn update(vm: &Vm, action: UpdateAction) -> Result<UpdateReport, VmError> {
    let out = vm.api(&Request::Update { action })?;
    match report_of(&out) {
        Some(Ok(report)) => Ok(report),
        Some(Err(message)) => Err(vm.fail(format!("update {action:?} refused: {message}"))),
        None => Err(vm.fail(format!("no update report for {action:?}: {out:?}"))),
    }
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

/// A check started through the host API by [`start_check`].
pub struct StartedCheck {
    thread: JoinHandle<Result<Vec<Response>, ApiError>>,
}

/// Starts a check now through the host API (`atollctl update check`),
/// for the tests that need the agent to look at the repository but do not
/// test its schedule (the agent's own first check comes only a minute,
/// check_interval, plus jitter after it starts). Waits until the agent
/// runs (the update service answers once the boot is marked good), then
/// sends the request from a thread that waits up to `timeout` for the
/// answer: it comes once the check is over, a download and install
/// included, which takes longer than [`Vm::api`] waits. The API port
/// serves one client at a time, so the test must not use the API again
/// until it has the answer ([`StartedCheck::answer`]) or has killed the VM.
pub fn start_check(vm: &Vm, timeout: Duration) -> Result<StartedCheck, VmError> {
    wait_update_status(vm, "the update agent running", CHECK_TIMEOUT, |_| true)?;
    let socket = vm.api_socket().to_path_buf();
    let request = Request::Update {
        action: UpdateAction::Check,
    };
    let thread = std::thread::Builder::new()
        .name("update-check".into())
        .spawn(move || api_client::request(&socket, &request, timeout))
        .map_err(|e| vm.fail(format!("cannot start the API check's thread: {e}")))?;
    Ok(StartedCheck { thread })
}

impl StartedCheck {
    /// Waits for the check's answer: its report, or the host's refusal
    /// as `Err(message)`.
    pub fn answer(self, vm: &Vm) -> Result<Result<UpdateReport, String>, VmError> {
        let out = self
            .thread
            .join()
            .map_err(|_| vm.fail("the API check's thread panicked"))?
            .map_err(|e| vm.fail(format!("update check through the API: {}", error_chain(&e))))?;
        report_of(&out).ok_or_else(|| vm.fail(format!("no report for the update check: {out:?}")))
    }

    /// Waits for the check's report; a refusal is an error.
    pub fn report(self, vm: &Vm) -> Result<UpdateReport, VmError> {
        self.answer(vm)?
            .map_err(|message| vm.fail(format!("the update check was refused: {message}")))
    }
}

/// Runs a check now through the host API and waits up to `timeout` for
/// its report ([`start_check`]).
pub fn check_now(vm: &Vm, timeout: Duration) -> Result<UpdateReport, VmError> {
    start_check(vm, timeout)?.report(vm)
}

/// Runs a check now through the host API on a host with strategy
/// `immediate`: it must install `version` and reboot into it, answering
/// within `timeout`.
pub fn check_installs_and_reboots(
    vm: &Vm,
    version: &str,
    timeout: Duration,
) -> Result<(), VmError> {
    let r = check_now(vm, timeout)?;
    vm.check(
        r.outcome.contains(version) && r.outcome.ends_with("rebooting"),
        || format!("the check should install {version} and reboot: {r:?}"),
    )
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
