//! Running a command in a running container from PID 1: `atollctl exec`
//! (with the client's stdin and a terminal of its own on request) and
//! healthcheck probes. The runtime's exec joins the container's namespaces
//! and cgroup with the container's own privileges; here the process is
//! started with the reaper held off (its exit status comes back through
//! the reaper, never through a second `waitpid`), its output read
//! asynchronously, and it is killed when it runs over its time or, when
//! interactive, when its client hangs up.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use atoll_common::api::{ExecInput, TermSize};

use atoll_runtime::run::cgroup::Cgroup;
use atoll_runtime::run::exec::{self, ExecSpec};
use atoll_runtime::run::process;
use atoll_runtime::run::spec::{Resources, Spec};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::image::tokio_pipe;
use crate::stage2::reaper::{self, Exit};
use crate::utf8::Utf8Chunks;

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

/// The client's side of an interactive exec.
#[derive(Debug)]
pub struct ExecIo {
    /// Run it on a terminal of its own (a pseudo-terminal pair; its output
    /// all comes as `stdout`).
    pub tty: bool,
    pub size: Option<TermSize>,
    /// What the client sends; closed when it hangs up.
    pub input: mpsc::UnboundedReceiver<ExecInput>,
}

/// Where the command's stdin goes.
enum InputSink {
    Pipe(tokio::net::unix::pipe::Sender),
    Terminal(Rc<AsyncFd<OwnedFd>>),
}

