//! The client workflow against an in-memory repository: the happy path and
//! every attack the updates issue lists.

use std::collections::BTreeMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::client::{Config, FetchError, Fetcher, TargetCheck, Trusted, UpdateError};
use super::key::keyid_of;
use super::role::{
    self, versioned_file, DocumentError, Hashes, MetaFile, Release, RoleName, Root, Snapshot,
    TargetFile, Targets, Timestamp,
};
use super::time::Time;

const DAY: Duration = Duration::from_secs(86_400);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn t0() -> Time {
    Time::parse("2026-01-01T00:00:00Z").unwrap()
}

/// A repository as `image-build` lays it out, in memory.
struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    root: Root,
    /// Signing keys by role.
    keys: BTreeMap<RoleName, Vec<SigningKey>>,
    targets: Targets,
    snapshot_version: u64,
    timestamp_version: u64,
    /// Expiry of the next documents published.
    expires: Time,
    timestamp_expires: Time,
}

impl Repo {
    fn new() -> Repo {
        let mut root = Root::new(1, t0().plus(365 * DAY));
        let mut keys = BTreeMap::new();
        for (i, role) in RoleName::ALL.into_iter().enumerate() {
            let k = key(i as u8 + 1);
            root.add_key(role, &k.verifying_key());
            keys.insert(role, vec![k]);
        }
        let mut repo = Repo {
            files: BTreeMap::new(),
            root,
            keys,
            targets: Targets::new(0, t0()),
            snapshot_version: 0,
            timestamp_version: 0,
            expires: t0().plus(30 * DAY),
            timestamp_expires: t0().plus(DAY),
        };
        let signers: Vec<SigningKey> = repo.keys[&RoleName::Root].clone();
        repo.write_root(&signers.iter().collect::<Vec<_>>());
        repo
    }

    fn signers(&self, role: RoleName) -> Vec<&SigningKey> {
        self.keys[&role].iter().collect()
    }

    fn write_root(&mut self, signers: &[&SigningKey]) {
        let bytes = role::sign(&self.root, signers).unwrap();
        self.files
            .insert(versioned_file(RoleName::Root, self.root.version), bytes);
    }

    fn shipped_root(&self) -> Vec<u8> {
        self.files["1.root.json"].clone()
    }

    fn add_release(&mut self, version: &str, content: &[u8]) -> String {
        let name = format!("atoll-{version}.slot.zst");
        self.targets.targets.insert(
            name.clone(),
            TargetFile {
                length: content.len() as u64,
                hashes: Hashes {
                    sha256: hex::encode(Sha256::digest(content)),
                },
                custom: Some(Release {
                    version: version.parse().unwrap(),
                    slot_sha256: hex::encode(Sha256::digest(content)),
                    slot_length: content.len() as u64,
                    verity_root_hash: "00".repeat(32),
                    kernel: "6.1.0-test".into(),
                    rollout: None,
                    min_version: None,
                }),
            },
        );
        name
    }

    fn pin(name: &str, version: u64, bytes: &[u8]) -> (String, MetaFile) {
        (
            name.to_owned(),
            MetaFile {
                version,
                length: Some(bytes.len() as u64),
                hashes: Some(Hashes {
                    sha256: hex::encode(Sha256::digest(bytes)),
                }),
            },
        )
    }

    /// Signs and writes new targets, snapshot and timestamp (versions + 1).
    fn publish(&mut self) {
        self.publish_targets();
        self.publish_snapshot();
        self.publish_timestamp();
    }

    fn publish_targets(&mut self) {
        self.targets.version += 1;
        self.targets.expires = self.expires;
        let bytes = role::sign(&self.targets, &self.signers(RoleName::Targets)).unwrap();
        self.files.insert(
            versioned_file(RoleName::Targets, self.targets.version),
            bytes,
        );
    }

