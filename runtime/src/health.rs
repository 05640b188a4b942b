//! Healthchecks with Docker's semantics: a pure state machine
//! ([`HealthState`], the clock passed in) and a blocking [`probe`] that
//! runs the check in the container with [`crate::run::exec`].
//!
//! Docker's rules (moby `daemon/health.go`), kept here:
//! - The state starts as [`Health::Starting`]; the first probe runs one
//!   `interval` after the container started, each next one `interval`
//!   after the previous one finished.
//! - A pass makes it [`Health::Healthy`] and resets the failing streak,
//!   in any state (also during the start period).
//! - A failure (non-zero exit, a probe that could not be started, or one
//!   that ran over `timeout`) adds one to the failing streak, and at
//!   `retries` failures in a row the state is [`Health::Unhealthy`];
//!   except that while the state is still `Starting`, a failure of a probe
//!   started within `start_period` of the container's start is not
//!   counted.
//! - Zero `interval` or `timeout` and zero `retries` mean the defaults
//!   (as Docker's 0 does); Atoll's defaults are the config's
//!   (`[containers.healthcheck]`: 10 s, 5 s, 3 retries).
//! - The output kept is the first 4 KiB of stdout and stderr together.
//!
//! Not carried: Docker's `start_interval` (probes during the start period
//! at another rate) and its log of the last five results.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use atoll_common::config::workload::Healthcheck;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::run::cgroup::Cgroup;
use crate::run::exec::{exec, ExecSpec};
use crate::run::process::{ExitStatus, Stdio};
use atoll_common::error::error_chain;

/// The most output a probe keeps (Docker's `maxOutputLen`).
pub const MAX_OUTPUT: usize = 4096;

/// When and how to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row before the container counts as unhealthy.
    pub retries: u32,
    /// Failures of probes started this long after the container started
    /// do not count while it has not passed yet.
    pub start_period: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig::from(&Healthcheck::default())
    }
}

impl From<&Healthcheck> for HealthConfig {
    /// A value that did not parse (the config's validation reports those)
    /// or is zero takes the config's default.
    fn from(h: &Healthcheck) -> Self {
        let defaults = Healthcheck::default();
        let pick = |value: Option<&Duration>,
                    default: &atoll_common::config::value::Parsed<Duration>| {
            value
                .copied()
                .filter(|d| !d.is_zero())
                .or_else(|| default.get().copied())
                .unwrap_or(Duration::from_secs(1))
        };
        HealthConfig {
            interval: pick(h.interval.get(), &defaults.interval),
            timeout: pick(h.timeout.get(), &defaults.timeout),
            retries: if h.retries == 0 {
                defaults.retries
            } else {
                h.retries
            },
            start_period: h.start_period.get().copied().unwrap_or_default(),
        }
    }
}

/// The container's health, as `docker inspect` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// How one probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Passed,
    /// Exited non-zero (128 + N for signal N), or -1 when it could not
    /// be started.
    Failed {
        exit_code: i32,
    },
    /// Ran over the timeout (and was killed).
    TimedOut,
}

/// A probe's outcome and its output (at most [`MAX_OUTPUT`] bytes, lossy
/// UTF-8; the setup error when it could not be started).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub outcome: ProbeOutcome,
    pub output: String,
}

/// The health of one container.
#[derive(Clone, Debug)]
pub struct HealthState {
    cfg: HealthConfig,
    started: Instant,
    health: Health,
    failing_streak: u32,
    next_probe: Instant,
    last_output: String,
}

