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
        Self::start_with("")
    }

    /// Starts one with `extra` appended to its `config.yml` (an `auth:`
    /// section, say).
    pub fn start_with(extra: &str) -> Result<Self, RegistryError> {
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
                 http:\n  addr: 127.0.0.1:{port}\n{extra}",
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

    /// `127.0.0.1:<port>`, the registry as the host names it in an image
    /// reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
        self.push_with_token(archive, repo_tag, None)
    }

    /// [`Registry::push`] to a registry that wants a bearer token: `token`
    /// (with push and pull for the repository) on every request.
    pub fn push_with_token(
        &self,
        archive: &Path,
        repo_tag: &str,
        token: Option<&str>,
    ) -> Result<String, RegistryError> {
        let dest = format!("docker://127.0.0.1:{}/{repo_tag}", self.port);
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        let mut inspect = Command::new("skopeo");
        inspect.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
        if let Some(token) = token {
            copy.arg(format!("--dest-registry-token={token}"));
            inspect.arg(format!("--registry-token={token}"));
        }
        run(copy
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(&dest))?;
        let digest = run(inspect.arg(&dest))?;
        Ok(digest.trim().to_string())
    }

    /// Pushes an OCI image index as `repo:tag` over the registry's HTTP
    /// API, listing manifests already in `repo` (by digest) for the given
    /// `(architecture, digest)` platforms, all `linux`, in that order.
    /// Returns the index's digest.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        platforms: &[(&str, &str)],
    ) -> Result<String, RegistryError> {
        let mut manifests = Vec::new();
        for (arch, digest) in platforms {
            let (status, _, body) = self.http(
                "GET",
                &format!("/v2/{repo}/manifests/{digest}"),
                &[("Accept", OCI_MANIFEST)],
                &[],
            )?;
            if status != 200 {
                return Err(RegistryError::Command {
                    command: format!("GET manifest {repo}@{digest}"),
                    output: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                });
            }
            manifests.push(serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": body.len(),
                "platform": { "architecture": arch, "os": "linux" },
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let body = serde_json::to_vec(&index).map_err(|e| RegistryError::Command {
            command: "index JSON".into(),
            output: e.to_string(),
        })?;
        let (status, headers, reply) = self.http(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", OCI_INDEX)],
            &body,
        )?;
        if status != 201 {
            return Err(RegistryError::Command {
                command: format!("PUT index {repo}:{tag}"),
                output: format!("HTTP {status}: {}", String::from_utf8_lossy(&reply)),
            });
        }
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("docker-content-digest"))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| RegistryError::Command {
                command: format!("PUT index {repo}:{tag}"),
                output: "no Docker-Content-Digest in the reply".into(),
            })
    }

    /// One HTTP/1.1 request to the registry (`Connection: close`): status,
    /// headers and body.
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpReply, RegistryError> {
        use std::io::{Read, Write};
        let what = format!("{method} {path}");
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).map_err(io(what.clone()))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io(what.clone()))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).map_err(io(what.clone()))?;
        conn.write_all(body).map_err(io(what.clone()))?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).map_err(io(what.clone()))?;
        let bad = |why: &str| RegistryError::Command {
            command: what.clone(),
            output: format!("{why}: {}", String::from_utf8_lossy(&reply)),
        };
        let end = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = String::from_utf8_lossy(&reply[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut body = reply[end + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
        }
        Ok((status, headers, body))
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
        let path = self.blob_path(digest);
        let mut bytes = std::fs::read(&path).map_err(io(format!("{}", path.display())))?;
        let mid = bytes.len() / 2;
        for b in bytes.iter_mut().skip(mid).take(16) {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).map_err(io(format!("{}", path.display())))
    }

    /// Where the registry stores a blob (`sha256:HEX` or `HEX`), for tests
    /// that damage what it serves.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

/// Status, headers and body of an HTTP reply.
type HttpReply = (u16, Vec<(String, String)>, Vec<u8>);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A chunked transfer-encoded body, joined.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
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
