//! `image-build release`: turns a built slot image into a signed release
//! in a static update repository (docs/updates.md).
//!
//! The repository, as any HTTP server (or a directory) serves it:
//!
//! - `N.root.json`: every root version, copied from the keys directory;
//! - `timestamp.json`: names the current snapshot (short expiry);
//! - `N.snapshot.json`, `N.targets.json`: every version ever written
//!   (consistent snapshots, so a host that fetched timestamp N can still
//!   fetch what it names while N+1 is being published);
//! - `targets/atoll-VERSION.slot.zst`: the releases, one file per version,
//!   never overwritten and never deleted here, so hosts in the middle of a
//!   download can finish.
//!
//! The payload is the slot image compressed with zstd, level 3, as a
//! sequence of independent frames of [`FRAME_SLOT_BYTES`] (4 MiB) of slot
//! each, so that a host's install resumes an interrupted download at a
//! frame boundary (the overhead is measured there). The slot is an
//! uncompressed ext4, so zstd does the work: the 69,763,072-byte slot of
//! 2026-12-07 gives a 33,553,379-byte payload (docs/updates.md), under the
//! 40 MB budget. Level 3 keeps a release fast; zstd costs the host nothing
//! (it decodes at hundreds of MB/s while streaming, and its frame checksum
//! is one more check).
//!
//! Files are written in an order that keeps the repository consistent at
//! every moment: the target, then targets and snapshot, and last
//! `timestamp.json`, each through a temporary file and a rename. Then the
//! whole repository is checked with the hosts' own workflow
//! ([`atoll_updater::metadata::Trusted`]), starting from root version 1.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atoll_updater::metadata::role::{self, versioned_file, DocumentError, RoleName};
use atoll_updater::metadata::{
    Config, DirFetcher, Hashes, MetaFile, Release, Rollout, Root, Snapshot, TargetCheck,
    TargetFile, Targets, Time, Timestamp, Trusted, UpdateError, Version,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zstd::stream::raw::CParameter;

use crate::image::size;
use crate::keys::{self, KeyDir, KeysError};

#[derive(Debug, Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a build.json")]
    BuildJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the version {text:?} is not MAJOR.MINOR.PATCH")]
    BuildVersion { path: PathBuf, text: String },
    #[error("{slot}: {what} is {found}, but {build_json} says {expected} (rebuild, or pass the matching --build-json)")]
    SlotMismatch {
        slot: PathBuf,
        build_json: PathBuf,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("the repository already has version {existing} ({name}); a release must be newer")]
    NotNewer { existing: Version, name: String },
    #[error("{path} already exists")]
    TargetExists { path: PathBuf },
    #[error("{path}: the repository's current metadata is unreadable")]
    Existing {
        path: PathBuf,
        #[source]
        source: DocumentError,
    },
    #[error("{path}: lists no {name}")]
    NoMeta { path: PathBuf, name: String },
    #[error("cannot sign")]
    Sign(#[from] DocumentError),
    #[error("{path}: does not decompress to the slot image")]
    RoundTrip {
        path: PathBuf,
        #[source]
        source: Box<UpdateError>,
    },
    #[error("{repo}: the written repository does not verify as a host would check it")]
    Verify {
        repo: PathBuf,
        #[source]
        source: Box<UpdateError>,
    },
}

/// The fields of build.json a release uses.
#[derive(Debug, Deserialize)]
struct BuildJson {
    version: String,
    kernel_release: String,
    slot_sha256: String,
    slot_size: u64,
    verity_root_hash: String,
}

/// Expiries of the documents a release or a re-sign writes.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// targets.json and snapshot.json.
    pub metadata: Duration,
    /// timestamp.json: short, and re-signed at least this often.
    pub timestamp: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            metadata: Duration::from_secs(7 * 86_400),
            timestamp: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    pub keys: PathBuf,
    pub repo: PathBuf,
    /// Defaults to build.json's version.
    pub version: Option<Version>,
    pub slot: PathBuf,
    pub build_json: PathBuf,
    pub expiry: Expiry,
    pub rollout: Option<Rollout>,
    pub min_version: Option<Version>,
    pub now: Time,
}

