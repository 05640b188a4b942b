//! The persistent log store on /var (`/var/log/atoll/`).
//!
//! Records are appended as JSON lines ([`LogRecord`]) to `current.jsonl`.
//! Before a write would take it past [`MAX_FILE_BYTES`] (4 MiB) the files
//! rotate: `current.jsonl.2` becomes `.3` (the old `.3` is dropped), `.1`
//! becomes `.2`, `current.jsonl` becomes `.1`, and a new `current.jsonl`
//! starts. So the store never holds more than 4 × 4 MiB = 16 MiB, and the
//! newest records are always in `current.jsonl`. Reading walks the files
//! from newest to oldest; a line that does not parse (a torn write after a
//! power cut) is skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use atoll_common::api::LogRecord;

/// The file records are appended to.
pub const CURRENT: &str = "current.jsonl";
/// Largest size of one file before it rotates.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Rotated files kept (`current.jsonl.1` .. `.3`).
pub const ROTATED_KEPT: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("creating log directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("opening {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("writing {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("rotating {path}")]
    Rotate { path: PathBuf, source: io::Error },
}

/// A size-capped directory of JSON-lines log files.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    file: File,
    size: u64,
    max_file_bytes: u64,
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        Self::open_with_limit(dir, MAX_FILE_BYTES)
    }

    /// Opens the store with a different file size limit (tests).
    pub fn open_with_limit(dir: &Path, max_file_bytes: u64) -> Result<Self, LogStoreError> {
        fs::create_dir_all(dir).map_err(|source| LogStoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(CURRENT);
        let mut file = open_append(&path)?;
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > 0 && !ends_with_newline(&path) {
            // A torn last line (power cut mid-write): end it so the next
            // record starts on a line of its own.
            file.write_all(b"\n")
                .map_err(|source| LogStoreError::Write {
                    path: path.clone(),
                    source,
                })?;
            size += 1;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size,
            max_file_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record, rotating first if it would not fit.
    pub fn append(&mut self, record: &LogRecord) -> Result<(), LogStoreError> {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_file_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(&line)
            .map_err(|source| LogStoreError::Write {
                path: self.dir.join(CURRENT),
                source,
            })?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{CURRENT}.{n}"))
    }

    fn rotate(&mut self) -> Result<(), LogStoreError> {
        for n in (1..ROTATED_KEPT).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1)).map_err(|source| LogStoreError::Rotate {
                    path: from.clone(),
                    source,
                })?;
            }
        }
        let current = self.dir.join(CURRENT);
        fs::rename(&current, self.rotated(1)).map_err(|source| LogStoreError::Rotate {
            path: current.clone(),
            source,
        })?;
        self.file = open_append(&current)?;
        self.size = 0;
        Ok(())
    }

    /// Flushes written records to the disk.
    pub fn sync(&self) {
        let _ = self.file.sync_data();
    }

    /// The newest `n` records (all when `n` is 0) that pass `filter`, oldest first.
    pub fn tail(&self, n: usize, filter: impl Fn(&LogRecord) -> bool) -> Vec<LogRecord> {
        tail_dir(&self.dir, n, filter)
    }
}

/// [`LogStore::tail`] without the store: reads the files of the store in
/// `dir`. Safe while a writer appends (a half-written last line is skipped).
pub fn tail_dir(dir: &Path, n: usize, filter: impl Fn(&LogRecord) -> bool) -> Vec<LogRecord> {
    let mut files = vec![dir.join(CURRENT)];
    files.extend((1..=ROTATED_KEPT).map(|i| dir.join(format!("{CURRENT}.{i}"))));
    // Collected newest file first; each file's records in order.
    let mut chunks: Vec<Vec<LogRecord>> = Vec::new();
    let mut count = 0;
    for path in files {
        let Ok(f) = File::open(&path) else { continue };
        let records: Vec<LogRecord> = BufReader::new(f)
            .split(b'\n')
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_slice::<LogRecord>(&line).ok())
            .filter(|r| filter(r))
            .collect();
        count += records.len();
        chunks.push(records);
        if n != 0 && count >= n {
            break;
        }
    }
    let mut all: Vec<LogRecord> = chunks.into_iter().rev().flatten().collect();
    if n != 0 && all.len() > n {
        all.drain(..all.len() - n);
    }
    all
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return true;
    };
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] == b'\n'
}

fn open_append(path: &Path) -> Result<File, LogStoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogStoreError::Open {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    fn rec(i: usize) -> LogRecord {
        LogRecord {
            time_us: i as u64,
            boottime_us: i as u64,
            priority: 6,
            ident: if i.is_multiple_of(2) { "even" } else { "odd" }.into(),
            pid: Some(7),
            message: format!("message number {i:05} {}", "x".repeat(40)),
            container: None,
            stream: None,
        }
    }

    #[test]
    fn rotates_and_caps_total_size() {
        let dir = TempDir::new("logstore-rotate");
        let limit = 1000;
        let mut store = LogStore::open_with_limit(dir.path(), limit).unwrap();
        for i in 0..200 {
            store.append(&rec(i)).unwrap();
        }
        let mut total = 0;
        for entry in fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let len = entry.metadata().unwrap().len();
            assert!(len <= limit, "{:?} is {len} bytes", entry.file_name());
            total += len;
        }
        assert!(total <= limit * (1 + ROTATED_KEPT as u64));
        assert!(!dir.path().join(format!("{CURRENT}.4")).exists());
        // The newest records survive, in order.
        let tail = store.tail(5, |_| true);
        let msgs: Vec<u64> = tail.iter().map(|r| r.time_us).collect();
        assert_eq!(msgs, vec![195, 196, 197, 198, 199]);
        // Reading across files keeps order.
        let all = store.tail(0, |_| true);
        assert!(all.len() > 20);
        assert!(all.windows(2).all(|w| w[0].time_us + 1 == w[1].time_us));
        assert_eq!(all.last().unwrap().time_us, 199);
    }

    #[test]
    fn tail_filters_and_skips_torn_lines() {
        let dir = TempDir::new("logstore-filter");
        let mut store = LogStore::open(dir.path()).unwrap();
        for i in 0..10 {
            store.append(&rec(i)).unwrap();
        }
        // A torn write, as after a power cut.
        {
            let mut f = OpenOptions::new()
                .append(true)
                .open(dir.path().join(CURRENT))
                .unwrap();
            f.write_all(b"{\"time_us\":1,\"boott").unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        store.append(&rec(10)).unwrap();
        let odd = store.tail(3, |r| r.ident == "odd");
        let times: Vec<u64> = odd.iter().map(|r| r.time_us).collect();
        assert_eq!(times, vec![5, 7, 9]);
        let all = store.tail(0, |_| true);
        assert_eq!(all.len(), 11, "only the torn line is lost");
    }
}
