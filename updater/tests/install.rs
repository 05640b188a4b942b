//! End to end, as the agent will run it: a signed repository served over
//! HTTP from a thread on 127.0.0.1 (with Range, and ways to misbehave),
//! the metadata workflow over [`HttpRepo`], the release choice, and the
//! install into a slot file with a grubenv beside it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::bootstate::{BootState, DEFAULT_TRIES};
use atoll_common::grubenv::Grubenv;
use atoll_common::layout::Slot;
use atoll_updater::bootenv::BootEnv;
use atoll_updater::http::{HttpConfig, HttpRepo};
use atoll_updater::install::{self, Install, InstallError, Progress};
use atoll_updater::metadata::role::{self, versioned_file, RoleName};
use atoll_updater::metadata::{
    Config, FetchError, Fetcher, Hashes, MetaFile, Release, Root, Snapshot, TargetFile, Targets,
    Time, Timestamp, Trusted, UpdateError,
};
use atoll_updater::policy::{self, BadReleases};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

const DAY: Duration = Duration::from_secs(86_400);
const NAME: &str = "atoll-0.2.0.slot.zst";

fn now() -> Time {
    Time::parse("2026-03-01T00:00:00Z").unwrap()
}

/// Deterministic bytes: half compressible, half not.
fn slot_image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
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
        .collect()
}

/// The slot as zstd frames of `frame` slot bytes each (one frame if
/// `frame >= slot.len()`), with checksums as `image-build` writes them.
fn compress(slot: &[u8], frame: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in slot.chunks(frame) {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(chunk).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

fn hex256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A signed repository (file name → bytes) with one release of `slot`.
fn repository(slot: &[u8], payload: &[u8]) -> (BTreeMap<String, Vec<u8>>, Vec<u8>, String) {
    let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
    let mut root = Root::new(1, now().plus(365 * DAY));
    for (role, key) in RoleName::ALL.into_iter().zip(&keys) {
        root.add_key(role, &key.verifying_key());
    }
    let mut files = BTreeMap::new();
    let root_bytes = role::sign(&root, &[&keys[0]]).unwrap();
    files.insert(versioned_file(RoleName::Root, 1), root_bytes.clone());
    let verity = "5a".repeat(32);
    let mut targets = Targets::new(1, now().plus(7 * DAY));
    targets.targets.insert(
        NAME.into(),
        TargetFile {
            length: payload.len() as u64,
            hashes: Hashes {
                sha256: hex256(payload),
            },
            custom: Some(Release {
                version: "0.2.0".parse().unwrap(),
                slot_sha256: hex256(slot),
                slot_length: slot.len() as u64,
                verity_root_hash: verity.clone(),
                kernel: "6.1.0-test".into(),
                rollout: None,
                min_version: None,
            }),
        },
    );
    let pin = |version, bytes: &[u8]| MetaFile {
        version,
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: hex256(bytes),
        }),
    };
    let targets_bytes = role::sign(&targets, &[&keys[1]]).unwrap();
    let mut snapshot = Snapshot::new(1, now().plus(7 * DAY));
    snapshot
        .meta
        .insert("targets.json".into(), pin(1, &targets_bytes));
    let snapshot_bytes = role::sign(&snapshot, &[&keys[2]]).unwrap();
    let timestamp = Timestamp::new(1, now().plus(DAY), pin(1, &snapshot_bytes));
    files.insert("1.targets.json".into(), targets_bytes);
    files.insert("1.snapshot.json".into(), snapshot_bytes);
    files.insert(
        "timestamp.json".into(),
        role::sign(&timestamp, &[&keys[3]]).unwrap(),
    );
    files.insert(format!("targets/{NAME}"), payload.to_vec());
    (files, root_bytes, verity)
}

/// How the server misbehaves.
#[derive(Debug, Default)]
struct Behaviour {
    /// Close the next payload response after this many body bytes.
    cut_after: Option<usize>,
    /// Ignore Range headers (answer 200 with the whole file).
    ignore_range: bool,
    /// Range headers seen for payloads (0 for none).
    ranges: Vec<u64>,
}

