//! The update agent in a booted guest refuses bad repositories
//! (docs/updates.md, "Threat model"): each refusal is an error line on the
//! console, the API's answer and the agent's `last_error`; slot A boots
//! next, no release is pending and no download kept to resume. Slot B is
//! as it was after refused metadata (nothing fetched past the metadata);
//! after a refused payload it is marked unbootable (neither good nor
//! tried) and never offered to the boot loader.
//!
//! One VM, one check at a time through the API (`update check`), while
//! the test swaps what the repository server serves between checks:
//!
//! 1. metadata signed by keys the host's root does not list;
//! 2. an expired timestamp;
//! 3. good metadata whose payload ends short of its signed length (the
//!    host now trusts this metadata);
//! 4. older metadata than the host trusts (rollback);
//! 5. a timestamp.json that never ends;
//! 6. after a rotation of the timestamp key that revokes the old one
//!    (root version 2), metadata still signed by the old key;
//! 7. the same repository signed by the new key: accepted, so the payload
//!    is fetched, but its server sends bytes without end, cut at the
//!    signed length.
//!
//! Then the same disk boots again with the guest's clock 4 days ahead and
//! is served the repository of step 7 again, unexpired but with the same
//! timestamp version: frozen, past the 3-day freeze limit.
//!
//! Bad signatures and a same-length tampered payload are in
//! `update.rs`.

