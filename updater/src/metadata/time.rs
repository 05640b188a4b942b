//! Times in metadata: RFC 3339 UTC to the second (`2026-11-20T00:00:00Z`,
//! the only form TUF's `expires` takes), and spans such as `7d` or `24h`
//! for the command line. Hand written to keep the host agent's dependencies
//! few: the civil-date arithmetic is Howard Hinnant's `days_from_civil`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("{text:?} is not a UTC time of the form YYYY-MM-DDTHH:MM:SSZ")]
    Format { text: String },
    #[error("{text:?} is not a valid date and time")]
    Range { text: String },
    #[error("{text:?} is not a span such as 90s, 30m, 24h, 7d or 2w")]
    Span { text: String },
}

/// A point in time, whole seconds since the Unix epoch, from 1970 to 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

/// 9999-12-31T23:59:59Z.
const MAX_SECS: u64 = 253_402_300_799;

impl Time {
    pub const UNIX_EPOCH: Time = Time(0);

    /// The time `secs` seconds after the epoch, if it is before year 10000.
    pub fn from_unix(secs: u64) -> Option<Time> {
        (secs <= MAX_SECS).then_some(Time(secs))
    }

    pub fn unix(self) -> u64 {
        self.0
    }

    /// The system clock, to the second.
    pub fn now() -> Time {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Time(secs.min(MAX_SECS))
    }

    /// `self + span`, saturating at the end of year 9999.
    pub fn plus(self, span: Duration) -> Time {
        Time(self.0.saturating_add(span.as_secs()).min(MAX_SECS))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_secs(self.0.saturating_sub(earlier.0))
    }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn parse(text: &str) -> Result<Time, TimeError> {
        let format = || TimeError::Format {
            text: text.to_owned(),
        };
        let b = text.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return Err(format());
        }
        let num = |from: usize, to: usize| -> Result<u64, TimeError> {
            let digits = &b[from..to];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(format());
            }
            Ok(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
        };
        let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if year < 1970
            || !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || min > 59
            || sec > 59
        {
            return Err(TimeError::Range {
                text: text.to_owned(),
            });
        }
        let days = days_from_civil(year, month, day);
        Ok(Time(days * 86_400 + hour * 3600 + min * 60 + sec))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&atoll_common::time::format_utc(self.0))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Time::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in 1970..=9999.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a span: a whole number and one unit, `s`, `m`, `h`, `d` or `w`
/// (`90s`, `30m`, `24h`, `7d`, `2w`).
pub fn parse_span(text: &str) -> Result<Duration, TimeError> {
    let bad = || TimeError::Span {
        text: text.to_owned(),
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 12 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n * unit))
}

/// A span in the largest unit that divides it (`7d`, `36h`, `90s`).
pub fn format_span(span: Duration) -> String {
    let s = span.as_secs();
    for (unit, name) in [(7 * 86_400, "w"), (86_400, "d"), (3600, "h"), (60, "m")] {
        if s != 0 && s.is_multiple_of(unit) {
            return format!("{}{name}", s / unit);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_formats() {
        let t = Time::parse("2026-11-20T00:00:00Z").unwrap();
        assert_eq!(t.unix(), 1_795_132_800);
        assert_eq!(t.to_string(), "2026-11-20T00:00:00Z");
        assert_eq!(
            Time::parse("1970-01-01T00:00:00Z").unwrap(),
            Time::UNIX_EPOCH
        );
        let leap = Time::parse("2024-02-29T23:59:59Z").unwrap();
        assert_eq!(leap.to_string(), "2024-02-29T23:59:59Z");
        assert_eq!(
            Time::from_unix(MAX_SECS).unwrap().to_string(),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "2026-11-20T00:00:00+00:00",
            "2026-11-20 00:00:00Z",
            "2026-11-20T00:00:00.5Z",
            "2026-1-20T00:00:00Z",
            "+026-11-20T00:00:00Z",
            "",
        ] {
            assert!(
                matches!(Time::parse(bad), Err(TimeError::Format { .. })),
                "{bad}"
            );
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(
                matches!(Time::parse(bad), Err(TimeError::Range { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_span("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_span("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "d", "7", "7y", "-1d", "1.5h", "9999999999999d"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
        assert_eq!(format_span(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_span(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_span(Duration::from_secs(0)), "0s");
    }

    proptest! {
        #[test]
        fn round_trips(secs in 0..=MAX_SECS) {
            let t = Time::from_unix(secs).unwrap();
            prop_assert_eq!(Time::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = Time::parse(&s);
            let _ = parse_span(&s);
        }
    }
}
