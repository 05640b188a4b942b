//! Installing a release into the inactive slot: the zstd payload is
//! streamed from the repository, decompressed on the fly and written
//! straight to the slot's block device, with no temporary copy. Both
//! streams are checked as they pass: the payload against the target's
//! length and sha256, the slot image against `slot_length` and
//! `slot_sha256` (a byte past either length is refused at once, so an
//! endless download is cut at the signed length; a file that ends short
//! of it is refused too, while a transfer that breaks off resumes).
//!
//! Order of effects, so that a power cut at any moment leaves a host that
//! boots a good slot:
//! 1. the slot is made unbootable in grubenv (and in grubenv.good);
//! 2. the slot is written (and, at checkpoints, fsync'd);
//! 3. after both checks pass: fsync of the device, the progress file is
//!    removed, and last grubenv offers the slot for a trial boot
//!    ([`BootEnv::offer`]).
//!
//! **Resume.** The sha2 hasher state cannot be saved, and a zstd decoder's
//! state cannot be saved either. So the payload is resumed at zstd *frame
//! boundaries*: a frame decodes on its own. Whenever a frame ends and at
//! least [`Install::checkpoint_every`] slot bytes were written since the
//! last checkpoint, the device is fsync'd and a progress file records the
//! payload offset of that boundary, the payload's SHA-256 state there
//! ([`Sha256State`], a hasher whose state can be saved) and the slot
//! offset. A resumed install checks that the progress is for the same
//! target and slot, re-reads and re-hashes the slot prefix from the
//! device (so the final `slot_sha256` covers what is really on the disk),
//! and asks for the rest of the payload with an HTTP Range from the
//! recorded offset. `image-build release` writes one frame per 4 MiB of
//! slot, so an interrupted download resumes within a checkpoint's worth
//! (a payload that is a single frame has no boundary but its end, and
//! starts again from byte 0). A prefix is only
//! verified with the whole payload at the end: a resumed install that
//! fails verification deletes the progress, so the next attempt starts
//! from scratch; a tampered prefix costs one download, never an install.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use atoll_common::layout::Slot;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use crate::bootenv::{BootEnv, BootEnvError};
use crate::metadata::{DirFetcher, FetchError, Release, TargetCheck, TargetFile, UpdateError};
use crate::sha256state::Sha256State;
use crate::state::{remove_durably, write_atomic, StateError};

/// Largest zstd window accepted (2^27 = 128 MiB, zstd's own default
/// limit): the payload is only verified at its end, so a hostile one must
/// not make the decoder allocate more.
const WINDOW_LOG_MAX: u32 = 27;
/// Read and write in pieces of this size.
const CHUNK: usize = 1 << 20;

