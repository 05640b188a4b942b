//! The update agent under PID 1 (docs/updates.md, "The agent under PID 1").
//!
//! Once the boot is marked good, PID 1 mounts the ESP where the agent
//! expects it ([`ESP_MOUNT`]) and runs `atoll-updater run` as a child,
//! its output lines in the log, restarted with a backoff when it fails.
//! Exit code 10 means a release is installed and the strategy says reboot
//! now: PID 1 makes the orderly reboot. With no `[update] server` the agent
//! is not started at all.
//!
//! The host API's update actions ([`UpdateAction`]) run the same binary
//! (`status`, `check-once`, `rollback`) as short-lived children, so the
//! HTTP and TLS stack only ever runs outside PID 1. An action that may
//! write the inactive slot or grubenv pauses the agent first (SIGTERM;
//! its downloads resume from their last checkpoint) and starts it again
//! afterwards, so two updater processes never write at once.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use atoll_common::api::{UpdateAction, UpdateReport, UpdateStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::containers::image::tokio_pipe;
use crate::stage2::reaper::{self, Exit};
use crate::stage2::shutdown::ShutdownKind;

/// Where the agent finds grubenv (`atoll-updater --esp`; the same place
/// stage 2 mounts the ESP while it marks a boot good).
pub const ESP_MOUNT: &str = crate::stage2::bootstate::ESP_MOUNT;
/// `atoll-updater run`'s exit code: reboot into the installed release.
pub const EXIT_REBOOT: i32 = 10;
/// The agent is started again after this, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An agent that ran this long before failing starts again with the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// How long a stopped agent has to exit at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A check or rollback run for the API gives up after this long (a whole
/// download may take that long on a slow link; the agent resumes it).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// An update action from the host API, answered through `reply`.
#[derive(Debug)]
pub struct UpdateRequest {
    pub action: UpdateAction,
    pub reply: oneshot::Sender<Result<UpdateReport, String>>,
}

/// The agent and the API's update actions.
#[derive(Debug)]
pub struct Updates {
    binary: PathBuf,
    /// `None`: updates are off (no server).
    server: Option<String>,
    shutdown: mpsc::UnboundedSender<ShutdownKind>,
    /// Set once the boot is marked good and the ESP is mounted for the agent.
    started: Cell<bool>,
    /// What the agent is doing, for the API.
    agent: RefCell<String>,
    agent_pid: Cell<Option<u32>>,
    /// `--device-a DEV --device-b DEV`: the slots' partitions as PID 1
    /// found them (there is no udev for /dev/disk/by-partlabel).
    devices: RefCell<Vec<std::ffi::OsString>>,
    /// The pid of an updater run for the API, if one runs.
    action_pid: Cell<Option<u32>>,
    /// Actions that asked the agent to stay stopped.
    paused: Cell<u32>,
    pause: Notify,
    resume: Notify,
    /// Held by whichever updater process may write (the agent or an action).
    gate: tokio::sync::Mutex<()>,
    stopping: Cell<bool>,
}

impl Updates {
    pub fn new(
        binary: impl Into<PathBuf>,
        server: Option<String>,
        shutdown: mpsc::UnboundedSender<ShutdownKind>,
    ) -> Rc<Updates> {
        Rc::new(Updates {
            binary: binary.into(),
            agent: RefCell::new(if server.is_some() {
                "not started yet: it starts once the boot is marked good".into()
            } else {
                "off: the config has no [update] server".into()
            }),
            server,
            shutdown,
            started: Cell::new(false),
            agent_pid: Cell::new(None),
            devices: RefCell::new(Vec::new()),
            action_pid: Cell::new(None),
            paused: Cell::new(0),
            pause: Notify::new(),
            resume: Notify::new(),
            gate: tokio::sync::Mutex::new(()),
            stopping: Cell::new(false),
        })
    }

    fn set_agent(&self, what: impl Into<String>) {
        *self.agent.borrow_mut() = what.into();
    }

    /// Once the boot is marked good: mounts the ESP on [`ESP_MOUNT`] and
    /// starts the agent (if a server is configured), telling it the slots'
    /// partitions. Blocking mount, done before the agent's first look at
    /// grubenv.
    pub fn start(self: &Rc<Self>, esp: &Path, slot_a: Option<&Path>, slot_b: Option<&Path>) {
        {
            let mut d = self.devices.borrow_mut();
            for (flag, dev) in [("--device-a", slot_a), ("--device-b", slot_b)] {
                if let Some(dev) = dev {
                    d.push(flag.into());
                    d.push(dev.as_os_str().to_owned());
                }
            }
        }
        if let Err(e) = mount_esp(esp) {
            log::error!("update agent not started: {e}");
            self.set_agent(format!("not started: {e}"));
            return;
        }
        self.started.set(true);
        if self.server.is_none() {
            log::info!("update agent not started: the config has no [update] server");
            return;
        }
        if !self.binary.exists() {
            log::error!(
                "update agent not started: {} is missing from this slot",
                self.binary.display()
            );
            self.set_agent(format!("not started: {} is missing", self.binary.display()));
            return;
        }
        tokio::task::spawn_local(self.clone().supervise_agent());
    }

