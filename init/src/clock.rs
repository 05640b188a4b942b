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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(boottime_us() > a);
    }
}
