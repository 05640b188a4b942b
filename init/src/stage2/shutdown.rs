//! Shutting the host down: stop every process (SIGTERM, then SIGKILL after a
//! grace period), record a clean shutdown, sync, unmount, reboot(2).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::loghub::{init_record, LogHub};
use super::{console, mounts};

/// How long processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// Written just before /var is unmounted; removed at boot after reading.
pub const CLEAN_MARKER: &str = "/var/lib/atoll/clean-shutdown";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    Poweroff,
    Reboot,
}

impl std::fmt::Display for ShutdownKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShutdownKind::Poweroff => "power off",
            ShutdownKind::Reboot => "reboot",
        })
    }
}

/// How the previous boot ended, from the marker (which is then removed):
/// `clean`, `unclean`, or `unknown` on a first boot (`state_existed` false).
pub fn previous_shutdown(marker: &Path, state_existed: bool) -> String {
    let clean = marker.exists();
    let _ = std::fs::remove_file(marker);
    match (clean, state_existed) {
        (true, _) => "clean",
        (false, true) => "unclean",
        (false, false) => "unknown",
    }
    .to_string()
}

/// Reaps until no child is left or `deadline` passes; true if none is left.
fn reap_until(deadline: Instant) -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return true, // ECHILD
        }
    }
}

fn say(line: &str) {
    console::line(line);
    LogHub::global().push_quiet(init_record(5, line.to_string()));
}

/// Runs the shutdown sequence and ends in reboot(2). Never returns.
pub fn execute(kind: ShutdownKind) -> ! {
    say(&format!("atoll: shutting down ({kind})"));
    // Every process but us; orphans become our children, so reaping tells
    // when they are gone.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let _ = kill(Pid::from_raw(-1), Signal::SIGCONT);
    if !reap_until(Instant::now() + GRACE) {
        say(&format!(
            "atoll: processes still running after {} s: killing them",
            GRACE.as_secs()
        ));
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_until(Instant::now() + Duration::from_secs(2));
    }
    if let Some(dir) = Path::new(CLEAN_MARKER).parent() {
        if dir.exists() {
            if let Err(e) = std::fs::write(CLEAN_MARKER, b"") {
                say(&format!("atoll: cannot write {CLEAN_MARKER}: {e}"));
            }
        }
    }
    LogHub::global().close_store();
    nix::unistd::sync();
    for (mp, e) in mounts::unmount_all() {
        console::line(&format!("atoll: cannot unmount {mp}: {e}"));
    }
    nix::unistd::sync();
    let mode = match kind {
        ShutdownKind::Poweroff => {
            console::line("atoll: power off");
            RebootMode::RB_POWER_OFF
        }
        ShutdownKind::Reboot => {
            console::line("atoll: reboot");
            RebootMode::RB_AUTOBOOT
        }
    };
    console::flush(Duration::from_secs(3));
    let e = reboot(mode).err();
    console::line(&format!("atoll: reboot(2) failed: {e:?}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Set by [`on_signal`] in the fallback loop: 1 = reboot, 2 = power off.
static FALLBACK_REQUEST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

extern "C" fn on_signal(sig: nix::libc::c_int) {
    use std::sync::atomic::Ordering;
    // Only an atomic store: async-signal-safe.
    match sig {
        nix::libc::SIGTERM | nix::libc::SIGINT => FALLBACK_REQUEST.store(1, Ordering::SeqCst),
        nix::libc::SIGUSR2 | nix::libc::SIGPWR => FALLBACK_REQUEST.store(2, Ordering::SeqCst),
        _ => {}
    }
}

/// The last resort if the event loop dies: reap children and wait for a
/// shutdown signal, with nothing but plain syscalls. The signal handlers
/// are replaced by one that sets a flag (whichever thread runs it), and
/// the loop polls every 100 ms.
pub fn fallback_loop() -> ! {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    use std::sync::atomic::Ordering;
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        // SAFETY: the handler only does an atomic store, which is
        // async-signal-safe; no other code relies on the old handlers now.
        let _ = unsafe { sigaction(s, &action) };
    }
    loop {
        while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
        match FALLBACK_REQUEST.load(Ordering::SeqCst) {
            1 => execute(ShutdownKind::Reboot),
            2 => execute(ShutdownKind::Poweroff),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn previous_shutdown_states() {
        let dir = TempDir::new("marker");
        let m = dir.path().join("clean-shutdown");
        assert_eq!(previous_shutdown(&m, false), "unknown");
        assert_eq!(previous_shutdown(&m, true), "unclean");
        std::fs::write(&m, "").unwrap();
        assert_eq!(previous_shutdown(&m, true), "clean");
        assert!(!m.exists(), "the marker is used up");
        assert_eq!(previous_shutdown(&m, true), "unclean");
    }
}
