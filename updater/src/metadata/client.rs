//! The client side: TUF's detailed client workflow (specification section
//! 5) as a state machine over bytes. [`Trusted`] holds the documents the
//! host trusts; [`Trusted::update`] fetches newer ones through a
//! [`Fetcher`] (HTTP in the agent, a map in tests) and accepts each only if
//! it passes every check; [`TargetCheck`] verifies a downloaded target as
//! it streams.
//!
//! Freeze protection: every document expires, and `image-build` gives the
//! timestamp a short expiry (1 day by default) and re-signs it at least
//! that often. On top of that the client records when it last saw the
//! timestamp's version go up; if it has not gone up for longer than
//! [`Config::freeze_limit`] (default 3 days) the update fails with
//! [`UpdateError::Frozen`], even when the documents served are unexpired.
//! A mirror that replays an old timestamp with a long expiry therefore
//! holds a host back for at most the freeze limit, and not silently.

use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::role::{
    self, versioned_file, DocumentError, Hashes, MetaFile, Release, Role, RoleName, Root, Snapshot,
    TargetFile, Targets, Timestamp,
};
use super::time::{format_span, Time};

/// Gets a metadata file from the repository.
pub trait Fetcher {
    /// The bytes of metadata file `name` (`timestamp.json`,
    /// `3.root.json`); an implementation stops reading after `max_length`
    /// bytes and fails with [`FetchError::TooLong`].
    fn fetch(&mut self, name: &str, max_length: u64) -> Result<Vec<u8>, FetchError>;
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("not found")]
    NotFound,
    #[error("longer than the limit of {limit} bytes")]
    TooLong { limit: u64 },
    #[error("transfer failed")]
    Transfer(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, Error)]
pub enum UpdateError {
    #[error("{file}: cannot fetch")]
    Fetch {
        file: String,
        #[source]
        source: FetchError,
    },
    #[error("{file}: {length} bytes, but {by} says {expected}")]
    Length {
        file: String,
        length: u64,
        expected: u64,
        by: String,
    },
    #[error("{file}: sha256 {found}, but {by} says {expected}")]
    Hash {
        file: String,
        found: String,
        expected: String,
        by: String,
    },
    #[error("{file}: {by} gives a sha256 that is not 64 hex digits")]
    BadHash { file: String, by: String },
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("{file}: version {found}, but {by} says {expected}")]
    Version {
        file: String,
        found: u64,
        expected: u64,
        by: String,
    },
    #[error("{file}: version {found} is lower than the trusted {trusted} (rollback)")]
    Rollback {
        file: String,
        found: u64,
        trusted: u64,
    },
    #[error("{file}: {name} at version {found} is lower than the trusted {trusted} (rollback)")]
    MetaRollback {
        file: String,
        name: String,
        found: u64,
        trusted: u64,
    },
    #[error("{file}: {name} is missing, but the trusted snapshot has it at version {trusted}")]
    MetaMissing {
        file: String,
        name: String,
        trusted: u64,
    },
    #[error("{file}: does not list {name}")]
    NoMeta { file: String, name: String },
    #[error("{file}: expired at {expires}")]
    Expired { file: String, expires: Time },
    #[error(
        "{file}: version {version} has not gone up since {since}, longer than the freeze \
         limit of {limit} (frozen repository or mirror)"
    )]
    Frozen {
        file: String,
        version: u64,
        since: Time,
        limit: String,
    },
    #[error("{file}: more than {limit} root rotations in one update; stopped")]
    TooManyRoots { file: String, limit: u64 },
    #[error("no targets.json is trusted yet")]
    NoTargets,
    #[error("target {name}: not in targets.json")]
    NoTarget { name: String },
    #[error("target {name}: more than the {expected} bytes expected (endless download)")]
    TargetTooLong { name: String, expected: u64 },
    #[error("target {name}: {length} bytes, but {expected} expected")]
    TargetLength {
        name: String,
        length: u64,
        expected: u64,
    },
    #[error("target {name}: sha256 {found}, but {expected} expected")]
    TargetHash {
        name: String,
        found: String,
        expected: String,
    },
    #[error("target {name}: the expected sha256 is not 64 hex digits")]
    TargetBadHash { name: String },
}

/// Size limits for documents whose length no trusted document gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    /// Root versions accepted in one update.
    pub root_rotations: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            root: 512 * 1024,
            timestamp: 16 * 1024,
            snapshot: 2 * 1024 * 1024,
            targets: 8 * 1024 * 1024,
            root_rotations: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub limits: Limits,
    /// How long the timestamp's version may stay the same before the
    /// repository counts as frozen.
    pub freeze_limit: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            freeze_limit: Duration::from_secs(3 * 86_400),
        }
    }
}