impl HealthState {
    /// A container started at `started`: `Starting`, first probe one
    /// interval later.
    pub fn new(cfg: HealthConfig, started: Instant) -> Self {
        HealthState {
            cfg,
            started,
            health: Health::Starting,
            failing_streak: 0,
            next_probe: started + cfg.interval,
            last_output: String::new(),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// When the next probe is due (now, if this is past).
    pub fn next_probe_at(&self) -> Instant {
        self.next_probe
    }

    /// Take in a probe that started at `started` and ended at `finished`;
    /// returns the new health.
    pub fn record(&mut self, started: Instant, finished: Instant, outcome: ProbeOutcome) -> Health {
        self.next_probe = finished + self.cfg.interval;
        if outcome == ProbeOutcome::Passed {
            self.failing_streak = 0;
            self.health = Health::Healthy;
            return self.health;
        }
        let in_start_period = self.health == Health::Starting
            && started.saturating_duration_since(self.started) < self.cfg.start_period;
        if !in_start_period {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= self.cfg.retries {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }

    /// [`record`](Self::record), keeping the probe's output.
    pub fn record_probe(&mut self, started: Instant, finished: Instant, probe: Probe) -> Health {
        self.last_output = probe.output;
        self.record(started, finished, probe.outcome)
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Counted failures since the last pass.
    pub fn failing_streak(&self) -> u32 {
        self.failing_streak
    }

    /// The output of the last probe given to [`record_probe`](Self::record_probe).
    pub fn last_output(&self) -> &str {
        &self.last_output
    }
}

/// Run one probe in the container whose init is `init_pid`, as
/// [`exec`] does, and wait for it at most `timeout` (then SIGKILL it;
/// processes it started in the container are left alone). Blocks; starts
/// no thread and reaps only the probe (and exec's setup process) by pid.
/// stdin is /dev/null; stdout and stderr go to one pipe, of which the
/// first [`MAX_OUTPUT`] bytes are kept.
pub fn probe(init_pid: i32, spec: &ExecSpec, cgroup: Option<&Cgroup>, timeout: Duration) -> Probe {
    let failed = |output: String| Probe {
        outcome: ProbeOutcome::Failed { exit_code: -1 },
        output,
    };
    let deadline = Instant::now() + timeout;
    let (read, write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => return failed(format!("creating the output pipe: {e}")),
    };
    // The write end blocks as usual for the probe: only our end is
    // non-blocking.
    if let Err(e) = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&write),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
    ) {
        return failed(format!("output pipe flags: {e}"));
    }
    let stdio = match (|| -> std::io::Result<Stdio> {
        let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
        Ok(Stdio {
            stdin: Some(null),
            stdout: Some(write.try_clone()?),
            stderr: Some(write),
        })
    })() {
        Ok(s) => s,
        Err(e) => return failed(format!("probe stdio: {e}")),
    };
    let mut child = match exec(init_pid, spec, cgroup, stdio) {
        Ok(c) => c,
        Err(e) => return failed(error_chain(&e)),
    };
    let mut output = Vec::new();
    let mut pipe = std::fs::File::from(read);
    let mut eof = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return failed(error_chain(&e)),
        }
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        let slice = (deadline - now).min(Duration::from_millis(20));
        if eof {
            std::thread::sleep(slice);
        } else {
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(slice.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms.max(1)));
            eof = drain(&mut pipe, &mut output);
        }
    };
    drain(&mut pipe, &mut output);
    let outcome = match status {
        Some(ExitStatus::Exited(0)) => ProbeOutcome::Passed,
        Some(s) => ProbeOutcome::Failed {
            exit_code: s.code(),
        },
        None => {
            let _ = child.kill(Signal::SIGKILL);
            let _ = child.wait();
            ProbeOutcome::TimedOut
        }
    };
    Probe {
        outcome,
        output: String::from_utf8_lossy(&output).into_owned(),
    }
}