use crate::common;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::update::{history_has, update_status, wait_update_status, REPO_IP, REPO_PORT};
use atoll_common::api::{Request, Response, UpdateAction, UpdateStatus};
use atoll_common::layout::{Slot, FW_CFG_CONFIG};
use qemu_tests::console::Pattern;
use qemu_tests::disk;
use qemu_tests::servers::HttpFileServer;
use qemu_tests::update_repo::{self, UpdateRepo};
use qemu_tests::vm::{DiskFormat, NetUser, Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// The update service answers once the boot is marked good.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);
/// A check, the payload's download included (about 21 MiB under TCG).
/// The API gives up on an answer after 30 s; the check goes on and the
/// test then waits for it in the status.
const CHECK_TIMEOUT: Duration = Duration::from_secs(420);
/// How far ahead the guest's clock is on the second boot: past the
/// agent's freeze limit of 3 days (updater/src/metadata/client.rs).
const AHEAD: Duration = Duration::from_secs(4 * 86_400);
/// The short payload: a prefix inside its first zstd frame.
const SHORT: u64 = 1_500_000;

/// No scheduled check comes during the test: the first one would be 5
/// minutes after the agent (re)starts, and every check through the API
/// restarts it. No NTP either: the second boot keeps its clock.
fn config() -> String {
    format!(
        r#"
[update]
server = "http://{REPO_IP}:{REPO_PORT}"
strategy = "off"
check_interval = "24h"

[ntp]
enabled = false
"#
    )
}

/// Boots `disk` with the repository at `REPO_IP`, the clock `ahead` of the
/// host's.
fn boot(
    name: &str,
    server: &HttpFileServer,
    disk: &Path,
    ahead: Duration,
) -> Result<Vm, Box<dyn Error>> {
    let mut b = Vm::builder(name)
        .disk_file(disk, DiskFormat::Qcow2)
        .net_user(NetUser::new().guestfwd(REPO_IP, REPO_PORT, server.port()))
        .fw_cfg_string(FW_CFG_CONFIG, config());
    if !ahead.is_zero() {
        let at = SystemTime::now().duration_since(UNIX_EPOCH)? + ahead;
        let at = atoll_common::time::format_utc(at.as_secs());
        b = b
            .arg("-rtc")
            .arg(&format!("base={}", at.trim_end_matches('Z')));
    }
    Ok(b.start()?)
}

/// Whether the payload was requested in `requests`.
fn payload_fetched(requests: &[qemu_tests::servers::Request]) -> bool {
    requests
        .iter()
        .any(|r| r.path_only().starts_with("/targets/"))
}

/// Runs a check through the API, which must be refused with every piece
/// of `expect` in the API's answer, in `last_error` and (the first piece)
/// on the console, leaving slot B alone. `payload`: whether the metadata
/// was accepted and the payload fetched (and then refused), or refused
/// before that. Returns the status after the check.
fn refused(
    vm: &Vm,
    server: &HttpFileServer,
    step: &str,
    expect: &[&str],
    payload: bool,
) -> Result<UpdateStatus, VmError> {
    eprintln!("update_refusals: {step}");
    let seen = server.requests().len();
    let before = update_status(vm)?;
    let started = Instant::now();
    let answer = match vm.api(&Request::Update {
        action: UpdateAction::Check,
    }) {
        Ok(responses) => {
            let mut answer = None;
            for r in responses {
                match r {
                    Response::Error { message } => answer = Some(message),
                    Response::Update(u) => {
                        return Err(vm.fail(format!(
                            "{step}: the check was not refused: {:?}; {:?}",
                            u.outcome, u.status
                        )))
                    }
                    _ => {}
                }
            }
            Some(answer.ok_or_else(|| vm.fail(format!("{step}: the API did not answer")))?)
        }
        // The API stops waiting after 30 s; the check runs on.
        Err(e) => {
            eprintln!("update_refusals: {step}: no answer yet ({e}); polling the status");
            None
        }
    };
    let s = match answer {
        Some(_) => update_status(vm)?,
        // Begun more than 30 s after the last check (whose time it would
        // otherwise share, to the second).
        None => wait_update_status(vm, &format!("{step}: the check done"), CHECK_TIMEOUT, |s| {
            s.last_check != before.last_check
        })?,
    };
    eprintln!(
        "update_refusals: {step}: refused in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        s.last_error.as_deref().unwrap_or("(no error)")
    );
    let error = s.last_error.clone().unwrap_or_default();
    for text in expect {
        vm.check(error.contains(text), || {
            format!("{step}: last_error should say {text:?}: {error:?}")
        })?;
        if let Some(a) = &answer {
            vm.check(a.contains(text), || {
                format!("{step}: the API's answer should say {text:?}: {a:?}")
            })?;
        }
    }
    let line = Pattern::regex(&format!(
        r"atoll-updater: .*update check failed: .*{}",
        regex::escape(expect[0])
    ))?;
    vm.wait_for(line, Duration::from_secs(30))?;
    // Slot A boots next, nothing waits for a reboot, no download is kept
    // to resume. Slot B: as it was after refused metadata; after a refused
    // payload (written as it streamed), marked unbootable and not offered.
    let slot_b = if payload {
        !s.other.good && s.other.tries == 0
    } else {
        s.other == before.other
    };
    vm.check(
        s.current.slot == Slot::A
            && s.next_boot == Slot::A
            && s.pending.is_none()
            && s.download.is_none()
            && slot_b
            && !history_has(&s, "installed"),
        || format!("{step}: slot B was not left alone: {s:?}, before the check: {before:?}"),
    )?;
    let requests = server.requests();
    let fetched = payload_fetched(&requests[seen.min(requests.len())..]);
    vm.check(fetched == payload, || {
        if payload {
            format!("{step}: the payload was not fetched: the metadata was refused")
        } else {
            format!("{step}: the payload was fetched although the metadata was refused")
        }
    })?;
    Ok(s)
}

/// The repositories the test serves, all from the test release.
struct Repos {
    /// Metadata signed by a foreign key set; its timestamp key id.
    wrong_key: PathBuf,
    foreign_timestamp_key: String,
    /// A timestamp that expired a second after it was signed.
    expired: PathBuf,
    /// Re-signed once: the lower version.
    lower: PathBuf,
    lower_version: u64,
    /// Re-signed twice: what the host trusts from step 3 on.
    newer: PathBuf,
    newer_version: u64,
    /// `newer` with the payload cut to `short_length` bytes.
    short: PathBuf,
    short_length: u64,
    /// `newer` re-signed by the old keys, with root version 2 (the old
    /// timestamp key revoked) published.
    old_key: PathBuf,
    old_timestamp_key: String,
    /// `newer` re-signed by the keys of root version 2; expiring well
    /// after the second boot's clock.
    new_key: PathBuf,
    /// The payload's name and signed length.
    target: String,
    length: u64,
}

impl Repos {
    fn prepare(release: &UpdateRepo, dir: &Path) -> Result<Repos, Box<dyn Error>> {
        let keys = update_repo::dev_keys();
        let copy = |from: &Path, name: &str| -> Result<PathBuf, Box<dyn Error>> {
            let to = dir.join(name);
            update_repo::copy_tree(from, &to)?;
            Ok(to)
        };
        let target = release.target_name();
        let length = std::fs::metadata(release.dir.join("targets").join(&target))?.len();

        let lower = copy(&release.dir, "lower")?;
        update_repo::resign(&keys, &lower, "7d", "1d")?;
        let newer = copy(&lower, "newer")?;
        update_repo::resign(&keys, &newer, "7d", "1d")?;
        let lower_version = update_repo::metadata_version(&lower.join("timestamp.json"))?;
        let newer_version = update_repo::metadata_version(&newer.join("timestamp.json"))?;

        let short = copy(&newer, "short")?;
        let payload = short.join("targets").join(&target);
        let bytes = std::fs::read(&payload)?;
        let cut = usize::try_from(SHORT)?.min(bytes.len() / 2);
        std::fs::write(&payload, &bytes[..cut])?;
        let short_length = u64::try_from(cut)?;

        let expired = copy(&newer, "expired")?;
        update_repo::resign(&keys, &expired, "7d", "1s")?;

        // Foreign keys: the repository's own roots go, the foreign root 1
        // comes in its place (a host never fetches 1.root.json again).
        let foreign = dir.join("foreign-keys");
        update_repo::init_keys(&foreign)?;
        let foreign_timestamp_key = first_key(&foreign.join("root.json"), "timestamp")?;
        let wrong_key = copy(&release.dir, "wrong-key")?;
        for entry in std::fs::read_dir(&wrong_key)? {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(".root.json") {
                std::fs::remove_file(path)?;
            }
        }
        update_repo::resign(&foreign, &wrong_key, "7d", "1d")?;

        // Root version 2 revokes the timestamp key: a copy of the keys,
        // rotated.
        let rotated = dir.join("rotated-keys");
        update_repo::copy_tree(&keys, &rotated)?;
        let old_timestamp_key = first_key(&rotated.join("root.json"), "timestamp")?;
        update_repo::rotate_key(&rotated, "timestamp", Some(&old_timestamp_key))?;
        let now = update_repo::role_keyids(&rotated.join("root.json"), "timestamp")?;
        if now.contains(&old_timestamp_key) || now.is_empty() {
            return Err(format!("the rotation did not revoke {old_timestamp_key}: {now:?}").into());
        }
        let root2 = rotated.join("roots").join("2.root.json");
        let old_key = copy(&newer, "old-key")?;
        update_repo::resign(&keys, &old_key, "7d", "1d")?;
        std::fs::copy(&root2, old_key.join("2.root.json"))?;
        let new_key = copy(&newer, "new-key")?;
        update_repo::resign(&rotated, &new_key, "30d", "10d")?;
        if !new_key.join("2.root.json").is_file() {
            return Err("resign with the rotated keys did not publish 2.root.json".into());
        }
        Ok(Repos {
            wrong_key,
            foreign_timestamp_key,
            expired,
            lower,
            lower_version,
            newer,
            newer_version,
            short,
            short_length,
            old_key,
            old_timestamp_key,
            new_key,
            target,
            length,
        })
    }
}

fn first_key(root: &Path, role: &str) -> Result<String, Box<dyn Error>> {
    update_repo::role_keyids(root, role)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: no {role} key", root.display()).into())
}

#[test]
fn bad_repositories_are_refused_and_the_other_slot_left_alone() -> TestResult {
    let release = update_repo::next_release()?;
    let tmp = tempfile::tempdir()?;
    let r = Repos::prepare(&release, tmp.path())?;
    let image = tmp.path().join("disk.qcow2");
    disk::create_overlay(&disk::base_image()?, &image, None)?;
    let server = HttpFileServer::serve(&r.wrong_key)?;
    let started = Instant::now();

    let vm = boot("update_refusals", &server, &image, Duration::ZERO)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(
        ready.slot == Slot::A && ready.version != release.version,
        || format!("the base image should boot from slot A: {:?}", ready.line),
    )?;
    common::settled_status(&vm)?;
    wait_update_status(&vm, "the update service", SERVICE_TIMEOUT, |_| true)?;

    // 1. Signed by keys the host's root does not list.
    refused(
        &vm,
        &server,
        "wrong key",
        &[
            "timestamp.json: 0 valid signature(s) of threshold 1 for the timestamp role",
            &format!("1 by other keys: {}", r.foreign_timestamp_key),
        ],
        false,
    )?;

    // 2. Expired.
    server.set_root(&r.expired)?;
    refused(
        &vm,
        &server,
        "expired",
        &["timestamp.json: expired at"],
        false,
    )?;

    // 3. Good metadata, a payload shorter than signed: refused once, not
    //    retried as an interrupted download.
    server.set_root(&r.short)?;
    let s = refused(
        &vm,
        &server,
        "payload shorter than signed",
        &[
            &format!("release {} ({}) was refused", release.version, r.target),
            &format!(
                "the file served ends at byte {}, short of its signed length of {} bytes",
                r.short_length, r.length
            ),
        ],
        true,
    )?;
    vm.check(
        history_has(&s, &format!("refused {}", release.version)),
        || {
            format!(
                "the history should say the release was refused: {:?}",
                s.history
            )
        },
    )?;

    // 4. Older metadata than the host now trusts.
    server.set_root(&r.lower)?;
    refused(
        &vm,
        &server,
        "rollback",
        &[&format!(
            "timestamp.json: version {} is lower than the trusted {} (rollback)",
            r.lower_version, r.newer_version
        )],
        false,
    )?;

    // 5. A timestamp.json without end, cut at the metadata size limit.
    server.set_root(&r.newer)?;
    server.set_endless(Some("/timestamp.json"));
    refused(
        &vm,
        &server,
        "endless timestamp.json",
        &["timestamp.json: cannot fetch: longer than the limit of 16384 bytes"],
        false,
    )?;
    server.set_endless(None);

    // 6. Root version 2 revokes the old timestamp key: what it signs is
    //    refused.
    server.set_root(&r.old_key)?;
    refused(
        &vm,
        &server,
        "revoked key",
        &[
            "timestamp.json: 0 valid signature(s) of threshold 1 for the timestamp role",
            &format!("1 by other keys: {}", r.old_timestamp_key),
        ],
        false,
    )?;
    vm.check(
        server
            .requests()
            .iter()
            .any(|q| q.path_only() == "/2.root.json" && q.status == 200),
        || "the host never fetched root version 2".into(),
    )?;

    // 7. Signed by the new key: accepted, so the payload is fetched; its
    //    server never stops, and the download is cut at the signed length.
    server.set_root(&r.new_key)?;
    server.set_endless(Some(&format!("/targets/{}", r.target)));
    let s = refused(
        &vm,
        &server,
        "new key, endless payload",
        &[
            &format!("release {} ({}) was refused", release.version, r.target),
            &format!(
                "target {}: more than the {} bytes expected (endless download)",
                r.target, r.length
            ),
        ],
        true,
    )?;
    server.set_endless(None);
    let refusals = s
        .history
        .iter()
        .filter(|e| e.what.contains(&format!("refused {}", release.version)))
        .count();
    vm.check(refusals == 2, || {
        format!(
            "the history should hold both payload refusals: {:?}",
            s.history
        )
    })?;
    let checked = s.last_check.clone().unwrap_or_default();
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    drop(vm);
    eprintln!(
        "update_refusals: first boot done in {} s",
        started.elapsed().as_secs()
    );

    // 8. The same disk, the clock 4 days on, the same (unexpired)
    //    repository: its timestamp has not gone up for longer than the
    //    freeze limit.
    let vm = boot("update_refusals_frozen", &server, &image, AHEAD)?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    vm.check(ready.slot == Slot::A, || format!("{:?}", ready.line))?;
    common::settled_status(&vm)?;
    wait_update_status(&vm, "the update service", SERVICE_TIMEOUT, |_| true)?;
    let s = refused(
        &vm,
        &server,
        "frozen",
        &[
            "timestamp.json: version",
            "has not gone up since",
            "longer than the freeze limit of 3d (frozen repository or mirror)",
        ],
        false,
    )?;
    // The guest's clock did move on (RFC 3339 UTC strings sort by time).
    let three_days_on = {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        atoll_common::time::format_utc(secs + 3 * 86_400)
    };
    let now = s.last_check.clone().unwrap_or_default();
    vm.check(now > three_days_on && now > checked, || {
        format!("the guest's clock is not 4 days ahead: last check at {now:?}")
    })?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    eprintln!("update_refusals: done in {} s", started.elapsed().as_secs());
    Ok(())
}
