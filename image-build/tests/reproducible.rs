//! Two builds from the same inputs give the same disk image, byte for byte.
//!
//! Inputs: the init and atollctl binaries from `ATOLL_INIT` / `ATOLL_ATOLLCTL`
//! (default: target/release/init and target/release/atollctl; build them
//! with `cargo build --release -p atoll-init`), and the pinned kernel
//! package from target/atoll/cache or /tmp/k (else it is fetched). The
//! update root of trust is the default one: target/atoll/keys/root.json,
//! development keys made by the first build that needs them.

// A panic in a test is its failure message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use image_build::kernel::KernelPin;
use image_build::BuildInfo;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn input(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(default));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p atoll-init -p atoll-runtime -p atoll-updater`, or point {var} at a binary",
        path.display()
    );
    path
}

/// A cache directory holding the pinned kernel package.
fn kernel_cache(scratch: &Path) -> PathBuf {
    let pin = KernelPin::pinned().unwrap();
    let name = pin.deb_file_name();
    let cache = scratch.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let dest = cache.join(&name);
    if !dest.is_file() {
        let known = [
            workspace().join("target/atoll/cache").join(&name),
            PathBuf::from("/tmp/k").join(&name),
        ];
        if let Some(src) = known.iter().find(|p| p.is_file()) {
            if std::fs::hard_link(src, &dest).is_err() {
                std::fs::copy(src, &dest).unwrap();
            }
        }
        // Otherwise `disk` fetches it into this cache.
    }
    cache
}

fn build(
    out: &Path,
    cache: &Path,
    init: &Path,
    atollctl: &Path,
    runtime: &Path,
    updater: &Path,
) -> BuildInfo {
    let output = Command::new(env!("CARGO_BIN_EXE_image-build"))
        .arg("disk")
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .arg("--init")
        .arg(init)
        .arg("--atollctl")
        .arg(atollctl)
        .arg("--runtime")
        .arg(runtime)
        .arg("--updater")
        .arg(updater)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "image-build disk --out {} failed:\n{}{}",
        out.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(out.join("build.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn sha256(path: &Path) -> String {
    image_build::kernel::sha256_file(path).unwrap()
}

#[test]
fn two_builds_are_identical() {
    let init = input("ATOLL_INIT", "target/release/init");
    let atollctl = input("ATOLL_ATOLLCTL", "target/release/atollctl");
    let runtime = input("ATOLL_RUNTIME", "target/release/atoll-runtime");
    let updater = input("ATOLL_UPDATER", "target/release/atoll-updater");
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-build-reproducible");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).unwrap();
    }
    let cache = kernel_cache(&scratch);
    // Copies, so that a rebuild of target/release between the two builds
    // (the target dir is shared) cannot change the inputs.
    let bins = scratch.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    let init_copy = bins.join("init");
    let atollctl_copy = bins.join("atollctl");
    std::fs::copy(&init, &init_copy).unwrap();
    std::fs::copy(&atollctl, &atollctl_copy).unwrap();
    let (init, atollctl) = (init_copy, atollctl_copy);
    let a = scratch.join("a");
    let b = scratch.join("b");
    let info_a = build(&a, &cache, &init, &atollctl, &runtime, &updater);
    // Let the clock move on, so that a stray time stamp would show.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let info_b = build(&b, &cache, &init, &atollctl, &runtime, &updater);

    // On a difference, say which piece differs first.
    for piece in [
        "work/initrd.img",
        "work/slot.img",
        "work/esp.img",
        "work/data.img",
    ] {
        assert_eq!(
            sha256(&a.join(piece)),
            sha256(&b.join(piece)),
            "{piece} differs between the two builds"
        );
    }
    assert_eq!(info_a, info_b, "build.json differs");
    assert_eq!(info_a.image_sha256, info_b.image_sha256);

    // Both slots carry the default root of trust: the development keys,
    // made by the first build if missing, reused by the second.
    let shipped = std::fs::read(workspace().join("target/atoll/keys/root.json")).unwrap();
    for out in [&a, &b] {
        let path = out
            .join("work/rootfs")
            .join(atoll_updater::metadata::SHIPPED_ROOT.trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            shipped,
            "{} is not the default update root",
            path.display()
        );
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}
