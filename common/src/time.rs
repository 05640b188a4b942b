//! Calendar dates from Unix time, in UTC: the one implementation the
//! status output, the update metadata and the OCI state share (no time
//! zone database needed for any of them).

/// The (year, month, day) of the day `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `secs` since the Unix epoch as RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: u64) -> String {
    format_utc_nanos(secs, None)
}

/// As [`format_utc`], with `.NNNNNNNNN` fractional seconds when given.
pub fn format_utc_nanos(secs: u64, nanos: Option<u32>) -> String {
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    let frac = nanos.map(|n| format!(".{n:09}")).unwrap_or_default();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_446_245), "2026-11-23T15:04:05Z");
        assert_eq!(
            format_utc_nanos(1_795_446_245, Some(7)),
            "2026-11-23T15:04:05.000000007Z"
        );
        assert_eq!(civil_from_days(365), (1971, 1, 1));
    }
}
