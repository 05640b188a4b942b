//! A container's stdout and stderr, line by line, into the log hub under
//! the container's name (the console, the store on /var, `atollctl logs`).

use std::os::fd::OwnedFd;

use atoll_common::api::LogRecord;
use tokio::io::AsyncReadExt;

use super::image::tokio_pipe;
use crate::clock;
use crate::stage2::loghub::LogHub;

/// The longest line kept whole; longer ones are split.
pub const LINE_MAX: usize = 16 * 1024;

/// Splits `buf` into complete lines (without `\n`; `\r\n` trimmed), leaving
/// an incomplete tail in `buf`; a tail of [`LINE_MAX`] bytes is cut as a line.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = buf.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    while buf.len() >= LINE_MAX {
        let line: Vec<u8> = buf.drain(..LINE_MAX).collect();
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    lines
}

fn record(container: &str, pid: u32, stream: &str, message: String) -> LogRecord {
    LogRecord {
        time_us: clock::realtime_us(),
        boottime_us: clock::boottime_us(),
        priority: if stream == "stderr" { 5 } else { 6 },
        ident: container.to_string(),
        pid: Some(pid),
        message,
        container: Some(container.to_string()),
        stream: Some(stream.to_string()),
    }
}

/// Reads `fd` until EOF (every process of the container gone) on the
/// current LocalSet, pushing each line to the hub.
pub fn forward(container: &str, pid: u32, fd: OwnedFd, stream: &'static str) {
    let container = container.to_string();
    tokio::task::spawn_local(async move {
        let mut pipe = match tokio_pipe(fd) {
            Ok(p) => p,
            Err(e) => {
                log::error!("container {container}: cannot read its {stream}: {e}");
                return;
            }
        };
        let hub = LogHub::global();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    for line in take_lines(&mut buf) {
                        hub.push(record(&container, pid, stream, line));
                    }
                }
            }
        }
        if !buf.is_empty() {
            let line = String::from_utf8_lossy(&buf).into_owned();
            hub.push(record(&container, pid, stream, line));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_and_tails_kept() {
        let mut buf = b"a\r\nb\nrest".to_vec();
        assert_eq!(take_lines(&mut buf), ["a", "b"]);
        assert_eq!(buf, b"rest");
        let mut long = vec![b'x'; LINE_MAX + 3];
        let lines = take_lines(&mut long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), LINE_MAX);
        assert_eq!(long.len(), 3);
    }
}
