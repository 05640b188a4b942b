//! The `atoll-runtime` command line driven as an engine drives runc: a
//! bundle with a busybox rootfs (Debian's `busybox-static`) and a
//! hand-written config.json; create → state → start → kill → delete,
//! checked by exit codes, the state JSON and the program's side effects.
//! When `runc` is installed the same steps run against it too, and the
//! exit codes and state JSON keys must match. Needs root and busybox;
//! skips with a printed reason otherwise.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BUSYBOX;
const ATOLL: &str = env!("CARGO_BIN_EXE_atoll-runtime");

/// A bundle whose program touches /tmp/started, then loops until
/// SIGTERM (an init of a pid namespace only gets signals it handles).
fn bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    let caps = ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"];
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/busybox", "sh", "-c",
                "trap 'exit 0' TERM; /bin/busybox touch /tmp/started; \
                 while true; do /bin/busybox sleep 0.05; done"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "oci-test",
        "annotations": {"org.atoll.test": "1"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}
            ]
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .expect("config.json");
    bundle
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `runtime --root ROOT args...`. Output goes through files: a
/// created container inherits the command's stdio and keeps pipes open.
fn cli(runtime: &str, root: &Path, args: &[&str]) -> Out {
    let out = tempfile::tempdir().expect("tempdir");
    let (o, e) = (out.path().join("out"), out.path().join("err"));
    let status = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).expect("out"))
        .stderr(std::fs::File::create(&e).expect("err"))
        .status()
        .expect("run the runtime");
    Out {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&o).unwrap_or_default(),
        stderr: std::fs::read_to_string(&e).unwrap_or_default(),
    }
}

