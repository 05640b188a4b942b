//! The agent end to end: a signed repository served over HTTP from a
//! thread on 127.0.0.1, slot files and a grubenv pair in a temporary
//! directory, and [`Agent`] checking, installing, deciding when to reboot,
//! settling the next boot, and refusing what it must.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::bootstate::{BootState, DEFAULT_TRIES};
use atoll_common::config::{TimeOfDay, UpdateStrategy, Weekday};
use atoll_common::grubenv::Grubenv;
use atoll_common::layout::Slot;
use atoll_updater::agent::{Agent, AgentConfig, AgentError, CheckOutcome, Reason, SlotDevices};
use atoll_updater::bootenv::BootEnv;
use atoll_updater::install::InstallError;
use atoll_updater::metadata::role::{self, versioned_file, RoleName};
use atoll_updater::metadata::{
    DocumentError, Hashes, MetaFile, Release, Root, Snapshot, TargetFile, Targets, Time, Timestamp,
    UpdateError, Version,
};
use atoll_updater::policy::{Schedule, Window};
use atoll_updater::state::{AgentState, STATE_FILE};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

const DAY: Duration = Duration::from_secs(86_400);
const SLOT_LEN: usize = 1024 * 1024 + 777;
const FRAME: usize = 256 * 1024;
const DEVICE_LEN: usize = 2 << 20;

/// Sunday 2026-03-01, midnight UTC.
fn now() -> Time {
    Time::parse("2026-03-01T00:00:00Z").unwrap()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn hex256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn slot_image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
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

fn compress(slot: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in slot.chunks(FRAME) {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(chunk).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

fn keys() -> Vec<SigningKey> {
    (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect()
}

fn verity(version: &str) -> String {
    hex256(version.as_bytes())
}

/// How to build the repository.
struct Repo {
    /// Release version → slot image.
    releases: Vec<(String, Vec<u8>)>,
    /// Version of targets, snapshot and timestamp.
    meta_version: u64,
    timestamp_expires: Time,
    /// Sign targets.json with the wrong key.
    bad_targets_key: bool,
}

impl Repo {
    fn new(releases: &[&str]) -> Repo {
        Repo {
            releases: releases
                .iter()
                .map(|r| (r.to_string(), slot_image(SLOT_LEN, r.len() as u64 * 7919)))
                .collect(),
            meta_version: 1,
            timestamp_expires: now().plus(DAY),
            bad_targets_key: false,
        }
    }

    fn slot(&self, version: &str) -> &[u8] {
        &self.releases.iter().find(|(r, _)| r == version).unwrap().1
    }

    /// Files by path below the repository, and the root.
    fn build(&self) -> (BTreeMap<String, Vec<u8>>, Vec<u8>) {
        let keys = keys();
        let mut root = Root::new(1, now().plus(365 * DAY));
        for (role, key) in RoleName::ALL.into_iter().zip(&keys) {
            root.add_key(role, &key.verifying_key());
        }
        let root_bytes = role::sign(&root, &[&keys[0]]).unwrap();
        let mut files = BTreeMap::new();
        files.insert(versioned_file(RoleName::Root, 1), root_bytes.clone());
        let n = self.meta_version;
        let mut targets = Targets::new(n, now().plus(7 * DAY));
        for (version, slot) in &self.releases {
            let payload = compress(slot);
            let name = format!("atoll-{version}.slot.zst");
            targets.targets.insert(
                name.clone(),
                TargetFile {
                    length: payload.len() as u64,
                    hashes: Hashes {
                        sha256: hex256(&payload),
                    },
                    custom: Some(Release {
                        version: v(version),
                        slot_sha256: hex256(slot),
                        slot_length: slot.len() as u64,
                        verity_root_hash: verity(version),
                        kernel: "6.1.0-test".into(),
                        rollout: None,
                        min_version: None,
                    }),
                },
            );
            files.insert(format!("targets/{name}"), payload);
        }
        let pin = |version, bytes: &[u8]| MetaFile {
            version,
            length: Some(bytes.len() as u64),
            hashes: Some(Hashes {
                sha256: hex256(bytes),
            }),
        };
        let targets_key = if self.bad_targets_key {
            &keys[0]
        } else {
            &keys[1]
        };
        let targets_bytes = role::sign(&targets, &[targets_key]).unwrap();
        let mut snapshot = Snapshot::new(n, now().plus(7 * DAY));
        snapshot
            .meta
            .insert("targets.json".into(), pin(n, &targets_bytes));
        let snapshot_bytes = role::sign(&snapshot, &[&keys[2]]).unwrap();
        let timestamp = Timestamp::new(n, self.timestamp_expires, pin(n, &snapshot_bytes));
        files.insert(format!("{n}.targets.json"), targets_bytes);
        files.insert(format!("{n}.snapshot.json"), snapshot_bytes);
        files.insert(
            "timestamp.json".into(),
            role::sign(&timestamp, &[&keys[3]]).unwrap(),
        );
        (files, root_bytes)
    }
}

struct Server {
    url: String,
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    /// Payload requests served.
    payloads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn serve(&self, files: BTreeMap<String, Vec<u8>>) {
        *self.files.lock().unwrap() = files;
    }

    fn payloads(&self) -> usize {
        self.payloads.lock().unwrap().len()
    }
}

/// A tiny HTTP/1.1 server: GET only, one request per connection, Range
/// `bytes=N-` honoured.
fn serve(files: BTreeMap<String, Vec<u8>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/repo/", listener.local_addr().unwrap());
    let files = Arc::new(Mutex::new(files));
    let payloads = Arc::new(Mutex::new(Vec::new()));
    let (f, p) = (files.clone(), payloads.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (f, p) = (f.clone(), p.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &f, &p);
            });
        }
    });
    Server {
        url,
        files,
        payloads,
    }
}

