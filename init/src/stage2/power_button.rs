//! The ACPI power button: an evdev device named "Power Button" (from the
//! `button` module); KEY_POWER pressed means power off.

use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::shutdown::ShutdownKind;

/// `struct input_event` on 64-bit: timeval (16), type u16, code u16, value i32.
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// The event devices whose input device is named "Power Button".
pub fn find(sys_input: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(sys_input) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .map(|n| n.trim() == "Power Button")
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Whether one raw input event is the power key going down.
pub fn is_power_press(ev: &[u8; EVENT_SIZE]) -> bool {
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

/// Reads `dev` until the power key is pressed, then asks for a power off.
pub async fn watch(dev: PathBuf, shutdown: mpsc::UnboundedSender<ShutdownKind>) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&dev);
    let mut rx = match file.and_then(tokio::net::unix::pipe::Receiver::from_file_unchecked) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("power button {}: {e}", dev.display());
            return;
        }
    };
    let mut ev = [0u8; EVENT_SIZE];
    loop {
        if let Err(e) = rx.read_exact(&mut ev).await {
            log::warn!("power button {}: {e}", dev.display());
            return;
        }
        if is_power_press(&ev) {
            log::info!("power button pressed");
            let _ = shutdown.send(ShutdownKind::Poweroff);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    fn event(ty: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&ty.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn recognises_the_power_key() {
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "sync");
        assert!(!is_power_press(&event(1, 115, 1)));
    }

    #[test]
    fn finds_power_buttons_by_name() {
        let dir = TempDir::new("input");
        for (ev, name) in [
            ("event0", "Power Button"),
            ("event1", "AT Translated Set 2 keyboard"),
            ("event2", "Power Button"),
        ] {
            std::fs::create_dir_all(dir.path().join(ev).join("device")).unwrap();
            std::fs::write(dir.path().join(ev).join("device/name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find(dir.path()),
            vec![
                PathBuf::from("/dev/input/event0"),
                PathBuf::from("/dev/input/event2")
            ]
        );
    }
}
