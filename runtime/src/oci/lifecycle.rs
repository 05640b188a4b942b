//! The OCI lifecycle (runtime-spec `runtime.md`) on a bundle, as runc
//! runs it:
//!
//! - [`create`]: reads `config.json`, makes the state dir, `exec.fifo`
//!   and the cgroup, and starts the container's init, which does all its
//!   setup and then blocks opening `exec.fifo` for writing. The init is
//!   the caller's child (`run::process` clones it with `CLONE_PARENT`), so
//!   when the command line exits it is reparented to the caller's
//!   subreaper or init, as runc's is.
//! - [`start`]: opens the FIFO for reading (the init's open returns, it
//!   writes a byte and execs the user program), removes the FIFO.
//! - [`state()`]: `creating` while create runs, `created` while the FIFO
//!   exists, `running` while the init lives, `stopped` after (also when
//!   the pid was reused: the init's start time is kept and compared).
//! - [`kill`]: a signal to the init (or, `--all`, every process in its
//!   cgroup).
//! - [`delete`]: removes the cgroup and the state dir of a stopped
//!   container; a created one is killed first (as runc does), a running
//!   one only with `force`.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;
use serde::Deserialize;

use super::state::{
    self, init_alive, rfc3339_now, OciState, SavedState, StateError, StateRoot, Status, EXEC_FIFO,
};
use crate::run::cgroup::{self, Cgroup, CgroupError};
use crate::run::process::{self, Container, ExecFifo, ProcessError, StartOptions, Stdio};
use crate::run::rootfs::RootfsSource;
use crate::run::spec::{Resources, Spec};

/// Where cgroup v2 is expected.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of containers' cgroups when config.json names none.
pub const DEFAULT_CGROUP_PARENT: &str = "atoll-runtime";

