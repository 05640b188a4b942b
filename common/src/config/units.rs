//! Durations (`10s`, `5m`, `1h30m`, `250ms`) and sizes (`512M`, `1G`,
//! `100k`, `1048576`), written as text in the config.

use std::time::Duration;

use super::value::TextValue;

/// Parses a duration: one or more `NUMBER UNIT` parts with units `ms`, `s`,
/// `m`, `h`, `d`, largest first and each at most once (`1h30m`, `90m`,
/// `2m30s`, `250ms`, `0s`). A bare number is refused: the unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if text.is_empty() {
        return Err("empty".into());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    // Index in UNITS of the last unit seen; later parts must use a smaller one.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(format!(
                "`{num}` has no unit (ms, s, m, h or d): write e.g. `{num}s`"
            ));
        }
        let (unit, after) = after.split_at(unit_len);
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("unknown unit `{unit}` (ms, s, m, h or d)"));
        };
        if last.is_some_and(|l| pos <= l) {
            return Err("units must go from largest to smallest, each once (like 1h30m)".into());
        }
        last = Some(pos);
        let n: u64 = num.parse().map_err(|_| format!("`{num}` is too large"))?;
        total_ms = n
            .checked_mul(UNITS[pos].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "too large".to_string())?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

impl TextValue for Duration {
    const EXPECTED: &'static str = "a duration like 10s, 5m, 1h30m or 250ms";
    fn parse_text(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
}

/// A size in bytes (`512M`, `1G`, `100k`, `1048576`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Parses a size: a whole number of bytes, optionally followed by `k`, `M`,
/// `G` or `T` (any case; powers of 1024, as Docker reads them) and an
/// optional `B` or `iB` (`512M`, `512MiB`, `1g`, `100k`, `4096`, `4096B`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a number of bytes, optionally with k, M, G or T".into());
    }
    let (num, suffix) = text.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("`{num}` is too large"))?;
    let lower = suffix.to_ascii_lowercase();
    let (prefix, rest) = match lower.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't')) => (Some(c), &lower[1..]),
        _ => (None, lower.as_str()),
    };
    let shift = match prefix {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some(_) => 40,
    };
    let rest_ok = matches!((prefix, rest), (_, "" | "b") | (Some(_), "ib"));
    if !rest_ok {
        return Err(format!(
            "unknown unit `{suffix}` (k, M, G or T, optionally followed by B or iB)"
        ));
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "too large".to_string())
}

impl TextValue for ByteSize {
    const EXPECTED: &'static str = "a size like 512M, 1G, 100k or a number of bytes";
    const FROM_INTEGER: bool = true;
    fn parse_text(text: &str) -> Result<Self, String> {
        parse_size(text).map(ByteSize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("0s"), Ok(ms(0)));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Ok(ms(93_784_005)));
        assert_eq!(parse_duration("90m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "",
            "10",
            "s",
            "1x",
            "1h1h",
            "30m1h",
            "1 h",
            " 1h",
            "1h ",
            "-1s",
            "1.5h",
            "1sm",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn duration_format_round_trips() {
        for text in ["0s", "250ms", "10s", "1h30m", "1d2h3m4s5ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(parse_duration("90m").unwrap()), "1h30m");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("100k"), Ok(100 * 1024));
        assert_eq!(parse_size("100K"), Ok(100 * 1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "M",
            "1.5G",
            "1X",
            "1iB",
            "1 M",
            "-1",
            "1Gb2",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn size_text_value_takes_integers() {
        assert_eq!(ByteSize::parse_text("1k"), Ok(ByteSize(1024)));
        const { assert!(ByteSize::FROM_INTEGER) };
    }
}
