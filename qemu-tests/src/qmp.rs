//! A minimal QMP (QEMU Machine Protocol) client: one connection per command
//! on the VM's `qmp.sock` — greeting, `qmp_capabilities`, the command, its
//! `return` (events in between are skipped).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lines::{connect_retrying, LineError, LineReader};

/// Longest QMP reply line accepted.
const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command}: writing to {path} failed")]
    Write {
        command: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command}: no reply")]
    Read {
        command: String,
        #[source]
        source: LineError,
    },
    #[error("QMP {command}: QEMU closed the connection before replying")]
    Closed { command: String },
    #[error("QMP {command}: unreadable reply {line:?}")]
    Reply { command: String, line: String },
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// Runs one QMP command and returns its `return` value. Connecting is
/// retried until `timeout` while the socket is not there yet.
pub fn execute(
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value, QmpError> {
    let deadline = Instant::now() + timeout;
    let stream = connect(socket, deadline)?;
    let mut reader = LineReader::new(stream, MAX_LINE);

    // Greeting: {"QMP": {...}}
    let greeting = next_message(&mut reader, "greeting", deadline)?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Reply {
            command: "greeting".into(),
            line: greeting.to_string(),
        });
    }
    send(&mut reader, socket, "qmp_capabilities", None)?;
    await_return(&mut reader, "qmp_capabilities", deadline)?;
    send(&mut reader, socket, command, arguments)?;
    await_return(&mut reader, command, deadline)
}

fn connect(socket: &Path, deadline: Instant) -> Result<UnixStream, QmpError> {
    connect_retrying(socket, deadline, Duration::from_millis(50)).map_err(|source| {
        QmpError::Connect {
            path: socket.to_path_buf(),
            source,
        }
    })
}

fn send(
    reader: &mut LineReader,
    socket: &Path,
    command: &str,
    arguments: Option<Value>,
) -> Result<(), QmpError> {
    let mut msg = json!({ "execute": command });
    if let Some(args) = arguments {
        msg["arguments"] = args;
    }
    let mut line = msg.to_string();
    line.push('\n');
    reader
        .stream()
        .write_all(line.as_bytes())
        .map_err(|source| QmpError::Write {
            command: command.to_string(),
            path: socket.to_path_buf(),
            source,
        })
}

fn next_message(
    reader: &mut LineReader,
    command: &str,
    deadline: Instant,
) -> Result<Value, QmpError> {
    let line = reader
        .read_line(deadline)
        .map_err(|source| QmpError::Read {
            command: command.to_string(),
            source,
        })?
        .ok_or_else(|| QmpError::Closed {
            command: command.to_string(),
        })?;
    serde_json::from_slice(&line).map_err(|_| QmpError::Reply {
        command: command.to_string(),
        line: String::from_utf8_lossy(&line).into_owned(),
    })
}

fn await_return(
    reader: &mut LineReader,
    command: &str,
    deadline: Instant,
) -> Result<Value, QmpError> {
    loop {
        let msg = next_message(reader, command, deadline)?;
        if let Some(ret) = msg.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = msg.get("error") {
            let field = |k: &str| {
                err.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            };
            return Err(QmpError::Command {
                command: command.to_string(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        // {"event": ...}: not ours, keep reading.
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A fake QEMU: greeting, then answers each command from `replies`.
    fn fake_qemu(path: &Path, replies: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut out = conn.try_clone().unwrap();
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            let mut lines = BufReader::new(conn).lines();
            for reply in replies {
                let Some(Ok(line)) = lines.next() else { break };
                seen.push(line);
                out.write_all(reply.as_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn runs_a_command_skipping_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qemu(
            &sock,
            vec![
                "{\"return\": {}}\r\n",
                "{\"event\": \"POWERDOWN\"}\r\n{\"return\": {\"x\": 1}}\r\n",
            ],
        );
        let ret = execute(&sock, "system_powerdown", None, Duration::from_secs(5)).unwrap();
        assert_eq!(ret, json!({"x": 1}));
        let seen = server.join().unwrap();
        assert_eq!(seen[0], r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(seen[1], r#"{"execute":"system_powerdown"}"#);
    }

    #[test]
    fn reports_command_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let _server = fake_qemu(
            &sock,
            vec![
                "{\"return\": {}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
            ],
        );
        let e = execute(&sock, "bogus", None, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.to_string(), "QMP bogus failed: GenericError: nope");
    }

    #[test]
    fn gives_up_connecting_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let e = execute(
            &dir.path().join("absent.sock"),
            "quit",
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, QmpError::Connect { .. }), "{e}");
    }
}
