//! The host API from outside the guest: QEMU exposes the virtio-serial port
//! [`atoll_common::layout::API_VIRTIO_PORT`] as a unix socket (`api.sock`),
//! and this speaks [`atoll_common::api`] over it: one JSON request line,
//! then JSON response lines until `done` or `error`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atoll_common::api::{LogRecord, Request, Response, Status};

use crate::lines::{connect_retrying, LineError, LineReader};

/// Longest response line accepted (a status, or one log record).
const MAX_LINE: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the API socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    #[error("sending {request} to {path} failed")]
    Write {
        request: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{request}: no complete answer ({received} responses received)")]
    Read {
        request: String,
        received: usize,
        #[source]
        source: LineError,
    },
    #[error("{request}: the guest hung up before `done` ({received} responses received)")]
    Closed { request: String, received: usize },
    #[error("{request}: unreadable response line {line:?}")]
    Response {
        request: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{request}: the host answered with an error: {message}")]
    Host { request: String, message: String },
    #[error("{request}: expected {expected} in the answer, got {got}")]
    Unexpected {
        request: String,
        expected: &'static str,
        got: String,
    },
}

/// Sends `request` and returns every response, the final `done`/`error`
/// included. Connecting is retried until `timeout` while the socket does not
/// exist or refuses (QEMU not up yet); the whole exchange ends by `timeout`.
/// Not for `logs` with `follow` (it never ends).
pub fn request(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Vec<Response>, ApiError> {
    let deadline = Instant::now() + timeout;
    let mut line = serde_json::to_string(request).map_err(ApiError::Encode)?;
    let what = line.clone();
    line.push('\n');

    let stream = connect(socket, deadline)?;
    let mut reader = LineReader::new(stream, MAX_LINE);
    reader
        .stream()
        .write_all(line.as_bytes())
        .map_err(|source| ApiError::Write {
            request: what.clone(),
            path: socket.to_path_buf(),
            source,
        })?;

    let mut out = Vec::new();
    loop {
        let line = reader
            .read_line(deadline)
            .map_err(|source| ApiError::Read {
                request: what.clone(),
                received: out.len(),
                source,
            })?
            .ok_or_else(|| ApiError::Closed {
                request: what.clone(),
                received: out.len(),
            })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response: Response =
            serde_json::from_slice(&line).map_err(|source| ApiError::Response {
                request: what.clone(),
                line: String::from_utf8_lossy(&line).into_owned(),
                source,
            })?;
        let last = matches!(response, Response::Done | Response::Error { .. });
        out.push(response);
        if last {
            return Ok(out);
        }
    }
}

/// A conversation longer than one request and its answer: an interactive
/// exec, where the client sends input lines while the answer comes.
#[derive(Debug)]
pub struct Session {
    what: String,
    reader: LineReader,
    received: usize,
}

impl Session {
    /// Connects (retrying until `timeout`) and sends `request`.
    pub fn open(socket: &Path, request: &Request, timeout: Duration) -> Result<Self, ApiError> {
        let what = serde_json::to_string(request).map_err(ApiError::Encode)?;
        let stream = connect(socket, Instant::now() + timeout)?;
        let mut s = Session {
            what: what.clone(),
            reader: LineReader::new(stream, MAX_LINE),
            received: 0,
        };
        s.write_line(&what, socket)?;
        Ok(s)
    }

    fn write_line(&mut self, line: &str, socket: &Path) -> Result<(), ApiError> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.reader
            .stream()
            .write_all(&bytes)
            .map_err(|source| ApiError::Write {
                request: self.what.clone(),
                path: socket.to_path_buf(),
                source,
            })
    }

    /// Sends one more line (e.g. an `ExecInput`) as JSON.
    pub fn send(&mut self, value: &impl serde::Serialize) -> Result<(), ApiError> {
        let line = serde_json::to_string(value).map_err(ApiError::Encode)?;
        self.write_line(&line, Path::new("the API socket"))
    }

    /// The next response, waiting until `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<Response, ApiError> {
        loop {
            let line = self
                .reader
                .read_line(deadline)
                .map_err(|source| ApiError::Read {
                    request: self.what.clone(),
                    received: self.received,
                    source,
                })?
                .ok_or_else(|| ApiError::Closed {
                    request: self.what.clone(),
                    received: self.received,
                })?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.received += 1;
            return serde_json::from_slice(&line).map_err(|source| ApiError::Response {
                request: self.what.clone(),
                line: String::from_utf8_lossy(&line).into_owned(),
                source,
            });
        }
    }

    /// Hangs up.
    pub fn close(self) {
        let _ = self.reader.into_stream().shutdown(std::net::Shutdown::Both);
    }
}

fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, ApiError> {
    connect_retrying(socket, deadline, Duration::from_millis(100)).map_err(|source| {
        ApiError::Connect {
            path: socket.to_path_buf(),
            source,
        }
    })
}

/// The host's status from a `status` answer.
pub fn status_of(responses: Vec<Response>) -> Result<Status, ApiError> {
    let what = "{\"method\":\"status\"}".to_string();
    let mut status = None;
    for r in responses {
        match r {
            Response::Status(s) => status = Some(*s),
            Response::Error { message } => {
                return Err(ApiError::Host {
                    request: what,
                    message,
                })
            }
            _ => {}
        }
    }
    status.ok_or_else(|| ApiError::Unexpected {
        request: what,
        expected: "a status",
        got: "none".into(),
    })
}