struct Server {
    url: String,
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

/// A tiny HTTP/1.1 server: GET only, one request per connection.
fn serve(files: BTreeMap<String, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/repo/", listener.local_addr().unwrap());
    let files = Arc::new(Mutex::new(files));
    let behaviour = Arc::new(Mutex::new(Behaviour::default()));
    let (f, b) = (files.clone(), behaviour.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (f, b) = (f.clone(), b.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &f, &b);
            });
        }
    });
    Server {
        url,
        files,
        behaviour,
    }
}

fn handle(
    mut stream: TcpStream,
    files: &Mutex<BTreeMap<String, Vec<u8>>>,
    behaviour: &Mutex<Behaviour>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|r| r.parse::<u64>().ok());
            }
        }
    }
    let name = path.strip_prefix("/repo/").unwrap_or("");
    let Some(body) = files.lock().unwrap().get(name).cloned() else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    };
    let mut cut = None;
    let mut start = 0;
    if name.starts_with("targets/") {
        let mut b = behaviour.lock().unwrap();
        b.ranges.push(range.unwrap_or(0));
        cut = b.cut_after.take();
        if !b.ignore_range {
            start = range.unwrap_or(0) as usize;
        }
    }
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    let body = &body[start.min(body.len())..];
    stream.write_all(
        format!(
            "{head}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    match cut {
        Some(n) => {
            stream.write_all(&body[..n.min(body.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        None => stream.write_all(body),
    }
}

/// A host: slot file, ESP with grubenv pair, /var with the progress file.
struct Host {
    dir: tempfile::TempDir,
    device: PathBuf,
    boot: BootEnv,
    progress: PathBuf,
}

fn host(slot_size: u64) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("root-b.img");
    std::fs::write(&device, vec![0xee; slot_size as usize]).unwrap();
    let boot = BootEnv::on_esp(&dir.path().join("esp"));
    std::fs::create_dir_all(boot.env.parent().unwrap()).unwrap();
    let mut env = Grubenv::new();
    BootState::fresh(&"11".repeat(32)).to_env(&mut env).unwrap();
    let bytes = env.to_bytes().unwrap();
    std::fs::write(&boot.env, &bytes).unwrap();
    std::fs::write(boot.good.as_ref().unwrap(), &bytes).unwrap();
    let progress = dir.path().join("var/update/progress.json");
    Host {
        dir,
        device,
        boot,
        progress,
    }
}

fn state(path: &Path) -> BootState {
    BootState::from_env(&Grubenv::parse(&std::fs::read(path).unwrap()).unwrap()).unwrap()
}

impl Host {
    /// Verifies the metadata over HTTP, chooses, installs.
    fn update(
        &self,
        repo: &mut HttpRepo,
        root: &[u8],
        checkpoint_every: u64,
    ) -> Result<install::Installed, InstallError> {
        let mut trusted = Trusted::new(root, "update-root.json").unwrap();
        trusted.update(repo, now(), &Config::default()).unwrap();
        let targets = &trusted.targets().unwrap().signed;
        let choice = policy::choose(
            targets,
            "0.1.0".parse().unwrap(),
            "machine-1",
            &BadReleases::default(),
            now(),
        );
        let (name, target, _) = choice.install.unwrap();
        let plan = Install {
            name,
            target,
            booted: Slot::A,
            device: &self.device,
            boot: &self.boot,
            progress: &self.progress,
            checkpoint_every,
        };
        install::install(&plan, repo)
    }

    /// The written slot is not bootable, the running one still first.
    fn assert_not_offered(&self) {
        for path in [&self.boot.env, self.boot.good.as_ref().unwrap()] {
            let st = state(path);
            assert_eq!(st.order, vec![Slot::A, Slot::B], "{}", path.display());
            assert!(!st.b.good);
            assert_eq!(st.b.tries, 0);
            assert!(st.a.good);
        }
    }

    fn assert_installed(&self, slot: &[u8], verity: &str) {
        let written = std::fs::read(&self.device).unwrap();
        assert_eq!(&written[..slot.len()], slot);
        let st = state(&self.boot.env);
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
        assert_eq!((st.b.good, st.b.tries), (false, DEFAULT_TRIES));
        assert_eq!(st.b.verity, verity);
        assert!(st.a.good);
        assert!(!self.progress.exists());
        let _ = &self.dir;
    }
}

fn http(server: &Server) -> HttpRepo {
    let config = HttpConfig {
        read_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    };
    HttpRepo::new(&server.url, &config).unwrap()
}

const SLOT_LEN: usize = 3 * 1024 * 1024 + 4321;
const FRAME: usize = 256 * 1024;
const CHECKPOINT: u64 = 512 * 1024;

#[test]
fn installs_over_http_and_offers_the_slot_last() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, verity) = repository(&slot, &payload);
    let server = serve(files);
    let host = host(4 << 20);
    let mut repo = http(&server);
    let done = host.update(&mut repo, &root, CHECKPOINT).unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(done.resumed_from, 0);
    assert_eq!(done.downloaded, payload.len() as u64);
    host.assert_installed(&slot, &verity);
    // The good copy still boots A, and says B cannot boot.
    let good = state(host.boot.good.as_ref().unwrap());
    assert_eq!(good.order, vec![Slot::A, Slot::B]);
    assert_eq!((good.b.good, good.b.tries), (false, 0));
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, verity) = repository(&slot, &payload);
    let server = serve(files);
    let host = host(4 << 20);
    let mut repo = http(&server);
    server.behaviour.lock().unwrap().cut_after = Some(payload.len() * 2 / 3);
    let err = host.update(&mut repo, &root, CHECKPOINT).unwrap_err();
    assert!(err.is_resumable(), "{err:?}");
    host.assert_not_offered();
    let progress: Progress =
        serde_json::from_slice(&std::fs::read(&host.progress).unwrap()).unwrap();
    assert!(progress.offset > 0 && progress.slot_offset >= CHECKPOINT);
    assert_eq!(progress.slot, Slot::B);

    let done = host.update(&mut repo, &root, CHECKPOINT).unwrap();
    assert_eq!(done.resumed_from, progress.offset);
    assert_eq!(done.downloaded, payload.len() as u64 - progress.offset);
    assert_eq!(
        server.behaviour.lock().unwrap().ranges,
        vec![0, progress.offset]
    );
    host.assert_installed(&slot, &verity);
}

