//! Boot assessment against releases that fail in the two ways a container
//! check cannot see (docs/updates.md, "Trial boots" and "Testing
//! rollbacks"): a release whose kernel panics (its init exits at once) and
//! one whose PID 1 never gets ready (built with `--test-fault
//! never-ready`). Both hosts run with `[update] tries = 2`: the agent
//! installs the release into slot B, each trial boot fails (the kernel's
//! `panic=10` reboots the one; the trial-boot watchdog, fed only until
//! `ready_deadline`, reboots the other), GRUB falls back to slot A after
//! the second, and the agent records the release as bad and leaves it
//! alone from then on. (A release whose container stays unhealthy is in
//! update.rs.)

use std::error::Error;
use std::time::Duration;

use crate::common::update::{
    check_installs_and_reboots, check_rolled_back_for_good, serve_copy, REPO_IP, REPO_PORT,
};
use atoll_common::layout::{Slot, FW_CFG_CONFIG};
use qemu_tests::console::Pattern;
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::{self, Flavour, UpdateRepo};
use qemu_tests::vm::{NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// The download and install under TCG and the reboot take a few minutes.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
/// `[update] tries` in these tests: fewer boots than the default 3.
const TRIES: u8 = 2;
/// `[update] ready_deadline` in these tests.
const READY_DEADLINE: Duration = Duration::from_secs(20);

fn config() -> String {
    format!(
        r#"
[update]
server = "http://{REPO_IP}:{REPO_PORT}"
strategy = "immediate"
check_interval = "1m"
tries = {TRIES}
ready_deadline = "{}s"
"#,
        READY_DEADLINE.as_secs()
    )
}

/// Boots version 1 from slot A with the repository behind guestfwd and
/// runs a check through the API (not waiting for the agent's scheduled
/// one, a minute after it starts), which installs the release and
/// reboots into it; returns the VM and version 1.
fn boot_and_install(
    name: &str,
    server: &HttpFileServer,
    repo: &UpdateRepo,
) -> Result<(Vm, String), VmError> {
    let vm = Vm::builder(name)
        .net_user(NetUser::new().guestfwd(REPO_IP, REPO_PORT, server.port()))
        .fw_cfg_string(FW_CFG_CONFIG, config())
        .start()?;
    let first = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(first.slot == Slot::A, || {
        format!("version 1 should boot from slot A: {:?}", first.line)
    })?;
    check_installs_and_reboots(&vm, &repo.version, UPDATE_TIMEOUT)?;
    vm.wait_for("atoll-updater: installing", UPDATE_TIMEOUT)?;
    Ok((vm, first.version))
}

/// After the failed trials: GRUB boots slot A again (good), B never got
/// ready and was tried exactly [`TRIES`] times; the agent keeps the release
/// off for good; at power-off it has installed it only once.
fn falls_back_for_good(
    vm: &Vm,
    server: &HttpFileServer,
    repo: &UpdateRepo,
    v1: &str,
    why: &str,
) -> TestResult {
    vm.wait_for("atoll-grub: booting slot A (good)", BOOT_TIMEOUT)?;
    let back = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(back.slot == Slot::A && back.version == v1, || {
        format!("the fallback should boot {v1} in slot A: {:?}", back.line)
    })?;
    let on_b = vm.console_matches(Pattern::regex(r"atoll: ready .*slot=B\b")?);
    vm.check(on_b.is_empty(), || {
        format!("the failing release got ready: {:?}", on_b[0].line)
    })?;
    let trials = vm.console_matches("atoll-grub: booting slot B (trial");
    vm.check(trials.len() == usize::from(TRIES), || {
        format!(
            "slot B was tried {} times, expected [update] tries = {TRIES}",
            trials.len()
        )
    })?;
    check_rolled_back_for_good(vm, server, &repo.version, v1, why)?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    vm.check(
        vm.console_matches("atoll-updater: installing").len() == 1,
        || "the agent installed the bad release again".into(),
    )?;
    Ok(())
}

/// A release whose init is the wrong binary (atollctl, which exits with a
/// usage error): the kernel panics on every trial boot ("Attempted to kill init!"), `panic=10` reboots,
/// and GRUB spends the tries.
#[test]
fn a_release_whose_kernel_panics_is_rolled_back_and_stays_bad() -> TestResult {
    let repo = update_repo::release(Flavour::KernelPanic)?;
    let tmp = tempfile::tempdir()?;
    let server = serve_copy(&repo, tmp.path())?;
    let (vm, v1) = boot_and_install("update_kernel_panic", &server, &repo)?;
    for left in (0..TRIES).rev() {
        let booting = format!("atoll-grub: booting slot B (trial, tries left {left})");
        vm.wait_for(booting.as_str(), UPDATE_TIMEOUT)?;
        vm.wait_for("Kernel panic - not syncing", BOOT_TIMEOUT)?;
    }
    // PID 1 never ran on B, so it left no record of why.
    let why = "no trial boot of it got as far as PID 1's checks";
    falls_back_for_good(&vm, &server, &repo, &v1, why)
}

/// A release whose PID 1 stops short of ready: each trial boot arms the
/// watchdog, feeds it until `ready_deadline`, and the watchdog reboots.
#[test]
fn a_release_that_never_gets_ready_is_rolled_back_and_stays_bad() -> TestResult {
    let repo = update_repo::release(Flavour::NeverReady)?;
    let tmp = tempfile::tempdir()?;
    let server = serve_copy(&repo, tmp.path())?;
    let (vm, v1) = boot_and_install("update_never_ready", &server, &repo)?;
    let deadline = format!(
        "atoll: trial boot not ready after {} s (ready_deadline): the watchdog reboots it",
        READY_DEADLINE.as_secs()
    );
    for left in (0..TRIES).rev() {
        let booting = format!("atoll-grub: booting slot B (trial, tries left {left})");
        vm.wait_for(booting.as_str(), UPDATE_TIMEOUT)?;
        vm.wait_for("atoll: test fault never-ready", BOOT_TIMEOUT)?;
        vm.wait_for(deadline.as_str(), READY_DEADLINE + BOOT_TIMEOUT)?;
    }
    let why = format!(
        "its trial boot failed: not ready after {} s (ready_deadline)",
        READY_DEADLINE.as_secs()
    );
    falls_back_for_good(&vm, &server, &repo, &v1, &why)
}