    fn publish_snapshot(&mut self) {
        self.snapshot_version += 1;
        let targets_file = versioned_file(RoleName::Targets, self.targets.version);
        let mut snapshot = Snapshot::new(self.snapshot_version, self.expires);
        snapshot.meta.extend([Self::pin(
            "targets.json",
            self.targets.version,
            &self.files[&targets_file],
        )]);
        let bytes = role::sign(&snapshot, &self.signers(RoleName::Snapshot)).unwrap();
        self.files.insert(
            versioned_file(RoleName::Snapshot, self.snapshot_version),
            bytes,
        );
    }

    fn publish_timestamp(&mut self) {
        self.timestamp_version += 1;
        let snapshot_file = versioned_file(RoleName::Snapshot, self.snapshot_version);
        let (_, pin) = Self::pin(
            "snapshot.json",
            self.snapshot_version,
            &self.files[&snapshot_file],
        );
        let timestamp = Timestamp::new(self.timestamp_version, self.timestamp_expires, pin);
        let bytes = role::sign(&timestamp, &self.signers(RoleName::Timestamp)).unwrap();
        self.files.insert("timestamp.json".into(), bytes);
    }

    /// Changes the file `name` through its JSON value, keeping its
    /// signatures (so they no longer match).
    fn tamper(&mut self, name: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value = serde_json::from_slice(&self.files[name]).unwrap();
        f(&mut v);
        self.files
            .insert(name.to_owned(), serde_json::to_vec_pretty(&v).unwrap());
    }
}

impl Fetcher for BTreeMap<String, Vec<u8>> {
    fn fetch(&mut self, name: &str, max_length: u64) -> Result<Vec<u8>, FetchError> {
        let bytes = self.get(name).ok_or(FetchError::NotFound)?;
        if bytes.len() as u64 > max_length {
            return Err(FetchError::TooLong { limit: max_length });
        }
        Ok(bytes.clone())
    }
}

fn client(repo: &Repo) -> Trusted {
    Trusted::new(&repo.shipped_root(), "update-root.json").unwrap()
}

fn update(trusted: &mut Trusted, repo: &Repo, now: Time) -> Result<(), UpdateError> {
    let mut files = repo.files.clone();
    trusted
        .update(&mut files, now, &Config::default())
        .map(|_| ())
}

fn published() -> Repo {
    let mut repo = Repo::new();
    repo.add_release("0.1.0", b"slot one");
    repo.publish();
    repo
}

#[test]
fn accepts_a_good_repository_and_checks_targets() {
    let mut repo = published();
    let mut trusted = client(&repo);
    let mut files = repo.files.clone();
    let v = trusted
        .update(&mut files, t0(), &Config::default())
        .unwrap();
    assert_eq!((v.root, v.timestamp, v.snapshot, v.targets), (1, 1, 1, 1));
    let (name, target, release) = trusted.latest_release().unwrap();
    assert_eq!(
        (name, release.version.to_string().as_str()),
        ("atoll-0.1.0.slot.zst", "0.1.0")
    );
    let mut check = TargetCheck::new(name, target).unwrap();
    check.update(b"slot ").unwrap();
    check.update(b"one").unwrap();
    check.finish().unwrap();

    // A second release: the newest wins, the old one stays listed.
    repo.add_release("0.10.0", b"slot ten");
    repo.add_release("0.9.0", b"slot nine");
    repo.publish();
    update(&mut trusted, &repo, t0().plus(Duration::from_secs(60))).unwrap();
    assert_eq!(trusted.latest_release().unwrap().0, "atoll-0.10.0.slot.zst");
    assert!(trusted.target("atoll-0.1.0.slot.zst").is_ok());
    assert!(matches!(
        trusted.target("atoll-9.slot.zst"),
        Err(UpdateError::NoTarget { .. })
    ));
}

#[test]
fn refuses_a_bad_signature() {
    let mut repo = published();
    repo.tamper("timestamp.json", |v| {
        v["signed"]["expires"] = "2099-01-01T00:00:00Z".into()
    });
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: 0 valid signature(s) of threshold 1 for the timestamp role \
         (1 invalid by its keys, 0 by other keys)"
    );
}

