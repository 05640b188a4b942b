//! The last config that applied cleanly, kept on /var so that a broken
//! config (or a boot with no config source at all) leaves the host as it
//! was configured last time.
//!
//! Two files in [`LAST_GOOD_DIR`]: `last-good` (the user data exactly as the
//! source gave it, gzip or YAML included, so it is parsed by the same code
//! next boot) and `last-good.json` (where it came from and when). Both are
//! replaced atomically (write, fsync, rename, fsync the directory), the
//! data file first; a torn pair is detected by the sha256 in the JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the last good config lives.
pub const LAST_GOOD_DIR: &str = "/var/lib/atoll/config";

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct StoreError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What is known of a stored config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGoodMeta {
    /// The source it came from (`fw_cfg opt/dev.atoll/config`, …).
    pub source: String,
    /// When it was saved, seconds since the Unix epoch (by the host's clock).
    pub saved_at: u64,
    pub sha256: String,
}

/// A stored config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGood {
    pub meta: LastGoodMeta,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(LAST_GOOD_DIR)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join("last-good")
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("last-good.json")
    }

    /// The stored config, if there is one and it is whole. A damaged pair
    /// is reported and treated as absent.
    pub fn load(&self) -> Option<LastGood> {
        let data = std::fs::read(self.data_path()).ok()?;
        let meta = match std::fs::read(self.meta_path())
            .map_err(|e| e.to_string())
            .and_then(|m| serde_json::from_slice::<LastGoodMeta>(&m).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                log::warn!(
                    "the last good config's record {} is unreadable ({e}); ignoring it",
                    self.meta_path().display()
                );
                return None;
            }
        };
        if meta.sha256 != sha256_hex(&data) {
            log::warn!(
                "the last good config {} does not match its recorded sha256; ignoring it",
                self.data_path().display()
            );
            return None;
        }
        Some(LastGood { meta, data })
    }

    /// Keeps `data` (from `source`) as the last good config, unless the
    /// same bytes are already stored.
    pub fn save(&self, source: &str, data: &[u8], now_unix: u64) -> Result<bool, StoreError> {
        let sha256 = sha256_hex(data);
        if let Some(old) = self.load() {
            if old.meta.sha256 == sha256 && old.meta.source == source {
                return Ok(false);
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| StoreError {
            path: self.dir.clone(),
            source,
        })?;
        write_atomic(&self.data_path(), data)?;
        let meta = LastGoodMeta {
            source: source.to_string(),
            saved_at: now_unix,
            sha256,
        };
        let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        write_atomic(&self.meta_path(), &json)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn saves_and_loads() {
        let dir = TempDir::new("lastgood");
        let s = Store::new(dir.path().join("config"));
        assert_eq!(s.load(), None);
        assert!(s.save("fw_cfg x", b"hostname = \"a\"\n", 100).unwrap());
        let got = s.load().unwrap();
        assert_eq!(got.data, b"hostname = \"a\"\n");
        assert_eq!(got.meta.source, "fw_cfg x");
        assert_eq!(got.meta.saved_at, 100);
        // The same bytes again: nothing to write.
        assert!(!s.save("fw_cfg x", b"hostname = \"a\"\n", 200).unwrap());
        assert_eq!(s.load().unwrap().meta.saved_at, 100);
        assert!(s.save("fw_cfg x", b"hostname = \"b\"\n", 300).unwrap());
        assert_eq!(s.load().unwrap().data, b"hostname = \"b\"\n");
    }

    #[test]
    fn a_torn_pair_is_ignored() {
        let dir = TempDir::new("lastgood-torn");
        let s = Store::new(dir.path());
        s.save("src", b"one", 1).unwrap();
        // As if power went after the data file was replaced but before the record.
        std::fs::write(dir.path().join("last-good"), b"two").unwrap();
        assert_eq!(s.load(), None);
        std::fs::write(dir.path().join("last-good.json"), b"{garbage").unwrap();
        assert_eq!(s.load(), None);
    }
}
