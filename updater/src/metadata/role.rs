//! The four signed documents (root, targets, snapshot, timestamp), their
//! envelope `{"signed": {...}, "signatures": [{"keyid", "sig"}]}`, parsing,
//! signing and the signature threshold check.
//!
//! What is signed is the canonical JSON ([`super::canonical`]) of the
//! `signed` value as it was parsed, so the checked bytes and the fields the
//! client then reads come from the same value; how the file itself is laid
//! out (whitespace, key order) does not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::canonical::{self, CanonicalError};
use super::key::{KeyError, KeySignature, PublicKey};
use super::time::Time;
use super::version::Version;

/// The TUF specification version these documents follow.
pub const SPEC_VERSION: &str = "1.0.31";

#[derive(Debug, Error)]
pub enum DocumentError {
    #[error("{file}: not a valid signed metadata document")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: cannot be put in canonical form")]
    Canonical {
        file: String,
        #[source]
        source: CanonicalError,
    },
    #[error("{file}: expected a {expected} document, but _type is {found:?}")]
    Type {
        file: String,
        expected: RoleName,
        found: String,
    },
    #[error("{file}: spec_version {found:?} is not 1.x")]
    SpecVersion { file: String, found: String },
    #[error("{file}: bad key")]
    Key {
        file: String,
        #[source]
        source: KeyError,
    },
    #[error("{file}: the {role} role is missing")]
    MissingRole { file: String, role: RoleName },
    #[error("{file}: the {role} role has threshold {threshold} with {keys} distinct key(s)")]
    BadThreshold {
        file: String,
        role: RoleName,
        threshold: u64,
        keys: usize,
    },
    #[error("{file}: the {role} role names key {keyid}, which is not in keys")]
    UnknownKey {
        file: String,
        role: RoleName,
        keyid: String,
    },
    #[error("{file}: the {role} role names key {keyid} twice")]
    DuplicateKey {
        file: String,
        role: RoleName,
        keyid: String,
    },
    #[error(
        "{file}: {valid} valid signature(s) of threshold {threshold} for the {role} role \
         ({invalid} invalid by its keys, {untrusted} by other keys{untrusted_ids})"
    )]
    Signatures {
        file: String,
        role: RoleName,
        valid: usize,
        threshold: u64,
        invalid: usize,
        untrusted: usize,
        /// ": id, id" of the keys the role does not trust, or empty.
        untrusted_ids: String,
    },
    #[error("{file}: no key to sign the {role} role with")]
    NoSigningKey { file: String, role: RoleName },
    #[error("{file}: cannot encode")]
    Encode {
        file: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The four top-level roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleName {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

impl RoleName {
    pub const ALL: [RoleName; 4] = [
        RoleName::Root,
        RoleName::Targets,
        RoleName::Snapshot,
        RoleName::Timestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Root => "root",
            RoleName::Targets => "targets",
            RoleName::Snapshot => "snapshot",
            RoleName::Timestamp => "timestamp",
        }
    }

    /// The role's document name (`snapshot.json`); the repository stores
    /// versioned copies as `VERSION.NAME` ([`versioned_file`]).
    pub fn file(self) -> String {
        format!("{}.json", self.as_str())
    }
}

impl std::str::FromStr for RoleName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoleName::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role (root, targets, snapshot, timestamp)"))
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `VERSION.ROLE.json`, the name of a role's document with consistent
/// snapshots (and of every root).
pub fn versioned_file(role: RoleName, version: u64) -> String {
    format!("{version}.{}.json", role.as_str())
}

/// What every signed document has.
pub trait Role: Serialize + DeserializeOwned {
    const NAME: RoleName;
    fn kind(&self) -> &str;
    fn spec_version(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> Time;
}

macro_rules! role {
    ($t:ty, $name:expr) => {
        impl Role for $t {
            const NAME: RoleName = $name;
            fn kind(&self) -> &str {
                &self.kind
            }
            fn spec_version(&self) -> &str {
                &self.spec_version
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> Time {
                self.expires
            }
        }
    };
}

/// root.json: the keys, and which of them (and how many) sign each role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Time,
    /// Whether snapshot and targets are fetched as `VERSION.NAME.json`.
    pub consistent_snapshot: bool,
    /// Public keys by key id.
    pub keys: BTreeMap<String, PublicKey>,
    /// `root`, `targets`, `snapshot`, `timestamp`.
    pub roles: BTreeMap<String, RoleKeys>,
}
role!(Root, RoleName::Root);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
}

/// targets.json: the releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Time,
    /// Target files by path relative to the repository's `targets/`.
    pub targets: BTreeMap<String, TargetFile>,
}
role!(Targets, RoleName::Targets);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Bytes of the file as served (compressed).
    pub length: u64,
    pub hashes: Hashes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Release>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    /// Lower-case hex.
    pub sha256: String,
}