/// A verified document and the bytes it came from (to store them).
#[derive(Debug, Clone)]
pub struct Verified<T> {
    pub signed: T,
    pub bytes: Vec<u8>,
}

/// The versions trusted after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

/// The trusted documents, as [`Trusted::saved`] gives them and
/// [`Trusted::restore`] takes them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMetadata {
    pub root: Vec<u8>,
    pub timestamp: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
    pub targets: Option<Vec<u8>>,
    /// When the timestamp's version last went up (the freeze limit).
    pub timestamp_advanced: Option<Time>,
}

/// What the host trusts: a root (at first the one shipped in the image)
/// and the newest timestamp, snapshot and targets that passed.
#[derive(Debug, Clone)]
pub struct Trusted {
    root: Verified<Root>,
    timestamp: Option<Verified<Timestamp>>,
    snapshot: Option<Verified<Snapshot>>,
    targets: Option<Verified<Targets>>,
    /// When the timestamp's version last went up (client clock).
    timestamp_advanced: Option<Time>,
}

impl Trusted {
    /// Starts from a trusted root (the one shipped in the image): it must
    /// be well formed and signed by its own root threshold. Its expiry is
    /// checked after the root update, as the workflow says.
    pub fn new(root: &[u8], file: &str) -> Result<Trusted, UpdateError> {
        let parsed = role::parse::<Root>(file, root)?;
        parsed.signed.check(file)?;
        parsed.signed.verify(RoleName::Root, &parsed)?;
        Ok(Trusted {
            root: Verified {
                signed: parsed.signed,
                bytes: root.to_vec(),
            },
            timestamp: None,
            snapshot: None,
            targets: None,
            timestamp_advanced: None,
        })
    }

    /// Restores what [`Trusted::saved`] gave, on top of the shipped root
    /// (checked as in [`Trusted::new`]). The saved root replaces the
    /// shipped one only if its version is higher (an OS update may ship a
    /// newer root than the one on /var); each saved document must be well
    /// formed and carry its role's threshold of signatures by the restored
    /// root. Expiry is not checked here: [`Trusted::update`] does that.
    pub fn restore(
        shipped: &[u8],
        file: &str,
        saved: &SavedMetadata,
    ) -> Result<Trusted, UpdateError> {
        let mut trusted = Trusted::new(shipped, file)?;
        let saved_file = |role: RoleName| format!("saved {}", role.file());
        let root_file = saved_file(RoleName::Root);
        let root = role::parse::<Root>(&root_file, &saved.root)?;
        root.signed.check(&root_file)?;
        root.signed.verify(RoleName::Root, &root)?;
        if root.signed.version < trusted.root.signed.version {
            // The shipped root is newer: what was saved under the old one
            // is checked again by the next update.
            return Ok(trusted);
        }
        trusted.root = Verified {
            signed: root.signed,
            bytes: saved.root.clone(),
        };
        fn doc<T: Role>(
            root: &Root,
            role: RoleName,
            bytes: &Option<Vec<u8>>,
        ) -> Result<Option<Verified<T>>, UpdateError> {
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            let parsed = role::parse::<T>(&format!("saved {}", role.file()), bytes)?;
            root.verify(role, &parsed)?;
            Ok(Some(Verified {
                signed: parsed.signed,
                bytes: bytes.clone(),
            }))
        }
        let root = &trusted.root.signed;
        trusted.timestamp = doc(root, RoleName::Timestamp, &saved.timestamp)?;
        trusted.snapshot = doc(root, RoleName::Snapshot, &saved.snapshot)?;
        trusted.targets = doc(root, RoleName::Targets, &saved.targets)?;
        trusted.timestamp_advanced = saved.timestamp_advanced;
        Ok(trusted)
    }

    /// The trusted documents as bytes, to keep across reboots.
    pub fn saved(&self) -> SavedMetadata {
        SavedMetadata {
            root: self.root.bytes.clone(),
            timestamp: self.timestamp.as_ref().map(|d| d.bytes.clone()),
            snapshot: self.snapshot.as_ref().map(|d| d.bytes.clone()),
            targets: self.targets.as_ref().map(|d| d.bytes.clone()),
            timestamp_advanced: self.timestamp_advanced,
        }
    }