fn state(runtime: &str, root: &Path, id: &str) -> serde_json::Value {
    let out = cli(runtime, root, &["state", id]);
    assert_eq!(out.code, 0, "state {id}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("state JSON")
}

fn status(runtime: &str, root: &Path, id: &str) -> String {
    state(runtime, root, id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One run of the whole lifecycle; returns (step, exit code) and the state
/// JSON key sets seen, for comparing runtimes.
fn lifecycle(runtime: &str, id: &str) -> (Vec<(&'static str, i32)>, Vec<Vec<String>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    let bundle = bundle(dir.path());
    let marker = bundle.join("rootfs/tmp/started");
    let pid_file = dir.path().join("pid");
    let bundle_s = bundle.to_str().expect("utf-8");
    let pid_s = pid_file.to_str().expect("utf-8");
    let mut codes = Vec::new();
    let mut keys = Vec::new();
    let mut key_set = |v: &serde_json::Value| {
        let mut k: Vec<String> = v
            .as_object()
            .expect("state object")
            .keys()
            .cloned()
            .collect();
        k.sort();
        keys.push(k);
    };

    let out = cli(
        runtime,
        &root,
        &["create", "--bundle", bundle_s, "--pid-file", pid_s, id],
    );
    assert_eq!(out.code, 0, "{runtime} create: {}", out.stderr);
    codes.push(("create", out.code));
    let s = state(runtime, &root, id);
    key_set(&s);
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], id);
    assert_eq!(s["bundle"], bundle_s);
    assert_eq!(s["annotations"]["org.atoll.test"], "1", "{s}");
    let pid = s["pid"].as_i64().expect("pid");
    assert!(pid > 0, "{s}");
    let from_file = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(from_file.trim(), pid.to_string(), "--pid-file");
    // The program has not run: create stops before its execve.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "{runtime}: the program ran before start");

    let out = cli(runtime, &root, &["start", id]);
    assert_eq!(out.code, 0, "{runtime} start: {}", out.stderr);
    codes.push(("start", out.code));
    wait_for("the program's marker file", Duration::from_secs(10), || {
        marker.exists()
    });
    let s = state(runtime, &root, id);
    key_set(&s);
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["pid"].as_i64(), Some(pid));

    let out = cli(runtime, &root, &["start", id]);
    assert_ne!(out.code, 0, "{runtime}: start of a running container");
    codes.push(("start again", out.code));
    let out = cli(runtime, &root, &["delete", id]);
    assert_ne!(out.code, 0, "{runtime}: delete of a running container");
    codes.push(("delete running", out.code));
    assert_eq!(status(runtime, &root, id), "running");

    let out = cli(runtime, &root, &["kill", id, "TERM"]);
    assert_eq!(out.code, 0, "{runtime} kill: {}", out.stderr);
    codes.push(("kill TERM", out.code));
    wait_for("stopped after SIGTERM", Duration::from_secs(10), || {
        status(runtime, &root, id) == "stopped"
    });
    key_set(&state(runtime, &root, id));
    let out = cli(runtime, &root, &["start", id]);
    codes.push(("start stopped", out.code));
    assert_ne!(out.code, 0, "{runtime}: start of a stopped container");

    let out = cli(runtime, &root, &["delete", id]);
    assert_eq!(out.code, 0, "{runtime} delete: {}", out.stderr);
    codes.push(("delete", out.code));
    let out = cli(runtime, &root, &["state", id]);
    codes.push(("state deleted", out.code));
    assert_eq!(out.code, 1, "{runtime} state after delete");
    assert!(
        out.stderr.contains("does not exist"),
        "{runtime}: {}",
        out.stderr
    );
    let out = cli(runtime, &root, &["kill", id, "KILL"]);
    codes.push(("kill deleted", out.code));
    assert_ne!(out.code, 0);
    (codes, keys)
}

#[test]
fn create_start_kill_delete() {
    require_root!();
    let (codes, _) = lifecycle(ATOLL, "atoll-oci-1");
    eprintln!("{codes:?}");
}

#[test]
fn force_delete_and_created_delete() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    let bundle = bundle(dir.path());
    let b = bundle.to_str().expect("utf-8");
    // A created container is deleted (killed) without --force, as runc.
    assert_eq!(cli(ATOLL, &root, &["create", "-b", b, "c1"]).code, 0);
    let pid = state(ATOLL, &root, "c1")["pid"].as_i64().expect("pid");
    let out = cli(ATOLL, &root, &["delete", "c1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z ")
        }
    );
    assert!(!root.join("c1").exists(), "state dir left");
    // A running one needs --force.
    assert_eq!(cli(ATOLL, &root, &["create", "-b", b, "c2"]).code, 0);
    assert_eq!(cli(ATOLL, &root, &["start", "c2"]).code, 0);
    assert_ne!(cli(ATOLL, &root, &["delete", "c2"]).code, 0);
    let out = cli(ATOLL, &root, &["delete", "--force", "c2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(cli(ATOLL, &root, &["state", "c2"]).code, 1);
    // Same id twice, bad ids, unknown flags of runc's we refuse.
    assert_eq!(cli(ATOLL, &root, &["create", "-b", b, "c3"]).code, 0);
    let out = cli(ATOLL, &root, &["create", "-b", b, "c3"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("exists"), "{}", out.stderr);
    let listed = cli(ATOLL, &root, &["list", "-q"]);
    assert_eq!(listed.stdout.trim(), "c3");
    assert_eq!(cli(ATOLL, &root, &["delete", "-f", "c3"]).code, 0);
    assert_eq!(cli(ATOLL, &root, &["create", "-b", b, "../x"]).code, 1);
    let out = cli(ATOLL, &root, &["--systemd-cgroup", "state", "c3"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("systemd"), "{}", out.stderr);
}

#[test]
fn run_waits_and_returns_the_exit_code() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    let bundle = bundle(dir.path());
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["process"]["args"] = serde_json::json!(["/bin/busybox", "sh", "-c", "exit 7"]);
    std::fs::write(&config, json.to_string()).expect("config");
    let b = bundle.to_str().expect("utf-8");
    let out = cli(ATOLL, &root, &["run", "-b", b, "r1"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(cli(ATOLL, &root, &["state", "r1"]).code, 1, "run deletes");
}

#[test]
fn log_file_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log.json");
    let out = Command::new(ATOLL)
        .args(["--root"])
        .arg(dir.path())
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "state", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let line = std::fs::read_to_string(&log).expect("log");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["level"], "error");
    assert_eq!(v["msg"], "container does not exist");
}

fn runc() -> Option<String> {
    ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"]
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
}

#[test]
fn same_as_runc() {
    require_root!();
    let Some(runc) = runc() else {
        eprintln!("skipped: runc not installed (apt-get install runc)");
        return;
    };
    let (ours, our_keys) = lifecycle(ATOLL, "atoll-cmp");
    let (theirs, their_keys) = lifecycle(&runc, "runc-cmp");
    assert_eq!(ours, theirs, "exit codes: atoll-runtime vs runc");
    assert_eq!(
        our_keys, their_keys,
        "state JSON keys: atoll-runtime vs runc"
    );
}

#[test]
fn terminal_over_console_socket() {
    require_root!();
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("state");
    let bundle = bundle(dir.path());
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["process"]["terminal"] = serde_json::json!(true);
    json["process"]["args"] = serde_json::json!([
        "/bin/busybox",
        "sh",
        "-c",
        "[ -t 0 ] && echo on-a-tty; /bin/busybox sleep 1"
    ]);
    std::fs::write(&config, json.to_string()).expect("config");
    let b = bundle.to_str().expect("utf-8");
    // Without a socket it is refused, as runc does.
    assert_eq!(cli(ATOLL, &root, &["create", "-b", b, "t0"]).code, 1);
    let sock = dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .expect("recvmsg");
        let mut fds = Vec::new();
        for c in msg.cmsgs().expect("cmsgs") {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(r) = c {
                fds.extend(r);
            }
        }
        assert_eq!(fds.len(), 1, "one fd over SCM_RIGHTS");
        // SAFETY: the fd just arrived over SCM_RIGHTS and is ours alone.
        unsafe { OwnedFd::from_raw_fd(fds[0]) }
    });
    let s = sock.to_str().expect("utf-8");
    let out = cli(
        ATOLL,
        &root,
        &["create", "-b", b, "--console-socket", s, "t1"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let master = receiver.join().expect("receiver");
    assert_eq!(cli(ATOLL, &root, &["start", "t1"]).code, 0);
    let mut got = Vec::new();
    let mut f = std::fs::File::from(master);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("on-a-tty") && Instant::now() < deadline {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).contains("on-a-tty"),
        "pty output: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(cli(ATOLL, &root, &["delete", "-f", "t1"]).code, 0);
}