#[test]
fn a_server_that_ignores_range_still_resumes() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, verity) = repository(&slot, &payload);
    let server = serve(files);
    let host = host(4 << 20);
    let mut repo = http(&server);
    {
        let mut b = server.behaviour.lock().unwrap();
        b.cut_after = Some(payload.len() / 2);
        b.ignore_range = true;
    }
    assert!(host
        .update(&mut repo, &root, CHECKPOINT)
        .unwrap_err()
        .is_resumable());
    let done = host.update(&mut repo, &root, CHECKPOINT).unwrap();
    assert!(done.resumed_from > 0);
    host.assert_installed(&slot, &verity);
}

#[test]
fn a_single_frame_payload_restarts_from_the_beginning() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, usize::MAX);
    let (files, root, verity) = repository(&slot, &payload);
    let server = serve(files);
    let host = host(4 << 20);
    let mut repo = http(&server);
    server.behaviour.lock().unwrap().cut_after = Some(payload.len() / 2);
    assert!(host
        .update(&mut repo, &root, CHECKPOINT)
        .unwrap_err()
        .is_resumable());
    assert!(!host.progress.exists());
    let done = host.update(&mut repo, &root, CHECKPOINT).unwrap();
    assert_eq!(done.resumed_from, 0);
    host.assert_installed(&slot, &verity);
}

