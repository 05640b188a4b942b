//! Which release a host installs, and when it checks.
//!
//! - A release is a candidate if it is newer than the running version, the
//!   running version is not below its `min_version`, and it is not on the
//!   host's bad list (releases that rolled back; never retried by the
//!   agent itself, only after an operator clears them).
//! - Phased rollout: a release with `rollout {start, duration}` reaches
//!   the fraction `(now - start) / duration` of the fleet at `now` (none
//!   before `start`, all after `start + duration`). A host's place in the
//!   fleet is its bucket in [0, 1): the first 8 bytes of
//!   `sha256("atoll-rollout\0" + machine_id + "\0" + version)` as a
//!   big-endian integer over 2^64. Stable for a host and a release (every
//!   check gives the same answer), and salted with the version so that
//!   the same hosts are not always the first to get a release. The host
//!   takes the release at `start + bucket * duration`.
//! - The newest candidate that has reached the host is installed; a newer
//!   one still rolling out is reported as waiting.
//! - Checks: the first after [`Schedule::initial_delay`], then every
//!   [`Schedule::interval`] ± [`Schedule::jitter`], the jitter drawn from
//!   the machine id and the time, so that a fleet started together spreads
//!   out.
//! - Maintenance windows ([`Window`], from the config's `[update.window]`):
//!   [`next_window`] gives when a host with the `window` strategy may
//!   reboot into an installed release.

use std::collections::BTreeMap;
use std::time::Duration;

use atoll_common::config::{TimeOfDay, UpdateWindow, Weekday};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metadata::{Release, Rollout, TargetFile, Targets, Time, Version};

/// Releases that rolled back on this host, by version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BadReleases(BTreeMap<Version, BadRelease>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    pub since: Time,
    pub reason: String,
}

impl BadReleases {
    pub fn add(&mut self, version: Version, since: Time, reason: impl Into<String>) {
        self.0.insert(
            version,
            BadRelease {
                since,
                reason: reason.into(),
            },
        );
    }

    /// Clears a release (an operator's decision); whether it was listed.
    pub fn remove(&mut self, version: Version) -> bool {
        self.0.remove(&version).is_some()
    }

    pub fn contains(&self, version: Version) -> bool {
        self.0.contains_key(&version)
    }

    pub fn get(&self, version: Version) -> Option<&BadRelease> {
        self.0.get(&version)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Version, &BadRelease)> {
        self.0.iter()
    }
}

/// The host's bucket in [0, 1) for `version`.
pub fn bucket(machine_id: &str, version: Version) -> f64 {
    let mut h = Sha256::new();
    h.update(b"atoll-rollout\0");
    h.update(machine_id.as_bytes());
    h.update(b"\0");
    h.update(version.to_string().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, strictly below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The fraction of the fleet `rollout` has reached at `now`, in [0, 1].
pub fn reached(rollout: Option<&Rollout>, now: Time) -> f64 {
    let Some(r) = rollout else {
        return 1.0;
    };
    if now < r.start {
        return 0.0;
    }
    if r.duration == 0 {
        return 1.0;
    }
    (now.since(r.start).as_secs_f64() / r.duration as f64).min(1.0)
}

/// When `rollout` reaches a host in `bucket`.
pub fn turn(rollout: Option<&Rollout>, bucket: f64) -> Option<Time> {
    let r = rollout?;
    let offset = (bucket * r.duration as f64).ceil() as u64;
    Some(r.start.plus(Duration::from_secs(offset)))
}

/// Why a newer release is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// The running version is below its `min_version`.
    MinVersion { min: Version },
    /// It rolled back here before.
    Bad,
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, PartialEq)]
pub struct Choice<'a> {
    /// The release to install now: the newest candidate that reached us.
    pub install: Option<(&'a str, &'a TargetFile, &'a Release)>,
    /// The newest candidate still rolling out towards us, and when it
    /// reaches us (if newer than `install`).
    pub waiting: Option<(&'a str, Version, Time)>,
    /// Newer releases not taken, and why.
    pub skipped: Vec<(Version, Skipped)>,
}

/// Chooses among the releases of `targets` for a host running `running`.
pub fn choose<'a>(
    targets: &'a Targets,
    running: Version,
    machine_id: &str,
    bad: &BadReleases,
    now: Time,
) -> Choice<'a> {
    let mut candidates: Vec<(&str, &TargetFile, &Release)> = targets
        .targets
        .iter()
        .filter_map(|(name, t)| Some((name.as_str(), t, t.custom.as_ref()?)))
        .filter(|(_, _, r)| r.version > running)
        .collect();
    candidates.sort_by_key(|(_, _, r)| std::cmp::Reverse(r.version));
    let mut choice = Choice {
        install: None,
        waiting: None,
        skipped: Vec::new(),
    };
    for (name, target, release) in candidates {
        if let Some(min) = release.min_version.filter(|min| running < *min) {
            choice
                .skipped
                .push((release.version, Skipped::MinVersion { min }));
            continue;
        }
        if bad.contains(release.version) {
            choice.skipped.push((release.version, Skipped::Bad));
            continue;
        }
        let b = bucket(machine_id, release.version);
        if b < reached(release.rollout.as_ref(), now) {
            choice.install = Some((name, target, release));
            break;
        }
        if choice.waiting.is_none() {
            if let Some(at) = turn(release.rollout.as_ref(), b) {
                choice.waiting = Some((name, release.version, at));
            }
        }
    }
    choice
}

