//! The system console: where PID 1's few high-signal lines go.
//!
//! PID 1 inherits /dev/console on fds 0-2 from the kernel; we open it again
//! (without making it our controlling terminal) so that a closed stdout does
//! not silence the console. Writes never fail loudly: there is nobody to tell.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

static CONSOLE: OnceLock<Mutex<Option<File>>> = OnceLock::new();

fn console() -> &'static Mutex<Option<File>> {
    CONSOLE.get_or_init(|| {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open("/dev/console")
            .ok();
        Mutex::new(file)
    })
}

/// Writes one line (a newline is added) to the console, falling back to stderr.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 1);
    buf.push_str(text);
    buf.push('\n');
    let mut guard = match console().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let written = match guard.as_mut() {
        Some(f) => f.write_all(buf.as_bytes()).is_ok(),
        None => false,
    };
    if !written {
        let _ = std::io::stderr().write_all(buf.as_bytes());
    }
}
