//! Kernel messages of priority warning or worse (from /dev/kmsg) go into the
//! log store under the identifier `kernel`. They are not printed again: the
//! kernel prints its own messages on the console.

use atoll_common::api::LogRecord;
use tokio::io::AsyncReadExt;

use super::loghub::LogHub;
use crate::clock;

/// The least important kernel priority kept (4 = warning).
pub const MAX_PRIORITY: u8 = 4;

/// Parses one /dev/kmsg record (`prio,seq,usec,flags;message\n` + continuation lines).
pub fn parse(record: &[u8]) -> Option<(u8, u64, String)> {
    let text = String::from_utf8_lossy(record);
    let (head, rest) = text.split_once(';')?;
    let mut fields = head.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    let _seq = fields.next()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    let message = rest.lines().next().unwrap_or("").to_string();
    Some(((prio & 7) as u8, usec, message))
}

/// Reads /dev/kmsg forever.
pub async fn run(hub: &'static LogHub) {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg");
    let mut rx = match file.and_then(tokio::net::unix::pipe::Receiver::from_file_unchecked) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("/dev/kmsg: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let Some((priority, usec, message)) = parse(&buf[..n]) else {
                    continue;
                };
                if priority > MAX_PRIORITY {
                    continue;
                }
                let now_boot = clock::boottime_us();
                let now_real = clock::realtime_us();
                hub.push_quiet(LogRecord {
                    time_us: now_real.saturating_sub(now_boot.saturating_sub(usec)),
                    boottime_us: usec,
                    priority,
                    ident: "kernel".into(),
                    pid: None,
                    message,
                    container: None,
                    stream: None,
                });
            }
            // Records were overwritten before we read them: go on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) => {
                log::warn!("/dev/kmsg: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r =
            b"4,512,1834567,-;EXT4-fs (vda5): warning: mounting unchecked fs\n SUBSYSTEM=block\n";
        assert_eq!(
            parse(r),
            Some((
                4,
                1_834_567,
                "EXT4-fs (vda5): warning: mounting unchecked fs".into()
            ))
        );
        // Facility bits are dropped.
        assert_eq!(parse(b"30,1,2,-;x\n").unwrap().0, 6);
        assert_eq!(parse(b"garbage"), None);
    }
}
