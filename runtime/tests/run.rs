//! Containers for real: a busybox rootfs (Debian's `busybox-static`) as a
//! single overlay layer, `/bin/busybox sh -c '...'` run inside, checked by
//! exit status and captured stdout. Needs root and busybox; skips with a
//! printed reason otherwise.

#[macro_use]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use atoll_runtime::manifest::{ContainerConfig, ImageConfig, RootFs};
use atoll_runtime::run::process::{self, ExitStatus, Stdio};
use atoll_runtime::run::rootfs::RootfsSource;
use atoll_runtime::run::spec::{EtcFiles, Overrides, Spec, Volume, VolumePolicy, VolumeSource};

/// A one-layer busybox image: /bin/busybox, applet symlinks, /etc files.
fn busybox_layer(dir: &Path) -> PathBuf {
    common::busybox_root(
        dir,
        "layer",
        &[
            "sh", "id", "cat", "echo", "hostname", "ls", "touch", "unshare", "mount", "grep", "pwd",
            "ip", "readlink", "true", "env", "head",
        ],
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n",
    )
}

fn image(cmd: &[&str]) -> ImageConfig {
    ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        created: None,
        config: Some(ContainerConfig {
            env: Some(vec!["FROM_IMAGE=1".into()]),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        },
        history: Vec::new(),
    }
}

/// Run `script` in a container; returns the exit code and stdout (stderr
/// is appended to stdout for failure messages).
fn run(script: &str, overrides: Overrides) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = busybox_layer(dir.path());
    let layers = vec![layer];
    let etc = EtcFiles::from_layers(&layers);
    let (source, root) =
        RootfsSource::overlay_in(layers, &dir.path().join("state")).expect("state dir");
    let overrides = Overrides {
        cmd: Some(vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ]),
        ..overrides
    };
    let spec = Spec::from_image(&image(&["/bin/sh"]), &overrides, &etc, &root).expect("spec");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err_w = out_w.try_clone().expect("dup");
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    let mut container = process::start(&spec, &source, None, stdio).expect("start");
    let mut out = String::new();
    std::fs::File::from(out_r)
        .read_to_string(&mut out)
        .expect("read stdout");
    let status = container.wait().expect("wait");
    // The overlay lived in the container's mount namespace: gone with it.
    assert!(
        !root.join("bin").exists(),
        "overlay still mounted at {root:?}"
    );
    (status.code(), out)
}

fn run_ok(script: &str, overrides: Overrides) -> String {
    let (code, out) = run(script, overrides);
    assert_eq!(code, 0, "script {script:?} failed; output:\n{out}");
    out
}

#[test]
fn pid_hostname_overlay_and_network() {
    require_root!();
    let out = run_ok(
        "echo pid=$$; hostname; grep ' / ' /proc/self/mounts; ip -o link | wc -l; ip -o link",
        Overrides {
            hostname: Some("box1".into()),
            ..Default::default()
        },
    );
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("box1\n"), "{out}");
    assert!(out.contains("overlay / overlay"), "{out}");
    assert!(out.contains("1: lo:"), "{out}");
    assert!(out.contains("UP"), "lo should be up: {out}");
    assert!(!out.contains("2: "), "only lo expected: {out}");
}

#[test]
fn security_status_matches_docker_defaults() {
    require_root!();
    let out = run_ok(
        "grep -E '^(CapEff|CapPrm|CapBnd|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
        Overrides::default(),
    );
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

#[test]
fn cap_drop_and_add() {
    require_root!();
    let out = run_ok(
        "grep CapEff /proc/self/status",
        Overrides {
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
            ..Default::default()
        },
    );
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
}

#[test]
fn masked_and_read_only_paths() {
    require_root!();
    // /proc/kcore is masked where the kernel has it (this CI kernel has
    // not); /proc/timer_list (a file) and /proc/acpi (a dir) show masking
    // on any kernel that has them.
    let out = run_ok(
        "for f in /proc/kcore /proc/timer_list; do \
           if [ -e $f ]; then echo $f $(cat $f | wc -c) $(grep -c \" $f \" /proc/self/mounts); fi; done; \
         if [ -e /proc/acpi ]; then echo /proc/acpi $(ls /proc/acpi | wc -l) $(grep -c ' /proc/acpi tmpfs ro' /proc/self/mounts); fi; \
         if (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null; then echo sys-writable; else echo sys-ro; fi; \
         if touch /sys/x 2>/dev/null; then echo sysfs-writable; else echo sysfs-ro; fi; \
         touch /newfile && echo root-rw",
        Overrides::default(),
    );
    for line in out.lines().filter(|l| l.starts_with("/proc/")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1..], ["0", "1"], "{line} not masked: {out}");
    }
    if Path::new("/proc/timer_list").exists() {
        assert!(out.contains("/proc/timer_list 0 1"), "{out}");
    }
    if Path::new("/proc/kcore").exists() {
        assert!(out.contains("/proc/kcore 0 1"), "{out}");
    }
    assert!(out.ends_with("sys-ro\nsysfs-ro\nroot-rw\n"), "{out}");
}

