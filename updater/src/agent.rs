//! The update agent's loop: one check ([`Agent::check_once`]) and the
//! schedule around it ([`Agent::run`]), plus a manual rollback and the
//! status for the host API.
//!
//! A check:
//! 1. loads the state from /var ([`AgentState`]; a damaged file is set
//!    aside) and settles the last install ([`AgentState::after_boot`]): a
//!    release that booted good is recorded, one that rolled back goes on
//!    the bad list;
//! 2. does nothing more while the booted slot runs on trial (not yet
//!    marked good): the other slot is the fallback and must not be
//!    written;
//! 3. refreshes the metadata ([`Trusted::update`] over [`HttpRepo`]),
//!    keeping whatever passed, so rollback and freeze protection survive;
//! 4. chooses a release ([`policy::choose`]) and, unless it is the one
//!    already installed and waiting for a reboot, installs it into the
//!    inactive slot ([`install::install`]) with the download's progress
//!    in the state;
//! 5. says whether to reboot, by the strategy: `immediate` now, `window`
//!    at the next maintenance window ([`policy::next_window`]), `off` not
//!    at all (the release boots at the next reboot, whoever makes it).
//!
//! A refusal (bad signature, expiry, rollback, frozen repository, a
//! payload of the wrong size or hash) is logged as an error and kept in
//! `last_error`; the slot is never offered to the boot loader. An
//! interrupted download is a warning and resumes at the next check.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atoll_common::bootstate::BootState;
use atoll_common::config::UpdateStrategy;
use atoll_common::layout::{self, Slot};
use atoll_common::trial::TrialFailure;
use serde::Serialize;
use thiserror::Error;

use crate::bootenv::{BootEnv, BootEnvError};
use crate::http::{HttpConfig, HttpError, HttpRepo};
use crate::install::{self, Install, InstallError, TargetSource, CHECKPOINT_EVERY};
use crate::metadata::{self, FetchError, Time, Trusted, UpdateError, Version};
use crate::policy::{self, BadReleases, Schedule, Window};
use crate::state::{
    remove_durably, AgentState, BootOutcome, Download, Event, Pending, StateError, StoredMetadata,
    PROGRESS_FILE, STATE_FILE,
};

/// An error and its sources, `: `-separated: the shared function, under the
/// name the agent and `atoll-updater` use.
use atoll_common::error::error_chain as chain;

