//! `image-build keys`: the signing keys of an update repository and its
//! root of trust.
//!
//! A keys directory holds:
//!
//! - `root.json`: the current root (the one to ship in images, as
//!   `/usr/lib/atoll/update-root.json` in the slot);
//! - `roots/N.root.json`: every root version, which `image-build release`
//!   copies into the repository so hosts can walk from the root they ship
//!   to the current one;
//! - `keys/KEYID.pem`: the private keys, PKCS#8 PEM (what
//!   `openssl genpkey -algorithm ed25519` writes, so `openssl pkey` can read
//!   them), mode 0600; `keys/revoked/` keeps revoked ones.
//!
//! [`init`] makes one key per role (thresholds 1) and root version 1;
//! [`rotate`] adds a key to a role, optionally revokes one, and writes root
//! version N+1 signed by the keys of both root N and root N+1, as TUF
//! requires. Keep the root keys offline: only targets, snapshot and
//! timestamp keys are needed to cut releases.
//!
//! `image-build disk` ships a root of trust in the slot: the file given
//! with `--update-root`, checked by [`read_shipped_root`] as a host checks
//! the root it ships. Without the option it takes `root.json` from
//! [`DEV_KEYS_DIR`], which [`ensure_dev_keys`] makes the first time:
//! development keys, so that a fresh clone builds an image with no manual
//! step. They are not for production: their private keys sit unprotected
//! in the build tree.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atoll_updater::metadata::key::keyid_of;
use atoll_updater::metadata::role::{self, versioned_file, DocumentError, RoleName, Root};
use atoll_updater::metadata::{Time, Trusted, UpdateError};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeysError {
    #[error("{path} already exists; refusing to make new keys over it")]
    Exists { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("{path}: not an ed25519 PKCS#8 PEM private key: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: holds the key {found}, not {keyid}")]
    WrongKey {
        path: PathBuf,
        keyid: String,
        found: String,
    },
    #[error("{path}: not a valid root of trust")]
    Root {
        path: PathBuf,
        #[source]
        source: Box<UpdateError>,
    },
    #[error("cannot sign")]
    Sign(#[from] DocumentError),
    #[error(
        "the {role} role has only {available} private key(s) in {dir} of threshold {threshold}"
    )]
    NotEnoughKeys {
        role: RoleName,
        dir: PathBuf,
        available: usize,
        threshold: u64,
    },
    #[error("key {keyid} is not a key of the {role} role")]
    NotInRole { keyid: String, role: RoleName },
    #[error(
        "root version {found} is trusted after the self-check, not the new {expected} (a bug)"
    )]
    NotAccepted { found: u64, expected: u64 },
    #[error("the new root does not verify (a bug)")]
    SelfCheck(#[source] Box<UpdateError>),
    #[error("{dir} exists but holds no root.json; remove it to get new development keys, or pass --update-root")]
    NoDevRoot { dir: PathBuf },
}

/// How long a root is valid unless told otherwise.
pub const ROOT_EXPIRY: Duration = Duration::from_secs(365 * 86_400);

/// Where `image-build disk` takes the root of trust from unless told
/// (relative to the workspace root), making development keys there if
/// there are none ([`ensure_dev_keys`]).
pub const DEV_KEYS_DIR: &str = "target/atoll/keys";

/// The file [`ensure_dev_keys`] leaves beside the keys it makes.
pub const DEV_KEYS_MARKER: &str = "DEVELOPMENT-KEYS.txt";

const DEV_KEYS_NOTE: &str = "\
These update signing keys were made by `image-build disk` because no
--update-root was given and none existed here. They are DEVELOPMENT keys,
NOT FOR PRODUCTION: the private keys sit unprotected in the build tree, and
anyone who can read them can sign updates that images built with them
trust. `cargo clean` deletes them, and images built before no longer
accept releases signed by the next ones.

For real images, make keys once on an offline machine, keep the root key
offline, and build with them:

  image-build keys init --dir /secure/atoll-keys
  image-build disk --update-root /secure/atoll-keys/root.json
  image-build release --keys /secure/atoll-keys

See docs/updates.md, \"Keys\".
";

/// A keys directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    pub dir: PathBuf,
}