#[test]
fn a_tampered_payload_is_refused_and_never_offered() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    for at in [10, payload.len() / 2, payload.len() - 2] {
        let (mut files, root, _) = repository(&slot, &payload);
        files.get_mut(&format!("targets/{NAME}")).unwrap()[at] ^= 0x01;
        let server = serve(files);
        let host = host(4 << 20);
        let mut repo = http(&server);
        let err = host.update(&mut repo, &root, CHECKPOINT).unwrap_err();
        assert!(!err.is_resumable(), "{err:?}");
        assert!(
            matches!(
                err,
                InstallError::Decompress { .. }
                    | InstallError::Verify(UpdateError::TargetHash { .. })
            ),
            "byte {at}: {err:?}"
        );
        host.assert_not_offered();
        assert!(!host.progress.exists());
    }
}

#[test]
fn a_payload_longer_than_listed_is_cut_and_refused() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, _) = repository(&slot, &payload);
    let server = serve(files);
    // Serve a longer file under the name (an endless download).
    let mut longer = payload.clone();
    longer.extend(vec![0u8; 1 << 20]);
    server
        .files
        .lock()
        .unwrap()
        .insert(format!("targets/{NAME}"), longer);
    let host = host(4 << 20);
    let mut repo = http(&server);
    let err = host.update(&mut repo, &root, CHECKPOINT).unwrap_err();
    assert!(
        matches!(err, InstallError::Verify(UpdateError::TargetTooLong { .. })),
        "{err:?}"
    );
    host.assert_not_offered();
}

#[test]
fn a_slot_too_small_is_refused_before_anything_is_written() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, _) = repository(&slot, &payload);
    let server = serve(files);
    let host = host(1 << 20);
    let before = std::fs::read(&host.boot.env).unwrap();
    let mut repo = http(&server);
    let err = host.update(&mut repo, &root, CHECKPOINT).unwrap_err();
    assert!(matches!(err, InstallError::TooSmall { .. }), "{err:?}");
    assert_eq!(std::fs::read(&host.boot.env).unwrap(), before);
}

#[test]
fn metadata_fetches_are_limited() {
    let slot = slot_image(1000);
    let payload = compress(&slot, FRAME);
    let (files, _, _) = repository(&slot, &payload);
    let server = serve(files);
    let mut repo = http(&server);
    assert!(matches!(
        repo.fetch("timestamp.json", 10),
        Err(FetchError::TooLong { limit: 10 })
    ));
    assert!(matches!(
        repo.fetch("2.root.json", 1000),
        Err(FetchError::NotFound)
    ));
    assert!(matches!(
        repo.fetch("../x", 1000),
        Err(FetchError::NotFound)
    ));
    let ts = repo.fetch("timestamp.json", 16 * 1024).unwrap();
    assert_eq!(ts, server.files.lock().unwrap()["timestamp.json"]);
}

#[test]
fn installs_from_a_directory_too() {
    let slot = slot_image(SLOT_LEN);
    let payload = compress(&slot, FRAME);
    let (files, root, verity) = repository(&slot, &payload);
    let host = host(4 << 20);
    let repo_dir = host.dir.path().join("repo");
    for (name, bytes) in &files {
        let path = repo_dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let mut dir = atoll_updater::metadata::DirFetcher::new(&repo_dir);
    let mut trusted = Trusted::new(&root, "update-root.json").unwrap();
    trusted.update(&mut dir, now(), &Config::default()).unwrap();
    let target = trusted.target(NAME).unwrap().clone();
    let plan = Install {
        name: NAME,
        target: &target,
        booted: Slot::A,
        device: &host.device,
        boot: &host.boot,
        progress: &host.progress,
        checkpoint_every: CHECKPOINT,
    };
    install::install(&plan, &mut dir).unwrap();
    host.assert_installed(&slot, &verity);
    let mut rest = Vec::new();
    std::fs::File::open(&host.device)
        .unwrap()
        .read_to_end(&mut rest)
        .unwrap();
    // Past the image the device is as it was.
    assert!(rest[slot.len()..].iter().all(|b| *b == 0xee));
}
