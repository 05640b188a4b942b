//! Time stamps for the boot split.

use nix::time::{clock_gettime, ClockId};

/// CLOCK_BOOTTIME in milliseconds: time since the kernel started, suspend included.
pub fn boottime_ms() -> u64 {
    boottime_us() / 1000
}

/// CLOCK_BOOTTIME in microseconds.
pub fn boottime_us() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000,
        Err(_) => 0,
    }
}

/// Wall-clock time in microseconds since the Unix epoch (0 if the clock is before it).
pub fn realtime_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_unix(secs: u64) -> String {
    atoll_common::time::format_utc(secs)
}

/// Seconds since the Unix epoch by the host's clock.
pub fn unix_now() -> u64 {
    realtime_us() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(boottime_us() > a);
    }

    #[test]
    fn formats_dates() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_795_446_245), "2026-11-23T15:04:05Z");
    }
}
