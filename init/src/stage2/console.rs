//! The system console: where PID 1's few high-signal lines go.
//!
//! Lines are written by a thread of their own through a bounded queue: a
//! serial console at 115200 baud takes ~90 µs a byte, and a chatty service
//! must not stall PID 1's event loop. When the queue is full, lines are
//! dropped and counted, and the count is printed once there is room.
//! [`flush`] waits for the queue to drain (before reboot(2)).
//!
//! PID 1 inherits /dev/console on fds 0-2 from the kernel; the writer opens
//! it again (without making it a controlling terminal) so that a closed
//! stdout does not silence the console, falling back to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Lines waiting to be written before new ones are dropped.
pub const QUEUE: usize = 512;

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

struct Console {
    tx: Option<SyncSender<Msg>>,
    dropped: AtomicU64,
}

static CONSOLE: OnceLock<Console> = OnceLock::new();
/// Used only if the writer thread cannot be started.
static DIRECT: Mutex<()> = Mutex::new(());

fn open() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/console")
        .ok()
}

fn write_out(file: &mut Option<File>, text: &str) {
    let ok = match file.as_mut() {
        Some(f) => f.write_all(text.as_bytes()).is_ok(),
        None => false,
    };
    if !ok {
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

fn console() -> &'static Console {
    CONSOLE.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let mut file = open();
                for msg in rx {
                    match msg {
                        Msg::Line(text) => {
                            let dropped = CONSOLE
                                .get()
                                .map(|c| c.dropped.swap(0, Ordering::Relaxed))
                                .unwrap_or(0);
                            if dropped > 0 {
                                write_out(
                                    &mut file,
                                    &format!("init[1]: ({dropped} console lines dropped: the console is slower than the logs)\n"),
                                );
                            }
                            write_out(&mut file, &text);
                        }
                        Msg::Flush(ack) => {
                            let _ = ack.send(());
                        }
                    }
                }
            });
        Console {
            tx: spawned.ok().map(|_| tx),
            dropped: AtomicU64::new(0),
        }
    })
}

/// Queues one line (a newline is added) for the console.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 1);
    buf.push_str(text);
    buf.push('\n');
    let c = console();
    match &c.tx {
        Some(tx) => match tx.try_send(Msg::Line(buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(Msg::Line(buf))) => direct(&buf),
            Err(TrySendError::Disconnected(_)) => {}
        },
        None => direct(&buf),
    }
}

fn direct(text: &str) {
    let _guard = DIRECT.lock();
    write_out(&mut open(), text);
}

/// Waits (at most `timeout`) until every queued line is written.
pub fn flush(timeout: Duration) {
    if let Some(tx) = &console().tx {
        let (ack_tx, ack_rx) = mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        // The queue may be full: retry until there is room or time is up.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = ack_rx.recv_timeout(left);
    }
}
