//! Where every log record goes: the console, a memory buffer, the store on
//! /var once it is mounted, and the followers of `atollctl logs -f`.
//!
//! Records come from the journald socket ([`super::journal`]) and from PID
//! 1's own `log` macros ([`HubLogger`]). Records that arrive before /var is
//! mounted stay in memory and are written to the store when it opens.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use atoll_common::api::LogRecord;
use tokio::sync::broadcast;

use super::console;
use super::logstore::LogStore;
use crate::clock;

/// Records kept in memory (for reads before /var, and when the store fails).
pub const MEMORY_RECORDS: usize = 2000;
/// The least important priority shown on the console (6 = info).
pub const CONSOLE_MAX_PRIORITY: u8 = 6;
/// Syslog identifier of PID 1's own records.
pub const INIT_IDENT: &str = "init";

#[derive(Debug)]
pub struct LogHub {
    inner: Mutex<Inner>,
    followers: broadcast::Sender<LogRecord>,
    console: bool,
}

#[derive(Debug)]
struct Inner {
    memory: VecDeque<LogRecord>,
    /// Records not yet in the store (all of them until it opens).
    unstored: usize,
    store: Option<LogStore>,
    store_failed: bool,
}

static GLOBAL: OnceLock<LogHub> = OnceLock::new();

impl LogHub {
    /// A hub; `console` says whether records are printed on the console.
    pub fn new(console: bool) -> Self {
        Self {
            inner: Mutex::new(Inner {
                memory: VecDeque::new(),
                unstored: 0,
                store: None,
                store_failed: false,
            }),
            followers: broadcast::channel(1024).0,
            console,
        }
    }

    /// PID 1's hub, printing on the console.
    pub fn global() -> &'static LogHub {
        GLOBAL.get_or_init(|| LogHub::new(true))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a record: console (if important enough), memory, store, followers.
    pub fn push(&self, record: LogRecord) {
        if self.console && record.priority <= CONSOLE_MAX_PRIORITY {
            console::line(&console_line(&record));
        }
        self.keep(record);
    }

    /// Like [`push`](Self::push) but never printed: for lines PID 1 has
    /// already written to the console in their own form (the ready line).
    pub fn push_quiet(&self, record: LogRecord) {
        self.keep(record);
    }

    /// For the panic hook: gives up instead of waiting if the hub is locked
    /// (the panic may have happened while this thread held the lock).
    pub fn try_push_quiet(&self, record: LogRecord) {
        if let Ok(mut inner) = self.inner.try_lock() {
            if let Some(store) = inner.store.as_mut() {
                let _ = store.append(&record);
                store.sync();
            }
            inner.memory.push_back(record);
        }
    }

    fn keep(&self, record: LogRecord) {
        {
            let mut inner = self.lock();
            let mut stored = false;
            if let Some(store) = inner.store.as_mut() {
                match store.append(&record) {
                    Ok(()) => stored = true,
                    Err(e) => {
                        if !inner.store_failed {
                            inner.store_failed = true;
                            let msg =
                                format!("init[1]: log store failed, keeping logs in memory: {e}");
                            if self.console {
                                console::line(&msg);
                            }
                        }
                    }
                }
            }
            if !stored {
                inner.unstored = (inner.unstored + 1).min(MEMORY_RECORDS);
            }
            inner.memory.push_back(record.clone());
            if inner.memory.len() > MEMORY_RECORDS {
                inner.memory.pop_front();
            }
        }
        let _ = self.followers.send(record);
    }

    /// Starts writing to `store`, first writing the records that came before it.
    pub fn open_store(&self, mut store: LogStore) {
        let mut inner = self.lock();
        let skip = inner.memory.len().saturating_sub(inner.unstored);
        for r in inner.memory.iter().skip(skip) {
            let _ = store.append(r);
        }
        inner.unstored = 0;
        inner.store_failed = false;
        inner.store = Some(store);
    }

    /// Flushes the store and stops writing to it (before /var is unmounted).
    pub fn close_store(&self) {
        let mut inner = self.lock();
        if let Some(store) = inner.store.take() {
            store.sync();
        }
    }

    /// The newest `n` records (all kept when 0) from `ident` (any when None), oldest first.
    pub fn tail(&self, n: usize, ident: Option<&str>) -> Vec<LogRecord> {
        let matches =
            |r: &LogRecord| ident.is_none_or(|i| r.ident == i || r.container.as_deref() == Some(i));
        let inner = self.lock();
        match inner.store.as_ref() {
            Some(store) if !inner.store_failed => {
                // Read the files without holding the lock (they may be big).
                let dir = store.dir().to_path_buf();
                drop(inner);
                super::logstore::tail_dir(&dir, n, matches)
            }
            _ => {
                let mut v: Vec<LogRecord> = inner
                    .memory
                    .iter()
                    .filter(|r| matches(r))
                    .cloned()
                    .collect();
                if n != 0 && v.len() > n {
                    v.drain(..v.len() - n);
                }
                v
            }
        }
    }

    /// New records from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogRecord> {
        self.followers.subscribe()
    }
}

/// `<ident>[<pid>]: <message>` (the container name stands in for the ident when set).
pub fn console_line(r: &LogRecord) -> String {
    let ident = r.container.as_deref().unwrap_or(&r.ident);
    match r.pid {
        Some(pid) => format!("{ident}[{pid}]: {}", r.message),
        None => format!("{ident}: {}", r.message),
    }
}

/// A record from PID 1 itself, stamped now.
pub fn init_record(priority: u8, message: String) -> LogRecord {
    LogRecord {
        time_us: clock::realtime_us(),
        boottime_us: clock::boottime_us(),
        priority,
        ident: INIT_IDENT.to_string(),
        pid: Some(std::process::id()),
        message,
        container: None,
        stream: None,
    }
}

/// Feeds PID 1's `log` macros into [`LogHub::global`].
#[derive(Debug)]
pub struct HubLogger;

impl HubLogger {
    /// Installs the logger (once; later calls do nothing).
    pub fn install() {
        static LOGGER: HubLogger = HubLogger;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }
}

impl log::Log for HubLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = match record.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        LogHub::global().push(init_record(priority, record.args().to_string()));
    }

    fn flush(&self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    fn rec(ident: &str, msg: &str) -> LogRecord {
        let mut r = init_record(6, msg.to_string());
        r.ident = ident.into();
        r
    }

    #[test]
    fn buffered_records_reach_the_store() {
        let hub = LogHub::new(false);
        let mut rx = hub.subscribe();
        hub.push(rec("a", "early 1"));
        hub.push(rec("b", "early 2"));
        assert_eq!(hub.tail(0, None).len(), 2);
        let dir = TempDir::new("loghub");
        hub.open_store(LogStore::open(dir.path()).unwrap());
        hub.push(rec("a", "late"));
        let all = hub.tail(0, None);
        let msgs: Vec<&str> = all.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, vec!["early 1", "early 2", "late"]);
        assert_eq!(hub.tail(1, Some("a"))[0].message, "late");
        assert_eq!(rx.try_recv().unwrap().message, "early 1");
        // A second store (say /var was remounted) gets no duplicates.
        hub.close_store();
        hub.open_store(LogStore::open(dir.path()).unwrap());
        assert_eq!(hub.tail(0, None).len(), 3);
    }

    #[test]
    fn console_format() {
        let mut r = rec("web", "hello");
        r.pid = Some(42);
        assert_eq!(console_line(&r), "web[42]: hello");
        r.pid = None;
        r.container = Some("db".into());
        assert_eq!(console_line(&r), "db: hello");
    }
}
