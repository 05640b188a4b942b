//! Running another process in a running container (`docker exec`,
//! healthcheck probes).
//!
//! ```text
//! caller ──fork──▶ setup process (single-threaded)
//!   │ ◀──"R"──────── (caller moves it into the cgroup)
//!   │ ──"G"────────▶ setns: user (if the container has its own), then
//!   │                ipc, uts, net, cgroup, pid, mnt (those that differ
//!   │                from the caller's)
//!   │                clone(CLONE_PARENT) ──▶ the process (the caller's child,
//!   │ ◀──pid────────  exits                 in the container's pid ns)
//!   │                                        stdio, rlimits, groups/gid/uid,
//!   │                                        capabilities, chdir, no_new_privs,
//!   │                                        seccomp, execve
//!   │ ◀──error pipe (CLOEXEC): empty at exec, or the error message
//! ```
//!
//! Joining the pid namespace takes effect for children only, hence the
//! clone after setns; `CLONE_PARENT` makes the new process a direct child
//! of the caller, as the container's init is. Joining the mount namespace
//! moves the root and working directory to the namespace's root, which
//! after the container's pivot_root is the container's root (the kernel
//! follows the mounts stacked on the namespace's root); the process then
//! chdirs to its `cwd`.
//!
//! # For PID 1 (a reaper that waits for any child)
//!
//! [`exec`] starts no thread and waits for no one but the setup process it
//! forked, by its own pid, before returning; it returns once the process
//! has exec'd (or failed to), without waiting for it. The process is the
//! caller's child: whoever reaps it (the returned
//! [`Container`](process::Container)'s `wait`/`try_wait`, or a reaper's
//! `waitpid(-1)`) gets its exit status, and a reaper that takes it first
//! must hand the status to whoever waits for the exec.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::cgroup::Cgroup;
use super::process::{self, Privileges, ProcessError};
use super::seccomp::Seccomp;
use super::spec::{self, Spec};

/// What to run in the container, and with which privileges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Absolute, in the container.
    pub cwd: String,
    pub user: spec::User,
    /// `None` keeps the caller's capabilities (as the container's init
    /// does when its spec has none).
    pub capabilities: Option<spec::Capabilities>,
    pub rlimits: Vec<spec::Rlimit>,
    pub no_new_privileges: bool,
    /// The seccomp profile to load (`None`: unconfined).
    pub seccomp: Option<Seccomp>,
    /// Make the process a session leader with its stdin (a terminal) as
    /// the controlling terminal.
    pub terminal: bool,
}

impl ExecSpec {
    /// The container's own process settings (user, env, cwd, capabilities,
    /// rlimits, no_new_privs, seccomp profile, terminal) with other args.
    pub fn from_spec(spec: &Spec, args: Vec<String>) -> Self {
        ExecSpec {
            args,
            env: spec.process.env.clone(),
            cwd: spec.process.cwd.clone(),
            user: spec.process.user.clone(),
            capabilities: spec.process.capabilities.clone(),
            rlimits: spec.process.rlimits.clone(),
            no_new_privileges: spec.process.no_new_privileges,
            seccomp: spec.linux.seccomp.clone(),
            terminal: spec.process.terminal,
        }
    }
}

/// The namespaces joined, in this order: user first (it gives the
/// capabilities over the others it owns), mnt last (after it, /proc is
/// the container's).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The namespaces of `pid` that differ from the caller's, opened for
/// setns, in [`NAMESPACES`] order.
fn differing_namespaces(pid: i32) -> Result<Vec<(CloneFlags, OwnedFd)>, ProcessError> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = Path::new("/proc")
            .join(pid.to_string())
            .join("ns")
            .join(name);
        let ours = Path::new("/proc/self/ns").join(name);
        let fd = process::open_namespace(&theirs)?;
        let same = match (
            nix::sys::stat::fstat(fd.as_raw_fd()),
            nix::sys::stat::stat(&ours),
        ) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if !same {
            out.push((*flag, fd));
        }
    }
    Ok(out)
}