#[test]
fn refuses_a_signature_by_the_wrong_key() {
    let mut repo = published();
    // Signed by the targets key instead of the timestamp key.
    repo.keys.insert(RoleName::Timestamp, vec![key(2)]);
    repo.publish_timestamp();
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "timestamp.json: 0 valid signature(s) of threshold 1 for the timestamp role \
             (0 invalid by its keys, 1 by other keys: {})",
            keyid_of(&key(2))
        )
    );
    // A mangled signature value counts as invalid, not as a panic.
    let mut repo = published();
    repo.tamper("1.snapshot.json", |v| {
        v["signatures"][0]["sig"] = "abc".into()
    });
    repo.publish_timestamp();
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert!(e.to_string().contains("1 invalid by its keys"), "{e}");
}

#[test]
fn refuses_expired_documents() {
    let repo = published();
    // The timestamp expires first (1 day).
    let e = update(&mut client(&repo), &repo, t0().plus(DAY)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: expired at 2026-01-02T00:00:00Z"
    );

    let mut repo = published();
    repo.expires = t0().plus(Duration::from_secs(10));
    repo.timestamp_expires = t0().plus(30 * DAY);
    repo.publish_targets();
    repo.publish_snapshot();
    repo.publish_timestamp();
    let e = update(&mut client(&repo), &repo, t0().plus(DAY)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "2.snapshot.json: expired at 2026-01-01T00:00:10Z"
    );

    // The root's expiry counts too (after rotations).
    let e = update(&mut client(&repo), &repo, t0().plus(400 * DAY)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "1.root.json: expired at 2027-01-01T00:00:00Z"
    );

    // Targets alone expired.
    let mut repo = published();
    repo.expires = t0().plus(Duration::from_secs(10));
    repo.publish_targets();
    repo.expires = t0().plus(30 * DAY);
    repo.timestamp_expires = t0().plus(30 * DAY);
    repo.publish_snapshot();
    repo.publish_timestamp();
    let e = update(&mut client(&repo), &repo, t0().plus(DAY)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "2.targets.json: expired at 2026-01-01T00:00:10Z"
    );
}

#[test]
fn refuses_a_lower_version() {
    let mut repo = published();
    let old = repo.files.clone();
    repo.add_release("0.2.0", b"slot two");
    repo.publish();
    repo.publish();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    // A mirror serves the old repository: timestamp version 1 < 3.
    let mut rolled_back = Repo::new();
    rolled_back.files = old;
    let e = update(&mut trusted, &rolled_back, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: version 1 is lower than the trusted 3 (rollback)"
    );

    // A newer timestamp that names an older snapshot.
    let snapshot = repo.snapshot_version;
    repo.snapshot_version = 1;
    repo.publish_timestamp();
    repo.snapshot_version = snapshot;
    let e = update(&mut trusted, &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: snapshot.json at version 1 is lower than the trusted 3 (rollback)"
    );

    // A newer snapshot that names an older targets.json.
    let mut repo = published();
    repo.publish();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    repo.targets.version = 0;
    repo.publish_targets();
    repo.publish_snapshot();
    repo.publish_timestamp();
    let e = update(&mut trusted, &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "3.snapshot.json: targets.json at version 1 is lower than the trusted 2 (rollback)"
    );
}

