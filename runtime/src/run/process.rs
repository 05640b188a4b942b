//! Starting the container process.
//!
//! ```text
//! caller ──fork──▶ setup process (single-threaded from here on)
//!   │                setns into the namespaces given by path (user first)
//!   │                with a user namespace and an overlay: unshare(NEWNS),
//!   │                  the overlay of idmapped layers (see [`super::idmap`])
//!   │                unshare(NEWUSER) if asked ──"U"──▶ caller writes uid/gid maps
//!   │                (caller moves it into the cgroup) ◀──"G"──
//!   │                unshare(NEWNS|NEWPID|NEWIPC|NEWUTS|NEWNET|NEWCGROUP)
//!   │                clone(CLONE_PARENT) ──▶ container init (PID 1, the caller's child)
//!   │ ◀──pid────────  exits
//!   │                                        hostname, lo up, rootfs + pivot_root,
//!   │                                        rlimits, groups/gid/uid, capabilities,
//!   │                                        no_new_privs, seccomp, execve
//!   │ ◀──error pipe (CLOEXEC): empty at exec, or the error message
//! ```
//!
//! The fork from the (possibly multi-threaded) caller is glibc's `fork`,
//! whose atfork handlers leave malloc usable in the child; everything
//! after runs in single-threaded processes, so the setup may allocate.
//! `CLONE_PARENT` (as runc's nsexec) makes the container's init a direct
//! child of the caller, which can wait for it and kill it.
//!
//! The seccomp filter is compiled before the fork. Capabilities are set
//! with rustix's `capset`/`prctl` wrappers (already a dependency, and
//! enough for bounding, ambient and the three sets: the `caps` crate would
//! add a dependency for the same calls).
//!
//! Joining namespaces (pods): a namespace in the spec with a `path` (e.g.
//! `/proc/PID/ns/net` of the pod's first container) is opened before the
//! fork and joined with setns in the setup process, the user namespace
//! first, before any new namespace is unshared (runc's order), so several
//! containers can share network, IPC and UTS namespaces. A joined UTS or
//! network namespace is left as it is (no hostname, no `lo` up): its
//! owner set it up.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};
use seccompiler::BpfProgram;

use super::cgroup::{Cgroup, CgroupError};
use super::idmap::{self, IdmapError, IdmappedOverlay};
use super::rootfs::{self, RootfsSource};
use super::seccomp::{self, SeccompError};
use super::spec::{
    capability_mask, Capabilities, NamespaceType, Spec, SpecError, User, ALL_CAPABILITIES,
};
use super::sys::LinuxMounts;

/// The error and its sources, joined with ": ": the shared function,
/// re-exported where the health checks already name it.
use atoll_common::error::error_chain;