/// The log records of a `logs` answer.
pub fn logs_of(responses: Vec<Response>) -> Result<Vec<LogRecord>, ApiError> {
    let mut out = Vec::new();
    for r in responses {
        match r {
            Response::Log(l) => out.push(l),
            Response::Error { message } => {
                return Err(ApiError::Host {
                    request: "logs".into(),
                    message,
                })
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Checks that a poweroff/reboot answer ended with `done`.
pub fn done_of(request: &Request, responses: &[Response]) -> Result<(), ApiError> {
    match responses.last() {
        Some(Response::Done) => Ok(()),
        Some(Response::Error { message }) => Err(ApiError::Host {
            request: format!("{request:?}"),
            message: message.clone(),
        }),
        other => Err(ApiError::Unexpected {
            request: format!("{request:?}"),
            expected: "done",
            got: format!("{other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use atoll_common::api::BootMode;

    use super::*;

    /// A fake PID 1: reads one request line, writes `answer` (raw bytes, in
    /// the given pieces), then closes.
    fn fake_host(path: &Path, pieces: Vec<Vec<u8>>) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut out = conn.try_clone().unwrap();
            let mut req = String::new();
            BufReader::new(conn).read_line(&mut req).unwrap();
            for p in pieces {
                out.write_all(&p).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            req
        })
    }

    fn sample_status() -> Status {
        Status {
            version: "0.1.0".into(),
            hostname: "atoll".into(),
            machine_id: "0123".into(),
            booted_slot: Some(atoll_common::layout::Slot::A),
            boot_mode: BootMode::Good,
            ready: true,
            uptime_ms: 1,
            boot_times: Default::default(),
            slots: vec![],
            grubenv: "ok".into(),
            data: Default::default(),
            root: Default::default(),
            previous_shutdown: "unknown".into(),
        }
    }

    #[test]
    fn frames_lines_split_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let status = serde_json::to_vec(&Response::Status(Box::new(sample_status()))).unwrap();
        let mut all = status.clone();
        all.extend_from_slice(b"\n\"done\"\n");
        // Split the bytes in awkward places: mid-JSON and mid-"done".
        let cut1 = status.len() / 2;
        let cut2 = status.len() + 4;
        let pieces = vec![
            all[..cut1].to_vec(),
            all[cut1..cut2].to_vec(),
            all[cut2..].to_vec(),
        ];
        let server = fake_host(&sock, pieces);
        let got = request(&sock, &Request::Status, Duration::from_secs(5)).unwrap();
        assert_eq!(server.join().unwrap(), "{\"method\":\"status\"}\n");
        assert_eq!(got.len(), 2);
        assert_eq!(status_of(got).unwrap(), sample_status());
    }

    #[test]
    fn error_ends_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let _server = fake_host(
            &sock,
            vec![b"{\"error\":{\"message\":\"no such thing\"}}\n".to_vec()],
        );
        let got = request(&sock, &Request::Status, Duration::from_secs(5)).unwrap();
        let e = status_of(got).unwrap_err();
        assert!(e.to_string().contains("no such thing"), "{e}");
    }

    #[test]
    fn hang_up_and_silence_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let _server = fake_host(&sock, vec![]);
        let e = request(&sock, &Request::Reboot, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ApiError::Closed { received: 0, .. }), "{e}");

        // A server that accepts but never answers (like a guest that has not
        // opened its port yet): bounded by the timeout.
        let sock2 = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&sock2).unwrap();
        let t = Instant::now();
        let e = request(&sock2, &Request::Status, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ApiError::Read { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
        drop(listener);

        let e = request(&sock, &Request::Status, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ApiError::Connect { .. }), "{e}");
    }

    #[test]
    fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("late.sock");
        let sock2 = sock.clone();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fake_host(&sock2, vec![b"\"done\"\n".to_vec()])
                .join()
                .unwrap()
        });
        let got = request(&sock, &Request::Poweroff, Duration::from_secs(5)).unwrap();
        assert_eq!(got, vec![Response::Done]);
        done_of(&Request::Poweroff, &got).unwrap();
        assert_eq!(server.join().unwrap(), "{\"method\":\"poweroff\"}\n");
    }

    #[test]
    fn collects_log_records() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let rec = LogRecord {
            time_us: 1,
            boottime_us: 2,
            priority: 6,
            ident: "init".into(),
            pid: Some(1),
            message: "atoll: ready version=0.1.0 slot=A".into(),
            container: None,
            stream: None,
        };
        let mut body = serde_json::to_vec(&Response::Log(rec.clone())).unwrap();
        body.push(b'\n');
        body.extend_from_slice(&body.clone());
        body.extend_from_slice(b"\"done\"\n");
        let server = fake_host(&sock, vec![body]);
        let req = Request::Logs {
            lines: 0,
            follow: false,
            ident: None,
        };
        let got = logs_of(request(&sock, &req, Duration::from_secs(5)).unwrap()).unwrap();
        assert_eq!(got, vec![rec.clone(), rec]);
        assert_eq!(
            server.join().unwrap(),
            "{\"method\":\"logs\",\"lines\":0,\"follow\":false,\"ident\":null}\n"
        );
    }
}
