//! The journald native protocol socket (`/run/systemd/journal/socket`), so
//! that `systemd-journal-logger` (and anything else speaking the protocol)
//! logs into Atoll's store without systemd.
//!
//! One datagram is one entry: fields `KEY=value\n`, or, for values that may
//! hold newlines or binary data, `KEY\n` + the value's length as a
//! little-endian u64 + the value + `\n`. An entry too big for a datagram
//! arrives as an empty datagram carrying a sealed memfd (SCM_RIGHTS) whose
//! contents are the entry (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>).
//! The sender's pid comes from SO_PASSCRED (trusted) or else `SYSLOG_PID`.

use std::fs::File;
use std::io::{IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use atoll_common::api::LogRecord;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::unix::AsyncFd;

use super::loghub::LogHub;
use crate::clock;

/// Largest entry taken from a datagram (bigger ones come as memfds).
pub const MAX_DATAGRAM: usize = 256 * 1024;
/// Largest entry read from a memfd; the rest is dropped.
pub const MAX_MEMFD: u64 = 16 * 1024 * 1024;
/// Longest message kept in a record (longer ones are cut).
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("field {key:?}: binary length {len} runs past the end of the entry")]
    Length { key: String, len: u64 },
    #[error("field {key:?}: binary value is not followed by a newline")]
    Terminator { key: String },
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up {path}")]
    Socket { path: PathBuf, source: nix::Error },
}

/// Parses one native-protocol entry into its fields, in order. Fields with
/// invalid names are skipped, as journald does; a malformed binary field
/// makes the whole entry invalid.
pub fn parse_entry(buf: &[u8]) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if line.is_empty() {
            pos += 1;
            continue;
        }
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = &line[..eq];
            if valid_key(key) {
                fields.push((
                    String::from_utf8_lossy(key).into_owned(),
                    line[eq + 1..].to_vec(),
                ));
            }
            pos += line_end + 1;
            continue;
        }
        // Binary field: KEY\n <u64 LE length> <value> \n
        let key = String::from_utf8_lossy(line).into_owned();
        let len_start = pos + line_end + 1;
        let Some(len_bytes) = buf.get(len_start..len_start + 8) else {
            return Err(JournalError::Length { key, len: 0 });
        };
        let mut le = [0u8; 8];
        le.copy_from_slice(len_bytes);
        let len = u64::from_le_bytes(le);
        let value_start = len_start + 8;
        let value_end = usize::try_from(len)
            .ok()
            .and_then(|l| value_start.checked_add(l))
            .filter(|&end| end <= buf.len())
            .ok_or_else(|| JournalError::Length {
                key: key.clone(),
                len,
            })?;
        match buf.get(value_end) {
            Some(b'\n') => {}
            None if value_end == buf.len() => {}
            _ => return Err(JournalError::Terminator { key }),
        }
        if valid_key(line) {
            fields.push((key, buf[value_start..value_end].to_vec()));
        }
        pos = value_end + 1;
    }
    Ok(fields)
}