/// Everything the child needs, prepared before the fork.
struct Prepared {
    join: Vec<(CloneFlags, OwnedFd)>,
    privileges: Privileges,
    args: Vec<CString>,
    env: Vec<CString>,
    cwd: String,
    terminal: bool,
}

/// Run `exec.args` in the namespaces of the container whose init is
/// `init_pid` (those that differ from the caller's: user, ipc, uts, net,
/// cgroup, pid, mnt), in `cgroup` if given, with `exec`'s privileges.
///
/// Returns once the process has exec'd, or with the setup error; it does
/// not wait for the process (see the module doc on reaping).
pub fn exec(
    init_pid: i32,
    exec: &ExecSpec,
    cgroup: Option<&Cgroup>,
    stdio: process::Stdio,
) -> Result<process::Container, ProcessError> {
    if exec.args.is_empty() {
        return Err(ProcessError::NoArgs);
    }
    let prepared = Prepared {
        join: differing_namespaces(init_pid)?,
        privileges: Privileges::prepare(
            exec.capabilities.as_ref(),
            &exec.rlimits,
            exec.seccomp.as_ref(),
            exec.no_new_privileges,
            &exec.user,
        )?,
        args: exec
            .args
            .iter()
            .map(|a| process::cstring(a))
            .collect::<Result<_, _>>()?,
        env: exec
            .env
            .iter()
            .map(|a| process::cstring(a))
            .collect::<Result<_, _>>()?,
        cwd: exec.cwd.clone(),
        terminal: exec.terminal,
    };
    let (from_child_r, from_child_w) = process::pipe()?;
    let (to_child_r, to_child_w) = process::pipe()?;
    let (err_r, err_w) = process::pipe()?;

    // SAFETY: glibc's fork runs its atfork handlers, so the child's malloc
    // is usable even if another thread held its lock; the child touches no
    // other lock taken by other threads (no stdout, no logging, no env
    // access) and ends in execve or _exit.
    match unsafe { nix::unistd::fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Child => {
            drop(from_child_r);
            drop(to_child_w);
            drop(err_r);
            setup_process(&prepared, exec, stdio, from_child_w, to_child_r, err_w)
        }
        ForkResult::Parent { child } => {
            drop(from_child_w);
            drop(to_child_r);
            drop(err_w);
            drop(stdio);
            let result = parent_side(child, cgroup, from_child_r, to_child_w);
            if result.is_err() {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            // The setup process exits right after sending the pid (or on
            // error): reap it, by pid, either way.
            let _ = waitpid(child, None);
            process::setup_outcome(result, err_r).map(process::Container::from_child)
        }
    }
}

fn parent_side(
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
    to.write_all(b"G").map_err(ProcessError::Sync)?;
    let mut pid = [0u8; 4];
    from.read_exact(&mut pid).map_err(ProcessError::Sync)?;
    Ok(Pid::from_raw(i32::from_le_bytes(pid)))
}

/// The setup process: wait for the cgroup, join the namespaces, clone the
/// process, send its pid, exit.
fn setup_process(
    p: &Prepared,
    exec: &ExecSpec,
    stdio: process::Stdio,
    from_child_w: OwnedFd,
    to_child_r: OwnedFd,
    err_w: OwnedFd,
) -> ! {
    let run = || -> Result<(), String> {
        let mut to_parent = std::fs::File::from(from_child_w);
        let mut from_parent = std::fs::File::from(to_child_r);
        to_parent
            .write_all(b"R")
            .map_err(|e| format!("sync: {e}"))?;
        let mut go = [0u8; 1];
        from_parent
            .read_exact(&mut go)
            .map_err(|e| format!("sync: {e}"))?;
        for (flag, fd) in &p.join {
            nix::sched::setns(fd, *flag).map_err(|e| format!("setns({flag:?}): {e}"))?;
        }
        let ret = process::clone_parent()?;
        if ret == 0 {
            drop(to_parent);
            drop(from_parent);
            match exec_process(p, exec, stdio) {
                Ok(never) => match never {},
                Err(message) => process::fail(&err_w, &message),
            }
        }
        let pid = i32::try_from(ret).map_err(|e| e.to_string())?;
        to_parent
            .write_all(&pid.to_le_bytes())
            .map_err(|e| format!("sync: {e}"))?;
        Ok(())
    };
    match run() {
        // SAFETY: _exit ends the process without running atexit handlers or
        // destructors that could touch state shared with the caller.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(message) => process::fail(&err_w, &message),
    }
}

enum Never {}

/// The process, in the container's namespaces: everything up to execve.
fn exec_process(p: &Prepared, exec: &ExecSpec, stdio: process::Stdio) -> Result<Never, String> {
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("resetting the signal mask: {e}"))?;
    // Ignored signals stay ignored across execve, and the caller's are
    // not the container's business (Rust programs ignore SIGPIPE): every
    // signal gets its default action back, through the raw syscall
    // (glibc's wrappers refuse 32 and 33, its own).
    let default = [0u64; 4]; // handler SIG_DFL (0), no flags, no mask
    for n in 1..=64usize {
        // SAFETY: rt_sigaction reads a kernel sigaction (handler, flags,
        // restorer, 8-byte mask) from `default`, which outlives the call;
        // no old action is written. SIGKILL and SIGSTOP fail with EINVAL,
        // ignored.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                n,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
    for (fd, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
        if let Some(fd) = fd {
            // SAFETY: dup2 on a valid fd we own onto 0..2; the old target
            // is replaced atomically.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                return Err(format!("dup2 onto fd {target}: {}", Errno::last()));
            }
        }
    }
    if p.terminal {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        // SAFETY: TIOCSCTTY takes an int argument; fd 0 is the terminal
        // dup'ed above.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!("TIOCSCTTY: {}", Errno::last()));
        }
    }
    p.privileges.apply(Path::new(&p.cwd))?;
    let program = process::find_program(&exec.args[0], &exec.env)?;
    let err = nix::unistd::execve(&program, &p.args, &p.env).map_err(|e| e.to_string());
    Err(format!(
        "execve({program:?}): {}",
        err.err().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_spec_keeps_the_process_settings() {
        let spec: Spec = serde_json::from_str(
            r#"{"process":{"args":["/bin/sh"],"env":["A=1"],"cwd":"/srv",
                "user":{"uid":1000,"gid":1000,"additionalGids":[2000]},
                "capabilities":{"bounding":["CAP_KILL"]},
                "rlimits":[{"type":"RLIMIT_NOFILE","hard":10,"soft":5}],
                "noNewPrivileges":true},
               "root":{"path":"/r"},
               "linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#,
        )
        .expect("spec");
        let e = ExecSpec::from_spec(&spec, vec!["true".into()]);
        assert_eq!(e.args, ["true"]);
        assert_eq!(e.env, ["A=1"]);
        assert_eq!(e.cwd, "/srv");
        assert_eq!(e.user.additional_gids, [2000]);
        assert_eq!(
            e.capabilities.expect("caps").bounding,
            ["CAP_KILL".to_string()]
        );
        assert_eq!(e.rlimits.len(), 1);
        assert!(e.no_new_privileges);
        assert!(e.seccomp.is_some());
    }

    #[test]
    fn own_namespaces_are_not_joined() {
        let ours = differing_namespaces(std::process::id() as i32).expect("own ns");
        assert!(ours.is_empty());
    }

    #[test]
    fn empty_args_are_refused() {
        let spec: Spec = serde_json::from_str(r#"{"process":{"args":["x"]},"root":{"path":"/r"}}"#)
            .expect("spec");
        let e = ExecSpec::from_spec(&spec, Vec::new());
        assert!(matches!(
            exec(1, &e, None, process::Stdio::default()),
            Err(ProcessError::NoArgs)
        ));
    }
}