/// What was published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new release: target name, its file, target entry.
    pub release: Option<(String, PathBuf, TargetFile)>,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    pub root_version: u64,
    pub timestamp_expires: Time,
}

/// Cuts a release: compresses the slot into `targets/`, then publishes
/// new metadata listing it beside every earlier release.
pub fn release(opts: &ReleaseOptions) -> Result<Published, ReleaseError> {
    let keys = KeyDir::new(&opts.keys);
    let (root, _) = keys.root()?;
    // Fail on missing keys before the long step.
    for role in [RoleName::Targets, RoleName::Snapshot, RoleName::Timestamp] {
        keys.signing_keys(&root, role)?;
    }
    let build: BuildJson = {
        let bytes = read(&opts.build_json)?;
        serde_json::from_slice(&bytes).map_err(|source| ReleaseError::BuildJson {
            path: opts.build_json.clone(),
            source,
        })?
    };
    let version = match opts.version {
        Some(v) => v,
        None => build
            .version
            .parse()
            .map_err(|_| ReleaseError::BuildVersion {
                path: opts.build_json.clone(),
                text: build.version.clone(),
            })?,
    };
    let state = RepoState::read(&opts.repo)?;
    if let Some((name, existing)) = state
        .targets
        .targets
        .iter()
        .filter_map(|(n, t)| Some((n, t.custom.as_ref()?.version)))
        .max_by_key(|(_, v)| *v)
    {
        if existing >= version {
            return Err(ReleaseError::NotNewer {
                existing,
                name: name.clone(),
            });
        }
    }
    let name = format!("atoll-{version}.slot.zst");
    let path = opts.repo.join("targets").join(&name);
    if path.exists() {
        return Err(ReleaseError::TargetExists { path });
    }
    let payload = compress(&opts.slot, &path)?;
    let mismatch = |what, found: String, expected: String| ReleaseError::SlotMismatch {
        slot: opts.slot.clone(),
        build_json: opts.build_json.clone(),
        what,
        found,
        expected,
    };
    if payload.slot_sha256 != build.slot_sha256 || payload.slot_length != build.slot_size {
        let _ = fs::remove_file(&path);
        return Err(if payload.slot_length != build.slot_size {
            mismatch(
                "the size",
                payload.slot_length.to_string(),
                build.slot_size.to_string(),
            )
        } else {
            mismatch("the sha256", payload.slot_sha256, build.slot_sha256)
        });
    }
    let target = TargetFile {
        length: payload.length,
        hashes: Hashes {
            sha256: payload.sha256,
        },
        custom: Some(Release {
            version,
            slot_sha256: payload.slot_sha256,
            slot_length: payload.slot_length,
            verity_root_hash: build.verity_root_hash,
            kernel: build.kernel_release,
            rollout: opts.rollout,
            min_version: opts.min_version,
        }),
    };
    check_round_trip(&path, target.custom.as_ref())?;
    let mut published = publish(
        &keys,
        &root,
        &opts.repo,
        state,
        Some((&name, &target)),
        opts.expiry,
        opts.now,
    )?;
    published.release = Some((name, path, target));
    Ok(published)
}

/// Re-signs the current targets, snapshot and timestamp with fresh
/// expiries (versions + 1), and publishes any rotated root. Run it more
/// often than the timestamp expiry (from cron), and after `keys rotate`.
pub fn resign(
    keys_dir: &Path,
    repo: &Path,
    expiry: Expiry,
    now: Time,
) -> Result<Published, ReleaseError> {
    let keys = KeyDir::new(keys_dir);
    let (root, _) = keys.root()?;
    let state = RepoState::read(repo)?;
    publish(&keys, &root, repo, state, None, expiry, now)
}

/// The repository's current metadata (unverified: it is ours; the new
/// documents are checked as a whole at the end).
struct RepoState {
    targets: Targets,
    snapshot_version: u64,
    timestamp_version: u64,
}

