//! `atoll-updater`: the update agent's command line (docs/updates.md, "The
//! agent").
//!
//! ```text
//! atoll-updater [OPTIONS] check-once   one check; prints the outcome as JSON
//! atoll-updater [OPTIONS] run          checks on schedule; exits 10 when a reboot is due
//! atoll-updater [OPTIONS] status       prints the status as JSON
//! atoll-updater [OPTIONS] rollback     offers the other slot at the next reboot
//! ```
//!
//! The host's pieces come from the effective config
//! (`/run/atoll/config.toml`, `[update]` and `ca_certs`), the machine id
//! (`/var/lib/atoll/machine-id`), the booted slot (`atoll.slot=` on
//! `/proc/cmdline`), the boot id (`/proc/sys/kernel/random/boot_id`) and
//! the running version (`VERSION=` in `/usr/lib/os-release`); each can be
//! given by a flag instead.
//!
//! Exit codes: 0 done (for `run`: updates are off, no server); 1 the
//! check or rollback failed (the message says why, and the state's
//! `last_error` keeps it); 2 bad usage; 3 the host's pieces could not be
//! read; 10 (`run` only) a release is installed and the strategy says
//! reboot now: PID 1 reboots the host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use atoll_common::config::{self, UpdateStrategy};
use atoll_common::layout::{self, Slot};
use atoll_updater::agent::{self, Agent, AgentConfig, AgentError, SlotDevices, ESP_MOUNT};
use atoll_updater::bootenv::BootEnv;
use atoll_updater::metadata::{self, Version};
use atoll_updater::policy::Window;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes (see the crate docs).
const EXIT_FAILED: u8 = 1;
const EXIT_HOST: u8 = 3;
const EXIT_REBOOT: u8 = 10;

/// The effective config PID 1 writes.
const EFFECTIVE_CONFIG: &str = "/run/atoll/config.toml";

#[derive(Debug, Parser)]
#[command(version, about = "Atoll's update agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The effective host config (its `[update]` table and `ca_certs`).
    #[arg(long, global = true, default_value = EFFECTIVE_CONFIG)]
    config: PathBuf,
    /// The repository's base URL (instead of `[update] server`).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Instead of `[update] strategy`.
    #[arg(long, global = true)]
    strategy: Option<Strategy>,
    /// The agent's state directory.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Instead of /var/lib/atoll/machine-id.
    #[arg(long, global = true)]
    machine_id: Option<String>,
    /// The booted slot, A or B (instead of `atoll.slot=` on /proc/cmdline).
    #[arg(long, global = true)]
    slot: Option<String>,
    /// Instead of /proc/sys/kernel/random/boot_id.
    #[arg(long, global = true)]
    boot_id: Option<String>,
    /// The running version (instead of VERSION= in /usr/lib/os-release).
    #[arg(long, global = true)]
    running_version: Option<Version>,
    /// Where the ESP is mounted (grubenv and grubenv.good below it).
    #[arg(long, global = true, default_value = ESP_MOUNT)]
    esp: PathBuf,
    /// Slot A's block device (default: by GPT label).
    #[arg(long, global = true)]
    device_a: Option<PathBuf>,
    /// Slot B's block device (default: by GPT label).
    #[arg(long, global = true)]
    device_b: Option<PathBuf>,
    /// The root of trust for the metadata.
    #[arg(long, global = true, default_value = metadata::SHIPPED_ROOT)]
    trusted_root: PathBuf,
    /// Debug logging.
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One check: install a newer release if there is one; prints the
    /// outcome (JSON).
    CheckOnce,
    /// Check on schedule; exit 10 when the host should reboot.
    Run,
    /// Print the update status (JSON).
    Status,
    /// Offer the other slot at the next reboot, if it is good.
    Rollback,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Strategy {
    Immediate,
    Window,
    Off,
}