#[test]
fn read_only_root_and_tmpfs() {
    require_root!();
    let out = run_ok(
        "if touch /x 2>/dev/null; then echo root-rw; else echo root-ro; fi; touch /run/ok && echo tmpfs-rw",
        Overrides {
            read_only: true,
            tmpfs: vec![atoll_runtime::run::spec::Tmpfs {
                destination: "/run".into(),
                size: Some(1 << 20),
                mode: None,
            }],
            ..Default::default()
        },
    );
    assert_eq!(out, "root-ro\ntmpfs-rw\n");
}

#[test]
fn seccomp_blocks_namespaces_and_mount() {
    require_root!();
    // unshare -U needs no capability: only the filter refuses it.
    let (code, out) = run("unshare -U true", Overrides::default());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let (code, out) = run("mount -t tmpfs none /tmp", Overrides::default());
    assert_ne!(code, 0, "{out}");
    // Without the filter the same unshare works.
    let out = run_ok(
        "unshare -U true && echo unconfined-ok",
        Overrides {
            seccomp_unconfined: true,
            ..Default::default()
        },
    );
    assert!(out.contains("unconfined-ok"), "{out}");
}

#[test]
fn env_cwd_and_user() {
    require_root!();
    let out = run_ok(
        "id -u; id -g; id -G; pwd; echo $FROM_IMAGE $MINE $HOME; grep CapEff /proc/self/status",
        Overrides {
            user: Some("65534".into()),
            working_dir: Some("/work/dir".into()),
            env: vec!["MINE=yes".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        out,
        "65534\n65534\n65534\n/work/dir\n1 yes /nonexistent\nCapEff:\t0000000000000000\n"
    );
    let out = run_ok(
        "id -u; id -g; id -G",
        Overrides {
            user: Some("app".into()),
            ..Default::default()
        },
    );
    assert_eq!(out, "1000\n1000\n1000 2000\n");
}

#[test]
fn volumes_bind_host_and_named() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).expect("mkdir");
    std::fs::write(host.join("in.txt"), "from host\n").expect("write");
    let out = run_ok(
        "cat /data/in.txt; echo out > /data/out.txt; echo kept > /cache/f; \
         if touch /ro/x 2>/dev/null; then echo ro-writable; else echo ro-ok; fi",
        Overrides {
            volumes: vec![
                Volume {
                    source: VolumeSource::HostPath(host.clone()),
                    destination: "/data".into(),
                    read_only: false,
                },
                Volume {
                    source: VolumeSource::Named("cache".into()),
                    destination: "/cache".into(),
                    read_only: false,
                },
                Volume {
                    source: VolumeSource::HostPath(host.clone()),
                    destination: "/ro".into(),
                    read_only: true,
                },
            ],
            volume_policy: VolumePolicy {
                host_roots: vec![dir.path().to_path_buf()],
                named_dir: dir.path().join("volumes"),
            },
            ..Default::default()
        },
    );
    assert_eq!(out, "from host\nro-ok\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).expect("out"),
        "out\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("volumes/cache/_data/f")).expect("named"),
        "kept\n"
    );
}

#[test]
fn exit_code_kill_and_setup_errors() {
    require_root!();
    assert_eq!(run("exit 7", Overrides::default()).0, 7);

    let dir = tempfile::tempdir().expect("tempdir");
    let layers = vec![busybox_layer(dir.path())];
    let etc = EtcFiles::from_layers(&layers);
    let (source, root) =
        RootfsSource::overlay_in(layers, &dir.path().join("state")).expect("state");
    let sleeper = Overrides {
        cmd: Some(vec!["/bin/busybox".into(), "sleep".into(), "60".into()]),
        ..Default::default()
    };
    let spec = Spec::from_image(&image(&["/bin/sh"]), &sleeper, &etc, &root).expect("spec");
    let mut c = process::start(&spec, &source, None, Stdio::default()).expect("start");
    assert_eq!(c.try_wait().expect("try_wait"), None);
    c.kill(nix::sys::signal::Signal::SIGKILL).expect("kill");
    assert_eq!(
        c.wait().expect("wait"),
        ExitStatus::Signaled(nix::sys::signal::Signal::SIGKILL)
    );

    let missing = Overrides {
        cmd: Some(vec!["no-such-program".into()]),
        ..Default::default()
    };
    let spec = Spec::from_image(&image(&["/bin/sh"]), &missing, &etc, &root).expect("spec");
    let err = process::start(&spec, &source, None, Stdio::default()).expect_err("must fail");
    assert!(err.to_string().contains("no-such-program"), "{err}");
}

