//! `[update]`: where updates come from and when they may be installed.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::{check_hostname, check_url};
use super::value::{KeyPath, Parsed, TextValue, ValidationError};
use crate::bootstate::{DEFAULT_TRIES, MAX_TRIES};

/// `[update]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Update {
    /// The update server's URL; left out: updates are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Left out: `immediate` when a server is given, `off` otherwise
    /// ([`super::Config::fill_defaults`] writes the choice in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<UpdateStrategy>,
    /// When updates may be installed (required with `strategy = "window"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<UpdateWindow>,
    /// How often the server is asked for a new version.
    pub check_interval: Parsed<Duration>,
    /// The fleet group, which the server may use to roll out in stages.
    pub group: String,
    /// On a trial boot (the first boot of an update), how long the
    /// config's containers with a healthcheck have to become healthy
    /// before the boot is marked good; past it the host reboots unmarked
    /// and the boot loader falls back once the tries run out.
    pub health_deadline: Parsed<Duration>,
    /// How many boots a freshly installed slot gets to become good
    /// before the boot loader falls back to the other slot (1 to
    /// [`MAX_TRIES`]).
    pub tries: u8,
    /// On a trial boot, how long PID 1 may take from stage 2's start to
    /// ready; a boot stuck longer is taken as hung and the watchdog
    /// reboots it (at most 30 s later).
    pub ready_deadline: Parsed<Duration>,
}

impl Default for Update {
    fn default() -> Self {
        Self {
            server: None,
            strategy: None,
            window: None,
            check_interval: Parsed::new("1h"),
            group: "default".into(),
            health_deadline: Parsed::new("5m"),
            tries: DEFAULT_TRIES,
            ready_deadline: Parsed::new("2m"),
        }
    }
}

