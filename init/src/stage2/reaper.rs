//! Reaping: as PID 1 we inherit every orphan and must collect its exit
//! status, or it stays a zombie forever.
//!
//! One reaper calls `waitpid(-1, WNOHANG)` whenever SIGCHLD arrives. PID 1's
//! own children (mke2fs) are started through [`spawn`], which records the pid
//! so their status reaches whoever waits for it. `tokio::process` is not
//! used: it would race with the reaper for the same statuses. The registry
//! lock is held both while spawning and while reaping, so the reaper never
//! takes the status of a child whose spawn is still in progress (std itself
//! waits for a child whose exec failed).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

static WAITERS: Mutex<Option<HashMap<i32, oneshot::Sender<Exit>>>> = Mutex::new(None);

fn waiters() -> MutexGuard<'static, Option<HashMap<i32, oneshot::Sender<Exit>>>> {
    match WAITERS.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A child started through [`spawn`].
#[derive(Debug)]
pub struct Pending {
    pub pid: u32,
    /// The child's piped stdout and stderr (`Stdio::piped()`), if any.
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
    rx: oneshot::Receiver<Exit>,
}

impl Pending {
    /// Waits for the exit, from a thread that is not the runtime's. `None`
    /// if the reaper went away.
    pub fn wait_blocking(self) -> Option<Exit> {
        self.rx.blocking_recv().ok()
    }

    pub async fn wait(self) -> Option<Exit> {
        self.rx.await.ok()
    }
}

/// Starts `cmd`; its exit status is delivered through the returned [`Pending`].
pub fn spawn(cmd: &mut Command) -> std::io::Result<Pending> {
    let mut guard = waiters();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // The std handle is dropped without waiting: the reaper collects the status.
    drop(child);
    let (tx, rx) = oneshot::channel();
    guard
        .get_or_insert_with(HashMap::new)
        .insert(pid as i32, tx);
    Ok(Pending {
        pid,
        stdout,
        stderr,
        rx,
    })
}

/// Runs `start`, which forks a child and returns its pid, with the reaper
/// held off, and registers that pid: its status reaches the returned
/// [`Pending`]. For children not made by `Command` (containers, which the
/// runtime forks itself and whose intermediate processes it reaps by pid
/// before returning). Blocking: the reaper waits while `start` runs.
pub fn start_with<E>(start: impl FnOnce() -> Result<i32, E>) -> Result<Pending, E> {
    let mut guard = waiters();
    let pid = start()?;
    let (tx, rx) = oneshot::channel();
    guard.get_or_insert_with(HashMap::new).insert(pid, tx);
    Ok(Pending {
        pid: pid as u32,
        stdout: None,
        stderr: None,
        rx,
    })
}

/// Collects every exited child; returns how many.
pub fn reap_all() -> usize {
    let mut guard = waiters();
    let mut n = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(WaitStatus::Exited(pid, code)) => {
                n += 1;
                deliver(&mut guard, pid, Exit::Code(code));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                n += 1;
                deliver(&mut guard, pid, Exit::Signal(sig as i32));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break, // ECHILD: no children left
        }
    }
    n
}

fn deliver(
    guard: &mut MutexGuard<'static, Option<HashMap<i32, oneshot::Sender<Exit>>>>,
    pid: Pid,
    exit: Exit,
) {
    if let Some(tx) = guard.as_mut().and_then(|m| m.remove(&pid.as_raw())) {
        let _ = tx.send(exit);
    }
}

/// Reaps on every SIGCHLD, forever.
pub async fn run() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("reaper: cannot watch SIGCHLD ({e}); polling every second");
            None
        }
    };
    loop {
        reap_all();
        match sigchld.as_mut() {
            Some(s) => {
                // A periodic sweep as well, in case a signal is ever coalesced away.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv()).await;
            }
            None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn child_status_reaches_the_waiter() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let reaper = tokio::spawn(run());
            let ok = spawn(Command::new("/bin/sh").args(["-c", "exit 0"])).unwrap();
            let bad = spawn(Command::new("/bin/sh").args(["-c", "exit 3"])).unwrap();
            // Waiting from another thread, as the DATA setup does.
            let bad = tokio::task::spawn_blocking(move || bad.wait_blocking());
            assert_eq!(ok.wait().await, Some(Exit::Code(0)));
            assert_eq!(bad.await.unwrap(), Some(Exit::Code(3)));
            assert!(spawn(&mut Command::new("/nonexistent/binary")).is_err());
            reaper.abort();
        });
    }
}
