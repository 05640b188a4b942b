//! Containers in real guests (docs/containers.md): the default config's
//! container from the preloaded image; pulls from a real registry
//! (Debian's docker-registry on the host's loopback, through guestfwd) by
//! tag and by digest, and from one that wants bearer tokens (the config's
//! credentials, right and wrong); a web server on the bridge reached from the host on
//! its published port; limits (memory, pids), capabilities and seccomp seen
//! from inside; a crash loop restarted with backoff; a pod whose
//! containers talk over localhost after its init container; exec (also
//! interactive, on a terminal), logs, offline import of an OCI archive
//! and a `docker save` tar through the API, a multi-arch image,
//! stop/start; every container stopped cleanly at power-off.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use atoll_common::api::{
    ContainerAction, ContainerState, ContainerStatus, ExecInput, ImageInfo, ImportInput,
    Inspection, LogRecord, Request, Response, TermSize, IMPORT_CHUNK,
};
use atoll_common::layout::FW_CFG_CONFIG;
use qemu_tests::api_client::Session;
use qemu_tests::registry::{busybox_image, Registry, GUEST_IP};
use qemu_tests::token_registry::{basic_auth, TokenRegistry, PASSWORD, SERVICE, USER};
use qemu_tests::vm::{Vm, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

type TestResult = Result<(), Box<dyn Error>>;

/// How long a container may take to reach a state after ready (TCG).
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(90);

fn ps(vm: &Vm) -> Result<Vec<ContainerStatus>, VmError> {
    for r in vm.api(&Request::Containers)? {
        if let Response::Containers(c) = r {
            return Ok(c);
        }
    }
    Err(vm.fail("containers gave no list"))
}

/// Waits until `name`'s row satisfies `f`.
fn wait_container(
    vm: &Vm,
    name: &str,
    what: &str,
    f: impl Fn(&ContainerStatus) -> bool,
) -> Result<ContainerStatus, VmError> {
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    loop {
        let list = ps(vm)?;
        if let Some(c) = list.iter().find(|c| c.name == name) {
            if f(c) {
                return Ok(c.clone());
            }
            if Instant::now() >= deadline {
                return Err(vm.fail(format!("container {name} never got {what}: {c:?}")));
            }
        } else if Instant::now() >= deadline {
            return Err(vm.fail(format!("no container {name} in {list:?}")));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `exec`: the output (stdout and stderr) and the exit code.
fn exec(vm: &Vm, name: &str, args: &[&str]) -> Result<(String, Option<i32>), VmError> {
    let req = Request::Exec {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        timeout_ms: Some(30_000),
    };
    let mut out = String::new();
    let mut code = None;
    for r in vm.api(&req)? {
        match r {
            Response::ExecOutput { data, .. } => out.push_str(&data),
            Response::ExecExit { code: c, .. } => code = c,
            Response::Error { message } => {
                return Err(vm.fail(format!("exec {args:?} in {name}: {message}")))
            }
            _ => {}
        }
    }
    Ok((out, code))
}

/// An interactive exec's conversation: what came out so far, the exit.
struct Conversation {
    session: Session,
    out: String,
    exit: Option<Option<i32>>,
}

impl Conversation {
    fn open(vm: &Vm, args: &[&str], tty: bool) -> Result<Self, Box<dyn Error>> {
        let req = Request::ExecInteractive {
            name: "hello".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            tty,
            size: tty.then_some(TermSize { rows: 24, cols: 80 }),
        };
        Ok(Conversation {
            session: Session::open(vm.api_socket(), &req, Duration::from_secs(10))?,
            out: String::new(),
            exit: None,
        })
    }

    /// Reads the rest of the answer (its `done`) and hangs up. (Over the
    /// virtio port, what is left unread would reach the next client.)
    fn finish(mut self, vm: &Vm) -> Result<(), Box<dyn Error>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.session.next(deadline) {
                Ok(Response::Done) => break,
                Ok(Response::Error { message }) => return Err(vm.fail(message).into()),
                Ok(_) => {}
                Err(e) => return Err(vm.fail(format!("no done after the exit: {e}")).into()),
            }
        }
        self.session.close();
        Ok(())
    }

    fn send(&mut self, input: ExecInput) -> Result<(), Box<dyn Error>> {
        Ok(self.session.send(&input)?)
    }

    /// Reads the answer until `done(out, exit)` holds; an error answer
    /// or 30 s without it fails.
    fn until(
        &mut self,
        vm: &Vm,
        what: &str,
        done: impl Fn(&str, Option<Option<i32>>) -> bool,
    ) -> Result<(), Box<dyn Error>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.out, self.exit) {
            match self.session.next(deadline) {
                Ok(Response::ExecOutput { data, .. }) => self.out.push_str(&data),
                Ok(Response::ExecExit { code, .. }) => self.exit = Some(code),
                Ok(Response::Error { message }) => {
                    return Err(vm.fail(format!("{what}: {message}")).into())
                }
                Ok(Response::Done) if !done(&self.out, self.exit) => {
                    return Err(vm
                        .fail(format!("{what}: the exec ended first: {:?}", self.out))
                        .into())
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(vm
                        .fail(format!("{what}: {e}; output so far {:?}", self.out))
                        .into())
                }
            }
        }
        Ok(())
    }
}