/// Runs `args` in the container, handing each chunk of output to
/// `output(stream, text)`; kills it after `timeout`, if one is given.
/// With `io`, its stdin comes from the client (and its stdio is a terminal
/// if asked); otherwise stdin is /dev/null.
pub async fn run(
    target: &ExecTarget,
    args: Vec<String>,
    timeout: Option<Duration>,
    io: Option<ExecIo>,
    mut output: impl FnMut(&'static str, String),
) -> Result<ExecEnd, String> {
    let mut spec = ExecSpec::from_spec(&target.spec, args);
    let tty = io.as_ref().is_some_and(|io| io.tty);
    let size = io.as_ref().and_then(|io| io.size);
    let wants_stdin = io.is_some();
    if tty {
        spec.terminal = true;
        if !spec.env.iter().any(|e| e.starts_with("TERM=")) {
            spec.env.push("TERM=xterm".into());
        }
    }
    let t = target.clone();
    let started = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let cgroup = Cgroup::create(&t.cgroup_parent, &t.cgroup_name, &Resources::default())
            .map_err(|e| format!("cgroup: {e}"))?;
        let (stdio, readers, sink) = if tty {
            let (master, slave) = open_terminal(size)?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("terminal: {e}"));
            let stdio = process::Stdio {
                stdin: Some(dup(&slave)?),
                stdout: Some(dup(&slave)?),
                stderr: Some(slave),
            };
            (stdio, Vec::new(), Some(Sink::Terminal(master)))
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let (stdin, sink) = if wants_stdin {
                let (in_r, in_w) = pipe()?;
                (in_r, Some(Sink::Pipe(in_w)))
            } else {
                let null =
                    std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
                (null.into(), None)
            };
            let stdio = process::Stdio {
                stdin: Some(stdin),
                stdout: Some(out_w),
                stderr: Some(err_w),
            };
            (stdio, vec![(out_r, "stdout"), (err_r, "stderr")], sink)
        };
        let pending = reaper::start_with(|| {
            exec::exec(t.pid as i32, &spec, Some(&cgroup), stdio).map(|c| c.pid())
        })
        .map_err(|e| e.to_string())?;
        Ok((pending, readers, sink))
    })
    .await
    .map_err(|e| format!("exec: {e}"))??;
    let (pending, readers, sink) = started;
    let pid = pending.pid;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, String)>();
    for (fd, stream) in readers {
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let Ok(mut pipe) = tokio_pipe(fd) else {
                return;
            };
            let mut text = Utf8Chunks::default();
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = tx.send((stream, text.push(&buf[..n])));
            }
            let rest = text.finish();
            if !rest.is_empty() {
                let _ = tx.send((stream, rest));
            }
        });
    }
    // The client hanging up (its input closing) kills the command.
    let (hangup_tx, mut hangup) = oneshot::channel::<()>();
    let sink = match sink {
        None => None,
        Some(Sink::Pipe(fd)) => Some(InputSink::Pipe(
            tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(|e| format!("stdin: {e}"))?,
        )),
        Some(Sink::Terminal(master)) => {
            let master = Rc::new(nonblocking(master)?);
            let tx = tx.clone();
            let reader = Rc::clone(&master);
            tokio::task::spawn_local(async move {
                let mut text = Utf8Chunks::default();
                let mut buf = vec![0u8; 8192];
                // EIO once the last process holding the terminal is gone.
                while let Ok(n) = read_terminal(&reader, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = tx.send(("stdout", text.push(&buf[..n])));
                }
                let rest = text.finish();
                if !rest.is_empty() {
                    let _ = tx.send(("stdout", rest));
                }
            });
            Some(InputSink::Terminal(master))
        }
    };
    if let (Some(io), Some(sink)) = (io, sink) {
        tokio::task::spawn_local(forward_input(io.input, sink, hangup_tx));
    }
    drop(tx);
    let mut exit = Box::pin(pending.wait());
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut exited: Option<Option<Exit>> = None;
    let mut streams_open = true;
    let kill = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    loop {
        tokio::select! {
            e = &mut exit, if exited.is_none() => exited = Some(e),
            chunk = rx.recv(), if streams_open => match chunk {
                Some((stream, text)) => output(stream, text),
                None => streams_open = false,
            },
            _ = &mut deadline, if timeout.is_some() => {
                kill();
                return Ok(ExecEnd::TimedOut);
            }
            Ok(()) = &mut hangup, if exited.is_none() => {
                kill();
                return Err("the client hung up; the command was killed".into());
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

/// The parent's end of the command's stdin, before it is made async.
enum Sink {
    Pipe(OwnedFd),
    Terminal(OwnedFd),
}

/// A pseudo-terminal pair (master, slave) of `size`.
fn open_terminal(size: Option<TermSize>) -> Result<(OwnedFd, OwnedFd), String> {
    let winsize = size.map(|s| nix::pty::Winsize {
        ws_row: s.rows,
        ws_col: s.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(winsize.as_ref(), None).map_err(|e| format!("openpty: {e}"))?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| format!("terminal: {e}"))?;
    }
    Ok((pty.master, pty.slave))
}

fn nonblocking(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| format!("terminal: {e}"))?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("terminal: {e}"))?;
    // SAFETY: an OwnedFd's as_raw_fd is its own open descriptor, the same
    // for its whole life, and the AsyncFd owns it until dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| format!("terminal: {}", e.into_parts().1))
}

async fn read_terminal(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| nix::unistd::read(f.as_raw_fd(), buf).map_err(Into::into)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn write_terminal(fd: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| nix::unistd::write(f.get_ref(), bytes).map_err(Into::into)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, nix::pty::Winsize);

/// Feeds the client's input to the command until the client hangs up
/// (then `hangup` fires). Errors writing (the command closed its stdin or
/// exited) drop the rest of the input, as a pipe would.
async fn forward_input(
    mut input: mpsc::UnboundedReceiver<ExecInput>,
    sink: InputSink,
    hangup: oneshot::Sender<()>,
) {
    let mut sink = Some(sink);
    while let Some(msg) = input.recv().await {
        match (msg, &mut sink) {
            (ExecInput::Data { data }, Some(InputSink::Pipe(p))) => {
                if p.write_all(data.as_bytes()).await.is_err() {
                    sink = None;
                }
            }
            (ExecInput::Data { data }, Some(InputSink::Terminal(t))) => {
                if write_terminal(t, data.as_bytes()).await.is_err() {
                    sink = None;
                }
            }
            (ExecInput::Resize(size), Some(InputSink::Terminal(t))) => {
                let ws = nix::pty::Winsize {
                    ws_row: size.rows,
                    ws_col: size.cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ reads one struct winsize from the
                // pointer, which points at `ws`, alive for the call; the fd
                // is the terminal's master, open while `t` lives.
                let _ = unsafe { set_window_size(t.as_raw_fd(), &ws) };
            }
            // End of input: a closed pipe, or the terminal's EOF
            // character (^D at the start of a line, canonical mode).
            (ExecInput::Eof, Some(InputSink::Pipe(_))) => sink = None,
            (ExecInput::Eof, Some(InputSink::Terminal(t))) => {
                let _ = write_terminal(t, b"\x04").await;
            }
            (_, _) => {}
        }
    }
    let _ = hangup.send(());
}
