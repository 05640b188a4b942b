//! Running a command in a running container from PID 1: `atollctl exec`
//! and healthcheck probes. The runtime's exec joins the container's
//! namespaces and cgroup with the container's own privileges; here the
//! process is started with the reaper held off (its exit status comes back
//! through the reaper, never through a second `waitpid`), its output read
//! asynchronously, and it is killed when it runs over its time.

use std::path::PathBuf;
use std::time::Duration;

use atoll_runtime::run::cgroup::Cgroup;
use atoll_runtime::run::exec::{self, ExecSpec};
use atoll_runtime::run::process;
use atoll_runtime::run::spec::{Resources, Spec};
use tokio::io::AsyncReadExt;

use super::image::tokio_pipe;
use crate::stage2::reaper::{self, Exit};

/// What an exec needs to know about a running container.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// The container init's pid.
    pub pid: u32,
    pub spec: Spec,
    /// Its cgroup's parent and name.
    pub cgroup_parent: PathBuf,
    pub cgroup_name: String,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    /// The exit code (128 + N when killed by signal N).
    Exited(i32),
    TimedOut,
}

/// Runs `args` in the container, handing each chunk of output to
/// `output(stream, text)`; kills it after `timeout`.
pub async fn run(
    target: &ExecTarget,
    args: Vec<String>,
    timeout: Duration,
    mut output: impl FnMut(&'static str, String),
) -> Result<ExecEnd, String> {
    let spec = ExecSpec::from_spec(&target.spec, args);
    let t = target.clone();
    let started = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        let cgroup = Cgroup::create(&t.cgroup_parent, &t.cgroup_name, &Resources::default())
            .map_err(|e| format!("cgroup: {e}"))?;
        let stdio = process::Stdio {
            stdin: Some(null.into()),
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let pending = reaper::start_with(|| {
            exec::exec(t.pid as i32, &spec, Some(&cgroup), stdio).map(|c| c.pid())
        })
        .map_err(|e| e.to_string())?;
        Ok((pending, out_r, err_r))
    })
    .await
    .map_err(|e| format!("exec: {e}"))??;
    let (pending, out_r, err_r) = started;
    let pid = pending.pid;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
    for (fd, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let Ok(mut pipe) = tokio_pipe(fd) else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = tx.send((stream, String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
    }
    drop(tx);
    let mut exit = Box::pin(pending.wait());
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut exited: Option<Option<Exit>> = None;
    let mut streams_open = true;
    loop {
        tokio::select! {
            e = &mut exit, if exited.is_none() => exited = Some(e),
            chunk = rx.recv(), if streams_open => match chunk {
                Some((stream, text)) => output(stream, text),
                None => streams_open = false,
            },
            _ = &mut deadline => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Ok(ExecEnd::TimedOut);
            }
        }
        // Done when it exited and its output is drained (or, if it left
        // children holding the pipes, shortly after it exited).
        if let Some(e) = exited {
            if streams_open {
                if let Ok(Some((stream, text))) =
                    tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                {
                    output(stream, text);
                    continue;
                }
            }
            return Ok(ExecEnd::Exited(match e {
                Some(Exit::Code(c)) => c,
                Some(Exit::Signal(s)) => 128 + s,
                None => -1,
            }));
        }
    }
}