/// When to check the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// After the agent starts (the host settles first).
    pub initial_delay: Duration,
    pub interval: Duration,
    /// At most this much earlier or later than `interval`.
    pub jitter: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            initial_delay: Duration::from_secs(5 * 60),
            interval: Duration::from_secs(60 * 60),
            jitter: Duration::from_secs(10 * 60),
        }
    }
}

impl Schedule {
    /// The first check after the agent starts at `started`.
    pub fn first(&self, started: Time, machine_id: &str) -> Time {
        let spread = jitter(machine_id, started, self.jitter.as_secs());
        started.plus(self.initial_delay + Duration::from_secs(spread))
    }

    /// The check after one at `last`: `interval` ± `jitter`.
    pub fn next(&self, last: Time, machine_id: &str) -> Time {
        let j = self.jitter.as_secs().min(self.interval.as_secs());
        let draw = jitter(machine_id, last, 2 * j);
        last.plus(self.interval - Duration::from_secs(j) + Duration::from_secs(draw))
    }
}

/// A number in 0..=max drawn from the machine id and a time.
fn jitter(machine_id: &str, at: Time, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(b"atoll-check\0");
    h.update(machine_id.as_bytes());
    h.update(at.unix().to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % (max + 1)
}

/// A maintenance window: it opens on each of `days` at `start` (local
/// time at `utc_offset_minutes` east of UTC) and stays open for `length`
/// (at most a day; a window may run past midnight into the next day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The days it opens on; empty: every day (as the config's default).
    pub days: Vec<Weekday>,
    pub start: TimeOfDay,
    pub length: Duration,
    pub utc_offset_minutes: i32,
}

impl Window {
    /// From the config's `[update.window]`; `None` if a value did not
    /// parse (a validated config always has them).
    pub fn from_config(window: &UpdateWindow) -> Option<Window> {
        Some(Window {
            days: window.days.clone(),
            start: *window.start.get()?,
            length: *window.length.get()?,
            utc_offset_minutes: window.time_zone.get()?.0,
        })
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }
}

const DAY_SECS: i64 = 86_400;

/// The weekday of day `n` since 1970-01-01 (a Thursday).
fn weekday(n: i64) -> Weekday {
    Weekday::ALL[(n + 3).rem_euclid(7) as usize]
}

/// When the host may next reboot inside `window`: `now` if a window is
/// open at `now`, else the start of the next one. A window is counted
/// from the day it opens on, so one opening Saturday 23:00 for 2 hours is
/// still open at 00:30 on Sunday even when Sunday is not listed.
pub fn next_window(now: Time, window: &Window) -> Time {
    let offset = i64::from(window.utc_offset_minutes) * 60;
    let local = now.unix() as i64 + offset;
    let today = local.div_euclid(DAY_SECS);
    let start_secs = i64::from(window.start.hour) * 3600 + i64::from(window.start.minute) * 60;
    let length = window.length.as_secs().min(DAY_SECS as u64) as i64;
    // Yesterday's window may still be open; every weekday comes up within
    // the next 7 days.
    for day in (today - 1)..=(today + 7) {
        if !window.opens_on(weekday(day)) {
            continue;
        }
        let opens = day * DAY_SECS + start_secs;
        if opens <= local && local < opens + length {
            return now;
        }
        if opens > local {
            let utc = (opens - offset).max(0) as u64;
            return Time::from_unix(utc).unwrap_or(now);
        }
    }
    // Not reached: some day within a week opens (every day if none).
    now
}