    /// Runs `atoll-updater run`, restarting it with a backoff, until it
    /// asks for a reboot, says updates are off, or the host shuts down.
    async fn supervise_agent(self: Rc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // Stay stopped while an API action runs.
            while self.paused.get() > 0 && !self.stopping.get() {
                self.set_agent("paused while an update action runs");
                let resumed = self.resume.notified();
                if self.paused.get() == 0 {
                    break;
                }
                resumed.await;
            }
            if self.stopping.get() {
                return;
            }
            let guard = self.gate.lock().await;
            if self.paused.get() > 0 {
                continue;
            }
            if self.stopping.get() {
                return;
            }
            let mut cmd = self.command(&[], "run");
            let mut child = match reaper::spawn(&mut cmd) {
                Ok(c) => c,
                Err(e) => {
                    drop(guard);
                    log::error!("cannot start {}: {e}", self.binary.display());
                    self.set_agent(format!("failed to start: {e}; again in {backoff:?}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let pid = child.pid;
            self.agent_pid.set(Some(pid));
            self.set_agent(format!("running (pid {pid})"));
            log::info!("update agent started (pid {pid})");
            let output =
                tokio::task::spawn_local(log_output(child.stdout.take(), child.stderr.take()));
            let since = Instant::now();
            let wait = child.wait();
            tokio::pin!(wait);
            let mut paused = false;
            let exit = loop {
                let pause = self.pause.notified();
                tokio::select! {
                    e = &mut wait => break e,
                    _ = pause => {
                        if (self.paused.get() > 0 || self.stopping.get()) && !paused {
                            paused = true;
                            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                        }
                    }
                }
            };
            let _ = output.await;
            self.agent_pid.set(None);
            drop(guard);
            if self.stopping.get() {
                self.set_agent("stopped for the shutdown");
                return;
            }
            if paused {
                continue;
            }
            match exit {
                Some(Exit::Code(EXIT_REBOOT)) => {
                    log::info!(
                        "update agent: a release is installed and the strategy says reboot now: rebooting"
                    );
                    self.set_agent("rebooting into the installed release");
                    let _ = self.shutdown.send(ShutdownKind::Reboot);
                    return;
                }
                Some(Exit::Code(0)) => {
                    log::info!("update agent ended: updates are off");
                    self.set_agent("ended: updates are off");
                    return;
                }
                other => {
                    if since.elapsed() >= HEALTHY_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    let how = other.map_or("vanished".to_string(), |e| e.to_string());
                    log::warn!(
                        "update agent stopped ({how}); starting it again in {} s",
                        backoff.as_secs()
                    );
                    self.set_agent(format!(
                        "stopped ({how}); starting again in {} s",
                        backoff.as_secs()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// `atoll-updater [FLAGS] --esp ESP_MOUNT SUB`, output piped.
    fn command(&self, flags: &[&str], sub: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(flags)
            .args(self.devices.borrow().iter())
            .arg("--esp")
            .arg(ESP_MOUNT)
            .arg(sub)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Stops the agent and any action's updater (SIGTERM) and waits a
    /// little for them, before the containers stop at shutdown.
    pub async fn stop(&self) {
        self.stopping.set(true);
        self.pause.notify_waiters();
        self.resume.notify_waiters();
        let pids = [self.agent_pid.get(), self.action_pid.get()];
        if pids.iter().all(Option::is_none) {
            return;
        }
        for pid in pids.into_iter().flatten() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let until = Instant::now() + STOP_GRACE;
        while Instant::now() < until
            && (self.agent_pid.get().is_some() || self.action_pid.get().is_some())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log::info!("update agent stopped");
    }

    /// Answers the API's update requests.
    pub async fn serve(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<UpdateRequest>) {
        while let Some(req) = rx.recv().await {
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let (answer, reboot) = match this.act(req.action).await {
                    Ok((report, reboot)) => (Ok(report), reboot),
                    Err(e) => (Err(e), false),
                };
                let _ = req.reply.send(answer);
                if reboot {
                    // Let the answer reach the client first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = this.shutdown.send(ShutdownKind::Reboot);
                }
            });
        }
    }

    /// Carries out `action`; true when the host should reboot now.
    async fn act(&self, action: UpdateAction) -> Result<(UpdateReport, bool), String> {
        if !self.started.get() {
            return Err(format!(
                "the update agent is not running yet: {}",
                self.agent.borrow()
            ));
        }
        let needs_server = matches!(action, UpdateAction::Check | UpdateAction::Apply);
        if needs_server && self.server.is_none() {
            return Err("updates are off: the config has no [update] server".into());
        }
        let mut reboot = false;
        let outcome = match action {
            UpdateAction::Status | UpdateAction::History => String::new(),
            UpdateAction::Check | UpdateAction::Apply => {
                let mut args = vec!["check-once"];
                if action == UpdateAction::Apply {
                    // Install whatever the strategy; never reboot.
                    args = vec!["--strategy", "off", "check-once"];
                }
                let out = self.exclusive(&args).await?;
                let (text, now) = describe_check(&out)?;
                reboot = now && action == UpdateAction::Check;
                if reboot {
                    log::info!("update check through the API: {text}; rebooting");
                    format!("{text}; rebooting")
                } else {
                    log::info!("update {} through the API: {text}", action_name(action));
                    text
                }
            }
            UpdateAction::Rollback => {
                let out = self.exclusive(&["rollback"]).await?;
                log::info!("rollback through the API: {}", out.trim());
                out.trim().to_string()
            }
            UpdateAction::Reboot => {
                let status = self.status().await?;
                match &status.pending {
                    Some(p) if status.next_boot == p.slot => {
                        log::info!(
                            "reboot into {} (slot {}) requested through the API",
                            p.version,
                            p.slot
                        );
                        reboot = true;
                        format!("rebooting into {} in slot {}", p.version, p.slot)
                    }
                    _ => return Err("no update is installed and waiting for a reboot".into()),
                }
            }
        };
        let status = self.status().await;
        let outcome = match (&status, outcome.is_empty()) {
            (Err(e), true) => return Err(e.clone()),
            (_, true) => "status".to_string(),
            (_, false) => outcome,
        };
        Ok((
            UpdateReport {
                action,
                outcome,
                status: status.ok(),
                agent: self.agent.borrow().clone(),
            },
            reboot,
        ))
    }

    async fn status(&self) -> Result<UpdateStatus, String> {
        let out = self.run_once(&["status"]).await?;
        serde_json::from_str(&out)
            .map_err(|e| format!("atoll-updater status printed no status: {e}"))
    }

    /// Runs the updater with the agent paused; its stdout.
    async fn exclusive(&self, args: &[&str]) -> Result<String, String> {
        self.paused.set(self.paused.get() + 1);
        self.pause.notify_waiters();
        let result = {
            let _guard = self.gate.lock().await;
            self.run_once(args).await
        };
        self.paused.set(self.paused.get() - 1);
        self.resume.notify_waiters();
        result
    }

    /// Runs the updater once; its stdout, or its last error line.
    async fn run_once(&self, args: &[&str]) -> Result<String, String> {
        let Some((sub, flags)) = args.split_last() else {
            return Err("no updater command".into());
        };
        let mut cmd = self.command(flags, sub);
        let mut child = reaper::spawn(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.pid;
        let is_action = *sub != "status";
        if is_action {
            self.action_pid.set(Some(pid));
        }
        let out = child.stdout.take();
        let err = child.stderr.take();
        let stdout = async move {
            let mut text = String::new();
            if let Some(out) = out.and_then(|o| tokio_pipe(o.into()).ok()) {
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            text
        };
        let stderr = async move {
            let mut last = String::new();
            if let Some(err) = err.and_then(|e| tokio_pipe(e.into()).ok()) {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if is_action {
                        log_line(&line);
                    }
                    last = line;
                }
            }
            last
        };
        let work = async { tokio::join!(stdout, stderr, child.wait()) };
        let r = tokio::time::timeout(ACTION_TIMEOUT, work).await;
        if is_action {
            self.action_pid.set(None);
        }
        match r {
            Ok((text, _, Some(exit))) if exit.success() => Ok(text),
            Ok((_, last, exit)) => {
                let how = exit.map_or("vanished".to_string(), |e| e.to_string());
                let last = last.strip_prefix("atoll-updater: ").unwrap_or(&last);
                let last = last.strip_prefix("ERROR: ").unwrap_or(last);
                Err(format!("atoll-updater {sub} failed ({how}): {last}"))
            }
            Err(_) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                Err(format!(
                    "atoll-updater {sub} did not finish in {} minutes",
                    ACTION_TIMEOUT.as_secs() / 60
                ))
            }
        }
    }
}

fn action_name(a: UpdateAction) -> &'static str {
    match a {
        UpdateAction::Status => "status",
        UpdateAction::Check => "check",
        UpdateAction::Apply => "apply",
        UpdateAction::Reboot => "reboot",
        UpdateAction::Rollback => "rollback",
        UpdateAction::History => "history",
    }
}

/// `atoll-updater check-once`'s JSON outcome in a sentence, and whether it
/// says reboot now.
pub fn describe_check(json: &str) -> Result<(String, bool), String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("atoll-updater check-once printed no outcome: {e}"))?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    let kind = v.get("outcome").and_then(|x| x.as_str()).unwrap_or("");
    Ok(match kind {
        "up_to_date" => match v.get("waiting").filter(|w| !w.is_null()) {
            Some(w) => (
                format!(
                    "up to date; {} rolls out to this host at {}",
                    w.get("version").and_then(|x| x.as_str()).unwrap_or("?"),
                    w.get("at").and_then(|x| x.as_str()).unwrap_or("?")
                ),
                false,
            ),
            None => ("up to date".into(), false),
        },
        "on_trial" => (
            format!(
                "{} runs on trial: no update until it is marked good",
                s("version")
            ),
            false,
        ),
        "reboot_now" => (format!("{} is installed", s("version")), true),
        "reboot_at" => (
            format!("{} is installed; reboot at {}", s("version"), s("at")),
            false,
        ),
        "apply_on_next_reboot" => (
            format!("{} is installed; it boots at the next reboot", s("version")),
            false,
        ),
        other => {
            return Err(format!(
                "atoll-updater check-once: unknown outcome {other:?}"
            ))
        }
    })
}

/// One line of the updater's stderr into the log, at its level.
fn log_line(line: &str) {
    let rest = line.strip_prefix("atoll-updater: ").unwrap_or(line);
    if let Some(m) = rest.strip_prefix("ERROR: ") {
        log::error!("atoll-updater: {m}");
    } else if let Some(m) = rest.strip_prefix("WARN: ") {
        log::warn!("atoll-updater: {m}");
    } else if let Some(m) = rest.strip_prefix("DEBUG: ") {
        log::debug!("atoll-updater: {m}");
    } else {
        let m = rest.strip_prefix("INFO: ").unwrap_or(rest);
        log::info!("atoll-updater: {m}");
    }
}

/// Logs the agent's stdout and stderr lines until both close.
async fn log_output(
    out: Option<std::process::ChildStdout>,
    err: Option<std::process::ChildStderr>,
) {
    let stdout = async move {
        if let Some(out) = out.and_then(|o| tokio_pipe(o.into()).ok()) {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log::info!("atoll-updater: {line}");
            }
        }
    };
    let stderr = async move {
        if let Some(err) = err.and_then(|e| tokio_pipe(e.into()).ok()) {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_line(&line);
            }
        }
    };
    tokio::join!(stdout, stderr);
}

/// Mounts the ESP on [`ESP_MOUNT`] for the agent (read-write: it writes
/// grubenv there), unless something is mounted there already.
fn mount_esp(esp: &Path) -> Result<(), String> {
    use nix::mount::MsFlags;
    let target = Path::new(ESP_MOUNT);
    let _ = std::fs::create_dir_all(target);
    if is_mount_point(target) {
        return Ok(());
    }
    nix::mount::mount(
        Some(esp),
        target,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting the ESP {} on {ESP_MOUNT}: {e}", esp.display()))
}

fn is_mount_point(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn check_outcomes_in_words() {
        assert_eq!(
            describe_check(r#"{"outcome":"reboot_now","version":"0.2.0"}"#).unwrap(),
            ("0.2.0 is installed".to_string(), true)
        );
        assert_eq!(
            describe_check(r#"{"outcome":"up_to_date","waiting":null}"#).unwrap(),
            ("up to date".to_string(), false)
        );
        let (t, now) = describe_check(
            r#"{"outcome":"up_to_date","waiting":{"version":"0.3.0","at":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        assert!(
            !now && t.contains("0.3.0") && t.contains("2026-01-01"),
            "{t}"
        );
        let (t, now) =
            describe_check(r#"{"outcome":"apply_on_next_reboot","version":"0.2.0"}"#).unwrap();
        assert!(!now && t.contains("next reboot"), "{t}");
        assert!(describe_check("not json").is_err());
        assert!(describe_check(r#"{"outcome":"exploded"}"#).is_err());
    }
}
