//! The guest's serial console as the harness sees it: QEMU writes it to a
//! file, a thread tails that file into a [`ConsoleBuffer`], and waits scan
//! the buffer for a [`Pattern`] from a cursor.
//!
//! The cursor is what makes multi-boot tests work: every match moves it to
//! the end of the matched line, so waiting twice for `atoll: ready` finds the
//! second boot's line, never the first one again. It moves by whole lines
//! because firmware may print the same text twice on one line (GRUB under
//! OVMF writes to the serial port and to the EFI console, which OVMF also
//! copies to the serial port): that still counts as one occurrence.
//!
//! Only complete lines (ended by `\n`) are scanned, so a [`Match`] always
//! carries its whole line, and its arrival time says when the host first saw
//! the end of that line (used by the boot benchmark).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the tailing thread looks at the console file.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("invalid console pattern /{pattern}/")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("cannot start the thread that tails {path}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to look for on the console: a plain substring or a regex.
#[derive(Debug, Clone)]
pub enum Pattern {
    Text(String),
    Regex(regex::bytes::Regex),
}

impl Pattern {
    /// A regular expression (`regex` crate syntax), matched within one line.
    pub fn regex(re: &str) -> Result<Self, ConsoleError> {
        regex::bytes::Regex::new(re)
            .map(Pattern::Regex)
            .map_err(|source| ConsoleError::Regex {
                pattern: re.to_string(),
                source,
            })
    }

    /// First match in `hay`: (start, end, capture groups).
    fn find(&self, hay: &[u8]) -> Option<(usize, usize, Vec<Option<String>>)> {
        match self {
            Pattern::Text(t) => {
                let needle = t.as_bytes();
                if needle.is_empty() {
                    return Some((0, 0, Vec::new()));
                }
                hay.windows(needle.len())
                    .position(|w| w == needle)
                    .map(|at| (at, at + needle.len(), Vec::new()))
            }
            Pattern::Regex(re) => re.captures(hay).and_then(|caps| {
                let whole = caps.get(0)?;
                let groups = caps
                    .iter()
                    .skip(1)
                    .map(|g| g.map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned()))
                    .collect();
                Some((whole.start(), whole.end(), groups))
            }),
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Pattern::Text(s.to_string())
    }
}

impl From<String> for Pattern {
    fn from(s: String) -> Self {
        Pattern::Text(s)
    }
}

impl From<regex::bytes::Regex> for Pattern {
    fn from(re: regex::bytes::Regex) -> Self {
        Pattern::Regex(re)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Text(t) => write!(f, "{t:?}"),
            Pattern::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

/// One match on the console.
#[derive(Debug, Clone)]
pub struct Match {
    /// The whole line holding the match, without `\r`/`\n`.
    pub line: String,
    /// The matched text.
    pub text: String,
    /// The regex's capture groups (empty for a substring).
    pub captures: Vec<Option<String>>,
    /// Byte offsets of the match in the console output.
    pub start: usize,
    pub end: usize,
    /// Byte offset just past the line's `\n`: where the cursor goes next.
    pub line_end: usize,
    /// When the harness first saw the end of the line.
    pub seen_at: Instant,
}

/// Console output received so far, with arrival times.
#[derive(Debug, Default)]
pub struct ConsoleBuffer {
    bytes: Vec<u8>,
    /// (end offset of a chunk, when it arrived), in order.
    arrivals: Vec<(usize, Instant)>,
}

impl ConsoleBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends output that arrived at `at`.
    pub fn push(&mut self, chunk: &[u8], at: Instant) {
        if chunk.is_empty() {
            return;
        }
        self.bytes.extend_from_slice(chunk);
        self.arrivals.push((self.bytes.len(), at));
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The first match of `pattern` at or after byte `from`, in complete
    /// lines only. A match never spans lines.
    pub fn find(&self, pattern: &Pattern, from: usize) -> Option<Match> {
        let complete = self.bytes.iter().rposition(|b| *b == b'\n')? + 1;
        let mut line_start = from.min(complete);
        while line_start < complete {
            let line_end = self.bytes[line_start..complete]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(complete, |p| line_start + p + 1);
            let line = &self.bytes[line_start..line_end - 1];
            if let Some((s, e, captures)) = pattern.find(line) {
                let full_start = self.bytes[..line_start]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1);
                return Some(Match {
                    line: clean_line(&self.bytes[full_start..line_end - 1]),
                    text: String::from_utf8_lossy(&line[s..e]).into_owned(),
                    captures,
                    start: line_start + s,
                    end: line_start + e,
                    line_end,
                    seen_at: self.arrival_of(line_end - 1),
                });
            }
            line_start = line_end;
        }
        None
    }

    /// Every complete line holding a match of `pattern`, from the start.
    pub fn find_all(&self, pattern: &Pattern) -> Vec<Match> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(m) = self.find(pattern, from) {
            from = m.line_end;
            out.push(m);
        }
        out
    }