    pub fn root(&self) -> &Verified<Root> {
        &self.root
    }

    pub fn timestamp(&self) -> Option<&Verified<Timestamp>> {
        self.timestamp.as_ref()
    }

    pub fn snapshot(&self) -> Option<&Verified<Snapshot>> {
        self.snapshot.as_ref()
    }

    pub fn targets(&self) -> Option<&Verified<Targets>> {
        self.targets.as_ref()
    }

    /// When the timestamp's version last went up.
    pub fn timestamp_advanced(&self) -> Option<Time> {
        self.timestamp_advanced
    }

    /// Runs the workflow at time `now`: root rotations, then timestamp,
    /// snapshot and targets. Every document that passes is kept even if a
    /// later step fails (a newer root stays trusted).
    pub fn update(
        &mut self,
        fetcher: &mut dyn Fetcher,
        now: Time,
        config: &Config,
    ) -> Result<Versions, UpdateError> {
        self.update_root(fetcher, now, &config.limits)?;
        self.update_timestamp(fetcher, now, config)?;
        self.update_snapshot(fetcher, now, &config.limits)?;
        let targets = self.update_targets(fetcher, now, &config.limits)?;
        Ok(Versions {
            root: self.root.signed.version,
            timestamp: self.timestamp.as_ref().map_or(0, |t| t.signed.version),
            snapshot: self.snapshot.as_ref().map_or(0, |s| s.signed.version),
            targets,
        })
    }

    /// 5.3: follow `N+1.root.json` while it exists; each must be signed by
    /// the threshold of the trusted root and of itself, and be exactly
    /// version N+1. Then the final root must not be expired, and trusted
    /// documents of roles whose keys changed are dropped.
    fn update_root(
        &mut self,
        fetcher: &mut dyn Fetcher,
        now: Time,
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        let original = self.root.signed.clone();
        let mut rotations = 0;
        while let Some(next) = self.root.signed.version.checked_add(1) {
            let file = versioned_file(RoleName::Root, next);
            let bytes = match fetch(fetcher, &file, limits.root) {
                Err(UpdateError::Fetch {
                    source: FetchError::NotFound,
                    ..
                }) => break,
                other => other?,
            };
            if rotations == limits.root_rotations {
                return Err(UpdateError::TooManyRoots {
                    file,
                    limit: limits.root_rotations,
                });
            }
            let parsed = role::parse::<Root>(&file, &bytes)?;
            self.root.signed.verify(RoleName::Root, &parsed)?;
            parsed.signed.check(&file)?;
            parsed.signed.verify(RoleName::Root, &parsed)?;
            let found = parsed.signed.version;
            if found < next {
                return Err(UpdateError::Rollback {
                    file,
                    found,
                    trusted: self.root.signed.version,
                });
            }
            if found != next {
                return Err(UpdateError::Version {
                    file: file.clone(),
                    found,
                    expected: next,
                    by: file,
                });
            }
            self.root = Verified {
                signed: parsed.signed,
                bytes,
            };
            rotations += 1;
        }
        let root = &self.root.signed;
        not_expired(&versioned_file(RoleName::Root, root.version), root, now)?;
        let changed = |role| original.role(role) != root.role(role);
        if changed(RoleName::Timestamp) || changed(RoleName::Snapshot) {
            self.timestamp = None;
            self.snapshot = None;
            self.timestamp_advanced = None;
        }
        if changed(RoleName::Targets) {
            self.targets = None;
        }
        Ok(())
    }

    /// 5.4: timestamp.json.
    fn update_timestamp(
        &mut self,
        fetcher: &mut dyn Fetcher,
        now: Time,
        config: &Config,
    ) -> Result<(), UpdateError> {
        let file = RoleName::Timestamp.file();
        let bytes = fetch(fetcher, &file, config.limits.timestamp)?;
        let parsed = role::parse::<Timestamp>(&file, &bytes)?;
        self.root.signed.verify(RoleName::Timestamp, &parsed)?;
        let new = parsed.signed;
        let snapshot = meta(&file, &new.meta, RoleName::Snapshot)?;
        let mut advanced = true;
        if let Some(trusted) = &self.timestamp {
            let trusted = &trusted.signed;
            if new.version < trusted.version {
                return Err(UpdateError::Rollback {
                    file,
                    found: new.version,
                    trusted: trusted.version,
                });
            }
            let old = meta(&file, &trusted.meta, RoleName::Snapshot)?;
            if snapshot.version < old.version {
                return Err(UpdateError::MetaRollback {
                    file,
                    name: RoleName::Snapshot.file(),
                    found: snapshot.version,
                    trusted: old.version,
                });
            }
            advanced = new.version > trusted.version;
        }
        if advanced {
            not_expired(&file, &new, now)?;
            self.timestamp = Some(Verified { signed: new, bytes });
            self.timestamp_advanced = Some(now);
            return Ok(());
        }
        // The same version as trusted: keep the trusted copy.
        if let Some(trusted) = &self.timestamp {
            not_expired(&file, &trusted.signed, now)?;
            let since = *self.timestamp_advanced.get_or_insert(now);
            if now.since(since) > config.freeze_limit {
                return Err(UpdateError::Frozen {
                    file,
                    version: trusted.signed.version,
                    since,
                    limit: format_span(config.freeze_limit),
                });
            }
        }
        Ok(())
    }