fn handle(
    mut stream: TcpStream,
    files: &Mutex<BTreeMap<String, Vec<u8>>>,
    payloads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((k, val)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = val
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|r| r.parse::<usize>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let name = path.strip_prefix("/repo/").unwrap_or("");
    let Some(body) = files.lock().unwrap().get(name).cloned() else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    };
    if name.starts_with("targets/") {
        payloads.lock().unwrap().push(name.to_owned());
    }
    let head = if range > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {range}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    let body = &body[range.min(body.len())..];
    stream.write_all(
        format!(
            "{head}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    stream.write_all(body)
}

/// A host: two slot files, an ESP with the grubenv pair, /var, and the
/// root of trust the slot ships.
struct Host {
    dir: tempfile::TempDir,
    devices: SlotDevices,
    boot: BootEnv,
    root: PathBuf,
}

fn host(root: &[u8]) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let devices = SlotDevices {
        a: dir.path().join("root-a.img"),
        b: dir.path().join("root-b.img"),
    };
    std::fs::write(&devices.a, vec![0xaa; DEVICE_LEN]).unwrap();
    std::fs::write(&devices.b, vec![0xee; DEVICE_LEN]).unwrap();
    let boot = BootEnv::on_esp(&dir.path().join("esp"));
    std::fs::create_dir_all(boot.env.parent().unwrap()).unwrap();
    let mut state = BootState::fresh(&verity("0.1.0"));
    // B holds nothing bootable yet.
    state.b.good = false;
    state.b.verity.clear();
    let mut env = Grubenv::new();
    state.to_env(&mut env).unwrap();
    let bytes = env.to_bytes().unwrap();
    std::fs::write(&boot.env, &bytes).unwrap();
    std::fs::write(boot.good.as_ref().unwrap(), &bytes).unwrap();
    let root_path = dir.path().join("update-root.json");
    std::fs::write(&root_path, root).unwrap();
    Host {
        dir,
        devices,
        boot,
        root: root_path,
    }
}

fn read_boot(path: &Path) -> BootState {
    BootState::from_env(&Grubenv::parse(&std::fs::read(path).unwrap()).unwrap()).unwrap()
}

impl Host {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("var/lib/atoll/update")
    }

    fn state(&self) -> AgentState {
        AgentState::load(&self.state_dir().join(STATE_FILE)).unwrap()
    }

    fn config(
        &self,
        server: &Server,
        booted: Slot,
        boot_id: &str,
        running: &str,
        strategy: UpdateStrategy,
    ) -> AgentConfig {
        let mut c = AgentConfig::new(&server.url, "machine-1", booted, boot_id, v(running));
        c.state_dir = self.state_dir();
        c.boot = self.boot.clone();
        c.devices = self.devices.clone();
        c.trusted_root = self.root.clone();
        c.strategy = strategy;
        c.checkpoint_every = 256 * 1024;
        c.now = Box::new(now);
        c
    }

    fn agent(&self, server: &Server, booted: Slot, boot_id: &str, running: &str) -> Agent {
        let c = self.config(server, booted, boot_id, running, UpdateStrategy::Immediate);
        Agent::new(c).unwrap()
    }

    /// Changes the live grubenv as the boot loader or PID 1 would.
    fn set_boot(&self, f: impl FnOnce(&mut BootState)) {
        let mut st = read_boot(&self.boot.env);
        f(&mut st);
        let mut env = Grubenv::new();
        st.to_env(&mut env).unwrap();
        std::fs::write(&self.boot.env, env.to_bytes().unwrap()).unwrap();
    }

    fn assert_installed(&self, slot: &[u8], version: &str) {
        let written = std::fs::read(&self.devices.b).unwrap();
        assert_eq!(&written[..slot.len()], slot);
        let st = read_boot(&self.boot.env);
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
        assert_eq!((st.b.good, st.b.tries), (false, DEFAULT_TRIES));
        assert_eq!(st.b.verity, verity(version));
        assert!(st.a.good);
    }

    /// Slot B was never written and is not offered.
    fn assert_untouched(&self) {
        let written = std::fs::read(&self.devices.b).unwrap();
        assert!(written.iter().all(|b| *b == 0xee), "slot B was written");
        self.assert_not_offered();
    }

    fn assert_not_offered(&self) {
        let st = read_boot(&self.boot.env);
        assert_eq!(st.order, vec![Slot::A, Slot::B]);
        assert!(!st.b.good);
        assert_eq!(st.b.tries, 0);
        assert!(self.state().pending.is_none());
    }
}