/// Logs to stderr, which PID 1 collects.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("atoll-updater: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if cli.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    let config = match agent_config(&cli) {
        Ok(Some(c)) => c,
        Ok(None) => {
            log::info!("no update server configured: updates are off");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("atoll-updater: {e:#}");
            return ExitCode::from(EXIT_HOST);
        }
    };
    match command(&cli.command, config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atoll-updater: {}", atoll_common::error::error_chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn command(command: &Command, config: AgentConfig) -> Result<ExitCode, AgentError> {
    let mut agent = Agent::new(config)?;
    match command {
        Command::CheckOnce => {
            let outcome = agent.check_once()?;
            println!("{}", json(&outcome));
        }
        Command::Run => {
            let due = std::cell::Cell::new(false);
            // `run` returns once this was called.
            agent.run(&|reason| {
                log::info!("reboot due: {reason}");
                due.set(true);
            })?;
            if due.get() {
                return Ok(ExitCode::from(EXIT_REBOOT));
            }
        }
        Command::Status => println!("{}", json(&agent.status()?)),
        Command::Rollback => {
            let back = agent.manual_rollback()?;
            println!(
                "slot {} ({}) boots at the next reboot",
                back.slot, back.version
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The agent's config from the flags and the host; `None` when no server
/// is configured (updates are off).
fn agent_config(cli: &Cli) -> anyhow::Result<Option<AgentConfig>> {
    let host = match std::fs::read(&cli.config) {
        Ok(bytes) => Some(
            config::parse(&bytes, &cli.config.display().to_string()).map_err(|e| anyhow!("{e}"))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cli.server.is_some() => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cli.config.display())),
    };
    let update = host.as_ref().map(|c| c.update.clone()).unwrap_or_default();
    let Some(server) = cli.server.clone().or_else(|| update.server.clone()) else {
        // status and rollback need no server.
        if !matches!(cli.command, Command::Status | Command::Rollback) {
            return Ok(None);
        }
        return host_config(cli, String::new(), &update, host.as_ref()).map(Some);
    };
    host_config(cli, server, &update, host.as_ref()).map(Some)
}

fn host_config(
    cli: &Cli,
    server: String,
    update: &config::Update,
    host: Option<&config::Config>,
) -> anyhow::Result<AgentConfig> {
    let machine_id = match &cli.machine_id {
        Some(id) => id.clone(),
        None => read_trimmed(Path::new(layout::VAR_MACHINE_ID))?,
    };
    let slot = match &cli.slot {
        Some(s) => Slot::parse(s).ok_or_else(|| anyhow!("--slot {s:?}: expected A or B"))?,
        None => {
            let cmdline = read_trimmed(Path::new("/proc/cmdline"))?;
            agent::slot_from_cmdline(&cmdline)
                .ok_or_else(|| anyhow!("no atoll.slot=A|B on /proc/cmdline"))?
        }
    };
    let boot_id = match &cli.boot_id {
        Some(id) => id.clone(),
        None => read_trimmed(Path::new("/proc/sys/kernel/random/boot_id"))?,
    };
    let running = match cli.running_version {
        Some(v) => v,
        None => {
            let text = read_trimmed(Path::new(layout::SLOT_RELEASE))?;
            agent::version_from_os_release(&text)
                .ok_or_else(|| anyhow!("no VERSION= in {}", layout::SLOT_RELEASE))?
        }
    };
    let strategy = match cli.strategy {
        Some(Strategy::Immediate) => UpdateStrategy::Immediate,
        Some(Strategy::Window) => UpdateStrategy::Window,
        Some(Strategy::Off) => UpdateStrategy::Off,
        None => update.strategy(),
    };
    let window = match &update.window {
        Some(w) => {
            Some(Window::from_config(w).ok_or_else(|| anyhow!("[update.window] does not parse"))?)
        }
        None => None,
    };
    if strategy == UpdateStrategy::Window && window.is_none() {
        bail!("strategy `window` needs an [update.window]");
    }
    let mut c = AgentConfig::new(server, machine_id, slot, boot_id, running);
    if let Some(dir) = &cli.state_dir {
        c.state_dir = dir.clone();
    }
    c.boot = BootEnv::on_esp(&cli.esp);
    c.boot.tries = update.tries;
    c.trial_record = Some(PathBuf::from(layout::VAR_TRIAL_FAILURE));
    let by_label = SlotDevices::by_label();
    c.devices = SlotDevices {
        a: cli.device_a.clone().unwrap_or(by_label.a),
        b: cli.device_b.clone().unwrap_or(by_label.b),
    };
    c.trusted_root = cli.trusted_root.clone();
    c.strategy = strategy;
    c.window = window;
    if let Some(interval) = update.check_interval.get() {
        c.schedule.interval = *interval;
        c.schedule.jitter = c.schedule.jitter.min(*interval / 6);
    }
    c.schedule.interval = c.schedule.interval.max(Duration::from_secs(60));
    // A host asked to check every few minutes does not wait longer for its first.
    c.schedule.initial_delay = c.schedule.initial_delay.min(c.schedule.interval);
    let ca: Vec<&str> = host.map_or(Vec::new(), |h| {
        h.ca_certs.iter().map(String::as_str).collect()
    });
    if !ca.is_empty() {
        c.ca_pem = Some(ca.join("\n").into_bytes());
    }
    Ok(c)
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}