    /// 5.5: the snapshot the timestamp names.
    fn update_snapshot(
        &mut self,
        fetcher: &mut dyn Fetcher,
        now: Time,
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        let by = RoleName::Timestamp.file();
        let timestamp = &self
            .timestamp
            .as_ref()
            .ok_or(UpdateError::NoTargets)?
            .signed;
        let pin = meta(&by, &timestamp.meta, RoleName::Snapshot)?.clone();
        if let Some(trusted) = &self.snapshot {
            if trusted.signed.version == pin.version {
                let file = self.file(RoleName::Snapshot, pin.version);
                return not_expired(&file, &trusted.signed, now);
            }
        }
        let file = self.file(RoleName::Snapshot, pin.version);
        let bytes = fetch(fetcher, &file, pin.length.unwrap_or(limits.snapshot))?;
        check_pin(&file, &bytes, &pin, &by)?;
        let parsed = role::parse::<Snapshot>(&file, &bytes)?;
        self.root.signed.verify(RoleName::Snapshot, &parsed)?;
        let new = parsed.signed;
        if new.version != pin.version {
            return Err(UpdateError::Version {
                file,
                found: new.version,
                expected: pin.version,
                by,
            });
        }
        if let Some(trusted) = &self.snapshot {
            for (name, old) in &trusted.signed.meta {
                let Some(now) = new.meta.get(name) else {
                    return Err(UpdateError::MetaMissing {
                        file,
                        name: name.clone(),
                        trusted: old.version,
                    });
                };
                if now.version < old.version {
                    return Err(UpdateError::MetaRollback {
                        file,
                        name: name.clone(),
                        found: now.version,
                        trusted: old.version,
                    });
                }
            }
        }
        not_expired(&file, &new, now)?;
        self.snapshot = Some(Verified { signed: new, bytes });
        Ok(())
    }

    /// 5.6: the targets the snapshot names. Returns its version.
    fn update_targets(
        &mut self,
        fetcher: &mut dyn Fetcher,
        now: Time,
        limits: &Limits,
    ) -> Result<u64, UpdateError> {
        let snapshot = &self.snapshot.as_ref().ok_or(UpdateError::NoTargets)?.signed;
        let by = self.file(RoleName::Snapshot, snapshot.version);
        let pin = meta(&by, &snapshot.meta, RoleName::Targets)?.clone();
        let file = self.file(RoleName::Targets, pin.version);
        if let Some(trusted) = &self.targets {
            if trusted.signed.version == pin.version {
                not_expired(&file, &trusted.signed, now)?;
                return Ok(pin.version);
            }
        }
        let bytes = fetch(fetcher, &file, pin.length.unwrap_or(limits.targets))?;
        check_pin(&file, &bytes, &pin, &by)?;
        let parsed = role::parse::<Targets>(&file, &bytes)?;
        self.root.signed.verify(RoleName::Targets, &parsed)?;
        let new = parsed.signed;
        if new.version != pin.version {
            return Err(UpdateError::Version {
                file,
                found: new.version,
                expected: pin.version,
                by,
            });
        }
        not_expired(&file, &new, now)?;
        self.targets = Some(Verified { signed: new, bytes });
        Ok(pin.version)
    }

    /// The name `role`'s document at `version` is fetched under.
    fn file(&self, role: RoleName, version: u64) -> String {
        if self.root.signed.consistent_snapshot {
            versioned_file(role, version)
        } else {
            role.file()
        }
    }

    /// A target of the trusted targets.json.
    pub fn target(&self, name: &str) -> Result<&TargetFile, UpdateError> {
        let targets = self.targets.as_ref().ok_or(UpdateError::NoTargets)?;
        targets
            .signed
            .targets
            .get(name)
            .ok_or_else(|| UpdateError::NoTarget {
                name: name.to_owned(),
            })
    }