fn setup(repo: &Repo) -> (Server, Host) {
    let (files, root) = repo.build();
    (serve(files), host(&root))
}

#[test]
fn installs_v2_into_b_and_reboots_now_then_records_the_update() {
    let repo = Repo::new(&["0.1.0", "0.2.0"]);
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::RebootNow {
            version: v("0.2.0")
        }
    );
    host.assert_installed(repo.slot("0.2.0"), "0.2.0");
    let state = host.state();
    let pending = state.pending.as_ref().unwrap();
    assert_eq!((pending.version, pending.slot), (v("0.2.0"), Slot::B));
    assert_eq!(state.last_check, Some(now()));
    assert_eq!(state.last_error, None);
    assert!(state.download.is_none());
    assert_eq!(server.payloads(), 1);

    // Checked again before the reboot: not installed again.
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::RebootNow {
            version: v("0.2.0")
        }
    );
    assert_eq!(server.payloads(), 1);
    let status = agent.status().unwrap();
    assert_eq!(status.other.version, Some(v("0.2.0")));
    assert_eq!(status.current.version, Some(v("0.1.0")));
    assert_eq!(status.next_boot, Slot::B);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["pending"]["version"], "0.2.0");
    // What `atoll-updater status` prints is what the host API carries.
    let wire: atoll_common::api::UpdateStatus = serde_json::from_value(json).unwrap();
    assert_eq!(wire.pending.unwrap().slot, Slot::B);
    assert_eq!(wire.other.version.as_deref(), Some("0.2.0"));
    assert!(wire
        .history
        .iter()
        .any(|e| e.what.contains("installed 0.2.0")));

    // The next boot: B on trial (GRUB took a try), then marked good.
    host.set_boot(|st| st.b.tries -= 1);
    let mut agent = host.agent(&server, Slot::B, "boot-2", "0.2.0");
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::OnTrial {
            version: v("0.2.0")
        }
    );
    host.set_boot(|st| st.mark_good(Slot::B));
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::UpToDate { waiting: None }
    );
    let state = host.state();
    assert!(state.pending.is_none());
    assert!(state
        .history
        .iter()
        .any(|e| e.what.contains("0.2.0 booted good in slot B")));
    assert_eq!(server.payloads(), 1);

    // A manual rollback offers A (0.1.0) again and keeps 0.2.0 off.
    let back = agent.manual_rollback().unwrap();
    assert_eq!((back.slot, back.version), (Slot::A, v("0.1.0")));
    assert_eq!(read_boot(&host.boot.env).order, vec![Slot::A, Slot::B]);
    let state = host.state();
    assert!(state.bad.contains(v("0.2.0")));
    assert!(state
        .history
        .iter()
        .any(|e| e.what.contains("manual rollback")));
}