/// The download's progress is saved to the state at most this often (in
/// payload bytes).
const SAVE_PROGRESS_EVERY: u64 = 8 << 20;
/// [`Agent::run`] looks at the clock at least this often (it may jump).
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("strategy `window` needs an [update.window]")]
    NoWindow,
    #[error("cannot read the trusted root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("update repository")]
    Http(#[from] HttpError),
    #[error("the repository's metadata was refused")]
    Metadata(#[source] Box<UpdateError>),
    #[error("release {version} ({name}) was refused; slot {slot} is not offered")]
    Refused {
        name: String,
        version: Version,
        slot: Slot,
        #[source]
        source: Box<InstallError>,
    },
    #[error("download of {version} ({name}) interrupted; it resumes at the next check")]
    Interrupted {
        name: String,
        version: Version,
        #[source]
        source: Box<InstallError>,
    },
    #[error("no rollback: {0}")]
    NoRollback(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    BootEnv(#[from] BootEnvError),
}

/// The block devices of the two root slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevices {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl SlotDevices {
    /// The partitions by GPT label (`/dev/disk/by-partlabel/ROOT-A`).
    pub fn by_label() -> SlotDevices {
        let dev = |slot: Slot| Path::new("/dev/disk/by-partlabel").join(slot.label());
        SlotDevices {
            a: dev(Slot::A),
            b: dev(Slot::B),
        }
    }

    pub fn get(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// Everything the agent needs to know about the host.
pub struct AgentConfig {
    /// The repository's base URL (`[update] server`).
    pub repo_url: String,
    /// Where the state and progress files live
    /// ([`crate::state::state_dir`] on a host).
    pub state_dir: PathBuf,
    pub machine_id: String,
    pub booted_slot: Slot,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`): tells a reboot.
    pub boot_id: String,
    /// The version the booted slot runs.
    pub running_version: Version,
    /// grubenv and grubenv.good on the mounted ESP.
    pub boot: BootEnv,
    pub devices: SlotDevices,
    /// The root of trust shipped in the slot ([`metadata::SHIPPED_ROOT`]).
    pub trusted_root: PathBuf,
    pub strategy: UpdateStrategy,
    /// Required with [`UpdateStrategy::Window`].
    pub window: Option<Window>,
    /// When to check (its interval from `[update] check_interval`).
    pub schedule: Schedule,
    /// Extra CA certificates (PEM) for an HTTPS repository.
    pub ca_pem: Option<Vec<u8>>,
    pub freeze_limit: Duration,
    /// Slot bytes between resume checkpoints ([`CHECKPOINT_EVERY`]).
    pub checkpoint_every: u64,
    /// Where PID 1 leaves why a trial boot failed
    /// ([`atoll_common::layout::VAR_TRIAL_FAILURE`] on a host); `None`:
    /// nowhere.
    pub trial_record: Option<PathBuf>,
    /// The clock ([`Time::now`] on a host).
    pub now: Box<dyn Fn() -> Time + Send>,
    /// How [`Agent::run`] waits ([`std::thread::sleep`] on a host).
    pub sleep: Box<dyn Fn(Duration) + Send>,
}

impl AgentConfig {
    /// A config with the host's defaults for everything but what only the
    /// caller knows.
    pub fn new(
        repo_url: impl Into<String>,
        machine_id: impl Into<String>,
        booted_slot: Slot,
        boot_id: impl Into<String>,
        running_version: Version,
    ) -> AgentConfig {
        AgentConfig {
            repo_url: repo_url.into(),
            state_dir: crate::state::state_dir(),
            machine_id: machine_id.into(),
            booted_slot,
            boot_id: boot_id.into(),
            running_version,
            boot: BootEnv::on_esp(Path::new(ESP_MOUNT)),
            devices: SlotDevices::by_label(),
            trusted_root: PathBuf::from(metadata::SHIPPED_ROOT),
            strategy: UpdateStrategy::Immediate,
            window: None,
            schedule: Schedule::default(),
            ca_pem: None,
            freeze_limit: metadata::Config::default().freeze_limit,
            checkpoint_every: CHECKPOINT_EVERY,
            trial_record: None,
            now: Box::new(Time::now),
            sleep: Box::new(std::thread::sleep),
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("repo_url", &self.repo_url)
            .field("state_dir", &self.state_dir)
            .field("machine_id", &self.machine_id)
            .field("booted_slot", &self.booted_slot)
            .field("boot_id", &self.boot_id)
            .field("running_version", &self.running_version)
            .field("boot", &self.boot)
            .field("devices", &self.devices)
            .field("trusted_root", &self.trusted_root)
            .field("strategy", &self.strategy)
            .field("window", &self.window)
            .field("schedule", &self.schedule)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("freeze_limit", &self.freeze_limit)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

/// Where PID 1 mounts the ESP.
pub const ESP_MOUNT: &str = "/run/atoll/esp";

/// A release still rolling out towards this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub version: Version,
    pub at: Time,
}

/// What a check came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Nothing newer to install (perhaps one still rolling out to us).
    UpToDate { waiting: Option<Waiting> },
    /// The booted slot runs on trial: nothing is installed until it is
    /// marked good.
    OnTrial { version: Version },
    /// A release is installed and the strategy says reboot now.
    RebootNow { version: Version },
    /// A release is installed; reboot at the window's start.
    RebootAt { version: Version, at: Time },
    /// A release is installed; the strategy (`off`) does not reboot.
    ApplyOnNextReboot { version: Version },
}

/// Why [`Agent::run`] asks for a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The release waiting in `slot`.
    pub version: Version,
    pub slot: Slot,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "update to {} in slot {}", self.version, self.slot)
    }
}

/// A slot as [`Agent::status`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// The release in it, if known.
    pub version: Option<Version>,
    pub good: bool,
    pub tries: u8,
}

/// The agent's view for the host API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateStatus {
    pub strategy: UpdateStrategy,
    pub current: SlotStatus,
    pub other: SlotStatus,
    /// The slot the boot loader picks next.
    pub next_boot: Slot,
    pub last_check: Option<Time>,
    pub last_error: Option<String>,
    pub download: Option<Download>,
    pub pending: Option<Pending>,
    pub bad: BadReleases,
    pub history: Vec<Event>,
}

/// What [`Agent::manual_rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolledBack {
    pub slot: Slot,
    pub version: Version,
}

#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    window: Option<Window>,
    repo: Option<HttpRepo>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        let window = match config.strategy {
            UpdateStrategy::Window => Some(config.window.clone().ok_or(AgentError::NoWindow)?),
            _ => None,
        };
        Ok(Agent {
            config,
            window,
            repo: None,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn state_path(&self) -> PathBuf {
        self.config.state_dir.join(STATE_FILE)
    }

    /// The state; a damaged file is set aside (and said) and a fresh
    /// state returned.
    fn load_state(&self) -> Result<AgentState, AgentError> {
        let path = self.state_path();
        match AgentState::load(&path) {
            Ok(s) => Ok(s),
            Err(e @ StateError::Parse { .. }) => {
                let aside = AgentState::set_aside(&path)?;
                log::error!(
                    "{}; moved to {} and starting afresh (the list of bad releases is lost)",
                    chain(&e),
                    aside.display()
                );
                Ok(AgentState::default())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One check; see the module documentation. The state is saved
    /// whatever the result, with `last_check` and `last_error`.
    pub fn check_once(&mut self) -> Result<CheckOutcome, AgentError> {
        let now = (self.config.now)();
        let mut state = self.load_state()?;
        let result = self.check(&mut state, now);
        state.last_check = Some(now);
        match &result {
            Ok(outcome) => {
                state.last_error = None;
                log::debug!("update check: {outcome:?}");
            }
            Err(e) => {
                let message = chain(e);
                if matches!(e, AgentError::Interrupted { .. }) {
                    log::warn!("{message}");
                } else {
                    log::error!("update check failed: {message}");
                }
                state.last_error = Some(message);
            }
        }
        state.save(&self.state_path())?;
        result
    }

    fn check(&mut self, state: &mut AgentState, now: Time) -> Result<CheckOutcome, AgentError> {
        let booted = self.config.booted_slot;
        let other = booted.other();
        let running = self.config.running_version;
        let state_path = self.state_path();
        state.slots.set(booted, Some(running));
        let boot = self.config.boot.state()?;
        log_boot_outcome(booted, self.after_boot(state, &boot, now));
        if state.forget_download_into(booted) {
            log::info!("slot {booted} runs: its download is over");
        }
        if !boot.slot(booted).good {
            log::info!("slot {booted} runs {running} on trial: no update until it is marked good");
            return Ok(CheckOutcome::OnTrial { version: running });
        }

        let mut trusted = self.trusted(state)?;
        let repo = repo(&mut self.repo, &self.config)?;
        let config = metadata::Config {
            freeze_limit: self.config.freeze_limit,
            ..metadata::Config::default()
        };
        let refreshed = trusted.update(repo, now, &config);
        // Whatever passed is kept, even if a later step failed.
        state.metadata = StoredMetadata::from_saved(&trusted.saved());
        refreshed.map_err(|e| AgentError::Metadata(Box::new(e)))?;
        let targets = &trusted
            .targets()
            .ok_or_else(|| AgentError::Metadata(Box::new(UpdateError::NoTargets)))?
            .signed;
        let choice = policy::choose(targets, running, &self.config.machine_id, &state.bad, now);
        for (version, why) in &choice.skipped {
            log::debug!("not taking {version}: {why:?}");
        }
        let Some((name, target, release)) = choice.install else {
            return Ok(CheckOutcome::UpToDate {
                waiting: choice
                    .waiting
                    .map(|(_, version, at)| Waiting { version, at }),
            });
        };
        let version = release.version;
        if let Some(p) = &state.pending {
            if p.slot == other && p.version >= version {
                let installed = p.version;
                log::debug!("{installed} is installed in slot {other} already");
                return Ok(self.due_noted(state, installed, now));
            }
        }

        // The other slot is overwritten from here on.
        state.pending = None;
        state.slots.set(other, None);
        let resumed = match &state.download {
            Some(d) if d.name == name && d.slot == other => d.done,
            _ => 0,
        };
        state.download = Some(Download {
            name: name.into(),
            version,
            slot: other,
            done: resumed,
            total: target.length,
        });
        state.save(&state_path)?;
        log::info!("installing {version} ({name}) into slot {other}");
        let progress = self.config.state_dir.join(PROGRESS_FILE);
        let plan = Install {
            name,
            target,
            booted,
            device: self.config.devices.get(other),
            boot: &self.config.boot,
            progress: &progress,
            checkpoint_every: self.config.checkpoint_every,
        };
        let mut source = Counting {
            inner: repo,
            state,
            path: &state_path,
        };
        let result = install::install(&plan, &mut source);
        match result {
            Ok(done) => {
                state.download = None;
                state.slots.set(other, Some(version));
                state.pending = Some(Pending {
                    version,
                    slot: other,
                    installed_at: now,
                    boot_id: self.config.boot_id.clone(),
                    reboot_at: None,
                });
                let resumed = if done.resumed_from > 0 {
                    format!(", resumed at byte {}", done.resumed_from)
                } else {
                    String::new()
                };
                state.record(
                    now,
                    format!(
                        "installed {version} into slot {other} ({} bytes downloaded{resumed})",
                        done.downloaded
                    ),
                );
                Ok(self.due_noted(state, version, now))
            }
            Err(source) if source.is_resumable() => Err(AgentError::Interrupted {
                name: name.into(),
                version,
                source: Box::new(source),
            }),
            Err(source) => {
                state.download = None;
                state.record(now, format!("refused {version}: {}", chain(&source)));
                Err(AgentError::Refused {
                    name: name.into(),
                    version,
                    slot: other,
                    source: Box::new(source),
                })
            }
        }
    }

    /// The shipped root, with the saved metadata on top if it still checks.
    fn trusted(&self, state: &AgentState) -> Result<Trusted, AgentError> {
        let path = &self.config.trusted_root;
        let shipped = std::fs::read(path).map_err(|source| AgentError::Root {
            path: path.clone(),
            source,
        })?;
        let file = path.display().to_string();
        if let Some(saved) = &state.metadata {
            match Trusted::restore(&shipped, &file, &saved.to_saved()) {
                Ok(t) => return Ok(t),
                Err(e) => log::warn!(
                    "saved metadata refused, starting again from the shipped root: {}",
                    chain(&e)
                ),
            }
        }
        Trusted::new(&shipped, &file).map_err(|e| AgentError::Metadata(Box::new(e)))
    }

    /// Settles the last install at once ([`AgentState::after_boot`]), so
    /// that a rollback is on the bad list and in the status from the
    /// agent's start, not only from its first check. Saves the state when
    /// it changed.
    pub fn settle(&mut self) -> Result<BootOutcome, AgentError> {
        let now = (self.config.now)();
        let booted = self.config.booted_slot;
        let mut state = self.load_state()?;
        let boot = self.config.boot.state()?;
        let outcome = self.after_boot(&mut state, &boot, now);
        log_boot_outcome(booted, outcome.clone());
        let forgotten = state.forget_download_into(booted);
        if forgotten {
            log::info!("slot {booted} runs: its download is over");
        }
        if forgotten
            || matches!(
                outcome,
                BootOutcome::Updated(_) | BootOutcome::RolledBack(_)
            )
        {
            state.slots.set(booted, Some(self.config.running_version));
            state.save(&self.state_path())?;
        }
        Ok(outcome)
    }

    /// [`AgentState::after_boot`] with PID 1's trial record, which is
    /// removed once an install is settled either way.
    fn after_boot(&self, state: &mut AgentState, boot: &BootState, now: Time) -> BootOutcome {
        let record = self.config.trial_record.as_deref();
        let trial = record.and_then(TrialFailure::load);
        let outcome = state.after_boot(
            self.config.booted_slot,
            boot,
            &self.config.boot_id,
            now,
            trial.as_ref(),
        );
        if let Some(path) = record.filter(|_| {
            matches!(
                outcome,
                BootOutcome::Updated(_) | BootOutcome::RolledBack(_)
            )
        }) {
            if let Err(e) = remove_durably(path) {
                log::warn!("{e}");
            }
        }
        outcome
    }

    /// [`Agent::due`], kept in the pending release (`reboot_at`, shown
    /// by the status) with a history line when the reboot waits for a
    /// maintenance window that was not noted yet.
    fn due_noted(&self, state: &mut AgentState, version: Version, now: Time) -> CheckOutcome {
        let outcome = self.due(version, now);
        let at = match &outcome {
            CheckOutcome::RebootAt { at, .. } => Some(*at),
            _ => None,
        };
        let mut noted = false;
        if let Some(p) = state.pending.as_mut().filter(|p| p.version == version) {
            noted = p.reboot_at != at;
            p.reboot_at = at;
        }
        if let (true, Some(at)) = (noted, at) {
            state.record(
                now,
                format!(
                    "{version} is installed; the reboot waits for the maintenance window at {at}"
                ),
            );
        }
        outcome
    }

    /// When to reboot into `version`, installed in the other slot.
    fn due(&self, version: Version, now: Time) -> CheckOutcome {
        match (self.config.strategy, &self.window) {
            (UpdateStrategy::Immediate, _) => CheckOutcome::RebootNow { version },
            (UpdateStrategy::Window, Some(window)) => {
                let at = policy::next_window(now, window);
                if at <= now {
                    CheckOutcome::RebootNow { version }
                } else {
                    CheckOutcome::RebootAt { version, at }
                }
            }
            (UpdateStrategy::Window, None) | (UpdateStrategy::Off, _) => {
                CheckOutcome::ApplyOnNextReboot { version }
            }
        }
    }

    /// Checks on the schedule (the first after its initial delay, then
    /// every interval with jitter) and calls `reboot` when a release is
    /// installed and the strategy says so. Returns once `reboot` returns
    /// (the caller is rebooting the host); a failed check is logged and
    /// tried again at the next one.
    pub fn run(&mut self, reboot: &dyn Fn(Reason)) -> Result<(), AgentError> {
        let machine_id = self.config.machine_id.clone();
        let schedule = self.config.schedule;
        let slot = self.config.booted_slot.other();
        let start = (self.config.now)();
        let mut next_check = schedule.first(start, &machine_id);
        log::info!(
            "update agent: {} in slot {}, strategy {:?}, first check at {next_check}",
            self.config.running_version,
            self.config.booted_slot,
            self.config.strategy
        );
        if let Err(e) = self.settle() {
            log::warn!("cannot settle the last install yet: {}", chain(&e));
        }
        let mut due: Option<(Time, Reason)> = None;
        loop {
            let now = (self.config.now)();
            if let Some((at, reason)) = &due {
                if *at <= now {
                    match &self.window {
                        // The clock jumped or the agent stalled past the
                        // whole window: wait for the next one.
                        Some(w) if !policy::window_open(now, w) => {
                            let next = policy::next_window(now, w);
                            log::warn!(
                                "the maintenance window at {at} closed before the reboot for the \
                                 {reason}; rebooting at {next}"
                            );
                            due = Some((next, reason.clone()));
                            continue;
                        }
                        _ => {
                            log::info!("maintenance window open: rebooting for the {reason}");
                            reboot(reason.clone());
                            return Ok(());
                        }
                    }
                }
            }
            if now >= next_check {
                match self.check_once() {
                    Ok(CheckOutcome::RebootNow { version }) => {
                        let reason = Reason { version, slot };
                        log::info!("rebooting for the {reason}");
                        reboot(reason);
                        return Ok(());
                    }
                    Ok(CheckOutcome::RebootAt { version, at }) => {
                        if due.as_ref().map(|(t, r)| (*t, r.version)) != Some((at, version)) {
                            log::info!("{version} is installed; rebooting at {at}");
                        }
                        due = Some((at, Reason { version, slot }));
                    }
                    Ok(CheckOutcome::ApplyOnNextReboot { version }) => {
                        log::info!("{version} is installed and boots at the next reboot");
                        due = None;
                    }
                    // Logged by check_once.
                    Ok(_) | Err(_) => {}
                }
                next_check = schedule.next(now, &machine_id);
            }
            let wake = match &due {
                Some((at, _)) => (*at).min(next_check),
                None => next_check,
            };
            let wait = wake.since(now).min(MAX_SLEEP);
            if !wait.is_zero() {
                (self.config.sleep)(wait);
            }
        }
    }

    /// Offers the other slot again, if it is marked good and its release
    /// is known: it goes first in ORDER (effective at the next reboot),
    /// the running release goes on the bad list (so the agent does not
    /// reinstall it) and the history says so.
    pub fn manual_rollback(&mut self) -> Result<RolledBack, AgentError> {
        let now = (self.config.now)();
        let booted = self.config.booted_slot;
        let other = booted.other();
        let running = self.config.running_version;
        let mut state = self.load_state()?;
        if let Some(p) = &state.pending {
            return Err(AgentError::NoRollback(format!(
                "slot {other} holds {}, installed and not yet booted",
                p.version
            )));
        }
        let version = state.slots.get(other).ok_or_else(|| {
            AgentError::NoRollback(format!("the release in slot {other} is not known"))
        })?;
        if !self.config.boot.state()?.slot(other).good {
            return Err(AgentError::NoRollback(format!(
                "slot {other} ({version}) is not marked good"
            )));
        }
        self.config.boot.prefer(other)?;
        state
            .bad
            .add(running, now, format!("manual rollback to {version}"));
        state.record(
            now,
            format!(
                "manual rollback from {running} (slot {booted}) to {version} (slot {other}), \
                 at the next reboot"
            ),
        );
        state.save(&self.state_path())?;
        log::info!("rolled back to {version} in slot {other}: it boots at the next reboot");
        Ok(RolledBack {
            slot: other,
            version,
        })
    }

    /// What the agent knows, from the state and grubenv (nothing changes).
    pub fn status(&self) -> Result<UpdateStatus, AgentError> {
        let state = AgentState::load(&self.state_path())?;
        let boot = self.config.boot.state()?;
        let booted = self.config.booted_slot;
        let slot = |slot: Slot, version: Option<Version>| {
            let st = boot.slot(slot);
            SlotStatus {
                slot,
                version,
                good: st.good,
                tries: st.tries,
            }
        };
        Ok(UpdateStatus {
            strategy: self.config.strategy,
            current: slot(booted, Some(self.config.running_version)),
            other: slot(booted.other(), state.slots.get(booted.other())),
            next_boot: boot.choose().0.slot(),
            last_check: state.last_check,
            last_error: state.last_error,
            download: state.download,
            pending: state.pending,
            bad: state.bad,
            history: state.history.into(),
        })
    }
}

fn log_boot_outcome(booted: Slot, outcome: BootOutcome) {
    match outcome {
        BootOutcome::Updated(v) => log::info!("{v} booted good in slot {booted}: updated"),
        BootOutcome::RolledBack(v) => log::error!(
            "{v} rolled back: the host came back on slot {booted}; \
             it is on the bad list and not installed again"
        ),
        BootOutcome::Trial(_) | BootOutcome::NotRebooted | BootOutcome::Nothing => {}
    }
}

/// The repository client, made at the first check.
fn repo<'a>(
    repo: &'a mut Option<HttpRepo>,
    config: &AgentConfig,
) -> Result<&'a mut HttpRepo, AgentError> {
    let made = match repo.take() {
        Some(r) => r,
        None => {
            let http = HttpConfig {
                extra_roots_pem: config.ca_pem.clone(),
                ..HttpConfig::default()
            };
            HttpRepo::new(&config.repo_url, &http)?
        }
    };
    Ok(repo.insert(made))
}

/// A payload source that counts the bytes into the state's download.
struct Counting<'a> {
    inner: &'a mut HttpRepo,
    state: &'a mut AgentState,
    path: &'a Path,
}

impl TargetSource for Counting<'_> {
    fn open_target(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>, FetchError> {
        let inner = self.inner.open_target(name, offset)?;
        if let Some(d) = &mut self.state.download {
            d.done = offset;
        }
        Ok(Box::new(CountingReader {
            inner,
            state: self.state,
            path: self.path,
            unsaved: 0,
        }))
    }
}

struct CountingReader<'a> {
    inner: Box<dyn Read + 'a>,
    state: &'a mut AgentState,
    path: &'a Path,
    unsaved: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(d) = &mut self.state.download {
            d.done += n as u64;
        }
        self.unsaved += n as u64;
        if self.unsaved >= SAVE_PROGRESS_EVERY {
            self.unsaved = 0;
            if let Err(e) = self.state.save(self.path) {
                log::warn!("download progress not saved: {}", chain(&e));
            }
        }
        Ok(n)
    }
}

/// The booted slot from the kernel command line (`atoll.slot=A`).
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    let key = format!("{}=", layout::cmdline::SLOT);
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(&key))
        .and_then(Slot::parse)
}

/// `VERSION=` from an os-release file (`/usr/lib/os-release`), value
/// optionally quoted.
pub fn version_from_os_release(text: &str) -> Option<Version> {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\''))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_slot() {
        assert_eq!(
            slot_from_cmdline("root=/dev/dm-0 atoll.slot=B quiet"),
            Some(Slot::B)
        );
        assert_eq!(slot_from_cmdline("atoll.slot=A"), Some(Slot::A));
        assert_eq!(slot_from_cmdline("atoll.slot=C"), None);
        assert_eq!(slot_from_cmdline("quiet"), None);
    }

    #[test]
    fn os_release_version() {
        let text = "NAME=Atoll\nVERSION=\"0.3.1\"\nKERNEL=6.1\n";
        assert_eq!(
            version_from_os_release(text),
            Some("0.3.1".parse().unwrap())
        );
        assert_eq!(
            version_from_os_release("VERSION=0.2.0"),
            "0.2.0".parse().ok()
        );
        assert_eq!(version_from_os_release("NAME=Atoll"), None);
    }

    #[test]
    fn metadata_error_names_its_cause() {
        let e = AgentError::Metadata(Box::new(UpdateError::NoTargets));
        assert_eq!(
            chain(&e),
            "the repository's metadata was refused: no targets.json is trusted yet"
        );
    }
}