/// Errors starting or managing a container process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("invalid spec")]
    Spec(#[from] SpecError),
    #[error("seccomp")]
    Seccomp(#[from] SeccompError),
    #[error("unknown rlimit {0:?}")]
    Rlimit(String),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("the spec has no args")]
    NoArgs,
    #[error("opening the namespace {0:?} to join")]
    OpenNamespace(PathBuf, #[source] Errno),
    #[error("creating a pipe")]
    Pipe(#[source] Errno),
    #[error("forking the setup process")]
    Fork(#[source] Errno),
    #[error("talking to the setup process")]
    Sync(#[source] std::io::Error),
    #[error("writing {path:?}")]
    IdMap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("moving the container into its cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("preparing the root filesystem for the user namespace")]
    Idmap(#[from] IdmapError),
    #[error("giving the exec fifo to the container's root")]
    ExecFifo(#[source] Errno),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("waiting for pid {0}")]
    Wait(i32, #[source] Errno),
    #[error("signalling pid {0}")]
    Kill(i32, #[source] Errno),
}

/// File descriptors for the container's stdin, stdout and stderr; `None`
/// leaves the caller's.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Options for [`start_with`] beyond [`start`]'s.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Hold the init before execve until `exec_fifo` is opened for
    /// reading (the OCI `create`/`start` split, as runc's `exec.fifo`).
    pub exec_fifo: Option<ExecFifo>,
    /// Make the init a session leader with its stdin (a terminal) as the
    /// controlling terminal (`process.terminal`).
    pub controlling_terminal: bool,
}

/// A FIFO the init opens for writing (blocking until a reader opens it)
/// and writes one byte to, after all setup and just before execve. It is
/// opened relative to `dir`, a directory fd taken before the fork, so it
/// is reachable after pivot_root without /proc.
#[derive(Debug)]
pub struct ExecFifo {
    pub dir: OwnedFd,
    pub name: CString,
}

/// How the container's init ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell's number: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s as i32,
        }
    }
}

/// A started container: its init's pid (in the caller's pid namespace).
#[derive(Debug)]
pub struct Container {
    pid: Pid,
    status: Option<ExitStatus>,
}

impl Container {
    /// A running child process of the caller (the exec'd process of
    /// [`super::exec`]).
    pub(super) fn from_child(pid: Pid) -> Self {
        Container { pid, status: None }
    }

    /// The init's pid as the caller sees it.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Wait for the init to exit (reaping it).
    pub fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        self.wait_flags(None)
            .map(|s| s.unwrap_or(ExitStatus::Exited(0)))
    }

    /// The exit status if the init has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        self.wait_flags(Some(WaitPidFlag::WNOHANG))
    }

    fn wait_flags(
        &mut self,
        flags: Option<WaitPidFlag>,
    ) -> Result<Option<ExitStatus>, ProcessError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        loop {
            match waitpid(self.pid, flags) {
                Ok(WaitStatus::Exited(_, code)) => {
                    self.status = Some(ExitStatus::Exited(code));
                    return Ok(self.status);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    self.status = Some(ExitStatus::Signaled(sig));
                    return Ok(self.status);
                }
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ProcessError::Wait(self.pid.as_raw(), e)),
            }
        }
    }

    /// Send a signal to the init. The init of a pid namespace gets only
    /// the signals it handles, plus SIGKILL.
    pub fn kill(&self, signal: Signal) -> Result<(), ProcessError> {
        if self.status.is_some() {
            return Ok(());
        }
        nix::sys::signal::kill(self.pid, signal)
            .map_err(|e| ProcessError::Kill(self.pid.as_raw(), e))
    }
}

/// Everything the child needs, prepared before the fork.
struct Prepared<'a> {
    spec: &'a Spec,
    rootfs: &'a RootfsSource,
    flags: CloneFlags,
    user_ns: bool,
    /// Namespaces to join, opened before the fork; the user one first.
    join: Vec<(CloneFlags, OwnedFd)>,
    /// With a new user namespace and an overlay: its idmapped layers,
    /// mounted by the setup process before it enters the namespace.
    idmapped: Option<IdmappedOverlay>,
    privileges: Privileges,
    args: Vec<CString>,
    env: Vec<CString>,
    options: StartOptions,
}

/// What the process may do once it runs the user's program, prepared
/// before the fork: the same for the container's init and for a process
/// exec'd into the container ([`super::exec`]).
pub(super) struct Privileges {
    /// bounding, effective, permitted, inheritable, ambient.
    caps: Option<[u64; 5]>,
    rlimits: Vec<(Resource, u64, u64)>,
    seccomp: Vec<BpfProgram>,
    no_new_privileges: bool,
    user: User,
}

