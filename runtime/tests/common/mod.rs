//! What the runtime's integration tests share: the root/busybox check and
//! a one-layer busybox root built from Debian's static busybox.
// Each test binary uses a different part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";

/// Why these tests cannot run here, if they cannot (they need root and
/// busybox-static).
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_string());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} missing (apt-get install busybox-static)"
        ));
    }
    None
}

/// Returns from the test, saying why, when it cannot run here.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(reason) = common::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// `dir/NAME` with /bin/busybox and a symlink for each of `applets`, the
/// usual top-level directories, and `/etc/passwd`, `/etc/group`.
pub fn busybox_root(
    dir: &Path,
    name: &str,
    applets: &[&str],
    passwd: &str,
    group: &str,
) -> PathBuf {
    let root = dir.join(name);
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), passwd).expect("passwd");
    std::fs::write(root.join("etc/group"), group).expect("group");
    root
}

/// root and nobody.
pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