/// journald's rule: upper-case letters, digits and `_`, not starting with a digit.
fn valid_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && !key[0].is_ascii_digit()
        && key
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Turns parsed fields into a record; `None` for entries without a MESSAGE.
pub fn to_record(fields: &[(String, Vec<u8>)], cred_pid: Option<u32>) -> Option<LogRecord> {
    let get = |k: &str| {
        fields
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let mut message = get("MESSAGE")?;
    while message.ends_with('\n') {
        message.pop();
    }
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let priority = get("PRIORITY")
        .and_then(|p| p.trim().parse::<u8>().ok())
        .filter(|p| *p <= 7)
        .unwrap_or(6);
    let pid = cred_pid.or_else(|| get("SYSLOG_PID").and_then(|p| p.trim().parse().ok()));
    let ident = get("SYSLOG_IDENTIFIER")
        .filter(|s| !s.is_empty())
        .or_else(|| pid.and_then(process_name))
        .unwrap_or_else(|| "unknown".to_string());
    Some(LogRecord {
        time_us: clock::realtime_us(),
        boottime_us: clock::boottime_us(),
        priority,
        ident,
        pid,
        message,
        container: get("CONTAINER_NAME").filter(|s| !s.is_empty()),
        stream: None,
    })
}

fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// Binds the socket at `path` (replacing a stale one), ready for [`serve`].
pub fn bind(path: &Path) -> Result<UnixDatagram, JournalError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    let sock = UnixDatagram::bind(path).map_err(|source| JournalError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    sock.set_nonblocking(true)
        .map_err(|source| JournalError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    socket::setsockopt(&sock, sockopt::PassCred, &true).map_err(|source| JournalError::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    // A deep queue so a burst of logging does not block or drop; the forced
    // variant needs CAP_NET_ADMIN, which PID 1 has.
    if socket::setsockopt(&sock, sockopt::RcvBufForce, &(8 * 1024 * 1024)).is_err() {
        let _ = socket::setsockopt(&sock, sockopt::RcvBuf, &(1024 * 1024));
    }
    // Everyone may log.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(sock)
}

/// Receives entries forever, handing each to `hub`.
pub async fn serve(sock: UnixDatagram, hub: &LogHub) -> std::io::Result<()> {
    // SAFETY: `sock` owns its descriptor and stays inside the AsyncFd, which
    // neither replaces nor closes it while registered.
    let fd = unsafe { AsyncFd::register(sock)? };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let mut guard = fd.readable().await?;
        loop {
            match receive(guard.get_inner(), &mut buf) {
                Ok(Some(record)) => hub.push(record),
                Ok(None) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::warn!("journal socket: receive failed: {e}");
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

/// Receives one datagram; `Ok(None)` for entries that hold no record.
fn receive(sock: &UnixDatagram, buf: &mut [u8]) -> Result<Option<LogRecord>, nix::errno::Errno> {
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [std::os::fd::RawFd; 8]);
    let (len, truncated, cmsgs) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let cmsgs: Vec<ControlMessageOwned> = match msg.cmsgs() {
            Ok(it) => it.collect(),
            Err(_) => Vec::new(),
        };
        (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC), cmsgs)
    };
    let mut pid = None;
    let mut fds = Vec::new();
    for c in cmsgs {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => pid = u32::try_from(cred.pid()).ok(),
            ControlMessageOwned::ScmRights(raw) => {
                for r in raw {
                    // SAFETY: the kernel just installed this descriptor in our
                    // table for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
            _ => {}
        }
    }
    if truncated {
        log::warn!("journal socket: dropped an entry larger than {MAX_DATAGRAM} bytes");
        return Ok(None);
    }
    let entry = if len == 0 {
        match fds.into_iter().next() {
            Some(fd) => match read_memfd(fd) {
                Some(bytes) => bytes,
                None => return Ok(None),
            },
            None => return Ok(None), // an empty probe datagram
        }
    } else {
        buf[..len].to_vec()
    };
    match parse_entry(&entry) {
        Ok(fields) => Ok(to_record(&fields, pid)),
        Err(e) => {
            log::warn!("journal socket: dropped a malformed entry: {e}");
            Ok(None)
        }
    }
}

fn read_memfd(fd: OwnedFd) -> Option<Vec<u8>> {
    let mut file = File::from(fd);
    // The sender wrote through the same open file, so the offset is at the end.
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut out = Vec::new();
    file.take(MAX_MEMFD).read_to_end(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;
    use std::io::Write;

    /// An entry laid out exactly as systemd-journal-logger 2.2 builds it
    /// (`record_payload` + `put_field_length_encoded` / `put_field_bytes`).
    fn journal_logger_payload(priority: &str, message: &str, ident: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(format!("PRIORITY={priority}\n").as_bytes());
        b.extend_from_slice(b"MESSAGE\n");
        b.extend_from_slice(&(message.len() as u64).to_le_bytes());
        b.extend_from_slice(message.as_bytes());
        b.push(b'\n');
        b.extend_from_slice(b"SYSLOG_PID=4242\n");
        b.extend_from_slice(format!("SYSLOG_IDENTIFIER={ident}\n").as_bytes());
        b.extend_from_slice(b"CODE_FILE=src/main.rs\n");
        b.extend_from_slice(b"CODE_MODULE=agent\n");
        b.extend_from_slice(b"CODE_LINE=12\n");
        b.extend_from_slice(b"TARGET=agent\n");
        b
    }

    #[test]
    fn parses_journal_logger_entries() {
        let p = journal_logger_payload("5", "line one\nline two", "agent");
        let fields = parse_entry(&p).unwrap();
        assert_eq!(
            fields[1],
            ("MESSAGE".into(), b"line one\nline two".to_vec())
        );
        let r = to_record(&fields, None).unwrap();
        assert_eq!(r.priority, 5);
        assert_eq!(r.ident, "agent");
        assert_eq!(r.pid, Some(4242));
        assert_eq!(r.message, "line one\nline two");
        // Credentials win over the claimed pid.
        assert_eq!(to_record(&fields, Some(7)).unwrap().pid, Some(7));
    }

    #[test]
    fn plain_fields_and_container_name() {
        let p = b"MESSAGE=hello\nPRIORITY=3\nCONTAINER_NAME=web\nbad key=x\n9X=y\n";
        let fields = parse_entry(p).unwrap();
        assert_eq!(fields.len(), 3);
        let r = to_record(&fields, Some(1)).unwrap();
        assert_eq!((r.priority, r.message.as_str()), (3, "hello"));
        assert_eq!(r.container.as_deref(), Some("web"));
    }

    #[test]
    fn refuses_malformed_binary_fields() {
        let mut p = b"MESSAGE\n".to_vec();
        p.extend_from_slice(&100u64.to_le_bytes());
        p.extend_from_slice(b"short\n");
        assert!(matches!(parse_entry(&p), Err(JournalError::Length { .. })));
        let mut p = b"MESSAGE\n".to_vec();
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(b"abX");
        assert!(matches!(
            parse_entry(&p),
            Err(JournalError::Terminator { .. })
        ));
        assert!(parse_entry(b"MESSAGE\n\x01\x02").is_err());
        assert_eq!(to_record(&parse_entry(b"").unwrap(), None), None);
        // Never panics on arbitrary bytes.
        let good = journal_logger_payload("6", "x\ny", "i");
        for i in 0..good.len() {
            for b in [0u8, b'\n', b'=', 0xff] {
                let mut m = good.clone();
                m[i] = b;
                let _ = parse_entry(&m);
            }
        }
    }

    #[test]
    fn socket_takes_datagrams_and_memfds() {
        let dir = TempDir::new("journal");
        let path = dir.path().join("socket");
        let sock = bind(&path).unwrap();
        let hub = LogHub::new(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = UnixDatagram::unbound().unwrap();
            // The empty probe systemd-journal-logger sends first.
            client.send_to(b"", &path).unwrap();
            client
                .send_to(&journal_logger_payload("6", "small", "t1"), &path)
                .unwrap();
            // A big entry through a memfd, as send_large_payload does.
            let big = "b".repeat(300 * 1024);
            let fd = nix::sys::memfd::memfd_create(
                c"test",
                nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
            )
            .unwrap();
            let mut f = File::from(fd);
            f.write_all(&journal_logger_payload("6", &big, "t2"))
                .unwrap();
            let fds = [f.as_raw_fd()];
            let cmsg = [socket::ControlMessage::ScmRights(&fds)];
            let addr = socket::UnixAddr::new(&path).unwrap();
            socket::sendmsg(
                client.as_raw_fd(),
                &[],
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            )
            .unwrap();
            let mut rx = hub.subscribe();
            let server = serve(sock, &hub);
            tokio::pin!(server);
            let mut got = Vec::new();
            while got.len() < 2 {
                tokio::select! {
                    r = rx.recv() => got.push(r.unwrap()),
                    _ = &mut server => panic!("server stopped"),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => panic!("timeout"),
                }
            }
            assert_eq!(got[0].message, "small");
            assert_eq!(got[0].pid, Some(std::process::id()));
            assert_eq!(got[1].ident, "t2");
            assert_eq!(got[1].message.len(), MAX_MESSAGE);
        });
    }
    /// The real systemd-journal-logger (a dev-dependency) logging into our
    /// socket. It only talks to /run/systemd/journal/socket, so the test
    /// runs itself again under `unshare -m` with a private /run whose
    /// socket path is a symlink to ours. Needs root and util-linux's
    /// `unshare`; skipped (with a note) without them.
    #[test]
    fn real_systemd_journal_logger() {
        const CHILD: &str = "ATOLL_JOURNAL_LOGGER_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let logger = systemd_journal_logger::JournalLog::new()
                .unwrap()
                .with_syslog_identifier("sjl-test".into());
            let rec = |msg: &str, level| {
                logger
                    .journal_send(
                        &log::Record::builder()
                            .args(format_args!("{msg}"))
                            .level(level)
                            .target("sjl")
                            .build(),
                    )
                    .unwrap()
            };
            rec("small\nwith a newline", log::Level::Warn);
            rec(&"big ".repeat(100_000), log::Level::Info);
            return;
        }
        if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/unshare").exists() {
            eprintln!("skipped: needs root and /usr/bin/unshare");
            return;
        }
        let dir = TempDir::new("journal-real");
        let path = dir.path().join("socket");
        let sock = bind(&path).unwrap();
        let hub = LogHub::new(false);
        let mut rx = hub.subscribe();
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             ln -s {} /run/systemd/journal/socket && \
             exec {} --exact stage2::journal::tests::real_systemd_journal_logger --nocapture",
            path.display(),
            exe.display()
        );
        let mut child = std::process::Command::new("/usr/bin/unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let server = serve(sock, &hub);
            tokio::pin!(server);
            let mut got = Vec::new();
            while got.len() < 2 {
                tokio::select! {
                    r = rx.recv() => got.push(r.unwrap()),
                    _ = &mut server => panic!("server stopped"),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => break,
                }
            }
            got
        });
        // Its status may be taken by another test's reaper: errors ignored.
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got.len(), 2, "records received: {got:?}");
        assert_eq!(got[0].message, "small\nwith a newline");
        assert_eq!(got[0].ident, "sjl-test");
        assert_eq!(got[0].priority, 4);
        assert!(got[0].pid.is_some());
        // Too big for a datagram: it came through a memfd (cut to MAX_MESSAGE).
        assert_eq!(got[1].priority, 5);
        assert_eq!(got[1].message.len(), MAX_MESSAGE);
        assert!(got[1].message.starts_with("big big"));
    }
}