impl Privileges {
    pub(super) fn prepare(
        caps: Option<&Capabilities>,
        rlimits: &[super::spec::Rlimit],
        seccomp: Option<&seccomp::Seccomp>,
        no_new_privileges: bool,
        user: &User,
    ) -> Result<Self, ProcessError> {
        let seccomp = match seccomp {
            Some(profile) => seccomp::compile(profile)?,
            None => Vec::new(),
        };
        let caps = match caps {
            Some(c) => Some([
                capability_mask(&c.bounding)?,
                capability_mask(&c.effective)?,
                capability_mask(&c.permitted)?,
                capability_mask(&c.inheritable)?,
                capability_mask(&c.ambient)?,
            ]),
            None => None,
        };
        let rlimits = rlimits
            .iter()
            .map(|r| {
                rlimit_resource(&r.kind)
                    .map(|res| (res, r.soft, r.hard))
                    .ok_or_else(|| ProcessError::Rlimit(r.kind.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Privileges {
            caps,
            rlimits,
            seccomp,
            no_new_privileges,
            user: user.clone(),
        })
    }

    /// In the (single-threaded) child, after the namespaces and the root:
    /// rlimits, the bounding set, groups/gid/uid, the capability sets and
    /// ambient capabilities, chdir to `cwd`, no_new_privs and the seccomp
    /// filter (before dropping capabilities when no_new_privs is off).
    pub(super) fn apply(&self, cwd: &Path) -> Result<(), String> {
        for (res, soft, hard) in &self.rlimits {
            rustix::process::setrlimit(
                *res,
                Rlimit {
                    current: Some(*soft),
                    maximum: Some(*hard),
                },
            )
            .map_err(|e| format!("setrlimit({res:?}): {e}"))?;
        }
        let nnp = self.no_new_privileges;
        if !nnp {
            // Without no_new_privs loading a filter needs CAP_SYS_ADMIN: do it
            // while we still have it.
            seccomp::apply(&self.seccomp).map_err(|e| error_chain(&e))?;
        }
        if let Some([bounding, ..]) = self.caps {
            for (n, name) in ALL_CAPABILITIES.iter().enumerate() {
                if bounding & (1 << n) == 0 {
                    match rustix::thread::remove_capability_from_bounding_set(
                        CapabilitySet::from_bits_retain(1 << n),
                    ) {
                        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                        Err(e) => {
                            return Err(format!("dropping {name} from the bounding set: {e}"))
                        }
                    }
                }
            }
        }
        rustix::thread::set_keep_capabilities(true).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
        let user = &self.user;
        let groups: Vec<Gid> = user
            .additional_gids
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups({groups:?}): {e}"))?;
        let gid = Gid::from_raw(user.gid);
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
        let uid = Uid::from_raw(user.uid);
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
        if let Some([_, effective, permitted, inheritable, ambient]) = self.caps {
            rustix::thread::set_capabilities(
                None,
                CapabilitySets {
                    effective: CapabilitySet::from_bits_retain(effective),
                    permitted: CapabilitySet::from_bits_retain(permitted),
                    inheritable: CapabilitySet::from_bits_retain(inheritable),
                },
            )
            .map_err(|e| format!("capset: {e}"))?;
            // The kernel raises an ambient capability only when it is both
            // permitted and inheritable; runc only warns about the others (its
            // default config.json lists ambient capabilities that are not
            // inheritable), so they are left out here the same way.
            let raisable = ambient & permitted & inheritable;
            for (n, name) in ALL_CAPABILITIES.iter().enumerate() {
                if raisable & (1 << n) != 0 {
                    rustix::thread::configure_capability_in_ambient_set(
                        CapabilitySet::from_bits_retain(1 << n),
                        true,
                    )
                    .map_err(|e| format!("raising ambient {name}: {e}"))?;
                }
            }
        }
        nix::unistd::chdir(cwd).map_err(|e| format!("chdir({cwd:?}): {e}"))?;
        if nnp {
            rustix::thread::set_no_new_privs(true)
                .map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
            seccomp::apply(&self.seccomp).map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }
}

pub(super) fn cstring(s: &str) -> Result<CString, ProcessError> {
    CString::new(s).map_err(|_| ProcessError::Nul(s.to_string()))
}

fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_CPU" => Resource::Cpu,
        "RLIMIT_FSIZE" => Resource::Fsize,
        "RLIMIT_DATA" => Resource::Data,
        "RLIMIT_STACK" => Resource::Stack,
        "RLIMIT_CORE" => Resource::Core,
        "RLIMIT_RSS" => Resource::Rss,
        "RLIMIT_NPROC" => Resource::Nproc,
        "RLIMIT_NOFILE" => Resource::Nofile,
        "RLIMIT_MEMLOCK" => Resource::Memlock,
        "RLIMIT_AS" => Resource::As,
        "RLIMIT_LOCKS" => Resource::Locks,
        "RLIMIT_SIGPENDING" => Resource::Sigpending,
        "RLIMIT_MSGQUEUE" => Resource::Msgqueue,
        "RLIMIT_NICE" => Resource::Nice,
        "RLIMIT_RTPRIO" => Resource::Rtprio,
        "RLIMIT_RTTIME" => Resource::Rttime,
        _ => return None,
    })
}

/// The clone flag of a namespace type.
pub fn namespace_flag(kind: NamespaceType) -> CloneFlags {
    match kind {
        NamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        NamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        NamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        NamespaceType::Network => CloneFlags::CLONE_NEWNET,
        NamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        NamespaceType::User => CloneFlags::CLONE_NEWUSER,
    }
}

/// The clone flags for the spec's new namespaces (those without a path),
/// and whether a new user namespace is asked for (excluded from the flags:
/// it is unshared first, on its own).
pub fn namespace_flags(spec: &Spec) -> Result<(CloneFlags, bool), ProcessError> {
    let mut flags = CloneFlags::empty();
    let mut user = false;
    for ns in spec.linux.namespaces.iter().filter(|n| n.path.is_none()) {
        match ns.kind {
            NamespaceType::User => user = true,
            kind => flags |= namespace_flag(kind),
        }
    }
    Ok((flags, user))
}

/// The namespaces the spec joins by path, the user namespace first (it
/// gives the capabilities to join the others it owns).
pub fn namespaces_to_join(spec: &Spec) -> Vec<(CloneFlags, PathBuf)> {
    let mut join: Vec<(CloneFlags, PathBuf)> = spec
        .linux
        .namespaces
        .iter()
        .filter_map(|n| Some((namespace_flag(n.kind), n.path.clone()?)))
        .collect();
    join.sort_by_key(|(flag, _)| *flag != CloneFlags::CLONE_NEWUSER);
    join
}

/// Open a namespace file (`/proc/PID/ns/net`) for setns.
pub(super) fn open_namespace(path: &Path) -> Result<OwnedFd, ProcessError> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a new fd that nothing else owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })
    .map_err(|e| ProcessError::OpenNamespace(path.to_path_buf(), e))
}

