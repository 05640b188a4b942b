//! The update agent through the host API, for the update tests.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use atoll_common::api::{Request, Response, UpdateAction, UpdateReport, UpdateStatus};
use qemu_tests::vm::{Vm, VmError};

/// Where the test's update repository appears to the guest (guestfwd).
pub const REPO_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const REPO_PORT: u16 = 8080;

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