impl Update {
    /// The strategy in force (the default when `strategy` is left out).
    pub fn strategy(&self) -> UpdateStrategy {
        self.strategy.unwrap_or(if self.server.is_some() {
            UpdateStrategy::Immediate
        } else {
            UpdateStrategy::Off
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStrategy {
    /// Install and reboot as soon as an update is found.
    Immediate,
    /// Install when found; reboot when `[update.window]` opens (the
    /// issue's maintenance window: only the reboot waits for it).
    Window,
    /// No reboot by the agent: an update found is installed and takes
    /// effect at the next reboot, whoever makes it (with no `server`,
    /// nothing is checked at all).
    Off,
}

/// `[update.window]`: e.g. Saturdays and Sundays from 02:00 for 2 hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateWindow {
    /// The days the window opens on; left out: every day.
    pub days: Vec<Weekday>,
    /// When the window opens, `HH:MM` in `time_zone`.
    pub start: Parsed<TimeOfDay>,
    /// How long it stays open (`2h`, `90m`), at most 24h.
    pub length: Parsed<Duration>,
    /// `UTC` or a fixed offset like `+02:00`.
    pub time_zone: Parsed<UtcOffset>,
}

impl Default for UpdateWindow {
    fn default() -> Self {
        Self {
            days: Weekday::ALL.to_vec(),
            start: Parsed::new(""),
            length: Parsed::new(""),
            time_zone: Parsed::new("UTC"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];
}

/// A time of day, `HH:MM` (24 hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TextValue for TimeOfDay {
    const EXPECTED: &'static str = "a time of day HH:MM, like 02:30";
    fn parse_text(text: &str) -> Result<Self, String> {
        let (h, m) = text.split_once(':').ok_or("no `:`")?;
        let num = |s: &str, max: u8| -> Option<u8> {
            if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok().filter(|n| *n <= max)
            } else {
                None
            }
        };
        match (num(h, 23), num(m, 59)) {
            (Some(hour), Some(minute)) => Ok(TimeOfDay { hour, minute }),
            _ => Err("hours 00-23 and minutes 00-59, two digits each".into()),
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// A fixed offset from UTC, in minutes east.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset(pub i32);

impl TextValue for UtcOffset {
    const EXPECTED: &'static str = "UTC or an offset like +02:00 or -05:30";
    fn parse_text(text: &str) -> Result<Self, String> {
        if text == "UTC" || text == "Z" {
            return Ok(UtcOffset(0));
        }
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => {
                return Err(
                    "not UTC and no + or - sign (named time zones are not supported)".into(),
                )
            }
        };
        let t = TimeOfDay::parse_text(rest).map_err(|_| "expected ±HH:MM".to_string())?;
        let minutes = i32::from(t.hour) * 60 + i32::from(t.minute);
        if minutes > 14 * 60 {
            return Err("more than 14 hours".into());
        }
        Ok(UtcOffset(sign * minutes))
    }
}

impl Update {
    pub(crate) fn fill_defaults(&mut self) {
        self.strategy = Some(self.strategy());
    }

    pub(crate) fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        if let Some(server) = &self.server {
            if let Err(e) = check_url(server) {
                errors.push(ValidationError::new(
                    path.key("server"),
                    format!(
                        "invalid value: string {server:?}, expected the update server's URL ({e})"
                    ),
                ));
            }
        }
        let strategy = self.strategy();
        if strategy != UpdateStrategy::Off && self.server.is_none() {
            errors.push(ValidationError::new(
                path.key("server"),
                format!(
                    "missing: strategy `{}` needs an update server",
                    if strategy == UpdateStrategy::Window {
                        "window"
                    } else {
                        "immediate"
                    }
                ),
            ));
        }
        match (&self.window, strategy) {
            (None, UpdateStrategy::Window) => errors.push(ValidationError::new(
                path.key("window"),
                "missing: strategy = \"window\" needs [update.window]",
            )),
            (Some(_), UpdateStrategy::Immediate | UpdateStrategy::Off) => {
                errors.push(ValidationError::new(
                    path.key("window"),
                    "[update.window] is only used with strategy = \"window\"",
                ))
            }
            _ => {}
        }
        if let Some(w) = &self.window {
            let p = path.key("window");
            if w.days.is_empty() {
                errors.push(ValidationError::new(
                    p.key("days"),
                    "no day: the window would never open",
                ));
            }
            for (i, d) in w.days.iter().enumerate() {
                if w.days[..i].contains(d) {
                    errors.push(ValidationError::new(
                        p.key("days").index(i),
                        format!("{d:?} is listed twice"),
                    ));
                }
            }
            if w.start.text().is_empty() {
                errors.push(ValidationError::new(
                    p.key("start"),
                    "missing: when does the window open (HH:MM)?",
                ));
            } else {
                w.start.check(&p.key("start"), errors);
            }
            if w.length.text().is_empty() {
                errors.push(ValidationError::new(
                    p.key("length"),
                    "missing: how long is the window open (like 2h)?",
                ));
            } else {
                w.length.check(&p.key("length"), errors);
                if let Some(len) = w.length.get() {
                    if len.is_zero() || *len > Duration::from_secs(86_400) {
                        errors.push(ValidationError::new(
                            p.key("length"),
                            format!(
                                "invalid value: string {:?}, expected more than 0s and at most 24h",
                                w.length.text()
                            ),
                        ));
                    }
                }
            }
            w.time_zone.check(&p.key("time_zone"), errors);
        }
        self.check_interval
            .check(&path.key("check_interval"), errors);
        if let Some(d) = self.check_interval.get() {
            if *d < Duration::from_secs(60) {
                errors.push(ValidationError::new(
                    path.key("check_interval"),
                    format!(
                        "invalid value: string {:?}, expected at least 1m",
                        self.check_interval.text()
                    ),
                ));
            }
        }
        self.health_deadline
            .check(&path.key("health_deadline"), errors);
        if let Some(d) = self.health_deadline.get() {
            if d.is_zero() {
                errors.push(ValidationError::new(
                    path.key("health_deadline"),
                    format!(
                        "invalid value: string {:?}, expected more than 0s",
                        self.health_deadline.text()
                    ),
                ));
            }
        }
        if !(1..=MAX_TRIES).contains(&self.tries) {
            errors.push(ValidationError::new(
                path.key("tries"),
                format!(
                    "invalid value: {}, expected 1 to {MAX_TRIES} boots",
                    self.tries
                ),
            ));
        }
        self.ready_deadline
            .check(&path.key("ready_deadline"), errors);
        if let Some(d) = self.ready_deadline.get() {
            if *d < Duration::from_secs(10) {
                errors.push(ValidationError::new(
                    path.key("ready_deadline"),
                    format!(
                        "invalid value: string {:?}, expected at least 10s",
                        self.ready_deadline.text()
                    ),
                ));
            }
        }
        if let Err(e) = check_hostname(&self.group) {
            errors.push(ValidationError::new(
                path.key("group"),
                format!("invalid value: string {:?}, expected a group name of letters, digits, hyphens and dots ({e})", self.group),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_offsets() {
        assert_eq!(
            TimeOfDay::parse_text("02:30"),
            Ok(TimeOfDay {
                hour: 2,
                minute: 30
            })
        );
        assert_eq!(TimeOfDay::parse_text("23:59").unwrap().to_string(), "23:59");
        for bad in ["24:00", "2:30", "02:60", "0230", "02:3a", ""] {
            assert!(TimeOfDay::parse_text(bad).is_err(), "{bad}");
        }
        assert_eq!(UtcOffset::parse_text("UTC"), Ok(UtcOffset(0)));
        assert_eq!(UtcOffset::parse_text("+02:00"), Ok(UtcOffset(120)));
        assert_eq!(UtcOffset::parse_text("-05:30"), Ok(UtcOffset(-330)));
        for bad in ["Europe/Oslo", "+2", "+15:00", "02:00", "utc"] {
            assert!(UtcOffset::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strategy_defaults() {
        let mut u = Update::default();
        assert_eq!(u.strategy(), UpdateStrategy::Off);
        u.server = Some("https://updates.example.com".into());
        assert_eq!(u.strategy(), UpdateStrategy::Immediate);
        u.fill_defaults();
        assert_eq!(u.strategy, Some(UpdateStrategy::Immediate));
    }

    #[test]
    fn health_deadline_default_and_checks() {
        let u = Update::default();
        assert_eq!(u.health_deadline.get(), Some(&Duration::from_secs(300)));
        for (text, ok) in [("90s", true), ("10m", true), ("0s", false), ("soon", false)] {
            let u = Update {
                health_deadline: Parsed::new(text),
                ..Update::default()
            };
            let mut errors = Vec::new();
            u.validate(&KeyPath::root().key("update"), &mut errors);
            assert_eq!(errors.is_empty(), ok, "{text}: {errors:?}");
            if !ok {
                assert!(
                    errors[0].to_string().contains("health_deadline"),
                    "{errors:?}"
                );
            }
        }
    }

    #[test]
    fn tries_and_ready_deadline_defaults_and_checks() {
        let u = Update::default();
        assert_eq!(u.tries, 3);
        assert_eq!(u.ready_deadline.get(), Some(&Duration::from_secs(120)));
        for (tries, deadline, bad) in [
            (1, "10s", None),
            (9, "1h", None),
            (0, "2m", Some("tries")),
            (10, "2m", Some("tries")),
            (3, "9s", Some("ready_deadline")),
            (3, "later", Some("ready_deadline")),
        ] {
            let u = Update {
                tries,
                ready_deadline: Parsed::new(deadline),
                ..Update::default()
            };
            let mut errors = Vec::new();
            u.validate(&KeyPath::root().key("update"), &mut errors);
            match bad {
                None => assert!(errors.is_empty(), "{tries} {deadline}: {errors:?}"),
                Some(key) => {
                    assert_eq!(errors.len(), 1, "{errors:?}");
                    assert!(errors[0].to_string().contains(key), "{errors:?}");
                }
            }
        }
    }
}