#[test]
fn refuses_a_frozen_repository_past_the_limit() {
    let mut repo = Repo::new();
    // A long-lived timestamp, replayed by a mirror that stopped updating.
    repo.timestamp_expires = t0().plus(30 * DAY);
    repo.add_release("0.1.0", b"slot");
    repo.publish();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    update(&mut trusted, &repo, t0().plus(2 * DAY)).unwrap();
    update(&mut trusted, &repo, t0().plus(3 * DAY)).unwrap();
    let e = update(&mut trusted, &repo, t0().plus(3 * DAY + DAY / 2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: version 1 has not gone up since 2026-01-01T00:00:00Z, longer than \
         the freeze limit of 3d (frozen repository or mirror)"
    );
    // A fresh timestamp from the real repository ends it.
    repo.publish_timestamp();
    update(&mut trusted, &repo, t0().plus(4 * DAY)).unwrap();
    assert_eq!(trusted.timestamp_advanced(), Some(t0().plus(4 * DAY)));
}

#[test]
fn refuses_metadata_whose_hash_or_length_differs() {
    let mut repo = published();
    // The same document with one more byte of whitespace: still validly
    // signed, but not the bytes the timestamp pinned.
    let mut bytes = repo.files["1.snapshot.json"].clone();
    bytes.push(b' ');
    repo.files.insert("1.snapshot.json".into(), bytes.clone());
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    let UpdateError::Fetch {
        source: FetchError::TooLong { limit },
        ..
    } = e
    else {
        panic!("{e}");
    };
    assert_eq!(limit, bytes.len() as u64 - 1);

    // Same length, different bytes.
    let mut repo = published();
    let bytes = repo.files["1.targets.json"].clone();
    let text = String::from_utf8(bytes).unwrap().replacen("  ", " \t", 1);
    repo.files
        .insert("1.targets.json".into(), text.into_bytes());
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert!(matches!(e, UpdateError::Hash { .. }), "{e}");
    assert!(e.to_string().starts_with("1.targets.json: sha256 "), "{e}");
    assert!(e.to_string().contains(", but 1.snapshot.json says "), "{e}");

    // Shorter than pinned.
    let mut repo = published();
    let mut bytes = repo.files["1.targets.json"].clone();
    bytes.pop();
    repo.files.insert("1.targets.json".into(), bytes);
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert!(matches!(e, UpdateError::Length { .. }), "{e}");
}

#[test]
fn refuses_a_target_whose_size_or_hash_differs() {
    let repo = published();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    let target = trusted.target("atoll-0.1.0.slot.zst").unwrap();

    let mut check = TargetCheck::new("atoll-0.1.0.slot.zst", target).unwrap();
    check.update(b"slot one").unwrap();
    let e = check.update(b"and more, endlessly").unwrap_err();
    assert_eq!(
        e.to_string(),
        "target atoll-0.1.0.slot.zst: more than the 8 bytes expected (endless download)"
    );

    let mut check = TargetCheck::new("atoll-0.1.0.slot.zst", target).unwrap();
    check.update(b"slot").unwrap();
    let e = check.finish().unwrap_err();
    assert_eq!(
        e.to_string(),
        "target atoll-0.1.0.slot.zst: 4 bytes, but 8 expected"
    );

    let mut check = TargetCheck::new("atoll-0.1.0.slot.zst", target).unwrap();
    check.update(b"slot two").unwrap();
    assert!(matches!(
        check.finish(),
        Err(UpdateError::TargetHash { .. })
    ));

    let release = target.custom.as_ref().unwrap();
    let mut check = TargetCheck::slot("slot", release).unwrap();
    check.update(b"slot one").unwrap();
    check.finish().unwrap();
}

#[test]
fn follows_root_rotations_and_refuses_revoked_keys() {
    let mut repo = published();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();

    // Rotate the timestamp key (revoking the old one) and the root key:
    // root 2 is signed by the old and the new root key.
    let old_root = key(1);
    let old_timestamp_id = keyid_of(&key(4));
    repo.root.version = 2;
    repo.root.remove_key(RoleName::Timestamp, &old_timestamp_id);
    repo.root
        .add_key(RoleName::Timestamp, &key(14).verifying_key());
    repo.root.remove_key(RoleName::Root, &keyid_of(&old_root));
    repo.root.add_key(RoleName::Root, &key(11).verifying_key());
    repo.write_root(&[&old_root, &key(11)]);
    assert!(!repo.root.keys.contains_key(&old_timestamp_id));

    // New metadata signed with the revoked timestamp key is refused...
    let e = update(&mut trusted, &repo, t0()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("timestamp.json: 0 valid signature(s) of threshold 1")
            && e.to_string().contains(&old_timestamp_id),
        "{e}"
    );
    assert_eq!(trusted.root().signed.version, 2);
    // ...and with the new key accepted, even at a lower version: the
    // rotation dropped the trusted timestamp (fast-forward recovery).
    repo.keys.insert(RoleName::Timestamp, vec![key(14)]);
    repo.timestamp_version = 0;
    repo.publish_timestamp();
    update(&mut trusted, &repo, t0()).unwrap();

    // A root 3 signed only by the revoked root key is refused.
    let mut repo3 = Repo {
        files: repo.files.clone(),
        root: repo.root.clone(),
        ..Repo::new()
    };
    repo3.root.version = 3;
    repo3.write_root(&[&old_root]);
    let e = update(&mut trusted, &repo3, t0()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("3.root.json: 0 valid signature(s) of threshold 1 for the root role"),
        "{e}"
    );
    // So is one signed by the current root key but not by the new one.
    repo3.root.remove_key(RoleName::Root, &keyid_of(&key(11)));
    repo3.root.add_key(RoleName::Root, &key(21).verifying_key());
    repo3.write_root(&[&key(11)]);
    let e = update(&mut trusted, &repo3, t0()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("3.root.json: 0 valid signature(s)"),
        "{e}"
    );
    // Signed by both: accepted.
    repo3.write_root(&[&key(11), &key(21)]);
    update(&mut trusted, &repo3, t0()).unwrap();
    assert_eq!(trusted.root().signed.version, 3);

    // A fresh client on the image's root 1 follows 1 → 2 → 3.
    let mut fresh = client(&repo);
    update(&mut fresh, &repo3, t0()).unwrap();
    assert_eq!(fresh.root().signed.version, 3);
}

#[test]
fn refuses_a_root_that_skips_or_repeats_a_version() {
    let mut repo = published();
    repo.root.version = 5;
    let signer = key(1);
    let bytes = role::sign(&repo.root, &[&signer]).unwrap();
    repo.files.insert("2.root.json".into(), bytes);
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "2.root.json: version 5, but 2.root.json says 2"
    );
    repo.root.version = 1;
    let bytes = role::sign(&repo.root, &[&signer]).unwrap();
    repo.files.insert("2.root.json".into(), bytes);
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "2.root.json: version 1 is lower than the trusted 1 (rollback)"
    );
}