impl KeyDir {
    pub fn new(dir: impl Into<PathBuf>) -> KeyDir {
        KeyDir { dir: dir.into() }
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }

    fn key_path(&self, keyid: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{keyid}.pem"))
    }

    /// The current root, checked to be well formed and self-signed.
    pub fn root(&self) -> Result<(Root, Vec<u8>), KeysError> {
        let path = self.root_path();
        let bytes = read(&path)?;
        let trusted = Trusted::new(&bytes, "root.json").map_err(|source| KeysError::Root {
            path,
            source: Box::new(source),
        })?;
        Ok((trusted.root().signed.clone(), bytes))
    }

    /// Every root version: (version, path), oldest first.
    pub fn root_history(&self) -> Result<Vec<(u64, PathBuf)>, KeysError> {
        let dir = self.roots_dir();
        let entries = fs::read_dir(&dir).map_err(|source| KeysError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut roots = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeysError::Read {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            roots.insert(version, entry.path());
        }
        Ok(roots.into_iter().collect())
    }

    /// The private keys this directory has for `role` in `root`; at least
    /// the role's threshold of them.
    pub fn signing_keys(&self, root: &Root, role: RoleName) -> Result<Vec<SigningKey>, KeysError> {
        let Some(keys) = root.role(role) else {
            return Err(KeysError::NotEnoughKeys {
                role,
                dir: self.dir.join("keys"),
                available: 0,
                threshold: 1,
            });
        };
        let mut out = Vec::new();
        for keyid in &keys.keyids {
            let path = self.key_path(keyid);
            if path.exists() {
                out.push(self.load_key(keyid)?);
            }
        }
        if (out.len() as u64) < keys.threshold {
            return Err(KeysError::NotEnoughKeys {
                role,
                dir: self.dir.join("keys"),
                available: out.len(),
                threshold: keys.threshold,
            });
        }
        Ok(out)
    }

    fn load_key(&self, keyid: &str) -> Result<SigningKey, KeysError> {
        let path = self.key_path(keyid);
        let text = fs::read_to_string(&path).map_err(|source| KeysError::Read {
            path: path.clone(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| KeysError::Pem {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let found = keyid_of(&key);
        if found != keyid {
            return Err(KeysError::WrongKey {
                path,
                keyid: keyid.to_owned(),
                found,
            });
        }
        Ok(key)
    }

    /// Writes a new private key (0600, never over an existing file).
    fn new_key(&self) -> Result<(String, SigningKey), KeysError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeysError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        let keyid = keyid_of(&key);
        let path = self.key_path(&keyid);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeysError::Pem {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let write = |source| KeysError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(write)?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(write)?;
        file.write_all(pem.as_bytes()).map_err(write)?;
        file.sync_all().map_err(write)?;
        Ok((keyid, key))
    }

    /// Writes `roots/N.root.json`, then `root.json` (atomically).
    fn write_root(&self, version: u64, bytes: &[u8]) -> Result<(), KeysError> {
        let history = self
            .roots_dir()
            .join(versioned_file(RoleName::Root, version));
        write_new(&history, bytes)?;
        write_atomic(&self.root_path(), bytes)
    }
}

/// What [`init`] and [`rotate`] did.
#[derive(Debug, Clone)]
pub struct RootChange {
    pub root: Root,
    pub path: PathBuf,
    /// Key ids added, by role.
    pub added: Vec<(RoleName, String)>,
    pub revoked: Option<String>,
}

/// Makes a keys directory: one new key per role, thresholds 1, and a root
/// version 1 that expires `expires` after `now`.
pub fn init(dir: &KeyDir, now: Time, expires: Duration) -> Result<RootChange, KeysError> {
    let root_path = dir.root_path();
    if root_path.exists() {
        return Err(KeysError::Exists { path: root_path });
    }
    let mut root = Root::new(1, now.plus(expires));
    let mut added = Vec::new();
    let mut root_keys = Vec::new();
    for role in RoleName::ALL {
        let (keyid, key) = dir.new_key()?;
        root.add_key(role, &key.verifying_key());
        if role == RoleName::Root {
            root_keys.push(key);
        }
        added.push((role, keyid));
    }
    let bytes = role::sign(&root, &root_keys.iter().collect::<Vec<_>>())?;
    Trusted::new(&bytes, "root.json").map_err(|e| KeysError::SelfCheck(Box::new(e)))?;
    dir.write_root(1, &bytes)?;
    Ok(RootChange {
        root,
        path: root_path,
        added,
        revoked: None,
    })
}

/// Adds a new key to `role`, revokes `revoke` (a key id of that role) if
/// given, and writes root version N+1 (expiring `expires` after `now`)
/// signed by root N's keys and root N+1's keys. A revoked key's private
/// file moves to `keys/revoked/`.
pub fn rotate(
    dir: &KeyDir,
    role: RoleName,
    revoke: Option<&str>,
    now: Time,
    expires: Duration,
) -> Result<RootChange, KeysError> {
    let (old, old_bytes) = dir.root()?;
    let mut new = old.clone();
    new.version = old.version + 1;
    new.expires = now.plus(expires);
    if let Some(keyid) = revoke {
        // One key comes in as this one goes: the threshold stays reachable.
        if !new
            .role(role)
            .is_some_and(|r| r.keyids.iter().any(|k| k == keyid))
        {
            return Err(KeysError::NotInRole {
                keyid: keyid.to_owned(),
                role,
            });
        }
    }
    // The signers of N (checked before any file is written).
    let mut signers: BTreeMap<String, SigningKey> = dir
        .signing_keys(&old, RoleName::Root)?
        .into_iter()
        .map(|k| (keyid_of(&k), k))
        .collect();
    let (keyid, key) = dir.new_key()?;
    new.add_key(role, &key.verifying_key());
    if let Some(revoked) = revoke {
        new.remove_key(role, revoked);
    }
    for k in dir.signing_keys(&new, RoleName::Root)? {
        signers.insert(keyid_of(&k), k);
    }
    let bytes = role::sign(&new, &signers.values().collect::<Vec<_>>())?;
    // Check it as a host would: root N trusts N+1.
    let mut trusted =
        Trusted::new(&old_bytes, "root.json").map_err(|e| KeysError::SelfCheck(Box::new(e)))?;
    let mut fetcher = OneRoot {
        name: versioned_file(RoleName::Root, new.version),
        bytes: bytes.clone(),
    };
    let config = atoll_updater::metadata::Config::default();
    match trusted.update(&mut fetcher, now, &config) {
        // The root step passed; there is no timestamp to fetch here.
        Err(UpdateError::Fetch { file, .. }) if file == "timestamp.json" => {}
        Err(e) => return Err(KeysError::SelfCheck(Box::new(e))),
        Ok(_) => {}
    }
    if trusted.root().signed.version != new.version {
        return Err(KeysError::NotAccepted {
            found: trusted.root().signed.version,
            expected: new.version,
        });
    }
    dir.write_root(new.version, &bytes)?;
    if let Some(revoked) = revoke {
        let from = dir.key_path(revoked);
        if from.exists() {
            let to = dir.dir.join("keys/revoked").join(format!("{revoked}.pem"));
            let write = |source| KeysError::Write {
                path: to.clone(),
                source,
            };
            fs::create_dir_all(dir.dir.join("keys/revoked")).map_err(write)?;
            fs::rename(&from, &to).map_err(write)?;
        }
    }
    Ok(RootChange {
        root: new,
        path: dir.root_path(),
        added: vec![(role, keyid)],
        revoked: revoke.map(str::to_owned),
    })
}

/// Serves only `N.root.json` to the self-check.
struct OneRoot {
    name: String,
    bytes: Vec<u8>,
}

impl atoll_updater::metadata::Fetcher for OneRoot {
    fn fetch(
        &mut self,
        name: &str,
        _max: u64,
    ) -> Result<Vec<u8>, atoll_updater::metadata::FetchError> {
        if name == self.name {
            Ok(self.bytes.clone())
        } else {
            Err(atoll_updater::metadata::FetchError::NotFound)
        }
    }
}

/// Reads the root of trust to ship in an image from `path`, checked as a
/// host checks the root it ships ([`Trusted::new`]: parsed by the
/// metadata module, [`Root::check`]ed, signed by its own root
/// threshold). Not checked: its expiry (a host walks to newer roots
/// first, and only then checks it).
pub fn read_shipped_root(path: &Path) -> Result<(Root, Vec<u8>), KeysError> {
    let bytes = read(path)?;
    let file = path
        .file_name()
        .map_or_else(|| "root.json".into(), |n| n.to_string_lossy().into_owned());
    let trusted = Trusted::new(&bytes, &file).map_err(|source| KeysError::Root {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Ok((trusted.root().signed.clone(), bytes))
}

/// Makes development keys in `dir` ([`init`], with [`DEV_KEYS_MARKER`]
/// saying what they are) unless it already holds a `root.json`; returns
/// what was made, `None` if the keys were there. The keys are made in a
/// temporary directory beside `dir` and renamed into place, so two builds
/// starting at once agree on one set, and a build stopped half-way leaves
/// no half-made keys.
pub fn ensure_dev_keys(dir: &Path, now: Time) -> Result<Option<RootChange>, KeysError> {
    let keys = KeyDir::new(dir);
    if keys.root_path().exists() {
        return Ok(None);
    }
    let write = |path: &Path| {
        let path = path.to_owned();
        move |source| KeysError::Write { path, source }
    };
    let occupied = |d: &Path| fs::read_dir(d).is_ok_and(|mut e| e.next().is_some());
    if occupied(dir) {
        return Err(KeysError::NoDevRoot {
            dir: dir.to_owned(),
        });
    }
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(write(&tmp))?;
    }
    let made = init(&KeyDir::new(&tmp), now, ROOT_EXPIRY)?;
    write_atomic(&tmp.join(DEV_KEYS_MARKER), DEV_KEYS_NOTE.as_bytes())?;
    // rename(2) replaces an empty directory, never a full one.
    if let Err(e) = fs::rename(&tmp, dir) {
        let _ = fs::remove_dir_all(&tmp);
        if keys.root_path().exists() {
            // Another build made them first: use those.
            return Ok(None);
        }
        return Err(write(dir)(e));
    }
    Ok(Some(RootChange {
        path: keys.root_path(),
        ..made
    }))
}

/// Whether `dir` holds development keys made by [`ensure_dev_keys`].
pub fn is_dev_keys(dir: &Path) -> bool {
    dir.join(DEV_KEYS_MARKER).exists()
}

/// A description of the keys directory: root version and expiry, and each
/// role's threshold and keys (with whether the private key is here).
pub fn show(dir: &KeyDir) -> Result<String, KeysError> {
    let (root, _) = dir.root()?;
    let mut out = format!(
        "{}: root version {}, expires {}\n",
        dir.root_path().display(),
        root.version,
        root.expires
    );
    for role in RoleName::ALL {
        let Some(keys) = root.role(role) else {
            continue;
        };
        out.push_str(&format!(
            "{role}: threshold {} of {}\n",
            keys.threshold,
            keys.keyids.len()
        ));
        for keyid in &keys.keyids {
            let private = if dir.key_path(keyid).exists() {
                "private key here"
            } else {
                "no private key here"
            };
            out.push_str(&format!("  {keyid} ({private})\n"));
        }
    }
    Ok(out)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, KeysError> {
    fs::read(path).map_err(|source| KeysError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `path` unless it exists with other content (identical is fine).
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<(), KeysError> {
    if path.exists() {
        if read(path)? == bytes {
            return Ok(());
        }
        return Err(KeysError::Exists {
            path: path.to_owned(),
        });
    }
    write_atomic(path, bytes)
}

/// Writes `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeysError> {
    let write = |source| KeysError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(write)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(write)?;
    file.write_all(bytes).map_err(write)?;
    file.sync_all().map_err(write)?;
    fs::rename(&tmp, path).map_err(write)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn now() -> Time {
        Time::parse("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn init_makes_a_key_per_role_and_a_self_signed_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeyDir::new(tmp.path());
        let change = init(&dir, now(), ROOT_EXPIRY).unwrap();
        assert_eq!(change.added.len(), 4);
        let (root, _) = dir.root().unwrap();
        assert_eq!(root.version, 1);
        assert_eq!(root.expires.to_string(), "2027-01-01T00:00:00Z");
        for (role, keyid) in &change.added {
            let mode = fs::metadata(dir.key_path(keyid))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{role}");
            assert_eq!(dir.signing_keys(&root, *role).unwrap().len(), 1);
        }
        let pem = fs::read_to_string(dir.key_path(&change.added[0].1)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert_eq!(dir.root_history().unwrap().len(), 1);
        assert!(matches!(
            init(&dir, now(), ROOT_EXPIRY),
            Err(KeysError::Exists { .. })
        ));
        let shown = show(&dir).unwrap();
        assert!(
            shown.contains("root version 1, expires 2027-01-01T00:00:00Z"),
            "{shown}"
        );
        assert!(shown.contains("timestamp: threshold 1 of 1"), "{shown}");
    }

    #[test]
    fn dev_keys_are_made_once_and_checked_roots_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("target/atoll/keys");
        let made = ensure_dev_keys(&dir, now()).unwrap().unwrap();
        assert_eq!(made.path, dir.join("root.json"));
        assert!(is_dev_keys(&dir));
        let (root, bytes) = read_shipped_root(&made.path).unwrap();
        assert_eq!(root.version, 1);
        // Made once, then reused as they are.
        assert!(ensure_dev_keys(&dir, now()).unwrap().is_none());
        assert_eq!(fs::read(&made.path).unwrap(), bytes);
        assert_eq!(
            fs::read_dir(tmp.path().join("target/atoll"))
                .unwrap()
                .count(),
            1
        );
        // Releases can be cut with them.
        let keys = KeyDir::new(&dir);
        for role in RoleName::ALL {
            assert_eq!(keys.signing_keys(&root, role).unwrap().len(), 1);
        }
        // An empty directory is filled; one with other files is refused.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(ensure_dev_keys(&empty, now()).unwrap().is_some());
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("notes"), b"x").unwrap();
        let e = ensure_dev_keys(&other, now()).unwrap_err();
        assert!(e.to_string().contains("holds no root.json"), "{e}");

        // A file that is not a valid root is refused, naming it.
        let bad = tmp.path().join("bad-root.json");
        fs::write(&bad, b"{\"signed\": {}}").unwrap();
        let e = read_shipped_root(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: not a valid root of trust", bad.display())
        );
        // A root whose signature does not hold is refused too.
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replacen("\"version\": 1", "\"version\": 7", 1);
        assert_ne!(tampered, text);
        fs::write(&bad, tampered).unwrap();
        let e = read_shipped_root(&bad).unwrap_err();
        assert!(matches!(e, KeysError::Root { .. }), "{e}");
        let e = read_shipped_root(&tmp.path().join("missing.json")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn rotate_revokes_and_chains_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeyDir::new(tmp.path());
        let first = init(&dir, now(), ROOT_EXPIRY).unwrap();
        let shipped = fs::read(dir.root_path()).unwrap();
        let old_root_key = first.added[0].1.clone();

        // Rotate the root key itself, revoking the old one.
        let change = rotate(
            &dir,
            RoleName::Root,
            Some(&old_root_key),
            now(),
            ROOT_EXPIRY,
        )
        .unwrap();
        assert_eq!(change.root.version, 2);
        assert!(!change.root.keys.contains_key(&old_root_key));
        assert!(dir
            .dir
            .join(format!("keys/revoked/{old_root_key}.pem"))
            .exists());
        // Then the timestamp key, keeping the old one too.
        let change = rotate(&dir, RoleName::Timestamp, None, now(), ROOT_EXPIRY).unwrap();
        assert_eq!(change.root.version, 3);
        assert_eq!(
            change.root.role(RoleName::Timestamp).unwrap().keyids.len(),
            2
        );
        assert_eq!(dir.root_history().unwrap().len(), 3);

        // A host that ships root 1 walks to root 3.
        let mut trusted = Trusted::new(&shipped, "update-root.json").unwrap();
        let mut fetcher = atoll_updater::metadata::DirFetcher::new(dir.dir.join("roots"));
        let e = trusted
            .update(&mut fetcher, now(), &Default::default())
            .unwrap_err();
        assert!(
            e.to_string().starts_with("timestamp.json: cannot fetch"),
            "{e}"
        );
        assert_eq!(trusted.root().signed.version, 3);

        // Revoking a key the role does not have is refused.
        let e = rotate(&dir, RoleName::Targets, Some("00"), now(), ROOT_EXPIRY).unwrap_err();
        assert_eq!(e.to_string(), "key 00 is not a key of the targets role");
    }
}