/// Errors of the lifecycle commands. Messages of the ones engines match
/// on are runc's.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("bundle {0:?}")]
    Bundle(PathBuf, #[source] std::io::Error),
    #[error("reading {0:?}")]
    ReadConfig(PathBuf, #[source] std::io::Error),
    #[error("parsing {0:?}")]
    ParseConfig(PathBuf, #[source] serde_json::Error),
    #[error("cannot allocate tty if atoll-runtime will detach without setting console socket")]
    TerminalWithoutSocket,
    #[error("cannot use console socket if atoll-runtime will not detach or allocate tty")]
    SocketWithoutTerminal,
    #[error("console socket {0:?}")]
    ConsoleSocket(PathBuf, #[source] std::io::Error),
    #[error("allocating a pty")]
    Pty(#[source] nix::Error),
    #[error("duplicating the pty")]
    PtyDup(#[source] std::io::Error),
    #[error("making the exec fifo {0:?}")]
    Fifo(PathBuf, #[source] nix::Error),
    #[error("cgroup v2 is not mounted at {CGROUP_ROOT}, and config.json asks for resource limits")]
    NoCgroup2,
    #[error("cgroup path {0:?} must be under {CGROUP_ROOT} without '..'")]
    BadCgroupPath(String),
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("starting the container")]
    Process(#[from] ProcessError),
    #[error("the container's init (pid {0}) exited during create")]
    InitGone(i32),
    #[error("writing the pid file {0:?}")]
    PidFile(PathBuf, #[source] std::io::Error),
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartState(Status),
    #[error("opening the exec fifo {0:?}")]
    OpenFifo(PathBuf, #[source] std::io::Error),
    #[error("the container's init exited before start")]
    ExitedBeforeStart,
    #[error("container not running")]
    NotRunning,
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    #[error("signalling pid {0}")]
    Kill(i32, #[source] nix::Error),
    #[error("cannot delete container {0} that is not stopped: {1}")]
    DeleteNotStopped(String, Status),
    #[error("container {0} did not stop within {1:?} after SIGKILL")]
    StillAlive(String, Duration),
}

/// `create` options (runc's flags).
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// The config.json keys `Spec` does not hold.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleExtras {
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    linux: Option<LinuxExtras>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinuxExtras {
    #[serde(default)]
    cgroups_path: Option<String>,
}

/// A bundle's config.json, with root.path made absolute.
fn load_bundle(bundle: &Path) -> Result<(PathBuf, Spec, BundleExtras), OciError> {
    let bundle = std::fs::canonicalize(bundle).map_err(|e| OciError::Bundle(bundle.into(), e))?;
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| OciError::ReadConfig(path.clone(), e))?;
    let mut spec: Spec =
        serde_json::from_slice(&bytes).map_err(|e| OciError::ParseConfig(path.clone(), e))?;
    let extras: BundleExtras =
        serde_json::from_slice(&bytes).map_err(|e| OciError::ParseConfig(path.clone(), e))?;
    spec.root.path = bundle.join(&spec.root.path);
    Ok((bundle, spec, extras))
}

fn has_limits(r: &Option<Resources>) -> bool {
    r.as_ref()
        .is_some_and(|r| !cgroup::limit_files(r).is_empty())
}

/// The container's cgroup directory: `cgroupsPath` under [`CGROUP_ROOT`],
/// else `atoll-runtime/ID`. `None` when cgroup v2 is not there and no
/// limits are asked for (the container runs in the caller's cgroup).
fn cgroup_dir(spec: &Spec, extras: &BundleExtras, id: &str) -> Result<Option<PathBuf>, OciError> {
    let root = Path::new(CGROUP_ROOT);
    if !cgroup::is_cgroup2(root) {
        return if has_limits(&spec.linux.resources) {
            Err(OciError::NoCgroup2)
        } else {
            Ok(None)
        };
    }
    let rel = match extras
        .linux
        .as_ref()
        .and_then(|l| l.cgroups_path.as_deref())
    {
        Some(p) if !p.is_empty() => p.trim_start_matches('/').to_string(),
        _ => format!("{DEFAULT_CGROUP_PARENT}/{id}"),
    };
    let rel_path = Path::new(&rel);
    let ok = rel_path
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && rel_path.file_name().is_some();
    if !ok {
        return Err(OciError::BadCgroupPath(rel));
    }
    Ok(Some(root.join(rel_path)))
}

/// Open an existing cgroup directory (no limits touched).
fn open_cgroup(dir: &Path) -> Result<Cgroup, OciError> {
    let (parent, name) = match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(OciError::BadCgroupPath(dir.display().to_string())),
    };
    Ok(Cgroup::create(parent, name, &Resources::default())?)
}

/// Set FD_CLOEXEC.
fn cloexec(fd: &OwnedFd) -> Result<(), nix::Error> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map(|_| ())
}

/// A pty whose master goes to the console socket (SCM_RIGHTS, as runc
/// sends it); the slave becomes the container's stdio.
fn console_stdio(socket: &Path) -> Result<Stdio, OciError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let pty = nix::pty::openpty(None, None).map_err(OciError::Pty)?;
    cloexec(&pty.master).map_err(OciError::Pty)?;
    cloexec(&pty.slave).map_err(OciError::Pty)?;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| OciError::ConsoleSocket(socket.into(), e))?;
    let fds = [pty.master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| OciError::ConsoleSocket(socket.into(), e.into()))?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(OciError::PtyDup);
    Ok(Stdio {
        stdin: Some(dup(&pty.slave)?),
        stdout: Some(dup(&pty.slave)?),
        stderr: Some(pty.slave),
    })
}

/// `create`: everything up to the user program's execve. Returns the
/// saved state and the init (a child of this process until it exits).
pub fn create(
    root: &StateRoot,
    id: &str,
    opts: &CreateOptions,
) -> Result<(SavedState, Container), OciError> {
    state::validate_id(id)?;
    let (bundle, spec, extras) = load_bundle(&opts.bundle)?;
    match (spec.process.terminal, &opts.console_socket) {
        (true, None) => return Err(OciError::TerminalWithoutSocket),
        (false, Some(_)) => return Err(OciError::SocketWithoutTerminal),
        _ => {}
    }
    let cgroup_path = cgroup_dir(&spec, &extras, id)?;
    let dir = root.create_dir(id)?;
    let mut saved = SavedState {
        oci: OciState {
            oci_version: spec.oci_version.clone(),
            id: id.to_string(),
            pid: 0,
            status: Status::Creating,
            bundle,
            rootfs: spec.root.path.clone(),
            created: rfc3339_now(),
            owner: String::new(),
            annotations: extras.annotations.clone(),
        },
        init_start_time: 0,
        cgroup: cgroup_path.clone(),
    };
    let mut cgroup = None;
    let mut started: Option<Container> = None;
    let result = (|| -> Result<(), OciError> {
        root.save(&saved)?;
        let fifo = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
            .map_err(|e| OciError::Fifo(fifo.clone(), e))?;
        if let Some(path) = &cgroup_path {
            let (parent, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
                (Some(p), Some(n)) => (p, n),
                _ => return Err(OciError::BadCgroupPath(path.display().to_string())),
            };
            let resources = spec.linux.resources.clone().unwrap_or_default();
            cgroup = Some(Cgroup::create(parent, name, &resources)?);
        }
        let dir_fd = nix::fcntl::open(
            &dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OciError::Fifo(dir.clone(), e))?;
        // SAFETY: open returned a new fd that nothing else owns.
        let dir_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dir_fd) };
        let stdio = match &opts.console_socket {
            Some(socket) => console_stdio(socket)?,
            None => Stdio::default(),
        };
        let options = StartOptions {
            exec_fifo: Some(ExecFifo {
                dir: dir_fd,
                name: c"exec.fifo".to_owned(),
            }),
            controlling_terminal: spec.process.terminal,
        };
        let container =
            process::start_with(&spec, &RootfsSource::Dir, cgroup.as_ref(), stdio, options)?;
        let pid = container.pid();
        started = Some(container);
        saved.init_start_time = state::process_start_time(pid).ok_or(OciError::InitGone(pid))?;
        saved.oci.pid = pid;
        saved.oci.status = Status::Created;
        root.save(&saved)?;
        if let Some(pid_file) = &opts.pid_file {
            write_pid_file(pid_file, pid)?;
        }
        Ok(())
    })();
    match (result, started) {
        (Ok(()), Some(container)) => Ok((saved, container)),
        (Ok(()), None) => Err(OciError::InitGone(0)),
        (Err(e), started) => {
            if let Some(mut c) = started {
                let _ = c.kill(nix::sys::signal::Signal::SIGKILL);
                let _ = c.wait();
            }
            if let Some(cg) = cgroup {
                let _ = cg.remove();
            }
            let _ = root.remove(id);
            Err(e)
        }
    }
}

/// The pid file, written through a temp file and a rename (as runc).
fn write_pid_file(path: &Path, pid: i32) -> Result<(), OciError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{}", name.unwrap_or_default()));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| OciError::PidFile(path.into(), e))
}

/// The status now, from the saved state, the FIFO and /proc.
pub fn current_status(root: &StateRoot, saved: &SavedState) -> Result<Status, OciError> {
    if saved.oci.status == Status::Creating {
        return Ok(Status::Creating);
    }
    if !init_alive(saved) {
        return Ok(Status::Stopped);
    }
    let fifo = root.dir(&saved.oci.id)?.join(EXEC_FIFO);
    Ok(if fifo.exists() {
        Status::Created
    } else {
        Status::Running
    })
}

/// `state`: the OCI state as it is now (pid 0 once stopped, as runc).
pub fn state(root: &StateRoot, id: &str) -> Result<OciState, OciError> {
    let saved = root.load(id)?;
    let status = current_status(root, &saved)?;
    let mut oci = saved.oci;
    oci.status = status;
    if status == Status::Stopped {
        oci.pid = 0;
    }
    Ok(oci)
}

/// `list`: every container's state.
pub fn list(root: &StateRoot) -> Result<Vec<OciState>, OciError> {
    let mut out = Vec::new();
    for id in root.ids()? {
        match state(root, &id) {
            Ok(s) => out.push(s),
            // Removed meanwhile, or a directory create left half made.
            Err(OciError::State(StateError::NotExist)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `start`: let a created container's init exec the user program.
pub fn start(root: &StateRoot, id: &str) -> Result<(), OciError> {
    let mut saved = root.load(id)?;
    match current_status(root, &saved)? {
        Status::Created => {}
        Status::Stopped => return Err(OciError::StartStopped),
        Status::Running => return Err(OciError::StartRunning),
        s => return Err(OciError::StartState(s)),
    }
    let fifo = root.dir(id)?.join(EXEC_FIFO);
    let open_err = |e: std::io::Error| OciError::OpenFifo(fifo.clone(), e);
    // Non-blocking, so a dead init cannot hang us: poll, and check it is
    // alive between polls.
    let fd = nix::fcntl::open(
        &fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| open_err(e.into()))?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    loop {
        let mut buf = [0u8; 1];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(1) => break,
            // EOF: a writer came and went without the byte.
            Ok(_) if !init_alive(&saved) => return Err(OciError::ExitedBeforeStart),
            Ok(_) | Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(open_err(e.into())),
        }
        if !init_alive(&saved) {
            return Err(OciError::ExitedBeforeStart);
        }
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u8));
    }
    drop(fd);
    let _ = std::fs::remove_file(&fifo);
    saved.oci.status = Status::Running;
    root.save(&saved)?;
    Ok(())
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number (1..=64);
/// runc's rules.
pub fn parse_signal(s: &str) -> Result<i32, OciError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(OciError::BadSignal(s.to_string()))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| OciError::BadSignal(s.to_string()))
}

fn send_signal(pid: i32, signal: i32) -> Result<(), OciError> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(OciError::Kill(pid, nix::Error::last()));
    }
    Ok(())
}

