//! A real OCI registry for container tests: Debian's `docker-registry`
//! (the CNCF distribution registry) on a free loopback port, storing in a
//! temp dir, and test images built from Debian's static busybox
//! (`image-build oci-image`) pushed to it with `skopeo`.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::disk::workspace_root;
use crate::vm::NetUser;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Where a guest finds the registry (guestfwd to the host's loopback).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
pub const GUEST_PORT: u16 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{REGISTRY_BIN} is not installed (scripts/install-deps.sh installs docker-registry)")]
    Missing,
    #[error("docker-registry did not listen on port {port} within 10 s; its log:\n{log}")]
    NotListening { port: u16, log: String },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

/// A running registry; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<String, RegistryError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(io(command.clone()))?;
    if !out.status.success() {
        return Err(RegistryError::Command {
            command,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Registry {
    pub fn start() -> Result<Self, RegistryError> {
        if !Path::new(REGISTRY_BIN).exists() {
            return Err(RegistryError::Missing);
        }
        let dir = tempfile::tempdir().map_err(io("temp dir"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("a free port"))?
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .map_err(io("registry config"))?;
        let log_path = dir.path().join("log");
        let log = std::fs::File::create(&log_path).map_err(io("registry log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("registry log"))?)
            .stderr(log)
            .spawn()
            .map_err(io(REGISTRY_BIN))?;
        let registry = Self { child, dir, port };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(RegistryError::NotListening {
            port,
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GUEST_IP:GUEST_PORT`, the registry as the guest names it.
    pub fn guest_host() -> String {
        format!("{GUEST_IP}:{GUEST_PORT}")
    }

    /// The user network with the guestfwd to this registry.
    pub fn net_user(&self) -> NetUser {
        NetUser::new().guestfwd(GUEST_IP, GUEST_PORT, self.port)
    }

    /// Pushes an OCI archive as `repo:tag` (`test/web:1`); returns the
    /// manifest digest the registry holds.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<String, RegistryError> {
        let dest = format!("docker://127.0.0.1:{}/{repo_tag}", self.port);
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(&dest))?;
        let digest = run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
            .arg(&dest))?;
        Ok(digest.trim().to_string())
    }

    /// The layer digests of `repo_tag`'s manifest.
    pub fn layer_digests(&self, repo_tag: &str) -> Result<Vec<String>, RegistryError> {
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://127.0.0.1:{}/{repo_tag}", self.port)))?;
        let v: serde_json::Value =
            serde_json::from_str(&raw).map_err(|e| RegistryError::Command {
                command: "skopeo inspect --raw".into(),
                output: e.to_string(),
            })?;
        Ok(v["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str().map(str::to_string))
            .collect())
    }

    /// Overwrites the middle bytes of a stored blob (keeping its size), so
    /// the registry serves content that does not match its digest.
    pub fn corrupt_blob(&self, digest: &str) -> Result<(), RegistryError> {
        let hex = digest.trim_start_matches("sha256:");
        let path = self
            .dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&path).map_err(io(format!("{}", path.display())))?;
        let mid = bytes.len() / 2;
        for b in bytes.iter_mut().skip(mid).take(16) {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).map_err(io(format!("{}", path.display())))
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

/// `image-build` next to the test binaries (built by scripts/build-image.sh).
fn image_build() -> PathBuf {
    let root = workspace_root();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("image-build");
        if p.exists() {
            return p;
        }
    }
    root.join("target/release/image-build")
}

/// Writes a busybox test image (`image-build oci-image`) with `cmd` as its
/// Cmd to `out`.
pub fn busybox_image(name: &str, cmd: &[&str], out: &Path) -> Result<(), RegistryError> {
    let mut c = Command::new(image_build());
    c.arg("oci-image")
        .arg("--name")
        .arg(name)
        .arg("--out")
        .arg(out);
    for w in cmd {
        // `--cmd=-c`: a word that starts with `-` is not taken for a flag.
        c.arg(format!("--cmd={w}"));
    }
    run(&mut c).map(|_| ())
}