    /// When the byte at `offset` arrived.
    fn arrival_of(&self, offset: usize) -> Instant {
        let i = self.arrivals.partition_point(|(end, _)| *end <= offset);
        self.arrivals
            .get(i)
            .or(self.arrivals.last())
            .map_or_else(Instant::now, |(_, at)| *at)
    }

    /// The last `n` lines (a partial last line included), made printable.
    pub fn tail(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text.lines().collect();
        let first = lines.len().saturating_sub(n);
        lines[first..]
            .iter()
            .map(|l| clean_line(l.as_bytes()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The whole output as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A line made printable: ANSI escape sequences and control characters
/// (firmware draws with them) removed.
pub fn clean_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug, Default)]
struct State {
    buf: ConsoleBuffer,
    cursor: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Why a wait ended without a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    TimedOut,
    /// The `abort` check gave this reason (e.g. QEMU exited).
    Aborted(String),
}

/// A console file being tailed, with a cursor.
#[derive(Debug)]
pub struct Console {
    path: PathBuf,
    shared: Arc<Shared>,
    tailer: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts tailing `path` (which may not exist yet).
    pub fn tail_file(path: &Path) -> Result<Self, ConsoleError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread_path = path.to_path_buf();
        let tailer = std::thread::Builder::new()
            .name("console-tail".into())
            .spawn(move || tail_loop(&thread_path, &thread_shared))
            .map_err(|source| ConsoleError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            shared,
            tailer: Some(tailer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until `pattern` shows up after the cursor, then moves the
    /// cursor to the end of the matched line. `abort` is asked about every 100 ms and ends
    /// the wait with its reason when it returns one; output that arrived
    /// before it is still scanned first.
    pub fn wait_for(
        &self,
        pattern: &Pattern,
        timeout: Duration,
        abort: &mut dyn FnMut() -> Option<String>,
    ) -> Result<Match, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(m) = state.buf.find(pattern, state.cursor) {
                state.cursor = m.line_end;
                return Ok(m);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            if let Some(reason) = abort() {
                // Let the tailer pick up the last output first.
                drop(state);
                self.sync(Duration::from_secs(1));
                state = self.shared.lock();
                if let Some(m) = state.buf.find(pattern, state.cursor) {
                    state.cursor = m.line_end;
                    return Ok(m);
                }
                return Err(WaitError::Aborted(reason));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            state = match self.shared.changed.wait_timeout(state, wait) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Waits (at most `max`) until the tailer has read the whole file as it
    /// is now: call when the writer has stopped (QEMU exited).
    pub fn sync(&self, max: Duration) {
        let deadline = Instant::now() + max;
        loop {
            let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
            let have = self.shared.lock().buf.len() as u64;
            if have >= size || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The cursor: where the next wait starts scanning.
    pub fn cursor(&self) -> usize {
        self.shared.lock().cursor
    }

    /// Moves the cursor (0 = scan from the beginning again).
    pub fn set_cursor(&self, at: usize) {
        self.shared.lock().cursor = at;
    }

    /// Moves the cursor to the end of what has arrived so far.
    pub fn skip_to_end(&self) {
        let mut state = self.shared.lock();
        state.cursor = state.buf.len();
    }

    /// Every line holding `pattern` so far, from the beginning (the cursor is
    /// neither used nor moved).
    pub fn find_all(&self, pattern: &Pattern) -> Vec<Match> {
        self.shared.lock().buf.find_all(pattern)
    }

    /// The last `n` lines, printable.
    pub fn tail(&self, n: usize) -> String {
        self.shared.lock().buf.tail(n)
    }

    /// All output so far.
    pub fn text(&self) -> String {
        self.shared.lock().buf.text()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.tailer.take() {
            let _ = t.join();
        }
    }
}

fn tail_loop(path: &Path, shared: &Shared) {
    let mut file: Option<File> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        if file.is_none() {
            file = File::open(path).ok();
        }
        if let Some(f) = file.as_mut() {
            // Drain everything there is, then sleep.
            loop {
                match f.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let at = Instant::now();
                        shared.lock().buf.push(&chunk[..n], at);
                        shared.changed.notify_all();
                    }
                }
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn buf(text: &str) -> ConsoleBuffer {
        let mut b = ConsoleBuffer::new();
        b.push(text.as_bytes(), Instant::now());
        b
    }

    #[test]
    fn cursor_finds_the_later_line() {
        let b = buf("atoll: ready version=1 slot=A\r\nreboot\r\natoll: ready version=1 slot=B\r\n");
        let p = Pattern::from("atoll: ready");
        let first = b.find(&p, 0).unwrap();
        assert_eq!(first.line, "atoll: ready version=1 slot=A");
        assert_eq!(first.line_end, "atoll: ready version=1 slot=A\r\n".len());
        let second = b.find(&p, first.line_end).unwrap();
        assert_eq!(second.line, "atoll: ready version=1 slot=B");
        assert!(b.find(&p, second.line_end).is_none());
    }

    #[test]
    fn a_line_printed_twice_over_is_one_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(
            &path,
            "\u{1b}[Hgrub: booting slot A (trial)grub: booting slot A (trial)\nfailed\n\
             grub: booting slot A (trial)grub: booting slot A (trial)\nfailed\n",
        )
        .unwrap();
        let console = Console::tail_file(&path).unwrap();
        let p = Pattern::from("booting slot A (trial");
        let t = Duration::from_secs(5);
        let first = console.wait_for(&p, t, &mut || None).unwrap();
        let second = console.wait_for(&p, t, &mut || None).unwrap();
        assert!(second.start > first.line_end);
        assert!(console
            .wait_for(&p, Duration::from_millis(100), &mut || None)
            .is_err());
        assert_eq!(console.find_all(&p).len(), 2);
    }

    #[test]
    fn only_complete_lines_match() {
        let mut b = buf("booting\natoll: rea");
        let p = Pattern::from("atoll: ready");
        assert!(b.find(&p, 0).is_none());
        b.push(b"dy version=2 slot=A", Instant::now());
        assert!(b.find(&p, 0).is_none());
        b.push(b"\n", Instant::now());
        assert_eq!(b.find(&p, 0).unwrap().line, "atoll: ready version=2 slot=A");
    }

    #[test]
    fn regex_captures_and_whole_line_from_mid_line_cursor() {
        let b = buf("x atoll: ready version=0.1.0 slot=B\n");
        let p = Pattern::regex(r"ready version=(\S+) slot=([AB])").unwrap();
        let m = b.find(&p, 4).unwrap();
        assert_eq!(
            m.captures,
            vec![Some("0.1.0".to_string()), Some("B".to_string())]
        );
        assert_eq!(m.line, "x atoll: ready version=0.1.0 slot=B");
        assert!(Pattern::regex("(").is_err());
    }

    #[test]
    fn arrival_time_is_that_of_the_line_end() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut b = ConsoleBuffer::new();
        b.push(b"atoll: ready", t0);
        b.push(b" version=1\nmore", t1);
        let m = b.find(&Pattern::from("ready"), 0).unwrap();
        assert_eq!(m.seen_at, t1);
    }

    #[test]
    fn find_all_counts_lines() {
        let b = buf("a ready ready\nb\nc ready\n");
        assert_eq!(b.find_all(&Pattern::from("ready")).len(), 2);
    }

    #[test]
    fn tail_strips_escapes_and_keeps_last_lines() {
        let b = buf("one\n\u{1b}[2J\u{1b}[01;01Htwo\r\nthree");
        assert_eq!(b.tail(2), "two\nthree");
        assert_eq!(b.tail(10), "one\ntwo\nthree");
    }

    #[test]
    fn tails_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let console = Console::tail_file(&path).unwrap();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut f = File::create(&writer_path).unwrap();
            f.write_all(b"atoll: ready version=1 slot=A\n").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            f.write_all(b"atoll: ready version=1 slot=B\n").unwrap();
        });
        let p = Pattern::from("atoll: ready");
        let a = console
            .wait_for(&p, Duration::from_secs(5), &mut || None)
            .unwrap();
        assert!(a.line.ends_with("slot=A"));
        let b = console
            .wait_for(&p, Duration::from_secs(5), &mut || None)
            .unwrap();
        assert!(b.line.ends_with("slot=B"));
        writer.join().unwrap();
        let err = console
            .wait_for(&p, Duration::from_millis(200), &mut || None)
            .unwrap_err();
        assert_eq!(err, WaitError::TimedOut);
        let err = console
            .wait_for(&p, Duration::from_secs(5), &mut || Some("exited".into()))
            .unwrap_err();
        assert_eq!(err, WaitError::Aborted("exited".into()));
        console.set_cursor(0);
        assert!(console
            .wait_for(&p, Duration::from_secs(1), &mut || None)
            .is_ok());
    }
}
