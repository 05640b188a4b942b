//! The seccomp profile (the OCI `linux.seccomp` subset Atoll reads) and
//! its compilation to BPF with `seccompiler` (pure Rust).
//!
//! # The default profile, and how it differs from Docker's
//!
//! Docker's default profile is an allowlist (default `SCMP_ACT_ERRNO`,
//! about 370 syscalls allowed, some only with a capability). Atoll's
//! default is the equivalent **denylist**: default allow, and `EPERM` for
//! the syscalls Docker's profile leaves out for a container with the
//! default capabilities ([`DENIED_SYSCALLS`]), with Docker's argument
//! filters:
//! - `clone`: `EPERM` when the flags ask for a new namespace
//!   (`CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP`, Docker's
//!   mask 0x7E020000);
//! - `clone3`: `ENOSYS`, so libc falls back to `clone` (Docker's rule);
//! - `personality`: only 0x0, 0x8, 0x20000, 0x20008 and 0xffffffff.
//!
//! Differences: a syscall newer than this list is allowed (Docker's
//! allowlist refuses it); syscalls Docker allows only with an added
//! capability (e.g. `mount` with CAP_SYS_ADMIN) stay refused even when
//! the capability is added; Docker's `socket(AF_VSOCK)` rule is not
//! carried; and calls from another ABI (i386, x32) kill the process
//! (seccompiler checks the architecture) where Docker allows them.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Errors compiling a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unsupported seccomp action {0:?}")]
    Action(String),
    #[error("unsupported seccomp comparison {0:?}")]
    Op(String),
    #[error("seccomp profile with default action {default:?} and a rule with action {rule:?} cannot be compiled (only allow-by-default with non-allow rules, or deny-by-default with allow rules)")]
    Mixed { default: String, rule: String },
    #[error("seccomp architecture not supported")]
    Arch,
    #[error("compiling the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("loading the seccomp filter")]
    Load(#[source] seccompiler::Error),
}

/// `linux.seccomp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// Rules for some syscalls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SyscallArg>,
}

/// An argument condition; all of a rule's conditions must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// Syscalls refused by the default profile (see the module doc).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
];

/// Docker's namespace flags mask for clone.
const CLONE_NS_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Personalities Docker allows.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn rule(names: &[&str], action: &str, errno: u32, args: Vec<SyscallArg>) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: action.to_string(),
        errno_ret: Some(errno),
        args,
    }
}

/// Atoll's default profile (Docker-equivalent denylist).
pub fn default_profile() -> Seccomp {
    let mut syscalls = vec![rule(DENIED_SYSCALLS, "SCMP_ACT_ERRNO", EPERM, Vec::new())];
    for flag in CLONE_NS_FLAGS {
        syscalls.push(rule(
            &["clone"],
            "SCMP_ACT_ERRNO",
            EPERM,
            vec![SyscallArg {
                index: 0,
                value: flag,
                value_two: flag,
                op: "SCMP_CMP_MASKED_EQ".to_string(),
            }],
        ));
    }
    syscalls.push(rule(&["clone3"], "SCMP_ACT_ERRNO", ENOSYS, Vec::new()));
    syscalls.push(rule(
        &["personality"],
        "SCMP_ACT_ERRNO",
        EPERM,
        PERSONALITIES
            .iter()
            .map(|&p| SyscallArg {
                index: 0,
                value: p,
                value_two: 0,
                op: "SCMP_CMP_NE".to_string(),
            })
            .collect(),
    ));
    Seccomp {
        default_action: "SCMP_ACT_ALLOW".to_string(),
        default_errno_ret: None,
        syscalls,
    }
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(SeccompError::Action(other.to_string())),
    })
}

fn condition(arg: &SyscallArg) -> Result<SeccompCondition, SeccompError> {
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => return Err(SeccompError::Op(other.to_string())),
    };
    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(SeccompError::Compile)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Arch)
    }
}

/// Syscall number to its conditional rules; `None` matches unconditionally.
type RuleMap = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// Compile a profile to BPF programs, one per distinct rule action (the
/// kernel runs them all and the strictest answer wins). Names this
/// architecture lacks are skipped, as libseccomp does.
pub fn compile(profile: &Seccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let arch = target_arch()?;
    // action -> syscall -> rules (an empty list matches unconditionally).
    let mut by_action: Vec<(SeccompAction, RuleMap)> = Vec::new();
    for r in &profile.syscalls {
        let act = action(&r.action, r.errno_ret)?;
        if act == default {
            continue;
        }
        if default != SeccompAction::Allow && act != SeccompAction::Allow {
            return Err(SeccompError::Mixed {
                default: profile.default_action.clone(),
                rule: r.action.clone(),
            });
        }
        let conds = r
            .args
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        let idx = match by_action.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                by_action.push((act, BTreeMap::new()));
                by_action.len() - 1
            }
        };
        let map = &mut by_action[idx].1;
        for name in &r.names {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let slot = map.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (slot.as_mut(), conds.is_empty()) {
                // Unconditional: matches whatever else is listed.
                (_, true) => *slot = None,
                (Some(rules), false) => {
                    rules.push(SeccompRule::new(conds.clone()).map_err(SeccompError::Compile)?)
                }
                (None, false) => {}
            }
        }
    }
    let mut programs = Vec::new();
    for (act, map) in by_action {
        let rules = map
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        let filter =
            SeccompFilter::new(rules, default.clone(), act, arch).map_err(SeccompError::Compile)?;
        programs.push(filter.try_into().map_err(SeccompError::Compile)?);
    }
    Ok(programs)
}