impl RepoState {
    fn read(repo: &Path) -> Result<RepoState, ReleaseError> {
        let timestamp_path = repo.join("timestamp.json");
        if !timestamp_path.exists() {
            return Ok(RepoState {
                targets: Targets::new(0, Time::UNIX_EPOCH),
                snapshot_version: 0,
                timestamp_version: 0,
            });
        }
        let timestamp: Timestamp = parse_existing(&timestamp_path)?;
        let snapshot_version = pinned(&timestamp_path, &timestamp.meta, RoleName::Snapshot)?;
        let snapshot_path = repo.join(versioned_file(RoleName::Snapshot, snapshot_version));
        let snapshot: Snapshot = parse_existing(&snapshot_path)?;
        let targets_version = pinned(&snapshot_path, &snapshot.meta, RoleName::Targets)?;
        let targets_path = repo.join(versioned_file(RoleName::Targets, targets_version));
        let targets: Targets = parse_existing(&targets_path)?;
        Ok(RepoState {
            targets,
            snapshot_version: snapshot.version,
            timestamp_version: timestamp.version,
        })
    }
}

fn parse_existing<T: role::Role>(path: &Path) -> Result<T, ReleaseError> {
    let bytes = read(path)?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    role::parse::<T>(&name, &bytes)
        .map(|p| p.signed)
        .map_err(|source| ReleaseError::Existing {
            path: path.to_owned(),
            source,
        })
}

fn pinned(
    path: &Path,
    meta: &std::collections::BTreeMap<String, MetaFile>,
    role: RoleName,
) -> Result<u64, ReleaseError> {
    meta.get(&role.file())
        .map(|m| m.version)
        .ok_or_else(|| ReleaseError::NoMeta {
            path: path.to_owned(),
            name: role.file(),
        })
}