fn prepare<'a>(
    spec: &'a Spec,
    rootfs: &'a RootfsSource,
    options: StartOptions,
) -> Result<Prepared<'a>, ProcessError> {
    let (flags, user_ns) = namespace_flags(spec)?;
    let join = namespaces_to_join(spec)
        .into_iter()
        .map(|(flag, path)| Ok((flag, open_namespace(&path)?)))
        .collect::<Result<_, ProcessError>>()?;
    let privileges = Privileges::prepare(
        spec.process.capabilities.as_ref(),
        &spec.process.rlimits,
        spec.linux.seccomp.as_ref(),
        spec.process.no_new_privileges,
        &spec.process.user,
    )?;
    if spec.process.args.is_empty() {
        return Err(ProcessError::NoArgs);
    }
    let mut idmapped = None;
    if user_ns {
        let (uid, gid) = (&spec.linux.uid_mappings, &spec.linux.gid_mappings);
        if let RootfsSource::Overlay {
            layers,
            upper,
            work,
        } = rootfs
        {
            idmapped = Some(IdmappedOverlay::prepare(layers, upper, work, uid, gid)?);
        }
        // The init opens the FIFO as the container's root.
        if let (Some(fifo), Some((root_uid, root_gid))) =
            (&options.exec_fifo, idmap::host_root(uid, gid))
        {
            nix::unistd::fchownat(
                Some(fifo.dir.as_raw_fd()),
                fifo.name.as_c_str(),
                Some(Uid::from_raw(root_uid)),
                Some(Gid::from_raw(root_gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(ProcessError::ExecFifo)?;
        }
    }
    let args = spec
        .process
        .args
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let env = spec
        .process
        .env
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        spec,
        rootfs,
        flags,
        user_ns,
        join,
        idmapped,
        privileges,
        args,
        env,
        options,
    })
}

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), ProcessError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ProcessError::Pipe)
}