/// Load compiled programs into the calling thread (needs no_new_privs or
/// CAP_SYS_ADMIN).
pub fn apply(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(SeccompError::Load)?;
    }
    Ok(())
}

/// The number of a syscall on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    use nix::libc;
    macro_rules! table {
        ($key:expr; $($n:ident),* $(,)?) => {
            match $key {
                $(stringify!($n) => return Some(libc::$n as i64),)*
                _ => {}
            }
        };
    }
    let key = format!("SYS_{name}");
    table!(
        key.as_str();
        SYS_acct, SYS_add_key, SYS_bpf, SYS_clock_adjtime, SYS_clock_settime, SYS_delete_module,
        SYS_finit_module, SYS_fanotify_init, SYS_fsconfig, SYS_fsmount, SYS_fsopen, SYS_fspick,
        SYS_get_mempolicy, SYS_init_module, SYS_io_uring_enter, SYS_io_uring_register,
        SYS_io_uring_setup, SYS_kcmp, SYS_kexec_file_load, SYS_kexec_load, SYS_keyctl,
        SYS_lookup_dcookie, SYS_mbind, SYS_mount, SYS_mount_setattr, SYS_move_mount,
        SYS_move_pages, SYS_name_to_handle_at, SYS_nfsservctl, SYS_open_by_handle_at,
        SYS_open_tree, SYS_perf_event_open, SYS_pivot_root, SYS_process_vm_readv,
        SYS_process_vm_writev, SYS_ptrace, SYS_quotactl, SYS_quotactl_fd, SYS_reboot,
        SYS_request_key, SYS_set_mempolicy, SYS_setns, SYS_settimeofday, SYS_swapoff, SYS_swapon,
        SYS_syslog, SYS_umount2, SYS_unshare, SYS_vhangup, SYS_clone, SYS_clone3,
        SYS_personality, SYS_execve, SYS_getpid, SYS_chroot, SYS_sethostname,
        SYS_setdomainname, SYS_socket,
    );
    #[cfg(target_arch = "x86_64")]
    table!(
        key.as_str();
        SYS_ioperm, SYS_iopl, SYS__sysctl, SYS_userfaultfd, SYS_sysfs, SYS_uselib, SYS_ustat,
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles() {
        let programs = compile(&default_profile()).expect("compiles");
        // EPERM rules and the clone3 ENOSYS rule: two filters.
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn default_profile_names_are_known_here() {
        let unknown: Vec<&str> = DENIED_SYSCALLS
            .iter()
            .copied()
            .filter(|n| syscall_number(n).is_none())
            .collect();
        if cfg!(target_arch = "x86_64") {
            // Gone from the kernel (ENOSYS anyway) or i386-only.
            assert_eq!(
                unknown,
                [
                    "create_module",
                    "get_kernel_syms",
                    "query_module",
                    "vm86",
                    "vm86old"
                ],
            );
        }
        assert_eq!(syscall_number("mount"), Some(nix::libc::SYS_mount));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn profile_round_trips_as_oci_json() {
        let p = default_profile();
        let json = serde_json::to_string(&p).expect("serialises");
        assert!(json.contains("\"defaultAction\":\"SCMP_ACT_ALLOW\""));
        assert!(json.contains("\"errnoRet\":1"));
        assert!(json.contains("\"valueTwo\""));
        let back: Seccomp = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, p);
    }

    #[test]
    fn allowlist_compiles_and_mixed_is_refused() {
        let allow = Seccomp {
            default_action: "SCMP_ACT_ERRNO".to_string(),
            default_errno_ret: None,
            syscalls: vec![rule(&["getpid", "execve"], "SCMP_ACT_ALLOW", 0, Vec::new())],
        };
        assert_eq!(compile(&allow).expect("compiles").len(), 1);
        let mut mixed = allow.clone();
        mixed
            .syscalls
            .push(rule(&["mount"], "SCMP_ACT_KILL", 0, Vec::new()));
        assert!(matches!(compile(&mixed), Err(SeccompError::Mixed { .. })));
        let mut bad = allow;
        bad.syscalls[0].action = "SCMP_ACT_NOTIFY".to_string();
        assert!(matches!(compile(&bad), Err(SeccompError::Action(_))));
    }
}
