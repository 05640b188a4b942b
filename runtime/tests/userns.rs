//! A container in a user namespace, for real: a busybox layer owned by
//! host root, run with container ids 0..65536 mapped to host ids from
//! 300000, checked from inside (maps, ids, the image's files owned by the
//! container's root, a writable root, a host root's volume that is not)
//! and from the host (the process's host uid, the upper dir's owner).
//! Needs root and busybox; skips with a printed reason otherwise.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use atoll_runtime::manifest::{ContainerConfig, ImageConfig, RootFs};
use atoll_runtime::run::process::{self, Stdio};
use atoll_runtime::run::rootfs::RootfsSource;
use atoll_runtime::run::spec::{
    EtcFiles, IdMapping, Overrides, Spec, Volume, VolumePolicy, VolumeSource,
};

const HOST: u32 = 300_000;

fn image() -> ImageConfig {
    ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        created: None,
        config: Some(ContainerConfig::default()),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        },
        history: Vec::new(),
    }
}

/// A tmpfs mounted on the host for the test, unmounted when dropped.
struct HostMount(std::path::PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The host uid of `pid` (the real uid, from /proc/PID/status).
fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Uid line")
}

#[test]
fn image_files_belong_to_the_container_root() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = common::busybox_root(
        dir.path(),
        "layer",
        &[
            "sh", "id", "cat", "stat", "touch", "echo", "sleep", "mkdir", "rm",
        ],
        common::PASSWD,
        common::GROUP,
    );
    // A file the image gives to uid 1000: it stays 1000 inside.
    let owned = layer.join("etc/app.conf");
    std::fs::write(&owned, "x").expect("app.conf");
    std::os::unix::fs::chown(&owned, Some(1000), Some(1000)).expect("chown");
    // A volume owned by host root, mounted read-write: not writable by the
    // container's root, whose capabilities are its namespace's only. On a
    // nosuid, nodev, noexec, noatime mount (as /var is on some hosts):
    // flags locked in the user namespace, which the `:ro` bind's remount
    // must repeat.
    let host_data = dir.path().join("hostdata");
    std::fs::create_dir(&host_data).expect("hostdata");
    nix::mount::mount(
        Some("tmpfs"),
        &host_data,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC
            | nix::mount::MsFlags::MS_NOATIME,
        Some("mode=0755,size=1m"),
    )
    .expect("tmpfs for the host volume");
    let _host_mount = HostMount(host_data.clone());
    std::fs::write(host_data.join("file"), "host").expect("file");
    let layers = vec![layer.clone()];
    let etc = EtcFiles::from_layers(&layers);
    let state = dir.path().join("state");
    let (source, root) = RootfsSource::overlay_in(layers, &state).expect("state dir");
    let map = IdMapping {
        container_id: 0,
        host_id: HOST,
        size: 65536,
    };
    let script = "\
        cat /proc/self/uid_map /proc/self/gid_map; \
        echo id=$(id -u):$(id -g); \
        echo busybox=$(stat -c %u:%g /bin/busybox); \
        echo appconf=$(stat -c %u:%g /etc/app.conf); \
        echo root=$(stat -c %u:%g /); \
        touch /made-inside && echo made=$(stat -c %u:%g /made-inside); \
        mkdir /newdir && echo mkdir=ok; \
        echo hostdata=$(stat -c %u:%g /hostdata/file); \
        touch /hostdata/new 2>/dev/null && echo hostdata-write=yes || echo hostdata-write=no; \
        touch /ro/new 2>/dev/null && echo ro-write=yes || echo ro-write=no; \
        touch /named/new && echo named=$(stat -c %u:%g /named/new); \
        echo done; exec sleep 60";
    let overrides = Overrides {
        cmd: Some(vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
        ]),
        user_namespace: Some((map, map)),
        volumes: vec![
            Volume {
                source: VolumeSource::HostPath(host_data.clone()),
                destination: "/hostdata".into(),
                read_only: false,
            },
            Volume {
                source: VolumeSource::HostPath(host_data.clone()),
                destination: "/ro".into(),
                read_only: true,
            },
            Volume {
                source: VolumeSource::Named("cache".into()),
                destination: "/named".into(),
                read_only: false,
            },
        ],
        volume_policy: VolumePolicy {
            host_roots: vec![dir.path().to_path_buf()],
            named_dir: dir.path().join("volumes"),
        },
        ..Default::default()
    };
    let spec = Spec::from_image(&image(), &overrides, &etc, &root).expect("spec");
    let (out_r, out_w) = nix::unistd::pipe().expect("pipe");
    let err_w = out_w.try_clone().expect("dup");
    let stdio = Stdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    let mut container = process::start(&spec, &source, None, stdio).expect("start");
    let mut out = String::new();
    let mut lines = BufReader::new(std::fs::File::from(out_r));
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).expect("read") == 0 {
            break;
        }
        out.push_str(&line);
        if line == "done\n" {
            break;
        }
    }
    // Still running (in `sleep`): seen from the host.
    let uid_on_host = host_uid(container.pid());
    container
        .kill(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    container.wait().expect("wait");

    assert!(out.ends_with("done\n"), "{out}");
    let maps: Vec<Vec<&str>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        maps,
        [["0", "300000", "65536"], ["0", "300000", "65536"]],
        "{out}"
    );
    for want in [
        "id=0:0",
        "busybox=0:0",
        "appconf=1000:1000",
        "root=0:0",
        "made=0:0",
        "mkdir=ok",
        // Host root's file: outside the map, so the overflow ids.
        "hostdata=65534:65534",
        "hostdata-write=no",
        "ro-write=no",
        "named=0:0",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
    }
    assert_eq!(uid_on_host, HOST, "{out}");
    // On the host: the upper dir and what was made in it belong to the
    // container's host ids; the layer itself is untouched.
    let upper = state.join("upper");
    let meta = |p: &Path| std::fs::metadata(p).expect("stat");
    assert_eq!((meta(&upper).uid(), meta(&upper).gid()), (HOST, HOST));
    let made = meta(&upper.join("made-inside"));
    assert_eq!((made.uid(), made.gid()), (HOST, HOST));
    assert_eq!(meta(&layer.join("bin/busybox")).uid(), 0);
    assert_eq!(meta(&owned).uid(), 1000);
    assert!(!host_data.join("new").exists());
    let named = dir.path().join("volumes/cache/_data");
    assert_eq!(meta(&named).uid(), HOST);
    assert_eq!(meta(&named.join("new")).uid(), HOST);
    // Nothing stays mounted on the host but the test's own tmpfs: the
    // overlay and the idmapped layers lived in the container's mount
    // namespaces.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let here = dir.path().to_string_lossy();
    let ours = host_data.to_string_lossy();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(here.as_ref()) && !l.contains(&format!(" {ours} ")))
        .collect();
    assert!(left.is_empty(), "left mounted: {left:?}");
}
