//! The watchdog for trial boots: if a slot on trial hangs before it gets
//! ready, the (soft)dog reboots the host and GRUB moves on when the tries
//! run out. Good boots never arm it.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

/// How often it is fed.
pub const PET_EVERY: Duration = Duration::from_secs(10);
/// It is fed only this long after stage 2 starts; a boot not ready by then
/// is taken as hung.
pub const PET_FOR: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct Watchdog {
    file: File,
}

impl Watchdog {
    /// Opens (and so arms) /dev/watchdog.
    pub fn arm() -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/watchdog")?,
        })
    }

    pub fn pet(&mut self) {
        let _ = self.file.write_all(b"\0");
    }

    /// Disarms it with the magic close ('V' then close).
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}