#[test]
fn threshold_two_of_three() {
    let mut repo = Repo::new();
    repo.root.version = 2;
    for seed in [31, 32] {
        repo.root
            .add_key(RoleName::Targets, &key(seed).verifying_key());
    }
    repo.root.roles.get_mut("targets").unwrap().threshold = 2;
    repo.write_root(&[&key(1)]);
    repo.add_release("0.1.0", b"slot");
    // Two of three sign: accepted.
    repo.keys.insert(RoleName::Targets, vec![key(2), key(32)]);
    repo.publish();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();

    // One signs: refused, even if it signs twice.
    repo.keys.insert(RoleName::Targets, vec![key(31), key(31)]);
    repo.publish();
    let e = update(&mut trusted, &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "2.targets.json: 1 valid signature(s) of threshold 2 for the targets role \
         (0 invalid by its keys, 0 by other keys)"
    );
}

#[test]
fn refuses_malformed_and_oversized_documents() {
    let mut repo = published();
    repo.files
        .insert("timestamp.json".into(), b"{\"signed\": ".to_vec());
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("timestamp.json: not a valid signed metadata document"),
        "{e}"
    );

    let mut repo = published();
    repo.files
        .insert("timestamp.json".into(), vec![b' '; 17 * 1024]);
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(e.to_string(), "timestamp.json: cannot fetch");
    assert!(matches!(
        e,
        UpdateError::Fetch {
            source: FetchError::TooLong { limit: 16384 },
            ..
        }
    ));

    // A snapshot served as the timestamp.
    let mut repo = published();
    let snapshot = repo.files["1.snapshot.json"].clone();
    repo.files.insert("timestamp.json".into(), snapshot);
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "timestamp.json: expected a timestamp document, but _type is \"snapshot\""
    );

    // Floats cannot be canonical.
    let mut repo = published();
    repo.tamper("timestamp.json", |v| v["signed"]["extra"] = 1.5.into());
    let e = update(&mut client(&repo), &repo, t0()).unwrap_err();
    assert!(
        matches!(e, UpdateError::Document(DocumentError::Canonical { .. })),
        "{e}"
    );
}

