//! exec into running busybox containers (Debian's `busybox-static` as a
//! one-layer image, as in tests/run.rs), and healthcheck probes through
//! it. Needs root and busybox; skips with a printed reason otherwise.

#[macro_use]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atoll_runtime::health::{probe, ProbeOutcome, MAX_OUTPUT};
use atoll_runtime::manifest::{ContainerConfig, ImageConfig, RootFs};
use atoll_runtime::run::exec::{exec, ExecSpec};
use atoll_runtime::run::process::{self, Container, ExitStatus, Stdio};
use atoll_runtime::run::rootfs::RootfsSource;
use atoll_runtime::run::spec::{EtcFiles, Overrides, Spec};
use nix::sys::signal::Signal;

/// The tests count this process's children: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A one-layer busybox image with a file only the container has.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = common::busybox_root(
        dir,
        "layer",
        &[
            "sh", "id", "cat", "echo", "hostname", "grep", "pwd", "readlink", "true", "false",
            "sleep", "tr", "head", "yes",
        ],
        common::PASSWD,
        common::GROUP,
    );
    std::fs::write(layer.join("only-in-the-container"), "inside\n").expect("marker");
    layer
}

fn image() -> ImageConfig {
    ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        created: None,
        config: Some(ContainerConfig {
            env: Some(vec!["FROM_IMAGE=1".into()]),
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        },
        history: Vec::new(),
    }
}

/// A running container (`sleep 600`), killed when dropped.
struct Running {
    container: Container,
    spec: Spec,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let layers = vec![busybox_layer(dir.path())];
        let etc = EtcFiles::from_layers(&layers);
        let (source, root) =
            RootfsSource::overlay_in(layers, &dir.path().join("state")).expect("state dir");
        let overrides = Overrides {
            cmd: Some(vec!["/bin/busybox".into(), "sleep".into(), "600".into()]),
            hostname: Some("exec-box".into()),
            working_dir: Some("/work/dir".into()),
            ..Default::default()
        };
        let spec = Spec::from_image(&image(), &overrides, &etc, &root).expect("spec");
        let container = process::start(&spec, &source, None, Stdio::default()).expect("start");
        Running {
            container,
            spec,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.container.pid()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.container.kill(Signal::SIGKILL);
        let _ = self.container.wait();
    }
}

/// Run `script` with `spec`'s settings in the container; exit code and
/// stdout + stderr.
fn exec_script(c: &Running, spec: ExecSpec) -> (i32, String) {
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err_w = out_w.try_clone().expect("dup");
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    let mut p = exec(c.pid(), &spec, None, stdio).expect("exec");
    assert_ne!(p.pid(), c.pid());
    // exec reaped its setup process: our only children are the container's
    // init and the exec'd process.
    let mut children = children_of_self();
    children.sort();
    let mut expected = vec![c.pid(), p.pid()];
    expected.sort();
    assert_eq!(children, expected, "unexpected children");
    let mut out = String::new();
    std::fs::File::from(out_r)
        .read_to_string(&mut out)
        .expect("read output");
    (p.wait().expect("wait").code(), out)
}

fn sh(c: &Running, script: &str) -> ExecSpec {
    ExecSpec::from_spec(&c.spec, vec!["sh".into(), "-c".into(), script.into()])
}

/// Pids whose parent is this process (zombies included).
fn children_of_self() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        if ppid.as_deref() == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn exec_joins_the_container() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Running::start();
    let (code, out) = exec_script(
        &c,
        sh(
            &c,
            "echo pid=$$; tr '\\0' ' ' < /proc/1/cmdline; echo; pwd; hostname; \
             cat /only-in-the-container; echo $FROM_IMAGE; id -u; readlink /proc/self/ns/net; \
             grep -E '^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
        ),
    );
    assert_eq!(code, 0, "{out}");
    let net = std::fs::read_link(format!("/proc/{}/ns/net", c.pid())).expect("init's net ns");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("pid="), "{out}");
    assert_ne!(lines[0], "pid=1", "{out}");
    assert_eq!(
        lines[1], "/bin/busybox sleep 600 ",
        "pid 1 must be the init: {out}"
    );
    assert_eq!(lines[2], "/work/dir", "{out}");
    assert_eq!(lines[3], "exec-box", "{out}");
    assert_eq!(lines[4], "inside", "root must be the container's: {out}");
    assert_eq!(lines[5], "1", "{out}");
    assert_eq!(lines[6], "0", "{out}");
    assert_eq!(lines[7], net.to_string_lossy(), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");

    // No signal the caller ignores stays ignored (grep run directly: a
    // shell ignores some itself).
    let grep = ExecSpec::from_spec(
        &c.spec,
        vec!["grep".into(), "SigIgn".into(), "/proc/self/status".into()],
    );
    let (code, out) = exec_script(&c, grep);
    assert_eq!((code, out.as_str()), (0, "SigIgn:\t0000000000000000\n"));
}

#[test]
fn exec_as_another_user_with_its_exit_code() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Running::start();
    let mut spec = sh(
        &c,
        "id -u; id -g; id -G; grep CapEff /proc/self/status; exit 3",
    );
    spec.user.uid = 65534;
    spec.user.gid = 65534;
    spec.user.additional_gids = vec![65534];
    spec.cwd = "/tmp".into();
    let (code, out) = exec_script(&c, spec);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out, "65534\n65534\n65534\nCapEff:\t0000000000000000\n");
}