/// Start the container described by `spec` (root at `spec.root.path`,
/// which must exist), in `cgroup` if given.
pub fn start(
    spec: &Spec,
    rootfs: &RootfsSource,
    cgroup: Option<&Cgroup>,
    stdio: Stdio,
) -> Result<Container, ProcessError> {
    start_with(spec, rootfs, cgroup, stdio, StartOptions::default())
}

/// [`start`] with [`StartOptions`]. With an exec FIFO it returns once the
/// init is set up and waiting on the FIFO; a failure after that (the
/// execve) is no longer reported here.
pub fn start_with(
    spec: &Spec,
    rootfs: &RootfsSource,
    cgroup: Option<&Cgroup>,
    stdio: Stdio,
    options: StartOptions,
) -> Result<Container, ProcessError> {
    let prepared = prepare(spec, rootfs, options)?;
    let (from_child_r, from_child_w) = pipe()?;
    let (to_child_r, to_child_w) = pipe()?;
    let (err_r, err_w) = pipe()?;

    // SAFETY: glibc's fork runs its atfork handlers, so the child's malloc
    // is usable even if another thread held its lock; the child touches no
    // other lock taken by other threads (no stdout, no logging, no env
    // access) and ends in execve or _exit.
    match unsafe { nix::unistd::fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Child => {
            drop(from_child_r);
            drop(to_child_w);
            drop(err_r);
            setup_process(&prepared, stdio, from_child_w, to_child_r, err_w)
        }
        ForkResult::Parent { child } => {
            drop(from_child_w);
            drop(to_child_r);
            drop(err_w);
            drop(stdio);
            let result = parent_side(&prepared, child, cgroup, from_child_r, to_child_w);
            // The setup process exits right after sending the pid (or on
            // error): reap it either way.
            if result.is_err() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            let _ = waitpid(child, None);
            setup_outcome(result, err_r).map(|pid| Container { pid, status: None })
        }
    }
}

/// After the setup process has exited: the started process's pid, or the
/// error the setup process wrote to `err_r` (a process that started but
/// reported a failure before execve is reaped here).
pub(crate) fn setup_outcome(
    result: Result<Pid, ProcessError>,
    err_r: OwnedFd,
) -> Result<Pid, ProcessError> {
    let mut message = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut message);
    match result {
        Ok(pid) if message.is_empty() => Ok(pid),
        Ok(pid) => {
            let _ = waitpid(pid, None);
            Err(ProcessError::Setup(message))
        }
        Err(_) if !message.is_empty() => Err(ProcessError::Setup(message)),
        Err(e) => Err(e),
    }
}