#[test]
fn a_rollback_puts_the_release_on_the_bad_list_and_it_is_not_reinstalled() {
    let repo = Repo::new(&["0.2.0"]);
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    agent.check_once().unwrap();
    assert_eq!(server.payloads(), 1);
    // B's tries were spent and GRUB came back to A.
    host.set_boot(|st| {
        st.b.tries = 0;
        st.order = vec![Slot::A, Slot::B];
    });
    // PID 1 left why the last trial boot of 0.2.0 failed.
    let record = host.dir.path().join("trial-failure.json");
    atoll_common::trial::TrialFailure {
        slot: Slot::B,
        version: "0.2.0".into(),
        reason: "not ready after 120 s (ready_deadline)".into(),
    }
    .save(&record)
    .unwrap();
    let mut c = host.config(
        &server,
        Slot::A,
        "boot-2",
        "0.1.0",
        UpdateStrategy::Immediate,
    );
    c.trial_record = Some(record.clone());
    let mut agent = Agent::new(c).unwrap();
    // Settled as soon as the agent starts, before any check.
    assert_eq!(
        agent.settle().unwrap(),
        atoll_updater::state::BootOutcome::RolledBack(v("0.2.0"))
    );
    let wire: atoll_common::api::UpdateStatus =
        serde_json::from_value(serde_json::to_value(agent.status().unwrap()).unwrap()).unwrap();
    let reason = &wire.bad["0.2.0"].reason;
    assert!(
        reason.contains("came back on slot A: its trial boot failed: not ready after 120 s"),
        "{reason}"
    );
    assert!(!record.exists(), "the settled trial record is kept");
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::UpToDate { waiting: None }
    );
    let state = host.state();
    assert!(state.bad.contains(v("0.2.0")));
    assert!(state.pending.is_none());
    assert_eq!(state.last_error, None);
    agent.check_once().unwrap();
    assert_eq!(server.payloads(), 1, "a bad release was downloaded again");
    // No rollback to B: it is not good.
    assert!(matches!(
        agent.manual_rollback(),
        Err(AgentError::NoRollback(_))
    ));
}

#[test]
fn window_strategy_reboots_at_the_next_window() {
    let repo = Repo::new(&["0.2.0"]);
    let (server, host) = setup(&repo);
    let mut c = host.config(&server, Slot::A, "boot-1", "0.1.0", UpdateStrategy::Window);
    // Agent::new refuses the window strategy without a window.
    assert!(matches!(
        Agent::new(host.config(&server, Slot::A, "boot-1", "0.1.0", UpdateStrategy::Window)),
        Err(AgentError::NoWindow)
    ));
    c.window = Some(Window {
        days: vec![Weekday::Sat],
        start: TimeOfDay { hour: 2, minute: 0 },
        length: Duration::from_secs(3600),
        utc_offset_minutes: 0,
    });
    let saturday = Time::parse("2026-03-07T02:00:00Z").unwrap();
    // run() on a clock that its sleeps move forward.
    let clock = Arc::new(Mutex::new(now()));
    let (c1, c2) = (clock.clone(), clock.clone());
    c.now = Box::new(move || *c1.lock().unwrap());
    c.sleep = Box::new(move |d| {
        let mut t = c2.lock().unwrap();
        *t = t.plus(d);
    });
    c.schedule = Schedule {
        initial_delay: Duration::from_secs(60),
        interval: Duration::from_secs(6 * 3600),
        jitter: Duration::ZERO,
    };
    let mut agent = Agent::new(c).unwrap();
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::RebootAt {
            version: v("0.2.0"),
            at: saturday
        }
    );
    host.assert_installed(repo.slot("0.2.0"), "0.2.0");
    let reboots = RefCell::new(Vec::new());
    agent
        .run(&|reason: Reason| reboots.borrow_mut().push((reason, *clock.lock().unwrap())))
        .unwrap();
    assert_eq!(
        reboots.into_inner(),
        vec![(
            Reason {
                version: v("0.2.0"),
                slot: Slot::B
            },
            saturday
        )]
    );
    // Checked every 6 hours meanwhile, never downloaded again.
    assert_eq!(server.payloads(), 1);
}

#[test]
fn off_strategy_installs_and_waits_for_a_reboot() {
    let repo = Repo::new(&["0.2.0"]);
    let (server, host) = setup(&repo);
    let c = host.config(&server, Slot::A, "boot-1", "0.1.0", UpdateStrategy::Off);
    let mut agent = Agent::new(c).unwrap();
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::ApplyOnNextReboot {
            version: v("0.2.0")
        }
    );
    host.assert_installed(repo.slot("0.2.0"), "0.2.0");
}