/// Read what the non-blocking pipe holds, keeping up to [`MAX_OUTPUT`]
/// bytes in `out`; true at end of file.
fn drain(pipe: &mut std::fs::File, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let keep = n.min(MAX_OUTPUT - out.len());
                out.extend_from_slice(&buf[..keep]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use atoll_common::config::value::Parsed;
    use proptest::prelude::*;

    use super::*;

    fn cfg(retries: u32, start_period: u64) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            retries,
            start_period: Duration::from_secs(start_period),
        }
    }

    const FAIL: ProbeOutcome = ProbeOutcome::Failed { exit_code: 1 };

    #[test]
    fn from_config() {
        let h = Healthcheck {
            command: vec!["true".into()],
            interval: Parsed::new("30s"),
            timeout: Parsed::new("2s"),
            retries: 5,
            start_period: Parsed::new("1m"),
        };
        assert_eq!(
            HealthConfig::from(&h),
            HealthConfig {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(2),
                retries: 5,
                start_period: Duration::from_secs(60),
            }
        );
        let zero = Healthcheck {
            interval: Parsed::new("0s"),
            timeout: Parsed::new("nonsense"),
            retries: 0,
            ..Healthcheck::default()
        };
        assert_eq!(HealthConfig::from(&zero), HealthConfig::default());
        assert_eq!(HealthConfig::default(), cfg(3, 0));
    }

    #[test]
    fn schedule() {
        let t0 = Instant::now();
        let mut s = HealthState::new(cfg(3, 0), t0);
        assert_eq!(s.health(), Health::Starting);
        assert_eq!(s.next_probe_at(), t0 + Duration::from_secs(10));
        let start = t0 + Duration::from_secs(10);
        s.record(start, start + Duration::from_secs(2), ProbeOutcome::Passed);
        assert_eq!(s.next_probe_at(), t0 + Duration::from_secs(22));
    }

    #[test]
    fn starting_to_healthy_to_unhealthy_and_back() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = HealthState::new(cfg(3, 0), t0);
        assert_eq!(
            s.record(at(10), at(11), ProbeOutcome::Passed),
            Health::Healthy
        );
        assert_eq!(s.record(at(20), at(21), FAIL), Health::Healthy);
        assert_eq!(
            s.record(at(30), at(35), ProbeOutcome::TimedOut),
            Health::Healthy
        );
        assert_eq!(s.failing_streak(), 2);
        assert_eq!(s.record(at(40), at(41), FAIL), Health::Unhealthy);
        assert_eq!(s.failing_streak(), 3);
        assert_eq!(s.record(at(50), at(51), FAIL), Health::Unhealthy);
        assert_eq!(s.failing_streak(), 4);
        assert_eq!(
            s.record(at(60), at(61), ProbeOutcome::Passed),
            Health::Healthy
        );
        assert_eq!(s.failing_streak(), 0);
    }

    #[test]
    fn starting_to_unhealthy_without_a_pass() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = HealthState::new(cfg(2, 0), t0);
        assert_eq!(s.record(at(10), at(11), FAIL), Health::Starting);
        assert_eq!(
            s.record(at(20), at(21), ProbeOutcome::TimedOut),
            Health::Unhealthy
        );
    }

    #[test]
    fn start_period() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = HealthState::new(cfg(1, 30), t0);
        // Failures of probes started within the period do not count, even
        // one that finishes after it.
        assert_eq!(s.record(at(10), at(11), FAIL), Health::Starting);
        assert_eq!(
            s.record(at(29), at(34), ProbeOutcome::TimedOut),
            Health::Starting
        );
        assert_eq!(s.failing_streak(), 0);
        // After it they do.
        assert_eq!(s.record(at(30), at(31), FAIL), Health::Unhealthy);

        // A pass within the period makes it healthy, and from then on
        // failures count even within the period.
        let mut s = HealthState::new(cfg(2, 30), t0);
        assert_eq!(
            s.record(at(10), at(11), ProbeOutcome::Passed),
            Health::Healthy
        );
        assert_eq!(s.record(at(20), at(21), FAIL), Health::Healthy);
        assert_eq!(s.failing_streak(), 1);
        assert_eq!(s.record(at(25), at(26), FAIL), Health::Unhealthy);
    }

    #[test]
    fn output_is_kept() {
        let t0 = Instant::now();
        let mut s = HealthState::new(cfg(3, 0), t0);
        s.record_probe(
            t0,
            t0,
            Probe {
                outcome: FAIL,
                output: "no\n".into(),
            },
        );
        assert_eq!(s.last_output(), "no\n");
        assert_eq!(s.failing_streak(), 1);
    }

    #[test]
    fn health_names() {
        assert_eq!(Health::Starting.to_string(), "starting");
        assert_eq!(Health::Healthy.to_string(), "healthy");
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
    }

    fn outcome() -> impl Strategy<Value = ProbeOutcome> {
        prop_oneof![
            Just(ProbeOutcome::Passed),
            (1..=255i32).prop_map(|exit_code| ProbeOutcome::Failed { exit_code }),
            Just(ProbeOutcome::TimedOut),
        ]
    }

    proptest! {
        #[test]
        fn invariants(
            retries in 1u32..6,
            start_period in 0u64..100,
            probes in proptest::collection::vec((0u64..20, outcome()), 0..60),
        ) {
            let t0 = Instant::now();
            let mut s = HealthState::new(cfg(retries, start_period), t0);
            let mut now = 0;
            let mut passed = false;
            for (gap, o) in probes {
                now += gap;
                let started = t0 + Duration::from_secs(now);
                let before = s.failing_streak();
                let h = s.record(started, started + Duration::from_secs(1), o);
                prop_assert_eq!(h, s.health());
                // Unhealthy exactly when the streak has reached retries.
                prop_assert_eq!(h == Health::Unhealthy, s.failing_streak() >= retries);
                if o == ProbeOutcome::Passed {
                    passed = true;
                    prop_assert_eq!(s.failing_streak(), 0);
                    prop_assert_eq!(h, Health::Healthy);
                } else if !passed && now < start_period {
                    prop_assert_eq!(s.failing_streak(), before);
                    prop_assert_eq!(h, Health::Starting);
                } else {
                    prop_assert_eq!(s.failing_streak(), before + 1);
                }
                prop_assert_eq!(h == Health::Starting, !passed && s.failing_streak() < retries);
                prop_assert_eq!(s.next_probe_at(), started + Duration::from_secs(11));
            }
        }
    }
}