fn parent_side(
    p: &Prepared,
    child: Pid,
    cgroup: Option<&Cgroup>,
    from_child: OwnedFd,
    to_child: OwnedFd,
) -> Result<Pid, ProcessError> {
    let mut from = std::fs::File::from(from_child);
    let mut to = std::fs::File::from(to_child);
    let mut byte = [0u8; 1];
    from.read_exact(&mut byte).map_err(ProcessError::Sync)?;
    if let Some(cg) = cgroup {
        cg.add(child.as_raw())?;
    }
    if byte[0] == b'U' {
        let write_map = |file: &str, maps: &[super::spec::IdMapping]| {
            let path = PathBuf::from(format!("/proc/{child}/{file}"));
            std::fs::write(&path, idmap::map_text(maps))
                .map_err(|source| ProcessError::IdMap { path, source })
        };
        write_map("uid_map", &p.spec.linux.uid_mappings)?;
        write_map("gid_map", &p.spec.linux.gid_mappings)?;
    }
    to.write_all(b"G").map_err(ProcessError::Sync)?;
    let mut pid = [0u8; 4];
    from.read_exact(&mut pid).map_err(ProcessError::Sync)?;
    Ok(Pid::from_raw(i32::from_le_bytes(pid)))
}

/// A fork-like `clone(CLONE_PARENT)` from a single-threaded setup
/// process: the child (0 returned) becomes a child of the setup process's
/// parent, the runtime's caller, which can wait for it. The caller's pid
/// for the child is returned in the parent.
pub(crate) fn clone_parent() -> Result<i64, String> {
    // SAFETY: the caller is single-threaded (a fork child), so the
    // fork-like copy (no CLONE_VM, no new stack) has no lock held by
    // another thread. CLONE_PARENT makes the caller's parent its parent;
    // its exit signal is SIGCHLD.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        return Err(format!("clone: {}", Errno::last()));
    }
    Ok(ret)
}

/// Write the error to the error pipe and exit.
pub(super) fn fail(err_w: &OwnedFd, message: &str) -> ! {
    let _ = nix::unistd::write(err_w, message.as_bytes());
    // SAFETY: _exit ends the process without running atexit handlers or
    // destructors that could touch state shared with the caller.
    unsafe { libc::_exit(127) }
}

/// The setup process: user namespace, wait for the caller, the other
/// namespaces, then the container's init.
fn setup_process(
    p: &Prepared,
    stdio: Stdio,
    from_child_w: OwnedFd,
    to_child_r: OwnedFd,
    err_w: OwnedFd,
) -> ! {
    let run = || -> Result<(), String> {
        let mut to_parent =
            std::fs::File::from(from_child_w.try_clone().map_err(|e| e.to_string())?);
        let mut from_parent =
            std::fs::File::from(to_child_r.try_clone().map_err(|e| e.to_string())?);
        for (flag, fd) in &p.join {
            nix::sched::setns(fd, *flag).map_err(|e| format!("setns({flag:?}): {e}"))?;
        }
        if let Some(overlay) = &p.idmapped {
            // A mount namespace of the host's user namespace, for the
            // overlay only; the container's own comes after its user
            // namespace, with `p.flags`.
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("unshare(CLONE_NEWNS) for the overlay: {e}"))?;
            overlay
                .mount(&p.spec.root.path)
                .map_err(|e| error_chain(&e))?;
        }
        if p.user_ns {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
        }
        to_parent
            .write_all(if p.user_ns { b"U" } else { b"R" })
            .map_err(|e| format!("sync: {e}"))?;
        let mut go = [0u8; 1];
        from_parent
            .read_exact(&mut go)
            .map_err(|e| format!("sync: {e}"))?;
        if p.user_ns {
            nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .map_err(|e| format!("setresgid(0) in the user namespace: {e}"))?;
            nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .map_err(|e| format!("setresuid(0) in the user namespace: {e}"))?;
        }
        nix::sched::unshare(p.flags).map_err(|e| format!("unshare({:?}): {e}", p.flags))?;
        let ret = clone_parent()?;
        if ret == 0 {
            drop(to_parent);
            drop(from_parent);
            match container_init(p, stdio, &err_w) {
                Ok(never) => match never {},
                Err(message) => fail(&err_w, &message),
            }
        }
        let pid = i32::try_from(ret).map_err(|e| e.to_string())?;
        to_parent
            .write_all(&pid.to_le_bytes())
            .map_err(|e| format!("sync: {e}"))?;
        Ok(())
    };
    match run() {
        // SAFETY: as in `fail`.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(message) => fail(&err_w, &message),
    }
}

