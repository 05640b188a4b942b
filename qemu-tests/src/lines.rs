//! Newline-framed messages on a unix socket, read against a deadline: the
//! framing of both the host API (JSON lines) and QMP.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("reading from the socket failed")]
    Io(#[source] std::io::Error),
    #[error("no complete line before the deadline ({partial} bytes of a line received)")]
    TimedOut { partial: usize },
    #[error("a line is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("the peer closed the connection in the middle of a line ({partial} bytes)")]
    Truncated { partial: usize },
}

/// Reads `\n`-terminated lines from a stream.
#[derive(Debug)]
pub struct LineReader {
    stream: UnixStream,
    buf: Vec<u8>,
    max: usize,
}

impl LineReader {
    /// `max` bounds one line (without its newline).
    pub fn new(stream: UnixStream, max: usize) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            max,
        }
    }

    /// The next line without its `\n` (and `\r`), `None` at a clean end of
    /// stream. Never waits past `deadline`.
    pub fn read_line(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, LineError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > self.max {
                return Err(LineError::TooLong { max: self.max });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LineError::TimedOut {
                    partial: self.buf.len(),
                });
            }
            // A zero timeout means "block forever" to set_read_timeout.
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(LineError::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(LineError::Truncated {
                        partial: self.buf.len(),
                    })
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(LineError::Io(e)),
            }
        }
    }

    /// The stream, for writing.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

/// Connects to a unix socket that QEMU creates (or starts listening on)
/// a little after it starts: retries "not there yet" and "refused" every
/// `poll` until `deadline`, then returns the last error.
pub fn connect_retrying(
    socket: &std::path::Path,
    deadline: Instant,
    poll: Duration,
) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(poll);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn splits_lines_across_chunks() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a, 100);
        b.write_all(b"one\r\ntw").unwrap();
        assert_eq!(r.read_line(soon()).unwrap().unwrap(), b"one");
        b.write_all(b"o\nthree\n").unwrap();
        assert_eq!(r.read_line(soon()).unwrap().unwrap(), b"two");
        assert_eq!(r.read_line(soon()).unwrap().unwrap(), b"three");
        drop(b);
        assert!(r.read_line(soon()).unwrap().is_none());
    }

    #[test]
    fn deadline_and_limits() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a, 4);
        b.write_all(b"ab").unwrap();
        let t = Instant::now();
        let e = r
            .read_line(Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(e, LineError::TimedOut { partial: 2 }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        b.write_all(b"cdefgh").unwrap();
        assert!(matches!(
            r.read_line(soon()).unwrap_err(),
            LineError::TooLong { max: 4 }
        ));

        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = LineReader::new(a, 100);
        b.write_all(b"half").unwrap();
        drop(b);
        assert!(matches!(
            r.read_line(soon()).unwrap_err(),
            LineError::Truncated { partial: 4 }
        ));
    }
}