#[test]
fn refuses_a_root_with_forged_key_ids() {
    // The same key listed under two ids would count twice toward a threshold.
    let mut root = Root::new(1, t0().plus(DAY));
    for role in RoleName::ALL {
        root.add_key(role, &key(1).verifying_key());
    }
    let public = root.keys.values().next().unwrap().clone();
    root.keys.insert("ab".repeat(32), public);
    root.roles
        .get_mut("root")
        .unwrap()
        .keyids
        .push("ab".repeat(32));
    root.roles.get_mut("root").unwrap().threshold = 2;
    let bytes = role::sign(&root, &[&key(1)]).unwrap();
    let e = Trusted::new(&bytes, "root.json").unwrap_err();
    assert!(e.to_string().starts_with("root.json: bad key"), "{e}");
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = role::parse::<Root>("f", &bytes);
        let _ = role::parse::<Targets>("f", &bytes);
        let _ = role::parse::<Snapshot>("f", &bytes);
        let _ = role::parse::<Timestamp>("f", &bytes);
        let _ = Trusted::new(&bytes, "f");
    }

    #[test]
    fn json_shaped_input_never_panics(s in r#"\{"signed":\{("_type":"(root|targets)",)?("version":[0-9]{1,3},)?("expires":"[0-9TZ:-]{0,20}",)?"x":[0-9.e-]{1,5}\},"signatures":\[(\{"keyid":"[0-9a-f]{0,4}","sig":"[0-9a-f]{0,4}"\})?\]\}"#) {
        let _ = role::parse::<Root>("f", s.as_bytes());
        let _ = role::parse::<Targets>("f", s.as_bytes());
    }
}

#[test]
fn restored_state_keeps_rollback_and_freeze_protection() {
    let mut repo = Repo::new();
    repo.timestamp_expires = t0().plus(30 * DAY);
    repo.add_release("0.1.0", b"slot");
    repo.publish();
    let old = repo.files.clone();
    repo.publish();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    // As after a reboot: restored from what was saved.
    let saved = trusted.saved();
    let mut restored = Trusted::restore(&repo.shipped_root(), "update-root.json", &saved).unwrap();
    assert_eq!(restored.saved(), saved);
    assert_eq!(restored.timestamp_advanced(), Some(t0()));
    let mut rolled_back = Repo::new();
    rolled_back.files = old;
    let e = update(&mut restored, &rolled_back, t0()).unwrap_err();
    assert!(e.to_string().contains("(rollback)"), "{e}");
    let e = update(&mut restored, &repo, t0().plus(4 * DAY)).unwrap_err();
    assert!(matches!(e, UpdateError::Frozen { .. }), "{e}");
}

#[test]
fn restore_refuses_tampered_saved_documents() {
    let repo = published();
    let mut trusted = client(&repo);
    update(&mut trusted, &repo, t0()).unwrap();
    let mut saved = trusted.saved();
    let mut v: serde_json::Value = serde_json::from_slice(saved.targets.as_ref().unwrap()).unwrap();
    v["signed"]["version"] = 7.into();
    saved.targets = Some(serde_json::to_vec(&v).unwrap());
    let e = Trusted::restore(&repo.shipped_root(), "update-root.json", &saved).unwrap_err();
    assert!(e.to_string().contains("saved targets.json"), "{e}");
    // A saved root older than the shipped one: the shipped one wins.
    let mut newer = repo.root.clone();
    newer.version = 2;
    let signers = repo.signers(RoleName::Root);
    let shipped = role::sign(&newer, &signers).unwrap();
    let restored = Trusted::restore(&shipped, "update-root.json", &trusted.saved()).unwrap();
    assert_eq!(restored.root().signed.version, 2);
    assert!(restored.targets().is_none());
}