#[test]
fn run_reboots_at_once_with_immediate() {
    let repo = Repo::new(&["0.2.0"]);
    let (server, host) = setup(&repo);
    let mut c = host.config(
        &server,
        Slot::A,
        "boot-1",
        "0.1.0",
        UpdateStrategy::Immediate,
    );
    c.schedule = Schedule {
        initial_delay: Duration::ZERO,
        interval: Duration::from_secs(3600),
        jitter: Duration::ZERO,
    };
    c.sleep = Box::new(|_| panic!("no sleep expected"));
    let mut agent = Agent::new(c).unwrap();
    let reboots = RefCell::new(Vec::new());
    agent
        .run(&|reason: Reason| reboots.borrow_mut().push(reason))
        .unwrap();
    assert_eq!(reboots.into_inner().len(), 1);
    host.assert_installed(repo.slot("0.2.0"), "0.2.0");
}

#[test]
fn nothing_newer_leaves_the_slot_alone() {
    let repo = Repo::new(&["0.0.9", "0.1.0"]);
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    assert_eq!(
        agent.check_once().unwrap(),
        CheckOutcome::UpToDate { waiting: None }
    );
    host.assert_untouched();
    assert_eq!(server.payloads(), 0);
}

fn refused(host: &Host, err: &AgentError, what: &str) {
    host.assert_untouched();
    let last = host.state().last_error.unwrap();
    assert!(last.contains(what), "{last:?} lacks {what:?} ({err:?})");
}

#[test]
fn an_expired_timestamp_is_refused() {
    let mut repo = Repo::new(&["0.2.0"]);
    repo.timestamp_expires = Time::from_unix(now().unix() - 1).unwrap();
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    let err = agent.check_once().unwrap_err();
    assert!(
        matches!(&err, AgentError::Metadata(e) if matches!(**e, UpdateError::Expired { .. })),
        "{err:?}"
    );
    refused(&host, &err, "expired");
    assert_eq!(server.payloads(), 0);
}

#[test]
fn lower_metadata_versions_are_refused() {
    let mut repo = Repo::new(&["0.1.0"]);
    repo.meta_version = 3;
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    agent.check_once().unwrap();
    // A mirror now serves older metadata that offers 0.2.0.
    let mut old = Repo::new(&["0.1.0", "0.2.0"]);
    old.meta_version = 2;
    server.serve(old.build().0);
    let err = agent.check_once().unwrap_err();
    assert!(
        matches!(&err, AgentError::Metadata(e) if matches!(**e, UpdateError::Rollback { .. })),
        "{err:?}"
    );
    refused(&host, &err, "rollback");
}

#[test]
fn a_bad_signature_is_refused() {
    let mut repo = Repo::new(&["0.2.0"]);
    repo.bad_targets_key = true;
    let (server, host) = setup(&repo);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    let err = agent.check_once().unwrap_err();
    assert!(
        matches!(&err, AgentError::Metadata(e) if matches!(**e, UpdateError::Document(DocumentError::Signatures { .. }))),
        "{err:?}"
    );
    refused(&host, &err, "targets.json");
    assert_eq!(server.payloads(), 0);
}

#[test]
fn a_tampered_payload_is_refused_and_not_offered() {
    let repo = Repo::new(&["0.2.0"]);
    let (mut files, root) = repo.build();
    let payload = files.get_mut("targets/atoll-0.2.0.slot.zst").unwrap();
    let at = payload.len() - 3;
    payload[at] ^= 0x40;
    let server = serve(files);
    let host = host(&root);
    let mut agent = host.agent(&server, Slot::A, "boot-1", "0.1.0");
    let err = agent.check_once().unwrap_err();
    assert!(
        matches!(&err, AgentError::Refused { source, .. }
            if matches!(**source, InstallError::Decompress { .. } | InstallError::Verify(_))),
        "{err:?}"
    );
    // The payload streamed into B before its end showed the damage, but
    // B is never offered.
    host.assert_not_offered();
    let state = host.state();
    assert!(state.last_error.unwrap().contains("0.2.0"));
    assert!(state.download.is_none());
    assert!(!state.bad.contains(v("0.2.0")));
    assert_eq!(agent.status().unwrap().other.version, None);
}