fn pin(version: u64, bytes: &[u8]) -> MetaFile {
    MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: hex::encode(Sha256::digest(bytes)),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn publish(
    keys: &KeyDir,
    root: &Root,
    repo: &Path,
    state: RepoState,
    new: Option<(&str, &TargetFile)>,
    expiry: Expiry,
    now: Time,
) -> Result<Published, ReleaseError> {
    // Every root version, so hosts can walk from the one they ship.
    let history = keys.root_history()?;
    for (version, path) in &history {
        let bytes = read(path)?;
        keys::write_new(&repo.join(versioned_file(RoleName::Root, *version)), &bytes)?;
    }
    let signers = |role| -> Result<Vec<_>, ReleaseError> { Ok(keys.signing_keys(root, role)?) };

    let mut targets = state.targets;
    targets.kind = "targets".into();
    targets.version += 1;
    targets.expires = now.plus(expiry.metadata);
    if let Some((name, target)) = new {
        targets.targets.insert(name.to_owned(), target.clone());
    }
    let targets_bytes = role::sign(
        &targets,
        &signers(RoleName::Targets)?.iter().collect::<Vec<_>>(),
    )?;

    let mut snapshot = Snapshot::new(state.snapshot_version + 1, now.plus(expiry.metadata));
    snapshot.meta.insert(
        RoleName::Targets.file(),
        pin(targets.version, &targets_bytes),
    );
    let snapshot_bytes = role::sign(
        &snapshot,
        &signers(RoleName::Snapshot)?.iter().collect::<Vec<_>>(),
    )?;

    let timestamp = Timestamp::new(
        state.timestamp_version + 1,
        now.plus(expiry.timestamp),
        pin(snapshot.version, &snapshot_bytes),
    );
    let timestamp_bytes = role::sign(
        &timestamp,
        &signers(RoleName::Timestamp)?.iter().collect::<Vec<_>>(),
    )?;

    // No published timestamp names these versions yet (a run that
    // stopped half-way may have left them): write over them.
    keys::write_atomic(
        &repo.join(versioned_file(RoleName::Targets, targets.version)),
        &targets_bytes,
    )?;
    keys::write_atomic(
        &repo.join(versioned_file(RoleName::Snapshot, snapshot.version)),
        &snapshot_bytes,
    )?;
    keys::write_atomic(&repo.join(RoleName::Timestamp.file()), &timestamp_bytes)?;

    // Check the result as a host that ships root 1 would.
    if let Some((_, first)) = history.first() {
        let shipped = read(first)?;
        let verify = |source| ReleaseError::Verify {
            repo: repo.to_owned(),
            source: Box::new(source),
        };
        let mut trusted = Trusted::new(&shipped, "1.root.json").map_err(verify)?;
        trusted
            .update(&mut DirFetcher::new(repo), now, &Config::default())
            .map_err(verify)?;
    }
    Ok(Published {
        release: None,
        targets_version: targets.version,
        snapshot_version: snapshot.version,
        timestamp_version: timestamp.version,
        root_version: root.version,
        timestamp_expires: timestamp.expires,
    })
}

/// The compressed target and the slot it holds.
struct Payload {
    length: u64,
    sha256: String,
    slot_length: u64,
    slot_sha256: String,
    frames: u64,
}

/// zstd level for release payloads.
const ZSTD_LEVEL: i32 = 3;

/// Slot bytes per zstd frame of a release payload: 4 MiB.
///
/// Each frame decodes on its own, so an interrupted install resumes at the
/// last frame boundary it checkpointed instead of byte 0
/// (`atoll_updater::install`). Frames cost a little compression: each
/// starts with an empty window and carries a header and a checksum.
/// Measured with this code (zstd 1.5.7, level 3) on a 22,450,176-byte
/// slot (an xz squashfs; the slot has grown since) gives 22,357,901 bytes in 6 frames against
/// 22,356,430 as one frame, 1,471 bytes (0.007%) more. An uncompressed
/// tar of the same root tree (38,666,240 bytes, what an uncompressed root
/// would hold) gives 22,924,236 against 22,876,355 as one frame: 0.21%
/// more (1 MiB frames: 0.89%, 2 MiB: 0.31%, 8 MiB: 0.09%).
pub const FRAME_SLOT_BYTES: usize = 4 << 20;

/// Compresses `slot` to `out` (through `out.tmp`) as a sequence of
/// independent zstd frames of [`FRAME_SLOT_BYTES`] slot bytes each (the
/// last one shorter), each with its content size and checksum, hashing
/// both sides, with a progress line every quarter. The same slot always
/// gives the same bytes (one thread, fixed level and parameters).
fn compress(slot: &Path, out: &Path) -> Result<Payload, ReleaseError> {
    let read_err = |source| ReleaseError::Read {
        path: slot.to_owned(),
        source,
    };
    let write_err = |source| ReleaseError::Write {
        path: out.to_owned(),
        source,
    };
    let input = File::open(slot).map_err(read_err)?;
    let total = input.metadata().map_err(read_err)?.len();
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).map_err(write_err)?;
    let started = Instant::now();
    println!(
        "release: compressing {} ({}) with zstd -{ZSTD_LEVEL}, one frame per {} of slot",
        slot.display(),
        size(total),
        size(FRAME_SLOT_BYTES as u64)
    );
    let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(write_err)?;
    compressor
        .set_parameter(CParameter::ChecksumFlag(true))
        .map_err(write_err)?;
    compressor
        .set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(write_err)?;
    let mut writer = HashingWriter {
        inner: file,
        hasher: Sha256::new(),
        written: 0,
    };
    let mut reader = input;
    let mut slot_hasher = Sha256::new();
    let mut frame = vec![0u8; FRAME_SLOT_BYTES];
    let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME_SLOT_BYTES));
    let (mut done, mut frames, mut quarter) = (0u64, 0u64, 1u64);
    loop {
        let n = fill(&mut reader, &mut frame).map_err(read_err)?;
        // An empty slot still makes one (empty) frame.
        if n == 0 && frames > 0 {
            break;
        }
        slot_hasher.update(&frame[..n]);
        packed.clear();
        compressor
            .compress_to_buffer(&frame[..n], &mut packed)
            .map_err(write_err)?;
        writer.write_all(&packed).map_err(write_err)?;
        frames += 1;
        done += n as u64;
        while quarter < 4 && total > 0 && done * 4 >= total * quarter {
            println!(
                "release:   {}% ({:.1} s)",
                quarter * 25,
                started.elapsed().as_secs_f64()
            );
            quarter += 1;
        }
        if n < frame.len() {
            break;
        }
    }
    writer.inner.sync_all().map_err(write_err)?;
    fs::rename(&tmp, out).map_err(write_err)?;
    let payload = Payload {
        length: writer.written,
        sha256: hex::encode(writer.hasher.finalize()),
        slot_length: done,
        slot_sha256: hex::encode(slot_hasher.finalize()),
        frames,
    };
    println!(
        "release: wrote {} ({}, {:.1}% of the slot, {} zstd frame(s)) in {:.1} s",
        out.display(),
        size(payload.length),
        payload.length as f64 * 100.0 / (done.max(1)) as f64,
        payload.frames,
        started.elapsed().as_secs_f64()
    );
    Ok(payload)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Decompresses the written target and checks it against the release.
