//! The watchdog for trial boots: if a slot on trial hangs before it gets
//! ready, the (soft)dog reboots the host and GRUB moves on when the tries
//! run out. Good boots never arm it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// How often it is fed.
pub const PET_EVERY: Duration = Duration::from_secs(10);
/// It is fed only this long after stage 2 starts unless the config says
/// otherwise (`[update] ready_deadline`); a boot not ready by then is
/// taken as hung.
pub const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(120);
/// Seconds without food before the dog reboots (softdog's default is 60):
/// a hung boot reboots at most this long after its deadline.
pub const TIMEOUT_SECS: i32 = 30;

// WDIOC_SETTIMEOUT (linux/watchdog.h): _IOWR('W', 6, int).
nix::ioctl_readwrite!(set_timeout, b'W', 6, nix::libc::c_int);

#[derive(Debug)]
pub struct Watchdog {
    file: File,
}

impl Watchdog {
    /// Opens (and so arms) /dev/watchdog, and sets its timeout to
    /// [`TIMEOUT_SECS`]; returns the timeout in force (the driver may
    /// round it, or refuse, and keep its own).
    pub fn arm() -> std::io::Result<(Self, Option<i32>)> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/watchdog")?;
        let mut secs: nix::libc::c_int = TIMEOUT_SECS;
        // SAFETY: the fd is open for the life of `file`, and `secs` is a
        // valid, writable c_int for the kernel to read and update.
        let timeout = match unsafe { set_timeout(file.as_raw_fd(), &mut secs) } {
            Ok(_) => Some(secs),
            Err(e) => {
                log::warn!("watchdog: cannot set its timeout to {TIMEOUT_SECS} s: {e}");
                None
            }
        };
        Ok((Self { file }, timeout))
    }

    pub fn pet(&mut self) {
        let _ = self.file.write_all(b"\0");
    }

    /// Disarms it with the magic close ('V' then close).
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}