/// Where target files come from: HTTP ([`crate::http::HttpRepo`]) or a
/// directory ([`DirFetcher`]).
pub trait TargetSource {
    /// The target `name` (a path below the repository's `targets/`) from
    /// byte `offset` on. The reader's end (`Ok(0)`) must mean that the
    /// file ends there; a transfer that breaks off must be an error, so
    /// that the install resumes it rather than refusing a short file.
    fn open_target(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>, FetchError>;
}

impl TargetSource for DirFetcher {
    fn open_target(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>, FetchError> {
        if !valid_target_name(name) {
            return Err(FetchError::NotFound);
        }
        let path = self.dir.join("targets").join(name);
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(FetchError::NotFound),
            Err(e) => return Err(FetchError::Transfer(Box::new(e))),
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| FetchError::Transfer(Box::new(e)))?;
        Ok(Box::new(file))
    }
}

/// Target names are relative paths of plain components
/// (`atoll-0.2.0.slot.zst`): never absolute, never `..`.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        })
}

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("target {name}: no release description (custom) in targets.json")]
    NoRelease { name: String },
    #[error("target {name}: refusing to write slot {slot}, the booted slot")]
    BootedSlot { name: String, slot: Slot },
    #[error("{device}: cannot {what}")]
    Device {
        device: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {size} bytes, too small for the {needed}-byte slot image")]
    TooSmall {
        device: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("target {name}: cannot fetch from byte {offset}")]
    Fetch {
        name: String,
        offset: u64,
        #[source]
        source: FetchError,
    },
    #[error("target {name}: download failed at byte {offset}")]
    Read {
        name: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The source ended cleanly before the signed length: the file it
    /// serves is not the one signed. A transfer that breaks off is a
    /// [`InstallError::Read`] instead (sources report a cut as an error,
    /// see [`TargetSource`]), so this is a refusal, not a resume.
    #[error(
        "target {name}: the file served ends at byte {length}, short of its signed length \
         of {expected} bytes"
    )]
    Short {
        name: String,
        length: u64,
        expected: u64,
    },
    #[error("target {name}: not a valid zstd stream at byte {offset} (damaged or tampered)")]
    Decompress {
        name: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("target {name}: ends inside a zstd frame")]
    Truncated { name: String },
    #[error(transparent)]
    Verify(#[from] UpdateError),
    #[error(transparent)]
    BootEnv(#[from] BootEnvError),
    #[error(transparent)]
    Progress(#[from] StateError),
}

impl InstallError {
    /// Whether trying again later resumes from the last checkpoint (a
    /// transfer problem) rather than starting over.
    pub fn is_resumable(&self) -> bool {
        matches!(self, InstallError::Fetch { .. } | InstallError::Read { .. })
    }
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Install<'a> {
    /// The target's name in targets.json and its entry.
    pub name: &'a str,
    pub target: &'a TargetFile,
    /// The slot the host runs; the other one is written.
    pub booted: Slot,
    /// The block device of the slot written (the other slot's partition).
    pub device: &'a Path,
    pub boot: &'a BootEnv,
    /// The progress file for resuming (on /var).
    pub progress: &'a Path,
    /// Slot bytes between checkpoints.
    pub checkpoint_every: u64,
}

/// Default [`Install::checkpoint_every`]: 4 MiB, the slot bytes in one of
/// the frames `image-build release` writes, so every frame boundary is a
/// checkpoint (at the cost of an fsync per 4 MiB).
pub const CHECKPOINT_EVERY: u64 = 4 << 20;

/// A finished install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub slot: Slot,
    pub release: Release,
    /// Payload offset the download resumed from (0: from the start).
    pub resumed_from: u64,
    /// Payload bytes downloaded by this call.
    pub downloaded: u64,
}

/// The resume point, saved as JSON at checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub name: String,
    /// The payload's sha256 and length from targets.json: a different
    /// target under the same name starts over.
    pub sha256: String,
    pub length: u64,
    pub slot: Slot,
    /// Payload bytes verified into `hash`; a zstd frame starts here.
    pub offset: u64,
    pub hash: Sha256State,
    /// Slot bytes written (and fsync'd) from those.
    pub slot_offset: u64,
}