fn check_round_trip(path: &Path, release: Option<&Release>) -> Result<(), ReleaseError> {
    let Some(release) = release else {
        return Ok(());
    };
    let read_err = |source| ReleaseError::Read {
        path: path.to_owned(),
        source,
    };
    let round_trip = |source| ReleaseError::RoundTrip {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let file = File::open(path).map_err(read_err)?;
    let mut decoder = zstd::stream::Decoder::new(file).map_err(read_err)?;
    let mut check = TargetCheck::slot("slot", release).map_err(round_trip)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]).map_err(round_trip)?;
    }
    check.finish().map_err(round_trip)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ReleaseError> {
    fs::read(path).map_err(|source| ReleaseError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{init, rotate, ROOT_EXPIRY};

    fn now() -> Time {
        Time::parse("2026-01-01T00:00:00Z").unwrap()
    }

    /// A keys directory, and a fake slot with its build.json.
    fn setup(tmp: &Path, content: &[u8]) -> ReleaseOptions {
        let keys = tmp.join("keys");
        init(&KeyDir::new(&keys), now(), ROOT_EXPIRY).unwrap();
        let slot = tmp.join("slot.img");
        fs::write(&slot, content).unwrap();
        let build = serde_json::json!({
            "version": "0.1.0",
            "kernel_release": "6.1.0-test",
            "slot_sha256": hex::encode(Sha256::digest(content)),
            "slot_size": content.len(),
            "verity_root_hash": "ab".repeat(32),
        });
        let build_json = tmp.join("build.json");
        fs::write(&build_json, build.to_string()).unwrap();
        ReleaseOptions {
            keys,
            repo: tmp.join("repo"),
            version: None,
            slot,
            build_json,
            expiry: Expiry::default(),
            rollout: None,
            min_version: None,
            now: now(),
        }
    }

    fn host_update(opts: &ReleaseOptions, at: Time) -> Result<Trusted, UpdateError> {
        let shipped = fs::read(opts.keys.join("root.json")).unwrap();
        let mut trusted = Trusted::new(&shipped, "update-root.json")?;
        trusted.update(&mut DirFetcher::new(&opts.repo), at, &Config::default())?;
        Ok(trusted)
    }

    #[test]
    fn releases_verify_as_a_host_checks_them() {
        let tmp = tempfile::tempdir().unwrap();
        let slot: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut opts = setup(tmp.path(), &slot);
        let first = release(&opts).unwrap();
        let (name, path, target) = first.release.unwrap();
        assert_eq!(name, "atoll-0.1.0.slot.zst");
        assert!(target.length < slot.len() as u64 / 10);
        assert_eq!(fs::metadata(&path).unwrap().len(), target.length);
        assert_eq!(
            (
                first.targets_version,
                first.snapshot_version,
                first.timestamp_version
            ),
            (1, 1, 1)
        );
        let trusted = host_update(&opts, now()).unwrap();
        let (latest, _, r) = trusted.latest_release().unwrap();
        assert_eq!(
            (latest, r.kernel.as_str()),
            ("atoll-0.1.0.slot.zst", "6.1.0-test")
        );

        // The same version again is refused; a newer one is listed beside it.
        let e = release(&opts).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the repository already has version 0.1.0 (atoll-0.1.0.slot.zst); a release must be newer"
        );
        opts.version = Some("0.2.0".parse().unwrap());
        opts.rollout = Some(Rollout {
            start: now(),
            duration: 86_400,
        });
        opts.min_version = Some("0.1.0".parse().unwrap());
        let second = release(&opts).unwrap();
        assert_eq!(second.targets_version, 2);
        let trusted = host_update(&opts, now()).unwrap();
        let (latest, _, r) = trusted.latest_release().unwrap();
        assert_eq!(latest, "atoll-0.2.0.slot.zst");
        assert_eq!(r.rollout.unwrap().duration, 86_400);
        assert!(trusted.target("atoll-0.1.0.slot.zst").is_ok());
        assert!(opts.repo.join("1.targets.json").exists());

        // A day later the timestamp has expired; a re-sign fixes it.
        let later = now().plus(Duration::from_secs(86_400));
        let e = host_update(&opts, later).unwrap_err();
        assert_eq!(
            e.to_string(),
            "timestamp.json: expired at 2026-01-02T00:00:00Z"
        );
        resign(&opts.keys, &opts.repo, Expiry::default(), later).unwrap();
        host_update(&opts, later).unwrap();
    }

    /// Walks the payload's zstd frames: the slot bytes each one holds.
    fn frame_sizes(payload: &[u8]) -> Vec<u64> {
        let mut rest = payload;
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let len = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            let content = zstd::zstd_safe::get_frame_content_size(rest).unwrap();
            sizes.push(content.unwrap());
            rest = &rest[len..];
        }
        sizes
    }

    #[test]
    fn payloads_are_frames_of_fixed_slot_size_and_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let frame = FRAME_SLOT_BYTES as u64;
        // Two and a half frames; half compressible, half not.
        let len = 2 * FRAME_SLOT_BYTES + FRAME_SLOT_BYTES / 2;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let slot: Vec<u8> = (0..len)
            .map(|i| {
                if (i / 65_536) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect();
        let path = tmp.path().join("slot.img");
        fs::write(&path, &slot).unwrap();
        let a = compress(&path, &tmp.path().join("a.zst")).unwrap();
        let b = compress(&path, &tmp.path().join("b.zst")).unwrap();
        let bytes = fs::read(tmp.path().join("a.zst")).unwrap();
        assert_eq!(bytes, fs::read(tmp.path().join("b.zst")).unwrap());
        assert_eq!((a.sha256, a.length), (b.sha256, b.length));
        assert_eq!(a.frames, 3);
        assert_eq!(frame_sizes(&bytes), [frame, frame, frame / 2]);
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), slot);

        // An exact multiple of the frame size has no empty frame at the
        // end; an empty slot is one empty frame.
        fs::write(&path, &slot[..FRAME_SLOT_BYTES]).unwrap();
        compress(&path, &tmp.path().join("c.zst")).unwrap();
        assert_eq!(
            frame_sizes(&fs::read(tmp.path().join("c.zst")).unwrap()),
            [frame]
        );
        fs::write(&path, b"").unwrap();
        let empty = compress(&path, &tmp.path().join("d.zst")).unwrap();
        assert_eq!(empty.frames, 1);
        assert_eq!(
            frame_sizes(&fs::read(tmp.path().join("d.zst")).unwrap()),
            [0]
        );
    }

    #[test]
    fn refuses_a_slot_that_is_not_the_built_one() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = setup(tmp.path(), b"the slot");
        fs::write(&opts.slot, b"another slot").unwrap();
        let e = release(&opts).unwrap_err();
        assert!(e.to_string().contains(": the size is 12, but "), "{e}");
        fs::write(&opts.slot, b"the slOt").unwrap();
        let e = release(&opts).unwrap_err();
        assert!(e.to_string().contains(": the sha256 is "), "{e}");
        assert!(!opts.repo.join("targets/atoll-0.1.0.slot.zst").exists());
    }

    #[test]
    fn publishes_rotated_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = setup(tmp.path(), b"the slot");
        let shipped = fs::read(opts.keys.join("root.json")).unwrap();
        release(&opts).unwrap();
        let dir = KeyDir::new(&opts.keys);
        let (root, _) = dir.root().unwrap();
        let old = root.role(RoleName::Timestamp).unwrap().keyids[0].clone();
        rotate(&dir, RoleName::Timestamp, Some(&old), now(), ROOT_EXPIRY).unwrap();
        let published = resign(&opts.keys, &opts.repo, Expiry::default(), now()).unwrap();
        assert_eq!(published.root_version, 2);
        // A host with the old root follows the rotation.
        let mut trusted = Trusted::new(&shipped, "update-root.json").unwrap();
        trusted
            .update(&mut DirFetcher::new(&opts.repo), now(), &Config::default())
            .unwrap();
        assert_eq!(trusted.root().signed.version, 2);
    }
}
