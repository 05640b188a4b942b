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
    let e = reboot(mode).err();
    console::line(&format!("atoll: reboot(2) failed: {e:?}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The last resort if the event loop dies: reap children and wait for a
/// shutdown signal, with nothing but blocking syscalls.
pub fn fallback_loop() -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    loop {
        while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if st == WaitStatus::StillAlive {
                break;
            }
        }
        match set.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => execute(ShutdownKind::Reboot),
            Ok(Signal::SIGUSR2) | Ok(Signal::SIGPWR) => execute(ShutdownKind::Poweroff),
            _ => {}
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