#[test]
fn exec_seccomp_applies_and_unconfined_differs() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Running::start();
    let (_, out) = exec_script(&c, sh(&c, "grep Seccomp: /proc/self/status"));
    assert_eq!(out, "Seccomp:\t2\n");
    let mut spec = sh(&c, "grep Seccomp: /proc/self/status");
    spec.seccomp = None;
    let (_, out) = exec_script(&c, spec);
    assert_eq!(out, "Seccomp:\t0\n");
}

#[test]
fn exec_kill_and_setup_errors() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Running::start();
    let spec = ExecSpec::from_spec(&c.spec, vec!["sleep".into(), "60".into()]);
    let mut p = exec(c.pid(), &spec, None, Stdio::default()).expect("exec");
    assert_eq!(p.try_wait().expect("try_wait"), None);
    p.kill(Signal::SIGKILL).expect("kill");
    assert_eq!(
        p.wait().expect("wait"),
        ExitStatus::Signaled(Signal::SIGKILL)
    );

    let missing = ExecSpec::from_spec(&c.spec, vec!["no-such-program".into()]);
    let err = exec(c.pid(), &missing, None, Stdio::default()).expect_err("must fail");
    assert!(err.to_string().contains("no-such-program"), "{err}");
    let mut bad_cwd = ExecSpec::from_spec(&c.spec, vec!["true".into()]);
    bad_cwd.cwd = "/no/such/dir".into();
    let err = exec(c.pid(), &bad_cwd, None, Stdio::default()).expect_err("must fail");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    // Both failures were reaped: only the init is left.
    assert_eq!(children_of_self(), vec![c.pid()]);

    // The container's init has gone: nothing to join.
    let pid = c.pid();
    drop(c);
    let err = exec(pid, &spec, None, Stdio::default()).expect_err("gone");
    assert!(
        err.to_string().contains(&format!("/proc/{pid}/ns")),
        "{err}"
    );
}

#[test]
fn healthcheck_probes() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Running::start();
    let run = |args: &[&str], timeout_ms: u64| {
        let spec = ExecSpec::from_spec(&c.spec, args.iter().map(|s| s.to_string()).collect());
        let started = Instant::now();
        let p = probe(c.pid(), &spec, None, Duration::from_millis(timeout_ms));
        (p, started.elapsed())
    };
    let (p, _) = run(&["true"], 5000);
    assert_eq!(p.outcome, ProbeOutcome::Passed, "{}", p.output);
    let (p, _) = run(&["false"], 5000);
    assert_eq!(p.outcome, ProbeOutcome::Failed { exit_code: 1 });
    let (p, _) = run(&["sh", "-c", "echo out; echo err >&2; exit 4"], 5000);
    assert_eq!(p.outcome, ProbeOutcome::Failed { exit_code: 4 });
    assert_eq!(p.output, "out\nerr\n");
    let (p, took) = run(&["sleep", "5"], 200);
    assert_eq!(p.outcome, ProbeOutcome::TimedOut);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let (p, _) = run(&["sh", "-c", "yes | head -c 10000"], 5000);
    assert_eq!(p.outcome, ProbeOutcome::Passed);
    assert_eq!(p.output.len(), MAX_OUTPUT);
    let (p, _) = run(&["no-such-check"], 5000);
    assert_eq!(p.outcome, ProbeOutcome::Failed { exit_code: -1 });
    assert!(p.output.contains("no-such-check"), "{}", p.output);
    // Every probe was reaped, the timed-out one too.
    assert_eq!(children_of_self(), vec![c.pid()]);
}

#[test]
fn exec_joins_a_user_namespace() {
    require_root!();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let layers = vec![busybox_layer(dir.path())];
    let etc = EtcFiles::from_layers(&layers);
    let (source, root) =
        RootfsSource::overlay_in(layers, &dir.path().join("state")).expect("state dir");
    let overrides = Overrides {
        cmd: Some(vec!["/bin/busybox".into(), "sleep".into(), "600".into()]),
        ..Default::default()
    };
    let mut spec = Spec::from_image(&image(), &overrides, &etc, &root).expect("spec");
    spec.linux
        .namespaces
        .push(atoll_runtime::run::spec::Namespace {
            kind: atoll_runtime::run::spec::NamespaceType::User,
            path: None,
        });
    let map = atoll_runtime::run::spec::IdMapping {
        container_id: 0,
        host_id: 100000,
        size: 65536,
    };
    spec.linux.uid_mappings = vec![map];
    spec.linux.gid_mappings = vec![map];
    let container = process::start(&spec, &source, None, Stdio::default()).expect("start");
    let c = Running {
        container,
        spec,
        _dir: dir,
    };
    let (code, out) = exec_script(
        &c,
        sh(
            &c,
            "id -u; readlink /proc/self/ns/user; cat /proc/self/uid_map",
        ),
    );
    assert_eq!(code, 0, "{out}");
    let user = std::fs::read_link(format!("/proc/{}/ns/user", c.pid())).expect("user ns");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(lines[1], user.to_string_lossy(), "{out}");
    assert!(
        lines[2].split_whitespace().eq(["0", "100000", "65536"]),
        "{out}"
    );
}