/// `kill`: `signal` to the init, or with `all` to every process in the
/// container's cgroup.
pub fn kill(root: &StateRoot, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
    let saved = root.load(id)?;
    let status = current_status(root, &saved)?;
    if matches!(status, Status::Stopped | Status::Creating) {
        return Err(OciError::NotRunning);
    }
    if all {
        if let Some(dir) = &saved.cgroup {
            for pid in open_cgroup(dir)?.pids()? {
                match send_signal(pid, signal) {
                    Err(OciError::Kill(_, nix::Error::ESRCH)) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
    }
    match send_signal(saved.oci.pid, signal) {
        Err(OciError::Kill(_, nix::Error::ESRCH)) => Err(OciError::NotRunning),
        r => r,
    }
}

/// How long `delete` waits for a SIGKILLed init to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// `delete`: remove a stopped container (kill a created one, or a running
/// one with `force`). A missing container is an error unless `force`.
pub fn delete(root: &StateRoot, id: &str, force: bool) -> Result<(), OciError> {
    let saved = match root.load(id) {
        Ok(s) => s,
        Err(StateError::NotExist) if force => {
            root.remove(id)?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let status = current_status(root, &saved)?;
    match status {
        Status::Stopped => {}
        Status::Created => stop(&saved)?,
        Status::Running | Status::Creating if force => stop(&saved)?,
        s => return Err(OciError::DeleteNotStopped(id.to_string(), s)),
    }
    if let Some(dir) = &saved.cgroup {
        open_cgroup(dir)?.remove()?;
    }
    root.remove(id)?;
    Ok(())
}

/// SIGKILL the init (and the cgroup) and wait for it to be gone.
fn stop(saved: &SavedState) -> Result<(), OciError> {
    if let Some(dir) = &saved.cgroup {
        for pid in open_cgroup(dir)?.pids()? {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
    if init_alive(saved) {
        let _ = send_signal(saved.oci.pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    while init_alive(saved) {
        if Instant::now() > deadline {
            return Err(OciError::StillAlive(saved.oci.id.clone(), KILL_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").ok(), Some(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill").ok(), Some(libc::SIGKILL));
        assert_eq!(parse_signal("SIGHUP").ok(), Some(libc::SIGHUP));
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert_eq!(parse_signal("40").ok(), Some(40));
        for bad in ["0", "65", "-1", "NOPE", "SIG", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_extras() {
        let json = r#"{"ociVersion":"1.0.2","process":{"args":["sh"]},"root":{"path":"rootfs"},
            "annotations":{"a":"b"},"linux":{"cgroupsPath":"/x/y","namespaces":[{"type":"pid"}]}}"#;
        let extras: BundleExtras = serde_json::from_str(json).expect("extras");
        assert_eq!(extras.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(
            extras.linux.and_then(|l| l.cgroups_path).as_deref(),
            Some("/x/y")
        );
        let spec: Spec = serde_json::from_str(json).expect("spec");
        assert_eq!(spec.process.args, ["sh"]);
    }

    #[test]
    fn bad_cgroup_paths_refused() {
        let spec: Spec = serde_json::from_str(r#"{"process":{"args":["sh"]},"root":{"path":"r"}}"#)
            .expect("spec");
        for bad in ["../etc", "/a/../../b"] {
            let extras = BundleExtras {
                annotations: BTreeMap::new(),
                linux: Some(LinuxExtras {
                    cgroups_path: Some(bad.to_string()),
                }),
            };
            if cgroup::is_cgroup2(Path::new(CGROUP_ROOT)) {
                assert!(cgroup_dir(&spec, &extras, "c").is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn unknown_container() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = StateRoot::new(dir.path());
        let msg = |e: OciError| e.to_string();
        assert_eq!(
            state(&root, "nope").map_err(msg).err().as_deref(),
            Some("container does not exist")
        );
        assert!(start(&root, "nope").is_err());
        assert!(kill(&root, "nope", 15, false).is_err());
        assert!(delete(&root, "nope", false).is_err());
        assert!(delete(&root, "nope", true).is_ok());
    }
}