#[test]
fn pod_shares_net_ipc_and_uts_namespaces() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let layers = vec![busybox_layer(dir.path())];
    let etc = EtcFiles::from_layers(&layers);
    let sh = |script: &str, hostname: Option<&str>, root: &Path| {
        let overrides = Overrides {
            cmd: Some(vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ]),
            hostname: hostname.map(str::to_string),
            ..Default::default()
        };
        Spec::from_image(&image(&["/bin/sh"]), &overrides, &etc, root).expect("spec")
    };
    let captured = || {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let w2 = w.try_clone().expect("dup");
        (
            r,
            Stdio {
                stdin: None,
                stdout: Some(w),
                stderr: Some(w2),
            },
        )
    };
    let read_all = |fd: std::os::fd::OwnedFd| {
        let mut s = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut s)
            .expect("read output");
        s
    };

    // The pod's first container: its own namespaces, a listener on 8080.
    let (source_a, root_a) =
        RootfsSource::overlay_in(layers.clone(), &dir.path().join("a")).expect("state a");
    let spec_a = sh("/bin/busybox nc -l -p 8080", Some("pod-host"), &root_a);
    let (out_a, stdio_a) = captured();
    let mut a = process::start(&spec_a, &source_a, None, stdio_a).expect("start a");

    // The second joins its net, ipc and uts namespaces by path, keeps its
    // own mount and pid namespaces, and talks to the first over loopback.
    let (source_b, root_b) =
        RootfsSource::overlay_in(layers, &dir.path().join("b")).expect("state b");
    let mut spec_b = sh(
        "hostname; for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; \
         for i in $(/bin/busybox seq 1 50); do \
           echo hello-from-b | /bin/busybox nc 127.0.0.1 8080 && exit 0; /bin/busybox sleep 0.1; \
         done; exit 1",
        None,
        &root_b,
    );
    use atoll_runtime::run::spec::NamespaceType;
    for ns in &mut spec_b.linux.namespaces {
        let name = match ns.kind {
            NamespaceType::Network => "net",
            NamespaceType::Ipc => "ipc",
            NamespaceType::Uts => "uts",
            _ => continue,
        };
        ns.path = Some(format!("/proc/{}/ns/{name}", a.pid()).into());
    }
    let (out_b, stdio_b) = captured();
    let mut b = process::start(&spec_b, &source_b, None, stdio_b).expect("start b");
    let link = |pid: i32, ns: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
            .expect("ns link")
            .to_string_lossy()
            .into_owned()
    };
    let a_links: Vec<String> = ["net", "ipc", "uts", "pid"]
        .iter()
        .map(|ns| link(a.pid(), ns))
        .collect();
    let status_b = b.wait().expect("wait b");
    let text_b = read_all(out_b);
    assert_eq!(status_b, ExitStatus::Exited(0), "b: {text_b}");
    let status_a = a.wait().expect("wait a");
    let text_a = read_all(out_a);
    assert_eq!(status_a, ExitStatus::Exited(0), "a: {text_a}");
    assert_eq!(text_a, "hello-from-b\n");
    let lines: Vec<&str> = text_b.lines().collect();
    assert_eq!(lines[0], "pod-host", "{text_b}");
    assert_eq!(lines[1..4], a_links[..3], "net, ipc, uts shared: {text_b}");
    assert_ne!(lines[4], a_links[3], "pid not shared: {text_b}");
}

#[test]
fn joining_a_missing_namespace_fails_before_the_fork() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let layers = vec![busybox_layer(dir.path())];
    let etc = EtcFiles::from_layers(&layers);
    let (source, root) =
        RootfsSource::overlay_in(layers, &dir.path().join("state")).expect("state");
    let mut spec =
        Spec::from_image(&image(&["/bin/sh"]), &Overrides::default(), &etc, &root).expect("spec");
    for ns in &mut spec.linux.namespaces {
        if ns.kind == atoll_runtime::run::spec::NamespaceType::Network {
            ns.path = Some("/proc/no-such-pid/ns/net".into());
        }
    }
    let err = process::start(&spec, &source, None, Stdio::default()).expect_err("must fail");
    assert!(
        matches!(err, process::ProcessError::OpenNamespace(..)),
        "{err}"
    );
}
