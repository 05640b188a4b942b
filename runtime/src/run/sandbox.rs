//! A pod's sandbox: a process that only holds the namespaces the pod's
//! containers share (network, IPC, UTS), as Kubernetes' pause container,
//! but with no image: it is forked from the caller, unshares, sets the
//! hostname, brings `lo` up and sleeps in `pause()` until killed.
//!
//! The containers then join `/proc/PID/ns/{net,ipc,uts}` ([`join`]), so a
//! container that restarts keeps the pod's address, and localhost between
//! the pod's containers keeps working.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::libc;
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

use super::spec::{NamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod hostname {0:?} has a NUL byte")]
    Hostname(String),
    #[error("creating the pod sandbox: {what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::Error,
    },
    #[error("the pod sandbox failed to set up: {0}")]
    Setup(String),
}

/// The namespaces a pod's containers share.
pub const SHARED: [NamespaceType; 3] = [
    NamespaceType::Network,
    NamespaceType::Ipc,
    NamespaceType::Uts,
];

fn proc_ns(kind: NamespaceType) -> &'static str {
    match kind {
        NamespaceType::Network => "net",
        NamespaceType::Ipc => "ipc",
        NamespaceType::Uts => "uts",
        NamespaceType::Pid => "pid",
        NamespaceType::Mount => "mnt",
        NamespaceType::User => "user",
        NamespaceType::Cgroup => "cgroup",
    }
}

/// Makes `spec` join the sandbox `pid`'s network, IPC and UTS namespaces
/// (and not set a hostname of its own: the sandbox's is `hostname`, which
/// `HOSTNAME` in the environment then says too, unless set otherwise).
/// `host_network`: the pod uses the host's network, so the network
/// namespace is left out entirely.
pub fn join(spec: &mut Spec, pid: i32, host_network: bool, hostname: &str) {
    spec.linux
        .namespaces
        .retain(|ns| !SHARED.contains(&ns.kind));
    for kind in SHARED {
        if kind == NamespaceType::Network && host_network {
            continue;
        }
        spec.linux.namespaces.push(super::spec::Namespace {
            kind,
            path: Some(PathBuf::from(format!("/proc/{pid}/ns/{}", proc_ns(kind)))),
        });
    }
    if let Some(own) = spec.hostname.take() {
        let was = format!("HOSTNAME={own}");
        for e in &mut spec.process.env {
            if *e == was {
                *e = format!("HOSTNAME={hostname}");
            }
        }
    }
}

/// Forks the sandbox. Returns its pid once it has set up (or the error it
/// hit); the caller reaps it. `host_network`: keep the caller's network.
pub fn create(hostname: &str, host_network: bool) -> Result<i32, SandboxError> {
    let name = CString::new(hostname).map_err(|_| SandboxError::Hostname(hostname.into()))?;
    let mut flags = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| SandboxError::Sys {
            what: "pipe",
            errno,
        })?;
    // `lo` up through SIOCSIFFLAGS: the request is built before the fork.
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: the child only makes raw syscalls (unshare, sethostname,
    // socket, ioctl, write, pause, _exit): no allocation, no locks.
    match unsafe { nix::unistd::fork() }.map_err(|errno| SandboxError::Sys {
        what: "fork",
        errno,
    })? {
        ForkResult::Child => {
            drop(r);
            let fail = |msg: &[u8]| -> ! {
                let _ = nix::unistd::write(&w, msg);
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(1) }
            };
            // SAFETY: a plain syscall on this single-threaded child.
            if unsafe { libc::unshare(flags.bits()) } != 0 {
                fail(b"unshare");
            }
            // SAFETY: `name` is a valid C string that outlives the call.
            if unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) } != 0 {
                fail(b"sethostname");
            }
            if !host_network {
                // SAFETY: plain syscalls; `ifr` lives on this stack.
                unsafe {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 || libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
                        fail(b"reading lo's flags");
                    }
                    ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                    if libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) != 0 {
                        fail(b"bringing lo up");
                    }
                    libc::close(s);
                }
            }
            // Signals the caller ignores stay ignored otherwise; SIGTERM
            // and SIGKILL must end the sandbox.
            // SAFETY: plain syscalls.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
            }
            drop(w);
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut msg = [0u8; 64];
            let n = nix::unistd::read(r.as_raw_fd(), &mut msg).unwrap_or(0);
            if n > 0 {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(SandboxError::Setup(
                    String::from_utf8_lossy(&msg[..n]).into_owned(),
                ));
            }
            Ok(child.as_raw())
        }
    }
}

/// Kills the sandbox (the caller reaps it).
pub fn destroy(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::run::spec::Namespace;

    #[test]
    fn join_replaces_the_shared_namespaces() {
        let mut spec: Spec = serde_json::from_str(
            r#"{"process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"/r"},
                "hostname":"c","linux":{"namespaces":[{"type":"pid"},{"type":"network"},{"type":"uts"},{"type":"mount"},{"type":"ipc"}]}}"#,
        )
        .unwrap();
        spec.process.env = vec!["HOSTNAME=c".into(), "A=HOSTNAME=c".into()];
        join(&mut spec, 42, false, "pod");
        assert_eq!(spec.hostname, None);
        assert_eq!(spec.process.env, ["HOSTNAME=pod", "A=HOSTNAME=c"]);
        let ns: Vec<(NamespaceType, Option<String>)> = spec
            .linux
            .namespaces
            .iter()
            .map(|Namespace { kind, path }| (*kind, path.as_ref().map(|p| p.display().to_string())))
            .collect();
        assert!(ns.contains(&(NamespaceType::Pid, None)));
        assert!(ns.contains(&(NamespaceType::Mount, None)));
        assert!(ns.contains(&(NamespaceType::Network, Some("/proc/42/ns/net".into()))));
        assert!(ns.contains(&(NamespaceType::Ipc, Some("/proc/42/ns/ipc".into()))));
        assert!(ns.contains(&(NamespaceType::Uts, Some("/proc/42/ns/uts".into()))));
        join(&mut spec, 42, true, "pod");
        assert!(!spec.linux.has_namespace(NamespaceType::Network));
    }

    #[test]
    fn sandbox_holds_namespaces() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let pid = create("pod-test", false).unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_ne!(own, theirs);
        let own_uts = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let their_uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
        assert_ne!(own_uts, their_uts);
        destroy(pid);
        let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
        assert!(matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ));
    }
}