/// Installs `plan.target` into the slot that is not `plan.booted`, from
/// `source`, resuming from the progress file if it matches.
pub fn install(
    plan: &Install<'_>,
    source: &mut dyn TargetSource,
) -> Result<Installed, InstallError> {
    let name = plan.name;
    let release = plan
        .target
        .custom
        .clone()
        .ok_or_else(|| InstallError::NoRelease { name: name.into() })?;
    let slot = plan.booted.other();
    // Check what can be checked before anything is written.
    let expected = plan.target.hashes.sha256_bytes();
    let mut slot_check = TargetCheck::slot(name, &release)?;
    let expected = expected.ok_or_else(|| UpdateError::TargetBadHash { name: name.into() })?;
    let state = plan.boot.state()?;
    if state.order.first() == Some(&slot) && (state.slot(slot).good || state.slot(slot).tries > 0) {
        // ORDER puts the slot to be written first and it can boot: the
        // caller's idea of the booted slot is wrong.
        log::warn!("slot {slot} is first in ORDER; it is made unbootable before it is written");
    }
    let device = plan.device;
    let dev_err = |what| {
        move |source| InstallError::Device {
            device: device.to_owned(),
            what,
            source,
        }
    };
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(dev_err("open for writing"))?;
    let size = dev
        .seek(SeekFrom::End(0))
        .map_err(dev_err("find the size"))?;
    if release.slot_length > size {
        return Err(InstallError::TooSmall {
            device: device.to_owned(),
            size,
            needed: release.slot_length,
        });
    }

    // 1. Nothing half written can boot.
    plan.boot.mark_unbootable(slot)?;

    // 2. Resume where a checkpoint says, re-hashing the slot prefix.
    let resume = load_progress(plan.progress).filter(|p| {
        p.name == name
            && p.sha256 == plan.target.hashes.sha256
            && p.length == plan.target.length
            && p.slot == slot
            && p.offset <= p.length
            && p.hash.length() == p.offset
            && p.slot_offset <= release.slot_length
    });
    let (mut hash, start, mut slot_offset) = match resume {
        Some(p) => {
            log::info!(
                "resuming {name} into slot {slot} at byte {} ({} slot bytes written)",
                p.offset,
                p.slot_offset
            );
            (p.hash, p.offset, p.slot_offset)
        }
        None => (Sha256State::new(), 0, 0),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    while done < slot_offset {
        let n = (slot_offset - done).min(CHUNK as u64) as usize;
        dev.read_exact_at(&mut buf[..n], done)
            .map_err(dev_err("read back the written prefix"))?;
        slot_check.update(&buf[..n])?;
        done += n as u64;
    }

    // 3. Stream the rest.
    let result = stream(
        plan,
        source,
        &dev,
        slot,
        &mut hash,
        start,
        &mut slot_offset,
        &mut slot_check,
    );
    let downloaded = match result {
        Ok(n) => n,
        Err(e) => {
            if !e.is_resumable() {
                // Start over next time: the prefix may be what was wrong.
                remove_durably(plan.progress)?;
            }
            return Err(e);
        }
    };

    // 4. Verify both streams.
    let verified = (|| {
        if hash.length() != plan.target.length {
            return Err(UpdateError::TargetLength {
                name: name.into(),
                length: hash.length(),
                expected: plan.target.length,
            });
        }
        let found = hash.clone().finalize();
        if found != expected {
            return Err(UpdateError::TargetHash {
                name: name.into(),
                found: hex::encode(found),
                expected: plan.target.hashes.sha256.clone(),
            });
        }
        slot_check.finish()
    })();
    if let Err(e) = verified {
        remove_durably(plan.progress)?;
        return Err(e.into());
    }

    // 5. Durable slot, then the boot loader is told, last.
    dev.sync_all().map_err(dev_err("fsync"))?;
    remove_durably(plan.progress)?;
    plan.boot.offer(slot, &release.verity_root_hash)?;
    log::info!(
        "installed {} ({name}) into slot {slot}; it boots next on trial",
        release.version
    );
    Ok(Installed {
        slot,
        release,
        resumed_from: start,
        downloaded,
    })
}

/// Streams the payload from `start` into `dev`; returns the payload bytes
/// read.
#[allow(clippy::too_many_arguments)]
fn stream(
    plan: &Install<'_>,
    source: &mut dyn TargetSource,
    dev: &File,
    slot: Slot,
    hash: &mut Sha256State,
    start: u64,
    slot_offset: &mut u64,
    slot_check: &mut TargetCheck,
) -> Result<u64, InstallError> {
    let name = plan.name;
    let length = plan.target.length;
    let device = plan.device;
    let decompress = |offset: u64| {
        move |source| InstallError::Decompress {
            name: name.into(),
            offset,
            source,
        }
    };
    let mut decoder = Decoder::new().map_err(decompress(start))?;
    decoder
        .set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
        .map_err(decompress(start))?;
    let reader = source
        .open_target(name, start)
        .map_err(|source| InstallError::Fetch {
            name: name.into(),
            offset: start,
            source,
        })?;
    // Never read more than one byte past the listed length: that byte is
    // refused as an endless download.
    let mut reader = reader.take(length.saturating_sub(start).saturating_add(1));
    let mut input = vec![0u8; CHUNK];
    let mut output = vec![0u8; CHUNK];
    let mut received = start;
    let mut at_frame_end = true;
    let mut last_checkpoint = *slot_offset;
    loop {
        let n = match reader.read(&mut input) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(InstallError::Read {
                    name: name.into(),
                    offset: received,
                    source,
                })
            }
        };
        if received + n as u64 > length {
            return Err(UpdateError::TargetTooLong {
                name: name.into(),
                expected: length,
            }
            .into());
        }
        received += n as u64;
        let mut inbuf = InBuffer::around(&input[..n]);
        loop {
            let before = inbuf.pos();
            let mut outbuf = OutBuffer::around(&mut output[..]);
            let hint = decoder
                .run(&mut inbuf, &mut outbuf)
                .map_err(decompress(hash.length()))?;
            let out_len = outbuf.pos();
            hash.update(&input[before..inbuf.pos()]);
            if out_len > 0 {
                slot_check.update(&output[..out_len])?;
                dev.write_all_at(&output[..out_len], *slot_offset)
                    .map_err(|source| InstallError::Device {
                        device: device.to_owned(),
                        what: "write",
                        source,
                    })?;
                *slot_offset += out_len as u64;
            }
            at_frame_end = hint == 0;
            if at_frame_end && *slot_offset - last_checkpoint >= plan.checkpoint_every {
                checkpoint(plan, dev, slot, hash, *slot_offset)?;
                last_checkpoint = *slot_offset;
            }
            if inbuf.pos() == n && out_len < output.len() {
                break;
            }
        }
    }
    if received < length {
        // A clean end: the source says its file ends here. Trying again
        // would fetch the same short file forever.
        return Err(InstallError::Short {
            name: name.into(),
            length: received,
            expected: length,
        });
    }
    if !at_frame_end {
        return Err(InstallError::Truncated { name: name.into() });
    }
    Ok(received - start)
}