/// Whether a maintenance window is open at `now`.
pub fn window_open(now: Time, window: &Window) -> bool {
    next_window(now, window) <= now
}

#[cfg(test)]
mod tests {
    use crate::metadata::Hashes;

    use super::*;

    fn t(s: &str) -> Time {
        Time::parse(s).unwrap()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn targets(releases: &[(&str, Option<Rollout>, Option<&str>)]) -> Targets {
        let mut targets = Targets::new(1, t("2030-01-01T00:00:00Z"));
        for (version, rollout, min) in releases {
            targets.targets.insert(
                format!("atoll-{version}.slot.zst"),
                TargetFile {
                    length: 1,
                    hashes: Hashes {
                        sha256: "00".repeat(32),
                    },
                    custom: Some(Release {
                        version: v(version),
                        slot_sha256: "00".repeat(32),
                        slot_length: 1,
                        verity_root_hash: "00".repeat(32),
                        kernel: "k".into(),
                        rollout: *rollout,
                        min_version: min.map(v),
                    }),
                },
            );
        }
        targets
    }

    #[test]
    fn buckets_are_stable_spread_and_salted() {
        let b = bucket("host-1", v("0.2.0"));
        assert_eq!(b, bucket("host-1", v("0.2.0")));
        assert!((0.0..1.0).contains(&b));
        assert_ne!(b, bucket("host-1", v("0.3.0")));
        assert_ne!(b, bucket("host-2", v("0.2.0")));
        // 1000 hosts: roughly uniform.
        let below: usize = (0..1000)
            .filter(|i| bucket(&format!("host-{i}"), v("0.2.0")) < 0.25)
            .count();
        assert!((180..320).contains(&below), "{below}");
    }

    #[test]
    fn rollout_fraction() {
        let r = Rollout {
            start: t("2026-01-01T00:00:00Z"),
            duration: 100,
        };
        assert_eq!(reached(Some(&r), t("2025-12-31T23:59:59Z")), 0.0);
        assert_eq!(reached(Some(&r), r.start), 0.0);
        assert_eq!(
            reached(Some(&r), r.start.plus(Duration::from_secs(25))),
            0.25
        );
        assert_eq!(
            reached(Some(&r), r.start.plus(Duration::from_secs(1000))),
            1.0
        );
        assert_eq!(reached(None, Time::UNIX_EPOCH), 1.0);
        let now = Rollout { duration: 0, ..r };
        assert_eq!(reached(Some(&now), r.start), 1.0);
        assert_eq!(
            turn(Some(&r), 0.5),
            Some(r.start.plus(Duration::from_secs(50)))
        );
    }

    #[test]
    fn chooses_the_newest_allowed() {
        let now = t("2026-01-01T00:00:00Z");
        let ts = targets(&[
            ("0.1.0", None, None),
            ("0.2.0", None, None),
            ("0.3.0", None, Some("0.2.0")),
        ]);
        let bad = BadReleases::default();
        // 0.3.0 needs 0.2.0 first.
        let c = choose(&ts, v("0.1.0"), "h", &bad, now);
        assert_eq!(c.install.map(|i| i.2.version), Some(v("0.2.0")));
        assert_eq!(
            c.skipped,
            vec![(v("0.3.0"), Skipped::MinVersion { min: v("0.2.0") })]
        );
        let c = choose(&ts, v("0.2.0"), "h", &bad, now);
        assert_eq!(c.install.map(|i| i.0), Some("atoll-0.3.0.slot.zst"));
        // Nothing newer.
        let c = choose(&ts, v("0.3.0"), "h", &bad, now);
        assert!(c.install.is_none() && c.waiting.is_none() && c.skipped.is_empty());
    }

    #[test]
    fn bad_releases_are_not_retried() {
        let now = t("2026-01-01T00:00:00Z");
        let ts = targets(&[("0.2.0", None, None)]);
        let mut bad = BadReleases::default();
        bad.add(v("0.2.0"), now, "rolled back");
        let c = choose(&ts, v("0.1.0"), "h", &bad, now);
        assert!(c.install.is_none());
        assert_eq!(c.skipped, vec![(v("0.2.0"), Skipped::Bad)]);
        assert!(bad.remove(v("0.2.0")));
        assert!(choose(&ts, v("0.1.0"), "h", &bad, now).install.is_some());
    }

    #[test]
    fn waits_for_its_turn() {
        let start = t("2026-01-01T00:00:00Z");
        let rollout = Rollout {
            start,
            duration: 86_400,
        };
        let ts = targets(&[("0.2.0", None, None), ("0.3.0", Some(rollout), None)]);
        let bad = BadReleases::default();
        let host = "host-x";
        let b = bucket(host, v("0.3.0"));
        let at = turn(Some(&rollout), b).unwrap();
        // Before its turn: the fully rolled out 0.2.0, and 0.3.0 waiting.
        if at > start {
            let before = Time::from_unix(at.unix() - 1).unwrap();
            let c = choose(&ts, v("0.1.0"), host, &bad, before);
            assert_eq!(c.install.map(|i| i.2.version), Some(v("0.2.0")));
            assert_eq!(c.waiting, Some(("atoll-0.3.0.slot.zst", v("0.3.0"), at)));
        }
        let c = choose(&ts, v("0.1.0"), host, &bad, at.plus(Duration::from_secs(1)));
        assert_eq!(c.install.map(|i| i.2.version), Some(v("0.3.0")));
        // Over a fleet, about half have it half-way through.
        let half = start.plus(Duration::from_secs(43_200));
        let n = (0..400)
            .filter(|i| {
                choose(&ts, v("0.2.0"), &format!("h{i}"), &bad, half)
                    .install
                    .is_some()
            })
            .count();
        assert!((150..250).contains(&n), "{n}");
    }

    fn window(days: &[Weekday], start: &str, length: u64, offset: i32) -> Window {
        Window {
            days: days.to_vec(),
            start: TimeOfDay {
                hour: start[..2].parse().unwrap(),
                minute: start[3..].parse().unwrap(),
            },
            length: Duration::from_secs(length * 60),
            utc_offset_minutes: offset,
        }
    }

    #[test]
    fn weekdays() {
        // 1970-01-01 was a Thursday; 2026-03-01 is a Sunday.
        assert_eq!(weekday(0), Weekday::Thu);
        assert_eq!(weekday(-1), Weekday::Wed);
        let d = t("2026-03-01T12:00:00Z").unix() as i64 / DAY_SECS;
        assert_eq!(weekday(d), Weekday::Sun);
    }

    #[test]
    fn next_window_later_today_or_open_now() {
        let w = window(&[], "02:00", 120, 0);
        // Before: today at 02:00.
        assert_eq!(
            next_window(t("2026-03-02T01:00:00Z"), &w),
            t("2026-03-02T02:00:00Z")
        );
        // Open: now (the start itself included, the end not).
        for at in ["2026-03-02T02:00:00Z", "2026-03-02T03:59:59Z"] {
            assert_eq!(next_window(t(at), &w), t(at));
        }
        // Closed: tomorrow.
        assert_eq!(
            next_window(t("2026-03-02T04:00:00Z"), &w),
            t("2026-03-03T02:00:00Z")
        );
    }

    #[test]
    fn next_window_wraps_the_week() {
        // Saturdays and Sundays at 02:00; 2026-03-01 is a Sunday.
        let w = window(&[Weekday::Sat, Weekday::Sun], "02:00", 60, 0);
        assert_eq!(
            next_window(t("2026-03-01T05:00:00Z"), &w),
            t("2026-03-07T02:00:00Z")
        );
        assert_eq!(
            next_window(t("2026-02-28T05:00:00Z"), &w),
            t("2026-03-01T02:00:00Z")
        );
        // Mondays only, asked on a Monday after the window: next week.
        let w = window(&[Weekday::Mon], "09:30", 30, 0);
        assert_eq!(
            next_window(t("2026-03-02T10:00:00Z"), &w),
            t("2026-03-09T09:30:00Z")
        );
    }

    #[test]
    fn next_window_spanning_midnight() {
        // Saturdays 23:00 for 2 hours: open until Sunday 01:00, though
        // Sunday is not listed.
        let w = window(&[Weekday::Sat], "23:00", 120, 0);
        let sunday = t("2026-03-01T00:30:00Z");
        assert_eq!(next_window(sunday, &w), sunday);
        assert_eq!(
            next_window(t("2026-03-01T01:00:00Z"), &w),
            t("2026-03-07T23:00:00Z")
        );
        assert_eq!(
            next_window(t("2026-02-28T22:00:00Z"), &w),
            t("2026-02-28T23:00:00Z")
        );
    }

    #[test]
    fn window_open_at_minute_boundaries_and_across_midnight() {
        // Every day at 23:59 for 2 minutes: open from 23:59:00 to
        // 00:00:59 the next day, in UTC and at +01:00.
        let w = window(&[], "23:59", 2, 0);
        assert!(!window_open(t("2026-03-01T23:58:59Z"), &w));
        assert_eq!(
            next_window(t("2026-03-01T23:58:59Z"), &w),
            t("2026-03-01T23:59:00Z")
        );
        assert!(window_open(t("2026-03-01T23:59:00Z"), &w));
        assert!(window_open(t("2026-03-02T00:00:59Z"), &w));
        assert!(!window_open(t("2026-03-02T00:01:00Z"), &w));
        assert_eq!(
            next_window(t("2026-03-02T00:01:00Z"), &w),
            t("2026-03-02T23:59:00Z")
        );
        // 00:01 tomorrow, asked at 23:59:30 today (the test's case when it
        // runs just before midnight): the next day's window, not a week on.
        let w = window(&[Weekday::Mon], "00:01", 10, 0);
        // 2026-03-01 is a Sunday.
        assert_eq!(
            next_window(t("2026-03-01T23:59:30Z"), &w),
            t("2026-03-02T00:01:00Z")
        );
        let east = window(&[], "00:30", 60, 60);
        // 23:45 UTC is 00:45 at +01:00: open.
        assert!(window_open(t("2026-03-01T23:45:00Z"), &east));
        assert!(!window_open(t("2026-03-02T00:30:00Z"), &east));
    }

    #[test]
    fn next_window_in_a_time_zone() {
        // 02:00 at +02:00 is 00:00 UTC; at -05:00 it is 07:00 UTC.
        let east = window(&[], "02:00", 60, 120);
        assert_eq!(
            next_window(t("2026-03-01T23:30:00Z"), &east),
            t("2026-03-02T00:00:00Z")
        );
        let west = window(&[Weekday::Sun], "02:00", 60, -300);
        // Sunday 06:00 UTC is Sunday 01:00 local: an hour to go.
        assert_eq!(
            next_window(t("2026-03-01T06:00:00Z"), &west),
            t("2026-03-01T07:00:00Z")
        );
        // Sunday 03:00 UTC is Saturday 22:00 local.
        assert_eq!(
            next_window(t("2026-03-01T03:00:00Z"), &west),
            t("2026-03-01T07:00:00Z")
        );
    }

    #[test]
    fn window_from_the_config() {
        let mut c = UpdateWindow {
            days: vec![Weekday::Sat],
            start: atoll_common::config::Parsed::new("03:15"),
            length: atoll_common::config::Parsed::new("90m"),
            time_zone: atoll_common::config::Parsed::new("+01:00"),
        };
        assert_eq!(
            Window::from_config(&c),
            Some(window(&[Weekday::Sat], "03:15", 90, 60))
        );
        c.start = atoll_common::config::Parsed::new("25:00");
        assert_eq!(Window::from_config(&c), None);
    }

    #[test]
    fn checks_are_spread() {
        let s = Schedule::default();
        let t0 = t("2026-01-01T00:00:00Z");
        let first = s.first(t0, "h");
        assert!(first >= t0.plus(s.initial_delay));
        assert!(first <= t0.plus(s.initial_delay + s.jitter));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..50 {
            let next = s.next(t0, &format!("h{i}"));
            assert!(next >= t0.plus(s.interval - s.jitter));
            assert!(next <= t0.plus(s.interval + s.jitter));
            seen.insert(next);
        }
        assert!(seen.len() > 10);
        assert_eq!(s.next(t0, "h"), s.next(t0, "h"));
    }
}
