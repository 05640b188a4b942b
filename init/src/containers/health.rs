//! A container's healthcheck, run by PID 1 (Docker's rules, kept by
//! [`atoll_runtime::health::HealthState`]): the probe command runs in the
//! container every `interval`, each bounded by `timeout`; `retries`
//! failures in a row make it unhealthy, failures in the `start_period`
//! do not count, one pass makes it healthy. The state goes into the
//! container's row (`atollctl ps`) and transitions into the log.

use std::time::{Duration, Instant};

use atoll_runtime::health::{HealthConfig, HealthState, Probe, ProbeOutcome, MAX_OUTPUT};

use super::exec::{self, ExecEnd, ExecTarget};
use super::{lock, Table};

/// Probes until aborted (the run it watches ended).
pub async fn watch(
    id: String,
    target: ExecTarget,
    cfg: HealthConfig,
    args: Vec<String>,
    table: Table,
    index: usize,
) {
    let mut state = HealthState::new(cfg, Instant::now());
    loop {
        let wait = state
            .next_probe_at()
            .saturating_duration_since(Instant::now());
        tokio::time::sleep(wait).await;
        let started = Instant::now();
        let mut output = String::new();
        let end = exec::run(&target, args.clone(), Some(cfg.timeout), None, |_, text| {
            if output.len() < MAX_OUTPUT {
                output.push_str(&text);
            }
        })
        .await;
        let outcome = match end {
            Ok(ExecEnd::Exited(0)) => ProbeOutcome::Passed,
            Ok(ExecEnd::Exited(code)) => ProbeOutcome::Failed { exit_code: code },
            Ok(ExecEnd::TimedOut) => ProbeOutcome::TimedOut,
            Err(e) => {
                output = e;
                ProbeOutcome::Failed { exit_code: -1 }
            }
        };
        output.truncate(MAX_OUTPUT);
        let before = state.health();
        let health = state.record_probe(started, Instant::now(), Probe { outcome, output });
        if health != before {
            let last = state.last_output().trim().to_string();
            let detail = if last.is_empty() {
                format!("{outcome:?}")
            } else {
                last
            };
            if health == atoll_runtime::health::Health::Unhealthy {
                log::warn!(
                    "container {id}: unhealthy after {} failed probes: {detail}",
                    state.failing_streak()
                );
            } else {
                log::info!("container {id}: {health}");
            }
        }
        if let Some(s) = lock(&table).get_mut(index) {
            s.health = Some(health.to_string());
        }
        // Never spin: a probe that ends at once still waits an interval.
        if state.next_probe_at() <= Instant::now() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