/// fsyncs the slot, then records the resume point.
fn checkpoint(
    plan: &Install<'_>,
    dev: &File,
    slot: Slot,
    hash: &Sha256State,
    slot_offset: u64,
) -> Result<(), InstallError> {
    dev.sync_data().map_err(|source| InstallError::Device {
        device: plan.device.to_owned(),
        what: "fsync",
        source,
    })?;
    let progress = Progress {
        name: plan.name.into(),
        sha256: plan.target.hashes.sha256.clone(),
        length: plan.target.length,
        slot,
        offset: hash.length(),
        hash: hash.clone(),
        slot_offset,
    };
    let bytes = serde_json::to_vec(&progress).map_err(|source| StateError::Encode {
        path: plan.progress.to_owned(),
        source,
    })?;
    write_atomic(plan.progress, &bytes)?;
    log::debug!("{}: checkpoint at byte {}", plan.name, progress.offset);
    Ok(())
}

/// The saved progress, if there is a readable one (anything else starts
/// over).
fn load_progress(path: &Path) -> Option<Progress> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("{}: unreadable, starting over: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!(
                "{}: not a progress record, starting over: {e}",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use atoll_common::bootstate::BootState;
    use atoll_common::grubenv::Grubenv;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::metadata::Hashes;

    const NAME: &str = "atoll-0.2.0.slot.zst";
    /// Slot bytes per zstd frame, and between checkpoints.
    const FRAME: usize = 64 * 1024;

    /// A slot image, its payload (one zstd frame per [`FRAME`]) and the
    /// target that signs both.
    fn release() -> (Vec<u8>, Vec<u8>, TargetFile) {
        let slot: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut payload = Vec::new();
        for frame in slot.chunks(FRAME) {
            payload.extend(zstd::encode_all(frame, 3).unwrap());
        }
        let target = TargetFile {
            length: payload.len() as u64,
            hashes: Hashes {
                sha256: hex::encode(Sha256::digest(&payload)),
            },
            custom: Some(Release {
                version: "0.2.0".parse().unwrap(),
                slot_sha256: hex::encode(Sha256::digest(&slot)),
                slot_length: slot.len() as u64,
                verity_root_hash: "ab".repeat(32),
                kernel: "6.1.0-test".into(),
                rollout: None,
                min_version: None,
            }),
        };
        (slot, payload, target)
    }

    /// A slot device, a grubenv pair booting A, and a progress path.
    struct Host {
        _dir: tempfile::TempDir,
        device: PathBuf,
        boot: BootEnv,
        progress: PathBuf,
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("root-b.img");
        std::fs::write(&device, vec![0xee; 1 << 20]).unwrap();
        let boot = BootEnv::on_esp(&dir.path().join("esp"));
        std::fs::create_dir_all(boot.env.parent().unwrap()).unwrap();
        let mut env = Grubenv::new();
        BootState::fresh(&"11".repeat(32)).to_env(&mut env).unwrap();
        let bytes = env.to_bytes().unwrap();
        std::fs::write(&boot.env, &bytes).unwrap();
        std::fs::write(boot.good.as_ref().unwrap(), &bytes).unwrap();
        let progress = dir.path().join("progress.json");
        Host {
            _dir: dir,
            device,
            boot,
            progress,
        }
    }

    impl Host {
        fn install(
            &self,
            target: &TargetFile,
            source: &mut dyn TargetSource,
        ) -> Result<Installed, InstallError> {
            let plan = Install {
                name: NAME,
                target,
                booted: Slot::A,
                device: &self.device,
                boot: &self.boot,
                progress: &self.progress,
                checkpoint_every: FRAME as u64,
            };
            install(&plan, source)
        }

        /// Slot B is not offered: A first, B neither good nor tried.
        fn assert_not_offered(&self) {
            let st = self.boot.state().unwrap();
            assert_eq!(st.order.first(), Some(&Slot::A));
            assert!(!st.slot(Slot::B).good);
            assert_eq!(st.slot(Slot::B).tries, 0);
        }
    }

    /// Serves `file` from the offset asked, then `after` (an error, or
    /// more bytes).
    struct Source<F: Fn() -> Box<dyn Read>> {
        file: Vec<u8>,
        after: F,
        offsets: Vec<u64>,
    }

    impl<F: Fn() -> Box<dyn Read>> TargetSource for Source<F> {
        fn open_target(
            &mut self,
            _name: &str,
            offset: u64,
        ) -> Result<Box<dyn Read + '_>, FetchError> {
            self.offsets.push(offset);
            let rest = self
                .file
                .get(offset as usize..)
                .unwrap_or_default()
                .to_vec();
            Ok(Box::new(Cursor::new(rest).chain((self.after)())))
        }
    }

    /// A connection reset.
    struct Reset;

    impl Read for Reset {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(ErrorKind::ConnectionReset, "reset (test)"))
        }
    }

    #[test]
    fn the_whole_payload_installs() {
        let (slot, payload, target) = release();
        let host = host();
        let mut source = Source {
            file: payload.clone(),
            after: || Box::new(io::empty()) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        let done = host.install(&target, &mut source).unwrap();
        assert_eq!(done.downloaded, payload.len() as u64);
        let written = std::fs::read(&host.device).unwrap();
        assert_eq!(&written[..slot.len()], &slot[..]);
        assert_eq!(host.boot.state().unwrap().order.first(), Some(&Slot::B));
    }

    /// A file that ends cleanly short of its signed length is refused, not
    /// resumed: every try would fetch the same short file.
    #[test]
    fn a_file_shorter_than_signed_is_refused() {
        let (_, payload, target) = release();
        // Past two frames, so that there was a checkpoint to resume from.
        let short = payload.len() * 3 / 4;
        let host = host();
        let mut source = Source {
            file: payload[..short].to_vec(),
            after: || Box::new(io::empty()) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        let e = host.install(&target, &mut source).unwrap_err();
        assert!(
            matches!(e, InstallError::Short { length, expected, .. }
                if length == short as u64 && expected == payload.len() as u64),
            "{e:?}"
        );
        assert!(!e.is_resumable());
        assert_eq!(
            e.to_string(),
            format!(
                "target {NAME}: the file served ends at byte {short}, short of its signed \
                 length of {} bytes",
                payload.len()
            )
        );
        // The next try starts over.
        assert!(!host.progress.exists());
        host.assert_not_offered();

        // Resumed from a checkpoint, a short file is refused all the same.
        let mut cut = Source {
            file: payload[..short].to_vec(),
            after: || Box::new(Reset) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        assert!(host.install(&target, &mut cut).unwrap_err().is_resumable());
        assert!(host.progress.exists());
        let e = host.install(&target, &mut source).unwrap_err();
        assert!(matches!(e, InstallError::Short { .. }), "{e:?}");
        assert!(
            source.offsets.last().is_some_and(|o| *o > 0),
            "{:?}",
            source.offsets
        );
        assert!(!host.progress.exists());
        host.assert_not_offered();
    }

    /// A transfer that breaks off keeps its checkpoint and resumes.
    #[test]
    fn a_cut_transfer_resumes() {
        let (slot, payload, target) = release();
        let host = host();
        let mut cut = Source {
            file: payload[..payload.len() / 2].to_vec(),
            after: || Box::new(Reset) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        let e = host.install(&target, &mut cut).unwrap_err();
        assert!(matches!(e, InstallError::Read { .. }), "{e:?}");
        assert!(e.is_resumable());
        host.assert_not_offered();
        let mut whole = Source {
            file: payload.clone(),
            after: || Box::new(io::empty()) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        let done = host.install(&target, &mut whole).unwrap();
        assert!(done.resumed_from > 0);
        assert_eq!(whole.offsets, vec![done.resumed_from]);
        let written = std::fs::read(&host.device).unwrap();
        assert_eq!(&written[..slot.len()], &slot[..]);
    }

    /// A server that sends the payload and then never stops is cut at the
    /// first byte past the signed length.
    #[test]
    fn an_endless_download_is_cut_at_the_signed_length() {
        let (_, payload, target) = release();
        let host = host();
        let mut endless = Source {
            file: payload,
            after: || Box::new(io::repeat(0)) as Box<dyn Read>,
            offsets: Vec::new(),
        };
        let e = host.install(&target, &mut endless).unwrap_err();
        assert!(
            matches!(e, InstallError::Verify(UpdateError::TargetTooLong { .. })),
            "{e:?}"
        );
        assert!(!e.is_resumable());
        assert!(!host.progress.exists());
        host.assert_not_offered();
    }
}