impl Hashes {
    /// The digest, if it is 64 hex digits.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out).ok()?;
        Some(out)
    }
}

/// What a slot release is: `custom` of its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: Version,
    /// sha256 (hex) and length of the uncompressed slot image (ext4 +
    /// dm-verity hash tree), as written to the partition.
    pub slot_sha256: String,
    pub slot_length: u64,
    /// The dm-verity root hash (hex) the boot loader passes for this slot.
    pub verity_root_hash: String,
    /// The kernel release inside (`uname -r`).
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Hosts running an older version than this must not update to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
}

/// A staged rollout: hosts spread their start over `duration` seconds
/// from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub start: Time,
    /// Seconds.
    pub duration: u64,
}

/// snapshot.json: the version of every targets document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Time,
    /// `targets.json` → its version, length and hash.
    pub meta: BTreeMap<String, MetaFile>,
}
role!(Snapshot, RoleName::Snapshot);

/// timestamp.json: the current snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    pub version: u64,
    pub expires: Time,
    /// `snapshot.json` → its version, length and hash.
    pub meta: BTreeMap<String, MetaFile>,
}
role!(Timestamp, RoleName::Timestamp);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
}

impl Root {
    pub fn new(version: u64, expires: Time) -> Root {
        Root {
            kind: "root".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            consistent_snapshot: true,
            keys: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }

    /// Adds `key` to `role` (and to `keys`).
    pub fn add_key(&mut self, role: RoleName, key: &VerifyingKey) -> String {
        let public = PublicKey::ed25519(key);
        let keyid = public.keyid();
        self.keys.insert(keyid.clone(), public);
        let entry = self
            .roles
            .entry(role.as_str().to_owned())
            .or_insert(RoleKeys {
                keyids: Vec::new(),
                threshold: 1,
            });
        if !entry.keyids.contains(&keyid) {
            entry.keyids.push(keyid.clone());
        }
        keyid
    }

    /// Takes `keyid` off `role`; drops the key from `keys` if no role
    /// uses it any more. Whether it was on the role.
    pub fn remove_key(&mut self, role: RoleName, keyid: &str) -> bool {
        let Some(entry) = self.roles.get_mut(role.as_str()) else {
            return false;
        };
        let before = entry.keyids.len();
        entry.keyids.retain(|k| k != keyid);
        let removed = entry.keyids.len() != before;
        if !self
            .roles
            .values()
            .any(|r| r.keyids.iter().any(|k| k == keyid))
        {
            self.keys.remove(keyid);
        }
        removed
    }

    pub fn role(&self, role: RoleName) -> Option<&RoleKeys> {
        self.roles.get(role.as_str())
    }

    /// Checks what the signature checks rely on: every key is a valid
    /// ed25519 key under its own id, every role is present, names only
    /// listed keys, each once, and has a threshold it can meet.
    pub fn check(&self, file: &str) -> Result<(), DocumentError> {
        for (keyid, key) in &self.keys {
            key.verifying_key(keyid)
                .map_err(|source| DocumentError::Key {
                    file: file.to_owned(),
                    source,
                })?;
        }
        for role in RoleName::ALL {
            let keys = self.role(role).ok_or_else(|| DocumentError::MissingRole {
                file: file.to_owned(),
                role,
            })?;
            let mut seen = BTreeSet::new();
            for keyid in &keys.keyids {
                if !self.keys.contains_key(keyid) {
                    return Err(DocumentError::UnknownKey {
                        file: file.to_owned(),
                        role,
                        keyid: keyid.clone(),
                    });
                }
                if !seen.insert(keyid) {
                    return Err(DocumentError::DuplicateKey {
                        file: file.to_owned(),
                        role,
                        keyid: keyid.clone(),
                    });
                }
            }
            if keys.threshold == 0 || keys.threshold > seen.len() as u64 {
                return Err(DocumentError::BadThreshold {
                    file: file.to_owned(),
                    role,
                    threshold: keys.threshold,
                    keys: seen.len(),
                });
            }
        }
        Ok(())
    }

    /// Checks that `doc` carries at least the threshold of valid
    /// signatures by distinct keys of `role` in this root. Call
    /// [`Root::check`] on this root first.
    pub fn verify<T>(&self, role: RoleName, doc: &Parsed<T>) -> Result<(), DocumentError> {
        let missing = || DocumentError::MissingRole {
            file: doc.file.clone(),
            role,
        };
        let keys = self.role(role).ok_or_else(missing)?;
        let mut valid = BTreeSet::new();
        let (mut invalid, mut untrusted) = (0, Vec::new());
        for sig in &doc.signatures {
            if !keys.keyids.contains(&sig.keyid) {
                untrusted.push(sig.keyid.as_str());
                continue;
            }
            let key = self
                .keys
                .get(&sig.keyid)
                .and_then(|k| k.verifying_key(&sig.keyid).ok());
            match key {
                Some(key) if sig.verifies(&key, &doc.canonical) => {
                    valid.insert(sig.keyid.as_str());
                }
                _ => invalid += 1,
            }
        }
        if (valid.len() as u64) < keys.threshold {
            let untrusted_ids = if untrusted.is_empty() {
                String::new()
            } else {
                format!(": {}", untrusted.join(", "))
            };
            return Err(DocumentError::Signatures {
                file: doc.file.clone(),
                role,
                valid: valid.len(),
                threshold: keys.threshold,
                invalid,
                untrusted: untrusted.len(),
                untrusted_ids,
            });
        }
        Ok(())
    }
}

impl Targets {
    pub fn new(version: u64, expires: Time) -> Targets {
        Targets {
            kind: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            targets: BTreeMap::new(),
        }
    }
}

impl Snapshot {
    pub fn new(version: u64, expires: Time) -> Snapshot {
        Snapshot {
            kind: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: BTreeMap::new(),
        }
    }
}

impl Timestamp {
    pub fn new(version: u64, expires: Time, snapshot: MetaFile) -> Timestamp {
        Timestamp {
            kind: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            meta: BTreeMap::from([(RoleName::Snapshot.file(), snapshot)]),
        }
    }
}

/// A parsed document whose signatures have not been checked yet.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    /// The name it was fetched or read under, for messages.
    pub file: String,
    pub signed: T,
    /// The canonical bytes of `signed`: what the signatures sign.
    pub canonical: Vec<u8>,
    pub signatures: Vec<KeySignature>,
}

