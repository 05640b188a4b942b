//! The layer unpacker on arbitrary bytes (plain tar, or gzip/zstd by their
//! magic): it must never panic, and nothing may appear outside the layer
//! root, whatever the entries say (`..`, absolute paths, symlinks, hard
//! links, whiteouts).

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atoll_runtime::unpack::{unpack_layer, UnpackOptions};
use libfuzzer_sys::fuzz_target;

/// `DIR/root` (unpacked into, emptied after each input) and `DIR/outside`
/// (one canary file that must stay as it is), in a per-process directory.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("atoll-fuzz-unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("outside")).expect("create the scratch dir");
        fs::write(dir.join("outside/canary"), b"canary").expect("write the canary");
        dir
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list the scratch dir")
        .map(|e| e.expect("read a dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let root = dir.join("root");
    fs::create_dir(&root).expect("create the layer root");
    let options = UnpackOptions {
        max_bytes: 16 << 20,
        max_entries: 10_000,
        ..UnpackOptions::default()
    };
    let _ = unpack_layer(data, &root, &options);
    assert_eq!(names(dir), ["outside", "root"], "something appeared beside the layer root");
    assert_eq!(names(&dir.join("outside")), ["canary"], "something appeared outside the layer root");
    assert_eq!(fs::read(dir.join("outside/canary")).expect("read the canary"), b"canary");
    // remove_dir_all does not follow symlinks.
    fs::remove_dir_all(&root).expect("empty the layer root");
});
