//! Virtio PCI devices the boot does not need yet, bound later.
//!
//! When `virtio_pci` loads it takes every virtio PCI function at once, and
//! enabling each one routes its interrupt through ACPI: on QEMU's i440fx
//! machine the kernel evaluates the DSDT's `_PRT` method (a loop that
//! builds 128 entries) per device, about 79 ms of guest time under TCG
//! (`initcall_debug`: "probe of 0000:00:03.0 returned 0 after 78882
//! usecs"). Stage 1 needs only the disk, so it marks the other virtio
//! functions with a `driver_override` no driver has ([`TAG`]): the PCI core
//! then binds nothing to them. Stage 2 releases the NICs (and entropy
//! sources) with the drivers the network needs, and the rest (the console
//! behind the host API's port, the balloon, …) after ready.

use std::path::Path;

/// Where the PCI bus is in sysfs.
pub const PCI_BUS: &str = "/sys/bus/pci";

/// The `driver_override` of a deferred function: the name of no driver.
pub const TAG: &str = "atoll-deferred";

const VIRTIO_VENDOR: u16 = 0x1af4;

/// What a virtio PCI function is, by its device id (virtio 1.x, 4.1.2.1:
/// transitional ids 0x1000.., modern ids 0x1040 + the virtio device id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Block and SCSI: what stage 1 may need for the slot.
    Storage,
    /// NICs and entropy sources: needed before ready.
    Early,
    /// Everything else: after ready.
    Late,
}

pub fn class(vendor: u16, device: u16) -> Option<Class> {
    if vendor != VIRTIO_VENDOR || !(0x1000..=0x107f).contains(&device) {
        return None;
    }
    Some(match device {
        0x1001 | 0x1004 | 0x1042 | 0x1048 => Class::Storage,
        0x1000 | 0x1005 | 0x1041 | 0x1044 => Class::Early,
        _ => Class::Late,
    })
}

fn read_id(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// The PCI functions under `bus` (`/sys/bus/pci`) with their class, if
/// virtio.
fn functions(bus: &Path) -> Vec<(String, Class)> {
    let Ok(entries) = std::fs::read_dir(bus.join("devices")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Class)> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let c = class(read_id(&dir.join("vendor"))?, read_id(&dir.join("device"))?)?;
            Some((e.file_name().to_string_lossy().into_owned(), c))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Stage 1: marks every virtio function that is not storage and has no
/// driver yet. Returns the functions marked; a failure only costs time.
pub fn defer(bus: &Path) -> Vec<String> {
    let mut deferred = Vec::new();
    for (name, c) in functions(bus) {
        let dir = bus.join("devices").join(&name);
        if c == Class::Storage || dir.join("driver").exists() {
            continue;
        }
        match std::fs::write(dir.join("driver_override"), TAG) {
            Ok(()) => deferred.push(name),
            Err(e) => log::warn!("cannot defer PCI function {name}: {e}"),
        }
    }
    deferred
}

/// Stage 2: clears the mark on the deferred functions whose class `which`
/// accepts and asks the PCI core to bind them (`drivers_probe`). Returns
/// the functions released; problems are logged (a function left marked
/// only stays without a driver).
pub fn release(bus: &Path, which: &dyn Fn(Class) -> bool) -> Vec<String> {
    let mut released = Vec::new();
    for (name, c) in functions(bus) {
        if !which(c) {
            continue;
        }
        let over = bus.join("devices").join(&name).join("driver_override");
        match std::fs::read_to_string(&over) {
            Ok(t) if t.trim() == TAG => {}
            _ => continue,
        }
        if let Err(e) = std::fs::write(&over, "\n") {
            log::warn!("cannot release PCI function {name}: {e}");
            continue;
        }
        if let Err(e) = std::fs::write(bus.join("drivers_probe"), &name) {
            // No driver for it yet: the coldplug's module load binds it.
            if e.raw_os_error() != Some(nix::libc::ENODEV) {
                log::warn!("probing PCI function {name}: {e}");
            }
        }
        released.push(name);
    }
    released
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn bus(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atoll-pcidefer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("devices")).unwrap();
        std::fs::write(d.join("drivers_probe"), "").unwrap();
        d
    }

    fn function(bus: &Path, name: &str, vendor: &str, device: &str, driver: bool) {
        let d = bus.join("devices").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        std::fs::write(d.join("driver_override"), "(null)\n").unwrap();
        if driver {
            std::fs::create_dir_all(d.join("driver")).unwrap();
        }
    }

    fn override_of(bus: &Path, name: &str) -> String {
        std::fs::read_to_string(bus.join("devices").join(name).join("driver_override")).unwrap()
    }

    #[test]
    fn classes() {
        assert_eq!(class(0x1af4, 0x1001), Some(Class::Storage));
        assert_eq!(class(0x1af4, 0x1042), Some(Class::Storage));
        assert_eq!(class(0x1af4, 0x1048), Some(Class::Storage));
        assert_eq!(class(0x1af4, 0x1000), Some(Class::Early));
        assert_eq!(class(0x1af4, 0x1041), Some(Class::Early));
        assert_eq!(class(0x1af4, 0x1003), Some(Class::Late));
        assert_eq!(class(0x1af4, 0x1110), None, "ivshmem is not virtio");
        assert_eq!(class(0x8086, 0x1000), None);
    }

    #[test]
    fn defers_all_but_storage_then_releases_by_class() {
        let b = bus("cycle");
        function(&b, "0000:00:02.0", "0x1af4", "0x1001", false); // disk
        function(&b, "0000:00:03.0", "0x1af4", "0x1000", false); // NIC
        function(&b, "0000:00:04.0", "0x1af4", "0x1003", false); // console
        function(&b, "0000:00:05.0", "0x1af4", "0x1043", true); // bound already
        function(&b, "0000:00:01.1", "0x8086", "0x7010", false); // IDE
        assert_eq!(defer(&b), vec!["0000:00:03.0", "0000:00:04.0"]);
        assert_eq!(override_of(&b, "0000:00:03.0"), TAG);
        assert_eq!(override_of(&b, "0000:00:02.0"), "(null)\n");
        assert_eq!(override_of(&b, "0000:00:01.1"), "(null)\n");

        assert_eq!(release(&b, &|c| c == Class::Early), vec!["0000:00:03.0"]);
        assert_eq!(override_of(&b, "0000:00:03.0"), "\n");
        assert_eq!(
            std::fs::read_to_string(b.join("drivers_probe")).unwrap(),
            "0000:00:03.0"
        );
        assert_eq!(override_of(&b, "0000:00:04.0"), TAG, "late stays deferred");
        assert_eq!(release(&b, &|_| true), vec!["0000:00:04.0"]);
        assert!(release(&b, &|_| true).is_empty(), "nothing left");
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn no_pci_bus_defers_nothing() {
        assert!(defer(Path::new("/nonexistent/bus/pci")).is_empty());
        assert!(release(Path::new("/nonexistent/bus/pci"), &|_| true).is_empty());
    }
}