    /// The release with the highest version, with its target name.
    pub fn latest_release(&self) -> Option<(&str, &TargetFile, &Release)> {
        self.targets
            .as_ref()?
            .signed
            .targets
            .iter()
            .filter_map(|(name, t)| Some((name.as_str(), t, t.custom.as_ref()?)))
            .max_by_key(|(_, _, release)| release.version)
    }
}

fn fetch(fetcher: &mut dyn Fetcher, file: &str, max: u64) -> Result<Vec<u8>, UpdateError> {
    let bytes = fetcher
        .fetch(file, max)
        .map_err(|source| UpdateError::Fetch {
            file: file.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(UpdateError::Fetch {
            file: file.to_owned(),
            source: FetchError::TooLong { limit: max },
        });
    }
    Ok(bytes)
}

fn meta<'a>(
    file: &str,
    meta: &'a std::collections::BTreeMap<String, MetaFile>,
    role: RoleName,
) -> Result<&'a MetaFile, UpdateError> {
    meta.get(&role.file()).ok_or_else(|| UpdateError::NoMeta {
        file: file.to_owned(),
        name: role.file(),
    })
}

fn check_pin(file: &str, bytes: &[u8], pin: &MetaFile, by: &str) -> Result<(), UpdateError> {
    if let Some(expected) = pin.length {
        if bytes.len() as u64 != expected {
            return Err(UpdateError::Length {
                file: file.to_owned(),
                length: bytes.len() as u64,
                expected,
                by: by.to_owned(),
            });
        }
    }
    if let Some(hashes) = &pin.hashes {
        let expected = hashes.sha256_bytes().ok_or_else(|| UpdateError::BadHash {
            file: file.to_owned(),
            by: by.to_owned(),
        })?;
        let found: [u8; 32] = Sha256::digest(bytes).into();
        if found != expected {
            return Err(UpdateError::Hash {
                file: file.to_owned(),
                found: hex::encode(found),
                expected: hashes.sha256.clone(),
                by: by.to_owned(),
            });
        }
    }
    Ok(())
}

/// Expired when the expiry is at or before `now` (5.3.10, 5.4.5).
fn not_expired<T: Role>(file: &str, doc: &T, now: Time) -> Result<(), UpdateError> {
    if doc.expires() <= now {
        return Err(UpdateError::Expired {
            file: file.to_owned(),
            expires: doc.expires(),
        });
    }
    Ok(())
}

/// Checks a download as it streams: refuses the first byte past the
/// expected length (an endless download), and the length and sha256 at
/// the end.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    name: String,
    length: u64,
    sha256: [u8; 32],
    hasher: Sha256,
    seen: u64,
}

impl TargetCheck {
    /// For the file of `target` as served (compressed).
    pub fn new(name: &str, target: &TargetFile) -> Result<TargetCheck, UpdateError> {
        Self::with(name, target.length, &target.hashes)
    }

    /// For the uncompressed slot image of `release`.
    pub fn slot(name: &str, release: &Release) -> Result<TargetCheck, UpdateError> {
        let hashes = Hashes {
            sha256: release.slot_sha256.clone(),
        };
        Self::with(name, release.slot_length, &hashes)
    }

    fn with(name: &str, length: u64, hashes: &Hashes) -> Result<TargetCheck, UpdateError> {
        let sha256 = hashes
            .sha256_bytes()
            .ok_or_else(|| UpdateError::TargetBadHash {
                name: name.to_owned(),
            })?;
        Ok(TargetCheck {
            name: name.to_owned(),
            length,
            sha256,
            hasher: Sha256::new(),
            seen: 0,
        })
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), UpdateError> {
        let seen = self.seen.saturating_add(chunk.len() as u64);
        if seen > self.length {
            return Err(UpdateError::TargetTooLong {
                name: self.name.clone(),
                expected: self.length,
            });
        }
        self.seen = seen;
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<(), UpdateError> {
        if self.seen != self.length {
            return Err(UpdateError::TargetLength {
                name: self.name,
                length: self.seen,
                expected: self.length,
            });
        }
        let found: [u8; 32] = self.hasher.finalize().into();
        if found != self.sha256 {
            return Err(UpdateError::TargetHash {
                name: self.name,
                found: hex::encode(found),
                expected: hex::encode(self.sha256),
            });
        }
        Ok(())
    }
}