#[derive(Deserialize)]
struct Envelope {
    signed: serde_json::Value,
    signatures: Vec<KeySignature>,
}

/// Parses a signed document of role `T` (signatures not checked).
pub fn parse<T: Role>(file: &str, bytes: &[u8]) -> Result<Parsed<T>, DocumentError> {
    let json = |source| DocumentError::Json {
        file: file.to_owned(),
        source,
    };
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(json)?;
    let canonical =
        canonical::to_vec(&envelope.signed).map_err(|source| DocumentError::Canonical {
            file: file.to_owned(),
            source,
        })?;
    let signed = T::deserialize(&envelope.signed).map_err(json)?;
    if signed.kind() != T::NAME.as_str() {
        return Err(DocumentError::Type {
            file: file.to_owned(),
            expected: T::NAME,
            found: signed.kind().to_owned(),
        });
    }
    if signed.spec_version().split('.').next() != Some("1") {
        return Err(DocumentError::SpecVersion {
            file: file.to_owned(),
            found: signed.spec_version().to_owned(),
        });
    }
    Ok(Parsed {
        file: file.to_owned(),
        signed,
        canonical,
        signatures: envelope.signatures,
    })
}

/// The file bytes of `doc` signed by each of `keys` (pretty-printed JSON;
/// signatures are over the canonical form).
pub fn sign<T: Role>(doc: &T, keys: &[&SigningKey]) -> Result<Vec<u8>, DocumentError> {
    let file = T::NAME.file();
    if keys.is_empty() {
        return Err(DocumentError::NoSigningKey {
            file,
            role: T::NAME,
        });
    }
    let signed = serde_json::to_value(doc).map_err(|source| DocumentError::Encode {
        file: file.clone(),
        source,
    })?;
    let canonical = canonical::to_vec(&signed).map_err(|source| DocumentError::Canonical {
        file: file.clone(),
        source,
    })?;
    let signatures: Vec<KeySignature> = keys
        .iter()
        .map(|k| KeySignature::sign(k, &canonical))
        .collect();
    let envelope = serde_json::json!({ "signed": signed, "signatures": signatures });
    let mut out = serde_json::to_vec_pretty(&envelope)
        .map_err(|source| DocumentError::Encode { file, source })?;
    out.push(b'\n');
    Ok(out)
}
