//! A payload cut by `image-build release` resumes mid-way: the host's
//! install (`atoll_updater::install`) is interrupted inside the second
//! zstd frame, and the next try asks for the rest from the boundary it
//! checkpointed, not from byte 0.

// A panic in a test is its failure message.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read};
use std::path::Path;

use atoll_common::bootstate::BootState;
use atoll_common::grubenv::Grubenv;
use atoll_common::layout::Slot;
use atoll_updater::bootenv::BootEnv;
use atoll_updater::install::{self, Install, Progress, TargetSource};
use atoll_updater::metadata::{Config, DirFetcher, FetchError, Time, Trusted};
use image_build::keys::{self, KeyDir, ROOT_EXPIRY};
use image_build::release::{self, Expiry, ReleaseOptions, FRAME_SLOT_BYTES};
use sha2::{Digest, Sha256};

/// Deterministic bytes: half compressible, half not, so that frames have
/// different compressed sizes.
fn slot_image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|i| {
            if (i / 65_536) % 3 == 0 {
                (i % 251) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// The repository in a directory, with the next payload download cut
/// after `cut_at` bytes of the payload (a connection reset).
struct CutSource {
    dir: DirFetcher,
    cut_at: Option<u64>,
    /// The offset of every payload request.
    offsets: Vec<u64>,
}

struct Reset;

impl Read for Reset {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset (test)",
        ))
    }
}

impl TargetSource for CutSource {
    fn open_target(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>, FetchError> {
        self.offsets.push(offset);
        let cut = self.cut_at.take();
        let reader = self.dir.open_target(name, offset)?;
        Ok(match cut {
            Some(at) => Box::new(reader.take(at - offset).chain(Reset)),
            None => reader,
        })
    }
}

/// Compressed lengths of the payload's zstd frames.
fn frame_lengths(payload: &[u8]) -> Vec<usize> {
    let mut rest = payload;
    let mut lengths = Vec::new();
    while !rest.is_empty() {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
        lengths.push(len);
        rest = &rest[len..];
    }
    lengths
}

fn boot_state(path: &Path) -> BootState {
    BootState::from_env(&Grubenv::parse(&std::fs::read(path).unwrap()).unwrap()).unwrap()
}

#[test]
fn install_resumes_inside_a_released_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let now = Time::now();

    // A release cut by the real code: 2.5 frames of slot.
    let keys_dir = tmp.path().join("keys");
    keys::init(&KeyDir::new(&keys_dir), now, ROOT_EXPIRY).unwrap();
    let slot = slot_image(2 * FRAME_SLOT_BYTES + FRAME_SLOT_BYTES / 2 + 12_345);
    let slot_path = tmp.path().join("slot.img");
    std::fs::write(&slot_path, &slot).unwrap();
    let build_json = tmp.path().join("build.json");
    let build = serde_json::json!({
        "version": "0.2.0",
        "kernel_release": "6.1.0-test",
        "slot_sha256": hex::encode(Sha256::digest(&slot)),
        "slot_size": slot.len(),
        "verity_root_hash": "5a".repeat(32),
    });
    std::fs::write(&build_json, build.to_string()).unwrap();
    let repo = tmp.path().join("repo");
    release::release(&ReleaseOptions {
        keys: keys_dir.clone(),
        repo: repo.clone(),
        version: None,
        slot: slot_path,
        build_json,
        expiry: Expiry::default(),
        rollout: None,
        min_version: None,
        now,
    })
    .unwrap();

    // The host's view of it, verified as the agent does.
    let shipped = std::fs::read(keys_dir.join("root.json")).unwrap();
    let mut trusted = Trusted::new(&shipped, "update-root.json").unwrap();
    trusted
        .update(&mut DirFetcher::new(&repo), now, &Config::default())
        .unwrap();
    let (name, target, _) = trusted.latest_release().unwrap();
    let payload = std::fs::read(repo.join("targets").join(name)).unwrap();
    let frames = frame_lengths(&payload);
    assert_eq!(frames.len(), 3, "{frames:?}");

    // A host: slot B's device, the grubenv pair on an ESP, /var.
    let device = tmp.path().join("root-b.img");
    std::fs::write(&device, vec![0xee; slot.len() + 4096]).unwrap();
    let boot = BootEnv::on_esp(&tmp.path().join("esp"));
    std::fs::create_dir_all(boot.env.parent().unwrap()).unwrap();
    let mut env = Grubenv::new();
    BootState::fresh(&"11".repeat(32)).to_env(&mut env).unwrap();
    let bytes = env.to_bytes().unwrap();
    std::fs::write(&boot.env, &bytes).unwrap();
    std::fs::write(boot.good.as_ref().unwrap(), &bytes).unwrap();
    let progress = tmp.path().join("var/update/progress.json");
    let plan = Install {
        name,
        target,
        booted: Slot::A,
        device: &device,
        boot: &boot,
        progress: &progress,
        // A checkpoint at every frame end.
        checkpoint_every: FRAME_SLOT_BYTES as u64,
    };

    // Cut half-way through the second frame: the first one is kept.
    let boundary = frames[0] as u64;
    let cut = boundary + frames[1] as u64 / 2;
    let mut source = CutSource {
        dir: DirFetcher::new(&repo),
        cut_at: Some(cut),
        offsets: Vec::new(),
    };
    let e = install::install(&plan, &mut source).unwrap_err();
    assert!(e.is_resumable(), "{e}");
    let saved: Progress = serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(
        (saved.offset, saved.slot_offset),
        (boundary, FRAME_SLOT_BYTES as u64)
    );
    assert_eq!(boot_state(&boot.env).order.first(), Some(&Slot::A));

    // The next try downloads only from the boundary on.
    let installed = install::install(&plan, &mut source).unwrap();
    assert_eq!(source.offsets, [0, boundary]);
    assert_eq!(installed.resumed_from, boundary);
    assert_eq!(installed.downloaded, target.length - boundary);
    assert_eq!(installed.slot, Slot::B);
    let written = std::fs::read(&device).unwrap();
    assert_eq!(&written[..slot.len()], &slot[..]);
    assert!(!progress.exists());
    let state = boot_state(&boot.env);
    assert_eq!(state.order.first(), Some(&Slot::B));
    assert_eq!(state.b.tries, 3);
    assert_eq!(state.b.verity, "5a".repeat(32));
}