/// `exec -i` (stdin piped to `cat`, then end of input) and `exec -it` (a
/// shell on a terminal: its size, a resize, line discipline, the exit
/// code); a client that hangs up takes its command with it.
fn interactive_exec(vm: &Vm) -> Result<(), Box<dyn Error>> {
    let mut c = Conversation::open(vm, &["sh", "-c", "cat; echo end-of-input"], false)?;
    c.send(ExecInput::Data {
        data: "line one\nline two\n".into(),
    })?;
    c.send(ExecInput::Eof)?;
    c.until(vm, "exec -i with cat", |_, exit| exit.is_some())?;
    vm.check(
        c.out == "line one\nline two\nend-of-input\n" && c.exit == Some(Some(0)),
        || format!("exec -i: {:?} exit {:?}", c.out, c.exit),
    )?;
    c.finish(vm)?;

    let mut t = Conversation::open(vm, &["/bin/sh"], true)?;
    t.send(ExecInput::Data {
        data: "stty size; test -t 0 && echo term-$((6*7))\n".into(),
    })?;
    // \r\n: the terminal's line discipline turned the newline around.
    t.until(vm, "exec -it: a shell on a terminal", |out, _| {
        out.contains("term-42\r\n")
    })?;
    vm.check(t.out.contains("24 80\r\n"), || {
        format!(
            "exec -it: the terminal's size is not the client's: {:?}",
            t.out
        )
    })?;
    t.send(ExecInput::Resize(TermSize {
        rows: 50,
        cols: 132,
    }))?;
    t.send(ExecInput::Data {
        data: "stty size\n".into(),
    })?;
    t.until(vm, "exec -it: the resize", |out, _| {
        out.contains("50 132\r\n")
    })?;
    t.send(ExecInput::Data {
        data: "exit 3\n".into(),
    })?;
    t.until(vm, "exec -it: exit", |_, exit| exit.is_some())?;
    vm.check(t.exit == Some(Some(3)), || {
        format!("exec -it: exit code {:?}", t.exit)
    })?;
    t.finish(vm)?;

    // A client that goes away: its command is killed.
    let mut h = Conversation::open(vm, &["/bin/sh"], true)?;
    h.send(ExecInput::Data {
        data: "echo started; sleep 1234\n".into(),
    })?;
    h.until(vm, "exec -it: sleep", |out, _| out.contains("started\r\n"))?;
    h.session.close();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (ps, _) = exec(vm, "hello", &["ps"])?;
        if !ps.contains("sleep 1234") {
            break;
        }
        if Instant::now() > until {
            return Err(vm
                .fail(format!("the hung-up exec's command still runs:\n{ps}"))
                .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn run_request(entry: serde_json::Value, detach: bool) -> Result<Request, Box<dyn Error>> {
    Ok(Request::Run {
        container: Box::new(serde_json::from_value(entry)?),
        detach,
    })
}

/// `atollctl run`: attached (output on both streams, the exit code, the
/// writable layer gone), detached (in ps, stopped by name), and refusals
/// (a name of the config, a name still running, a bad entry).
fn adhoc_run(vm: &Vm) -> Result<(), Box<dyn Error>> {
    let once = serde_json::json!({
        "name": "once",
        "image": "localhost/atoll/busybox:latest",
        "network": "none",
        "args": ["sh", "-c", "echo out; echo err >&2; exit 5"],
    });
    let answer = vm.api(&run_request(once, false)?)?;
    let mut out = String::new();
    let mut err = String::new();
    let mut code = None;
    for r in &answer {
        match r {
            Response::ExecOutput { stream, data } if stream == "stderr" => err.push_str(data),
            Response::ExecOutput { data, .. } => out.push_str(data),
            Response::ExecExit { code: c, .. } => code = *c,
            _ => {}
        }
    }
    vm.check(
        matches!(answer.first(), Some(Response::Message { message }) if message == "once")
            && out == "out\n"
            && err == "err\n"
            && code == Some(5),
        || format!("run once: {answer:?}"),
    )?;
    let row = inspect(vm, "once")?;
    vm.check(
        row.containers
            .first()
            .is_some_and(|c| c.state == ContainerState::Exited && c.exit_code == Some(5)),
        || format!("inspect once after it ran: {row:?}"),
    )?;
    // Its writable layer is gone: a second run starts from the image.
    let again = serde_json::json!({
        "name": "once",
        "image": "localhost/atoll/busybox:latest",
        "network": "none",
        "args": ["sh", "-c", "test ! -e /mark && touch /mark"],
    });
    for _ in 0..2 {
        let answer = vm.api(&run_request(again.clone(), false)?)?;
        vm.check(
            answer
                .iter()
                .any(|r| matches!(r, Response::ExecExit { code: Some(0), .. })),
            || format!("a second run saw the first run's writes: {answer:?}"),
        )?;
    }

    let bg = serde_json::json!({
        "name": "bg",
        "image": "localhost/atoll/busybox:latest",
        "network": "none",
        "args": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
    });
    let answer = vm.api(&run_request(bg.clone(), true)?)?;
    vm.check(
        matches!(answer.as_slice(), [Response::Message { message }, Response::Done] if message == "bg"),
        || format!("run -d bg: {answer:?}"),
    )?;
    wait_container(vm, "bg", "running", |c| c.state == ContainerState::Running)?;
    let twice = vm.api(&run_request(bg, true)?)?;
    let hello = serde_json::json!({"name": "hello", "image": "busybox"});
    let clash = vm.api(&run_request(hello, true)?)?;
    let bad = serde_json::json!({"image": "busybox", "memory": "lots"});
    let invalid = vm.api(&run_request(bad, true)?)?;
    for (what, answer, says) in [
        ("a second bg", &twice, "already running"),
        ("a run named hello", &clash, "of the config"),
        ("memory = lots", &invalid, "lots"),
    ] {
        vm.check(
            matches!(answer.last(), Some(Response::Error { message }) if message.contains(says)),
            || format!("{what} should be refused ({says}): {answer:?}"),
        )?;
    }
    action(vm, "bg", ContainerAction::Stop)?;
    wait_container(vm, "bg", "exited after stop", |c| {
        c.state != ContainerState::Running
    })?;
    Ok(())
}

/// Sends `archive` through the API's import (as `atollctl import` does);
/// the answer's message, or the host's error as `Err`.
fn import(vm: &Vm, archive: &[u8]) -> Result<Result<String, String>, Box<dyn Error>> {
    use base64::Engine as _;
    let mut session = Session::open(
        vm.api_socket(),
        &Request::Import { name: None },
        Duration::from_secs(10),
    )?;
    for chunk in archive.chunks(IMPORT_CHUNK) {
        session.send(&ImportInput::Data {
            base64: base64::engine::general_purpose::STANDARD.encode(chunk),
        })?;
    }
    session.send(&ImportInput::End)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut message = None;
    loop {
        match session.next(deadline)? {
            Response::Message { message: m } => message = Some(m),
            Response::Done => break,
            Response::Error { message } => {
                session.close();
                return Ok(Err(message));
            }
            _ => {}
        }
    }
    session.close();
    Ok(message.ok_or_else(|| "no message in the import's answer".to_string()))
}

/// Offline import: an OCI archive and a `docker save` tar (made by
/// `skopeo copy … docker-archive:`) sent through the API go into the
/// store under their names and run; a file that is no archive is refused.
fn offline_import(vm: &Vm) -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let oci = dir.path().join("offline.tar");
    busybox_image(
        "localhost/test/offline:1",
        &["/bin/sh", "-c", "echo from-an-oci-archive"],
        &oci,
    )?;
    let source = dir.path().join("saved-oci.tar");
    busybox_image(
        "localhost/test/saved:2",
        &["/bin/sh", "-c", "echo from-docker-save"],
        &source,
    )?;
    let saved = dir.path().join("saved.tar");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", source.display()))
        .arg(format!(
            "docker-archive:{}:localhost/test/saved:2",
            saved.display()
        ))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "skopeo copy to a docker-archive: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    for (archive, name, line) in [
        (&oci, "localhost/test/offline:1", "from-an-oci-archive"),
        (&saved, "localhost/test/saved:2", "from-docker-save"),
    ] {
        let answer = import(vm, &std::fs::read(archive)?)?;
        vm.check(
            answer
                .as_deref()
                .is_ok_and(|m| m.contains(&format!("imported {name}"))),
            || format!("importing {}: {answer:?}", archive.display()),
        )?;
        let entry = serde_json::json!({
            "name": "imported",
            "image": name,
            "network": "none",
        });
        let ran = vm.api(&run_request(entry, false)?)?;
        vm.check(
            ran.iter()
                .any(|r| matches!(r, Response::ExecOutput { data, .. } if data.contains(line)))
                && ran
                    .iter()
                    .any(|r| matches!(r, Response::ExecExit { code: Some(0), .. })),
            || format!("running the imported {name}: {ran:?}"),
        )?;
    }
    let list = images(vm)?;
    vm.check(
        ["localhost/test/offline:1", "localhost/test/saved:2"]
            .iter()
            .all(|n| list.iter().any(|i| i.name == *n)),
        || format!("images after the imports: {list:?}"),
    )?;
    let refused = import(vm, b"this is not a tar archive")?;
    vm.check(
        refused
            .as_ref()
            .is_err_and(|m| m.contains("importing the archive")),
        || format!("a file that is no archive: {refused:?}"),
    )?;
    Ok(())
}

/// A pod member's spec joins the pod's UTS namespace (by path).
fn joins_the_pods_uts(spec: &serde_json::Value) -> bool {
    spec["linux"]["namespaces"].as_array().is_some_and(|ns| {
        ns.iter()
            .any(|n| n["type"] == "uts" && n.get("path").is_some())
    })
}

fn inspect(vm: &Vm, name: &str) -> Result<Inspection, VmError> {
    let out = vm.api(&Request::Inspect { name: name.into() })?;
    for r in &out {
        if let Response::Inspect(i) = r {
            return Ok((**i).clone());
        }
    }
    Err(vm.fail(format!("inspect {name}: {out:?}")))
}

fn action(vm: &Vm, name: &str, action: ContainerAction) -> Result<(), VmError> {
    let req = Request::ContainerAction {
        name: name.into(),
        action,
    };
    let r = vm.api(&req)?;
    vm.check(r.last() == Some(&Response::Done), || {
        format!("{action:?} {name}: {r:?}")
    })
}

fn logs_of(vm: &Vm, ident: &str) -> Result<Vec<LogRecord>, VmError> {
    let req = Request::Logs {
        lines: 0,
        follow: false,
        ident: Some(ident.into()),
    };
    Ok(vm
        .api(&req)?
        .into_iter()
        .filter_map(|r| match r {
            Response::Log(l) => Some(l),
            _ => None,
        })
        .collect())
}

/// The status line `key:\tvalue` of `/proc/self/status` text.
fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Powers off and checks every container was stopped on the way.
fn poweroff_stops(vm: &Vm, names: &[&str]) -> TestResult {
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    let text = vm.console_text();
    for n in names {
        vm.check(text.contains(&format!("container {n}: stopped")), || {
            format!("no clean stop of {n} on the console")
        })?;
    }
    Ok(())
}

#[test]
fn default_config_runs_hello_with_docker_isolation() -> TestResult {
    // No config source: the built-in default, which runs `hello`.
    let vm = Vm::builder("containers_default").start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    vm.wait_for("hello from container hello on Atoll", CONTAINER_TIMEOUT)?;
    let c = wait_container(&vm, "hello", "running", |c| {
        c.state == ContainerState::Running
    })?;
    vm.check(
        c.image == "localhost/atoll/busybox:latest" && c.pid.is_some() && c.restarts == 0,
        || format!("hello: {c:?}"),
    )?;
    let c0_pid = c.pid;
    let logs = logs_of(&vm, "hello")?;
    vm.check(
        logs.iter().any(|l| {
            l.message == "hello from container hello on Atoll"
                && l.stream.as_deref() == Some("stdout")
                && l.container.as_deref() == Some("hello")
        }),
        || format!("hello's output is not in its log: {logs:?}"),
    )?;

    // Inside: its own hostname and pid namespace, Docker's capabilities,
    // no_new_privs, the seccomp filter, a read-only root.
    let (host, code) = exec(&vm, "hello", &["hostname"])?;
    vm.check(host.trim() == "hello" && code == Some(0), || {
        format!("hostname in hello: {host:?} {code:?}")
    })?;
    let (status, _) = exec(&vm, "hello", &["cat", "/proc/self/status"])?;
    vm.check(
        status_field(&status, "CapEff") == Some("00000000a80425fb")
            && status_field(&status, "CapBnd") == Some("00000000a80425fb"),
        || format!("capabilities are not Docker's default set:\n{status}"),
    )?;
    vm.check(
        status_field(&status, "NoNewPrivs") == Some("1")
            && status_field(&status, "Seccomp") == Some("2"),
        || format!("no_new_privs or seccomp missing:\n{status}"),
    )?;
    let (ps1, _) = exec(&vm, "hello", &["cat", "/proc/1/cmdline"])?;
    vm.check(ps1.starts_with("/bin/sh"), || {
        format!("pid 1 in the container is not its shell: {ps1:?}")
    })?;
    // The seccomp filter refuses unshare even though the capability bounds
    // would let root try; the root is read-only.
    let (_, code) = exec(&vm, "hello", &["unshare", "-n", "true"])?;
    vm.check(code != Some(0), || {
        "unshare worked inside the container".into()
    })?;
    let (out, code) = exec(&vm, "hello", &["touch", "/x"])?;
    vm.check(code != Some(0) && out.contains("Read-only"), || {
        format!("the read-only root took a write: {out:?} {code:?}")
    })?;
    let (_, code) = exec(&vm, "hello", &["sh", "-c", "exit 7"])?;
    vm.check(code == Some(7), || format!("exec's exit code: {code:?}"))?;
    interactive_exec(&vm)?;

    // inspect: the config entry with its defaults, the state, the spec.
    let i = inspect(&vm, "hello")?;
    let spec = i.specs.get("hello");
    vm.check(
        i.kind == "container"
            && i.config["image"] == "localhost/atoll/busybox:latest"
            && i.config["read_only"] == true
            && i.containers.first().is_some_and(|c| c.pid == c0_pid)
            && spec.is_some_and(|s| {
                s["process"]["args"][0] == "/bin/sh"
                    && s["root"]["readonly"] == true
                    && s["hostname"] == "hello"
            }),
        || format!("inspect hello: {i:?}"),
    )?;
    let unknown = vm.api(&Request::Inspect {
        name: "nope".into(),
    })?;
    vm.check(
        matches!(unknown.last(), Some(Response::Error { message }) if message.contains("known: hello")),
        || format!("inspect of an unknown name: {unknown:?}"),
    )?;

    adhoc_run(&vm)?;
    offline_import(&vm)?;

    // stop, start, restart.
    action(&vm, "hello", ContainerAction::Stop)?;
    wait_container(&vm, "hello", "stopped", |c| {
        c.state == ContainerState::Stopped
    })?;
    action(&vm, "hello", ContainerAction::Start)?;
    let again = wait_container(&vm, "hello", "running again", |c| {
        c.state == ContainerState::Running
    })?;
    vm.check(again.pid != c.pid, || {
        "start did not start a new init".into()
    })?;
    poweroff_stops(&vm, &["hello"])
}

const LIMITS: &str = r#"
[[containers]]
name = "oom"
image = "localhost/atoll/busybox:latest"
network = "none"
restart = "no"
memory = "16M"
command = ["/bin/sh", "-c", "echo filling; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]

[[containers]]
name = "pids"
image = "localhost/atoll/busybox:latest"
network = "none"
restart = "no"
pids_limit = 6
command = ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & done; echo forked; wait"]

[[containers]]
name = "crash"
image = "localhost/atoll/busybox:latest"
network = "none"
restart = "on-failure"
max_retries = 3
command = ["/bin/sh", "-c", "echo crashing; exit 3"]

[[containers]]
name = "isolated"
image = "localhost/atoll/busybox:latest"
network = "none"
user_namespace = true
volumes = ["/var/lib/atoll/images:/hostro:ro", "isolated-data:/data"]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
"#;

/// The `isolated` container of [`LIMITS`], in a user namespace: the host
/// range the config gives it is its map, root inside is root of its own
/// files only.
fn check_user_namespace(vm: &Vm) -> Result<(), VmError> {
    let config = atoll_common::config::parse(LIMITS.as_bytes(), "LIMITS")
        .map_err(|e| vm.fail(format!("LIMITS: {e}")))?;
    let range = atoll_common::config::userns::ranges(&config.containers)
        .get("isolated")
        .copied()
        .ok_or_else(|| vm.fail("LIMITS gives isolated no range"))?;
    wait_container(vm, "isolated", "running", |c| {
        c.state == ContainerState::Running
    })?;
    let script = "cat /proc/self/uid_map /proc/self/gid_map; \
        echo id=$(id -u):$(id -g); \
        echo busybox=$(stat -c %u:%g /bin/busybox); \
        touch /made-inside && echo made=$(stat -c %u:%g /made-inside); \
        echo hostro=$(stat -c %u:%g /hostro); \
        touch /hostro/x 2>/dev/null && echo hostro-write=yes || echo hostro-write=no; \
        touch /data/x && echo data=$(stat -c %u:%g /data/x)";
    let (out, code) = exec(vm, "isolated", &["sh", "-c", script])?;
    let map = format!("0 {} {}", range.uid, range.size);
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    vm.check(
        code == Some(0)
            && lines.len() == 8
            && lines[0] == map
            && lines[1] == format!("0 {} {}", range.gid, range.size)
            && lines[2..]
                == [
                    "id=0:0",
                    "busybox=0:0",
                    "made=0:0",
                    "hostro=65534:65534",
                    "hostro-write=no",
                    "data=0:0",
                ],
        || format!("in the user namespace (expected map {map}): {code:?}\n{out}"),
    )?;
    // inspect shows the map in the spec.
    let i = inspect(vm, "isolated")?;
    let spec = i.specs.get("isolated").cloned().unwrap_or_default();
    let uid_maps = &spec["linux"]["uidMappings"];
    vm.check(
        uid_maps[0]["hostID"] == range.uid && uid_maps[0]["size"] == range.size,
        || format!("inspect isolated: uidMappings {uid_maps}"),
    )
}

#[test]
fn limits_and_a_crash_loop_with_backoff() -> TestResult {
    let vm = Vm::builder("containers_limits")
        .fw_cfg_string(FW_CFG_CONFIG, LIMITS)
        .start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    // The memory limit: the kernel's OOM killer ends it (SIGKILL).
    let oom = wait_container(&vm, "oom", "exited", |c| c.state == ContainerState::Exited)?;
    vm.check(oom.exit_code == Some(137), || {
        format!("oom did not die of SIGKILL: {oom:?}")
    })?;
    let out: Vec<String> = logs_of(&vm, "oom")?
        .into_iter()
        .map(|l| l.message)
        .collect();
    vm.check(out.contains(&"filling".to_string()), || {
        format!("oom's output: {out:?}")
    })?;
    vm.check(
        vm.console_text().contains("Memory cgroup out of memory"),
        || "the kernel did not report a memory cgroup OOM kill".into(),
    )?;
    // The pids limit: forks fail past it.
    wait_container(&vm, "pids", "running", |c| {
        c.state != ContainerState::Waiting && c.state != ContainerState::Pulling
    })?;
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    loop {
        let out: Vec<String> = logs_of(&vm, "pids")?
            .into_iter()
            .map(|l| l.message)
            .collect();
        if out.iter().any(|l| l.contains("can't fork")) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(vm
                .fail(format!("no fork failure under pids.max: {out:?}"))
                .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The crash loop: 1 + 3 runs, then given up, with growing delays.
    let crash = wait_container(&vm, "crash", "failed", |c| {
        c.state == ContainerState::Failed
    })?;
    vm.check(
        crash.restarts == 3 && crash.exit_code == Some(3) && crash.detail.contains("gave up"),
        || format!("crash: {crash:?}"),
    )?;
    let runs: Vec<u64> = logs_of(&vm, "crash")?
        .into_iter()
        .filter(|l| l.message == "crashing")
        .map(|l| l.boottime_us)
        .collect();
    vm.check(runs.len() == 4, || {
        format!("crash ran {} times, not 4", runs.len())
    })?;
    let gaps: Vec<u64> = runs.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    // Backoff 0.5 s, 1 s, 2 s (plus the time to start, which TCG stretches).
    vm.check(
        gaps[0] >= 450 && gaps[1] >= 950 && gaps[2] >= 1950 && gaps[2] > gaps[0],
        || format!("restart gaps in ms do not back off: {gaps:?}"),
    )?;
    check_user_namespace(&vm)?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}

const POD: &str = r#"
[[pods]]
name = "duo"
network = "none"

[[pods.init_containers]]
name = "setup"
image = "localhost/atoll/busybox:latest"
command = ["/bin/sh", "-c", "echo init-done"]

[[pods.containers]]
name = "server"
image = "localhost/atoll/busybox:latest"
command = ["/bin/sh", "-c", "nc -l -p 7000"]

[[pods.containers]]
name = "client"
image = "localhost/atoll/busybox:latest"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; until echo ping-over-localhost | nc 127.0.0.1 7000; do sleep 0.2; done; echo sent; while :; do sleep 1; done"]
"#;

#[test]
fn pod_containers_share_localhost_after_init() -> TestResult {
    let vm = Vm::builder("containers_pod")
        .fw_cfg_string(FW_CFG_CONFIG, POD)
        .start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    vm.wait_for("ping-over-localhost", CONTAINER_TIMEOUT)?;
    let init = logs_of(&vm, "duo.setup")?;
    let server = logs_of(&vm, "duo.server")?;
    vm.check(init.iter().any(|l| l.message == "init-done"), || {
        format!("the init container's output: {init:?}")
    })?;
    let first_init = init.first().map(|l| l.boottime_us).unwrap_or(u64::MAX);
    let got = server.iter().find(|l| l.message == "ping-over-localhost");
    vm.check(got.is_some_and(|l| l.boottime_us > first_init), || {
        format!("the server got nothing after init: {server:?}")
    })?;
    // Both share the pod's UTS namespace: the pod's hostname.
    let (host, _) = exec(&vm, "duo/client", &["hostname"])?;
    vm.check(host.trim() == "duo", || format!("client hostname {host:?}"))?;
    let (env, _) = exec(&vm, "duo/client", &["sh", "-c", "echo $HOSTNAME"])?;
    vm.check(env.trim() == "duo", || format!("client $HOSTNAME {env:?}"))?;
    let list = ps(&vm)?;
    vm.check(
        list.iter()
            .filter(|c| c.pod.as_deref() == Some("duo"))
            .count()
            == 3,
        || format!("ps does not list the pod's three containers: {list:?}"),
    )?;
    // inspect: the pod (its three containers), one of them by POD/NAME.
    let pod = inspect(&vm, "duo")?;
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    vm.check(
        pod.kind == "pod"
            && names == ["setup", "server", "client"]
            && pod.config["name"] == "duo"
            && pod.specs.get("duo/client").is_some_and(joins_the_pods_uts)
            && !pod.specs.contains_key("duo/setup"),
        || format!("inspect duo: {pod:?}"),
    )?;
    let client = inspect(&vm, "duo/client")?;
    vm.check(
        client.kind == "container"
            && client.containers.len() == 1
            && client.containers[0].state == ContainerState::Running
            && client.specs.contains_key("duo/client"),
        || format!("inspect duo/client: {client:?}"),
    )?;
    poweroff_stops(&vm, &["duo.client"])
}

/// Host port forwarded to the guest's published port 8080.
fn images(vm: &Vm) -> Result<Vec<ImageInfo>, VmError> {
    for r in vm.api(&Request::Images)? {
        if let Response::Images(l) = r {
            return Ok(l);
        }
    }
    Err(vm.fail("images gave no list"))
}

/// A pull, rmi or prune request: its answer's message.
fn store_request(vm: &Vm, req: &Request) -> Result<String, VmError> {
    let answer = vm.api(req)?;
    for r in &answer {
        if let Response::Message { message } = r {
            return Ok(message.clone());
        }
    }
    Err(vm.fail(format!("{req:?} answered {answer:?}")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn http_get(port: u16) -> Result<String, std::io::Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Guest ports of the token-auth registry, its token endpoint (HTTPS), and
/// the same registry under another name, whose credentials are wrong.
const TOKEN_REGISTRY_PORT: u16 = 5001;
const TOKEN_REALM_PORT: u16 = 5002;
const WRONG_CREDENTIALS_PORT: u16 = 5003;
/// The repository the token registry's account may pull from, and one it
/// may not.
const TOKEN_REPO: &str = "test/token-only";
const SECRET_REPO: &str = "test/secret";

/// Waits until `name` is still pulling and its detail says why it failed.
fn wait_refused_pull(vm: &Vm, name: &str) -> Result<ContainerStatus, VmError> {
    wait_container(vm, name, "a refused pull", |c| {
        c.state == ContainerState::Pulling && c.detail.contains("access denied")
    })
}

#[test]
fn registry_pulls_and_a_published_web_server() -> TestResult {
    let registry = Registry::start()?;
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("web.tar");
    busybox_image(
        "localhost/test/web:1",
        &[
            "/bin/sh",
            "-c",
            "echo served-by-atoll > /var/www/index.html; httpd -f -p 80 -h /var/www & trap 'kill $!; exit 0' TERM; wait",
        ],
        &archive,
    )?;
    let digest = registry.push(&archive, "test/web:1")?;
    let other = dir.path().join("tool.tar");
    busybox_image(
        "localhost/test/tool:2",
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; echo pulled-by-digest; while :; do sleep 1; done",
        ],
        &other,
    )?;
    let tool_digest = registry.push(&other, "test/tool:2")?;
    // A multi-arch image: an OCI index whose first entry is arm64 and
    // second amd64; each platform's image says which it is.
    let mut platforms = Vec::new();
    for arch in ["arm64", "amd64"] {
        let archive = dir.path().join(format!("multi-{arch}.tar"));
        let line = format!("multi-arch-picked-{arch}");
        busybox_image(
            &format!("localhost/test/multi:{arch}"),
            &["/bin/sh", "-c", &format!("echo {line}")],
            &archive,
        )?;
        platforms.push((
            arch,
            registry.push(&archive, &format!("test/multi:{arch}"))?,
        ));
    }
    let entries: Vec<(&str, &str)> = platforms.iter().map(|(a, d)| (*a, d.as_str())).collect();
    let index_digest = registry.push_index("test/multi", "1", &entries)?;
    let amd64_digest = platforms[1].1.clone();
    let host = Registry::guest_host();
    // A registry that wants bearer tokens, from a token endpoint over HTTPS
    // (credentials never go over plain HTTP but to loopback) whose CA the
    // config trusts: an image only it holds, pulled with the config's
    // credentials; the same image in a repository the account has no
    // access to; and the same registry by another name, whose configured
    // password is wrong.
    let tokens = TokenRegistry::for_guest(
        SocketAddrV4::new(GUEST_IP, TOKEN_REGISTRY_PORT),
        SocketAddrV4::new(GUEST_IP, TOKEN_REALM_PORT),
        &[TOKEN_REPO],
    )?;
    let token_only = dir.path().join("token-only.tar");
    busybox_image(
        &format!("localhost/{TOKEN_REPO}:1"),
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM; echo pulled-with-a-token; while :; do sleep 1; done",
        ],
        &token_only,
    )?;
    let token_digest = tokens.push(&token_only, &format!("{TOKEN_REPO}:1"))?;
    tokens.push(&token_only, &format!("{SECRET_REPO}:1"))?;
    let token_host = tokens.host();
    let wrong_host = SocketAddrV4::new(GUEST_IP, WRONG_CREDENTIALS_PORT).to_string();
    let ca = tokens.ca_pem().ok_or("the token endpoint has no CA")?;
    let config = format!(
        r#"
ca_certs = ["""
{ca}"""]

[registries]
insecure = ["{host}", "{token_host}", "{wrong_host}"]

[[registries.credentials]]
registry = "{token_host}"
username = "{USER}"
password = "{PASSWORD}"

[[registries.credentials]]
registry = "{wrong_host}"
username = "{USER}"
password = "not the password"

[[containers]]
name = "web"
image = "{host}/test/web:1"
ports = ["8080:80"]

[[containers]]
name = "tool"
image = "{host}/test/tool@{tool_digest}"
network = "none"
depends_on = ["web"]

[[containers]]
name = "multi"
image = "{host}/test/multi:1"
network = "none"
restart = "no"

[[containers]]
name = "private"
image = "{token_host}/{TOKEN_REPO}:1"
network = "none"

[[containers]]
name = "secret"
image = "{token_host}/{SECRET_REPO}:1"
network = "none"

[[containers]]
name = "wrong"
image = "{wrong_host}/{TOKEN_REPO}:1"
network = "none"
"#
    );
    let port = free_port();
    let net = tokens
        .net_user(registry.net_user().hostfwd(port, 8080))
        .guestfwd(GUEST_IP, WRONG_CREDENTIALS_PORT, tokens.registry().port());
    let vm = Vm::builder("containers_registry")
        .net_user(net)
        .fw_cfg_string(FW_CFG_CONFIG, config)
        .start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let web = wait_container(&vm, "web", "running", |c| {
        c.state == ContainerState::Running
    })?;
    vm.check(
        web.image_digest.as_deref() == Some(digest.as_str())
            && web.network == "bridge"
            && web
                .address
                .as_deref()
                .is_some_and(|a| a.starts_with("10.88.")),
        || format!("web: {web:?} (pushed {digest})"),
    )?;
    vm.wait_for("pulled-by-digest", CONTAINER_TIMEOUT)?;
    // The index resolves to this host's platform (amd64), not its first
    // entry (its line may come before or after the tool's).
    let multi = wait_container(&vm, "multi", "exited", |c| {
        c.state == ContainerState::Exited
    })?;
    vm.check(
        multi.image_digest.as_deref() == Some(amd64_digest.as_str())
            && multi.exit_code == Some(0)
            && !vm.console_matches("multi-arch-picked-amd64").is_empty()
            && vm.console_matches("multi-arch-picked-arm64").is_empty(),
        || format!("multi: {multi:?} (index {index_digest}, amd64 {amd64_digest})"),
    )?;
    // The image only the token registry holds runs: the guest sent the
    // config's credentials to the token endpoint and got a pull token.
    let private = wait_container(&vm, "private", "running", |c| {
        c.state == ContainerState::Running
    })?;
    // From the start of the console: it may come before "pulled-by-digest".
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    while vm.console_matches("pulled-with-a-token").is_empty() {
        if Instant::now() >= deadline {
            return Err(vm.fail("private never said pulled-with-a-token").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let login = basic_auth(USER, PASSWORD);
    let scope = format!("repository:{TOKEN_REPO}:pull");
    let seen = tokens.seen();
    let asked = seen
        .iter()
        .filter(|r| {
            r.header("authorization") == Some(login.as_str())
                && r.query("scope") == [scope.as_str()]
                && r.query("service") == [SERVICE]
                && r.status == 200
        })
        .count();
    let issued = tokens.issued();
    let pull_tokens = issued
        .iter()
        .filter(|t| t.subject == USER && t.allows(TOKEN_REPO, "pull"))
        .count();
    vm.check(
        private.image_digest.as_deref() == Some(token_digest.as_str())
            && asked >= 1
            && pull_tokens >= 1
            && seen.iter().all(|r| r.error.is_none()),
        || {
            format!(
                "private: {private:?} (pushed {token_digest}); {asked} token requests for \
                 {scope} with the credentials, {pull_tokens} pull tokens issued; the token \
                 endpoint got: {seen:?}"
            )
        },
    )?;
    // A repository the account may not pull from: the token endpoint
    // issues a token without it, and the registry refuses that token.
    let secret = wait_refused_pull(&vm, "secret")?;
    vm.check(
        secret.detail.contains(&format!(
            "/v2/{SECRET_REPO}/manifests/1: access denied with the credentials for {token_host}"
        )) && secret.pid.is_none()
            && !tokens
                .issued()
                .iter()
                .any(|t| t.allows(SECRET_REPO, "pull")),
        || format!("secret: {secret:?}; tokens issued: {:?}", tokens.issued()),
    )?;
    // Wrong credentials: the token endpoint refuses them, and `ps` says
    // whose credentials, where, and why.
    let wrong = wait_refused_pull(&vm, "wrong")?;
    let wrong_login = basic_auth(USER, "not the password");
    let refused = tokens
        .seen()
        .iter()
        .filter(|r| r.header("authorization") == Some(wrong_login.as_str()) && r.status == 401)
        .count();
    vm.check(
        wrong.detail.contains(&format!(
            "access denied with the credentials for {wrong_host}"
        )) && wrong.detail.contains(tokens.realm())
            && wrong.detail.contains("incorrect username or password")
            && wrong.pid.is_none()
            && refused >= 1,
        || format!("wrong: {wrong:?}; {refused} refused token requests"),
    )?;
    // From the host, through QEMU's hostfwd to the guest's port 8080, then
    // the bridge's DNAT to the container's port 80.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match http_get(port) {
            Ok(b) if b.contains("served-by-atoll") => break b,
            other if Instant::now() >= deadline => {
                return Err(vm
                    .fail(format!("no page from the published port: {other:?}"))
                    .into())
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    // busybox httpd answers HTTP/1.0 or HTTP/1.1 depending on its build.
    let status = body.lines().next().unwrap_or_default();
    vm.check(
        status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200"),
        || format!("reply: {body}"),
    )?;
    // The container reaches out through the host's NAT: here, to the registry.
    let (out, code) = exec(
        &vm,
        "web",
        &["wget", "-q", "-O", "-", &format!("http://{host}/v2/")],
    )?;
    vm.check(code == Some(0), || {
        format!("the container cannot reach the registry through NAT: {out:?} {code:?}")
    })?;
    // The image commands: pull one more by hand, see it listed, remove it
    // and prune its blobs; an image the config uses cannot be removed.
    let extra = dir.path().join("extra.tar");
    busybox_image("localhost/test/extra:3", &["true"], &extra)?;
    let extra_digest = registry.push(&extra, "test/extra:3")?;
    let extra_name = format!("{host}/test/extra:3");
    let pulled = store_request(
        &vm,
        &Request::Pull {
            image: extra_name.clone(),
        },
    )?;
    vm.check(pulled.contains(&extra_digest), || {
        format!("pull answered {pulled:?} (pushed {extra_digest})")
    })?;
    let list = images(&vm)?;
    let web_image = format!("{host}/test/web:1");
    vm.check(
        list.iter()
            .any(|i| i.name == extra_name && i.digest == extra_digest && i.used_by.is_empty())
            && list
                .iter()
                .any(|i| i.name == web_image && i.used_by == ["web"] && i.size > 0),
        || format!("images: {list:?}"),
    )?;
    let refused = vm.api(&Request::RemoveImage {
        image: web_image.clone(),
    })?;
    vm.check(
        matches!(refused.last(), Some(Response::Error { message }) if message.contains("used by web")),
        || format!("removing {web_image}: {refused:?}"),
    )?;
    store_request(
        &vm,
        &Request::RemoveImage {
            image: extra_name.clone(),
        },
    )?;
    let pruned = store_request(&vm, &Request::Prune)?;
    // The extra image's manifest and config blobs go (its layer is shared).
    vm.check(
        pruned.starts_with("removed ") && !pruned.starts_with("removed 0 blobs"),
        || format!("prune answered {pruned:?}"),
    )?;
    let list = images(&vm)?;
    vm.check(
        !list.iter().any(|i| i.name == extra_name) && list.iter().any(|i| i.name == web_image),
        || format!("images after rmi and prune: {list:?}"),
    )?;
    // What runs still runs: its layers were kept.
    let (out, code) = exec(&vm, "web", &["cat", "/var/www/index.html"])?;
    vm.check(code == Some(0) && out.contains("served-by-atoll"), || {
        format!("web after prune: {out:?} {code:?}")
    })?;
    poweroff_stops(&vm, &["web", "tool", "private"])
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() -> TestResult {
    let registry = Registry::start()?;
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("a.tar");
    busybox_image("localhost/test/a:1", &["true"], &archive)?;
    registry.push(&archive, "test/a:1")?;
    // Flip bytes in the layer the registry serves (same size, other hash).
    let layer = registry.layer_digests("test/a:1")?.remove(0);
    registry.corrupt_blob(&layer)?;
    let host = Registry::guest_host();
    let config = format!(
        r#"
[registries]
insecure = ["{host}"]

[[containers]]
name = "bad"
image = "{host}/test/a:1"
network = "none"
"#
    );
    let vm = Vm::builder("containers_bad_blob")
        .net_user(registry.net_user())
        .fw_cfg_string(FW_CFG_CONFIG, config)
        .start()?;
    vm.wait_ready(BOOT_TIMEOUT)?;
    let c = wait_container(&vm, "bad", "a refused pull", |c| {
        c.state == ContainerState::Pulling && c.detail.contains("pull failed")
    })?;
    vm.check(
        c.detail.contains(&layer) && c.detail.contains("hashes to") && c.pid.is_none(),
        || format!("not refused for the blob's digest: {c:?}"),
    )?;
    vm.poweroff()?;
    vm.wait_exit(SHUTDOWN_TIMEOUT)?;
    Ok(())
}