enum Never {}

/// The container's init: everything up to execve. Errors are messages for
/// the caller (this process cannot return).
fn container_init(p: &Prepared, stdio: Stdio, err_w: &OwnedFd) -> Result<Never, String> {
    let spec = p.spec;
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("resetting the signal mask: {e}"))?;
    for (fd, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
        if let Some(fd) = fd {
            // SAFETY: dup2 on a valid fd we own onto 0..2; the old target
            // is replaced atomically.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(format!("dup2 onto fd {target}: {}", Errno::last()));
            }
        }
    }
    if p.options.controlling_terminal {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the terminal
        // dup'ed above.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!("TIOCSCTTY: {}", Errno::last()));
        }
    }
    if let Some(h) = &spec.hostname {
        if p.flags.contains(CloneFlags::CLONE_NEWUTS) {
            nix::unistd::sethostname(h).map_err(|e| format!("sethostname({h:?}): {e}"))?;
        }
    }
    if p.flags.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    // An idmapped overlay is mounted on the root already.
    let source = if p.idmapped.is_some() {
        &RootfsSource::Dir
    } else {
        p.rootfs
    };
    rootfs::setup(&LinuxMounts, spec, source).map_err(|e| error_chain(&e))?;
    p.privileges.apply(Path::new(&spec.process.cwd))?;
    let program = find_program(&spec.process.args[0], &spec.process.env)?;
    if let Some(fifo) = &p.options.exec_fifo {
        wait_exec_fifo(fifo, err_w)?;
    }
    let err = nix::unistd::execve(&program, &p.args, &p.env).map_err(|e| e.to_string());
    Err(format!(
        "execve({program:?}): {}",
        err.err().unwrap_or_default()
    ))
}

/// Setup is done: close the error pipe (so `start_with` returns), then
/// block opening the FIFO until its reader comes, and write one byte.
fn wait_exec_fifo(fifo: &ExecFifo, err_w: &OwnedFd) -> Result<(), String> {
    // The OwnedFd is never dropped in this process (it ends in execve or
    // _exit), so closing its number here closes it once. A later `fail`
    // writes to a closed fd, or, if the number was reused by the FIFO, the
    // FIFO is closed before the error returns (it is a local below).
    let _ = nix::unistd::close(err_w.as_raw_fd());
    let fd = nix::fcntl::openat(
        Some(fifo.dir.as_raw_fd()),
        fifo.name.as_c_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening the exec fifo: {e}"))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::write(&fd, b"0").map_err(|e| format!("writing the exec fifo: {e}"))?;
    Ok(())
}

/// `arg0` if it has a slash, else the first executable match in the
/// container's PATH.
pub(super) fn find_program(arg0: &str, env: &[String]) -> Result<CString, String> {
    if arg0.contains('/') {
        return CString::new(arg0).map_err(|e| e.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::spec::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return CString::new(candidate.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string());
        }
    }
    Err(format!("{arg0:?}: not found in PATH {path:?}"))
}

/// Set IFF_UP on `lo` (a new network namespace starts with it down).
fn loopback_up() -> Result<(), Errno> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into the ifreq we own, whose
    // name is NUL-terminated.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(Signal::SIGKILL).code(), 137);
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(Resource::Nofile));
        assert_eq!(rlimit_resource("NOFILE"), None);
    }

    #[test]
    fn find_program_uses_path() {
        let found =
            find_program("sh", &["PATH=/nonexistent:/bin:/usr/bin".to_string()]).expect("sh");
        assert!(found.to_str().is_ok_and(|s| s.ends_with("/sh")));
        assert!(find_program("no-such-program-x", &["PATH=/bin".to_string()]).is_err());
        assert_eq!(
            find_program("/x/y", &[]).expect("as is").to_str(),
            Ok("/x/y")
        );
    }
}
