//! A registry that really requires a bearer token, as Docker Hub, GHCR and
//! Harbor do, for the tests that pull from one: the runtime's pull on the
//! host (runtime/tests/token_auth.rs) and a guest's (tests/containers.rs).
//!
//! - [`Issuer`]: a throwaway RSA key and self-signed certificate (made by
//!   the `openssl` command) that sign JWTs (RS256, the certificate in the
//!   `x5c` header);
//! - a token endpoint ([`TokenRegistry::seen`], [`TokenRegistry::issued`]):
//!   `GET /token?service=…&scope=…` with [`USER`] and [`PASSWORD`] as basic
//!   auth gets the pull and push it asks for on the repositories it was
//!   given, and a token without access elsewhere (as Docker Hub answers);
//!   other credentials get a 401; no credentials a token without access
//!   or, once [`TokenRegistry::refuse_anonymous`] is set, a 401;
//! - a `docker-registry` ([`crate::registry::Registry`]) configured with
//!   `auth: token`, verifying each token against the issuer's certificate
//!   (`rootcertbundle`), its issuer, audience (the service), lifetime and
//!   `access` claims.
//!
//! On the host ([`TokenRegistry::on_loopback`]) the token endpoint speaks
//! plain HTTP on 127.0.0.1 (credentials may go to loopback over plain
//! HTTP). For a guest ([`TokenRegistry::for_guest`]) the registry's
//! challenge names the token endpoint by the guest-visible address that
//! [`TokenRegistry::net_user`] forwards to it, over HTTPS: Atoll sends
//! credentials over plain HTTP to loopback only, so the endpoint has a
//! certificate for that address from a throwaway CA the guest trusts
//! through the config's `ca_certs` ([`TokenRegistry::ca_pem`]).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::registry::{Registry, RegistryError};
use crate::servers::{HttpServer, Request, Response, ServerError};
use crate::vm::NetUser;

/// The registry's `service` (the tokens' audience).
pub const SERVICE: &str = "atoll-test-registry";
/// The tokens' issuer, and the subject of its certificate.
pub const ISSUER: &str = "atoll-test-token-issuer";
/// The one account of the token endpoint.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";
/// How long a token lives, in seconds.
const TOKEN_TTL: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum TokenRegistryError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Openssl { command: String, stderr: String },
    #[error("{what}")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the token endpoint's TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("the token-auth registry")]
    Registry(#[from] RegistryError),
    #[error("the token endpoint")]
    Server(#[from] ServerError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TokenRegistryError {
    let what = what.into();
    move |source| TokenRegistryError::Io { what, source }
}

/// Runs `openssl` with `words` (split at spaces) and then the `(option,
/// path)` pairs of `files`, feeding it `input`; returns its stdout.
fn openssl(
    words: &str,
    files: &[(&str, &Path)],
    input: &[u8],
) -> Result<Vec<u8>, TokenRegistryError> {
    let mut cmd = Command::new("openssl");
    cmd.args(words.split(' '));
    for (option, path) in files {
        cmd.arg(option).arg(path);
    }
    let command = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("{command} (apt-get install openssl)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(io(command.clone()))?;
    }
    let out = child.wait_with_output().map_err(io(command.clone()))?;
    if !out.status.success() {
        return Err(TokenRegistryError::Openssl {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// `Basic base64(user:password)`: an `Authorization` value.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A throwaway RSA key and its self-signed certificate: the registry's
/// `rootcertbundle`, and what tokens are signed with.
#[derive(Debug)]
pub struct Issuer {
    key: PathBuf,
    cert: PathBuf,
    /// The certificate, DER in standard base64: the `x5c` header.
    x5c: String,
}

impl Issuer {
    /// Makes the key and certificate in `dir`.
    pub fn new(dir: &Path) -> Result<Self, TokenRegistryError> {
        let (key, cert) = (dir.join("issuer-key.pem"), dir.join("issuer-cert.pem"));
        openssl(
            &format!("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN={ISSUER}"),
            &[("-keyout", &key), ("-out", &cert)],
            &[],
        )?;
        // A PEM body is the DER in standard base64, in lines.
        let pem = std::fs::read_to_string(&cert).map_err(io(format!("{}", cert.display())))?;
        let x5c = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>();
        Ok(Self { key, cert, x5c })
    }

    /// The certificate (PEM).
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// A JWT for `subject` with `access` (`[{type, name, actions}]`), RS256.
    pub fn token(
        &self,
        subject: &str,
        access: serde_json::Value,
    ) -> Result<String, TokenRegistryError> {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + TOKEN_TTL, "nbf": now.saturating_sub(10), "iat": now,
            "jti": format!("{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = openssl("dgst -sha256", &[("-sign", &self.key)], input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// A token for `actions` (`pull`, `push`) on `repository`.
    pub fn repository_token(
        &self,
        subject: &str,
        repository: &str,
        actions: &[&str],
    ) -> Result<String, TokenRegistryError> {
        self.token(
            subject,
            serde_json::json!([{"type": "repository", "name": repository, "actions": actions}]),
        )
    }
}

/// A throwaway CA and a certificate it signed for `ip` (subjectAltName):
/// the CA's PEM, and a server configuration with the certificate.
fn tls_for_ip(
    dir: &Path,
    ip: Ipv4Addr,
) -> Result<(String, Arc<rustls::ServerConfig>), TokenRegistryError> {
    let [ca_key, ca, key, csr, cert, ext] = [
        "ca-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.csr",
        "server.pem",
        "server.ext",
    ]
    .map(|f| dir.join(f));
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=atoll-test-ca",
        &[("-keyout", &ca_key), ("-out", &ca)],
        &[],
    )?;
    openssl(
        &format!("req -new -newkey rsa:2048 -nodes -subj /CN={ip}"),
        &[("-keyout", &key), ("-out", &csr)],
        &[],
    )?;
    // An end-entity certificate (webpki refuses a CA one for a server).
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .map_err(io(format!("{}", ext.display())))?;
    openssl(
        "x509 -req -set_serial 2 -days 1",
        &[
            ("-in", &csr),
            ("-CA", &ca),
            ("-CAkey", &ca_key),
            ("-extfile", &ext),
            ("-out", &cert),
        ],
        &[],
    )?;
    let pem = |what: &Path| {
        let what = format!("{}", what.display());
        move |source| TokenRegistryError::Pem { what, source }
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem(&cert))?;
    let private = PrivateKeyDer::from_pem_file(&key).map_err(pem(&key))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TokenRegistryError::Tls)?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(TokenRegistryError::Tls)?;
    let ca_pem = std::fs::read_to_string(&ca).map_err(io(format!("{}", ca.display())))?;
    Ok((ca_pem, Arc::new(config)))
}

/// One repository's grant in a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub repository: String,
    pub actions: Vec<String>,
}

/// A token the endpoint issued: to whom, for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The account, or `""` for an anonymous token.
    pub subject: String,
    pub access: Vec<Grant>,
}

impl Issued {
    /// Whether it lets its bearer `action` on `repository`.
    pub fn allows(&self, repository: &str, action: &str) -> bool {
        self.access
            .iter()
            .any(|g| g.repository == repository && g.actions.iter().any(|a| a == action))
    }
}

/// What the token endpoint's handler shares with the test.
#[derive(Debug)]
struct Endpoint {
    issuer: Arc<Issuer>,
    /// The repositories [`USER`] may pull from and push to.
    repositories: Vec<String>,
    refuse_anonymous: AtomicBool,
    issued: Mutex<Vec<Issued>>,
}

fn json(status: u16, body: &serde_json::Value) -> Response {
    Response::new(status, "application/json", body.to_string())
}

fn unauthorized(message: &str) -> Response {
    json(
        401,
        &serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": message}]}),
    )
}

impl Endpoint {
    fn answer(&self, request: &Request) -> Response {
        if request.method != "GET" || request.path_only() != "/token" {
            return Response::new(404, "text/plain", "no such endpoint\n");
        }
        let (subject, access) = match request.header("authorization") {
            Some(a) if a == basic_auth(USER, PASSWORD) => (USER, self.grants(request)),
            Some(_) => return unauthorized("incorrect username or password"),
            None if self.refuse_anonymous.load(Ordering::SeqCst) => {
                return unauthorized("authentication required")
            }
            None => ("", Vec::new()),
        };
        let claim: Vec<serde_json::Value> = access
            .iter()
            .map(|g| {
                serde_json::json!({"type": "repository", "name": g.repository, "actions": g.actions})
            })
            .collect();
        match self.issuer.token(subject, claim.into()) {
            Ok(token) => {
                self.issued
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Issued {
                        subject: subject.to_owned(),
                        access,
                    });
                json(
                    200,
                    &serde_json::json!({"token": token, "access_token": token,
                                        "expires_in": TOKEN_TTL}),
                )
            }
            Err(e) => Response::new(500, "text/plain", format!("signing the token: {e}\n")),
        }
    }

    /// The pull and push asked for (`scope=repository:NAME:pull,push`) on
    /// the repositories [`USER`] has.
    fn grants(&self, request: &Request) -> Vec<Grant> {
        request
            .query("scope")
            .iter()
            .filter_map(|scope| {
                let rest = scope.strip_prefix("repository:")?;
                let (name, actions) = rest.rsplit_once(':')?;
                if !self.repositories.iter().any(|r| r == name) {
                    return None;
                }
                let actions = actions
                    .split(',')
                    .filter(|a| matches!(*a, "pull" | "push"))
                    .map(str::to_owned)
                    .collect();
                Some(Grant {
                    repository: name.to_owned(),
                    actions,
                })
            })
            .collect()
    }
}

/// Where the clients are: where the registry and its token endpoint are
/// reached.
#[derive(Debug)]
enum Clients {
    /// On the host: `127.0.0.1` and the real ports.
    Host,
    /// In a guest, through [`TokenRegistry::net_user`]'s forwards.
    Guest {
        registry: SocketAddrV4,
        realm: SocketAddrV4,
        ca_pem: String,
    },
}

/// A `docker-registry` with `auth: token` and its token endpoint; both
/// stop on drop.
#[derive(Debug)]
pub struct TokenRegistry {
    registry: Registry,
    tokens: HttpServer,
    endpoint: Arc<Endpoint>,
    realm: String,
    clients: Clients,
    _keys: tempfile::TempDir,
}

impl TokenRegistry {
    /// For clients on the host: the token endpoint over plain HTTP,
    /// `http://127.0.0.1:PORT/token`. [`USER`] may pull from and push to
    /// `repositories`.
    pub fn on_loopback(repositories: &[&str]) -> Result<Self, TokenRegistryError> {
        Self::start(repositories, None)
    }

    /// For a guest: it reaches the registry at `registry` and the token
    /// endpoint at `https://REALM/token` (see [`TokenRegistry::net_user`]),
    /// whose certificate it trusts through [`TokenRegistry::ca_pem`].
    pub fn for_guest(
        registry: SocketAddrV4,
        realm: SocketAddrV4,
        repositories: &[&str],
    ) -> Result<Self, TokenRegistryError> {
        Self::start(repositories, Some((registry, realm)))
    }

    fn start(
        repositories: &[&str],
        guest: Option<(SocketAddrV4, SocketAddrV4)>,
    ) -> Result<Self, TokenRegistryError> {
        let keys = tempfile::tempdir().map_err(io("temp dir"))?;
        let issuer = Arc::new(Issuer::new(keys.path())?);
        let endpoint = Arc::new(Endpoint {
            issuer: Arc::clone(&issuer),
            repositories: repositories.iter().map(|r| (*r).to_owned()).collect(),
            refuse_anonymous: AtomicBool::new(false),
            issued: Mutex::new(Vec::new()),
        });
        let e = Arc::clone(&endpoint);
        let handler = Arc::new(move |r: &Request| e.answer(r));
        let (tokens, realm, clients) = match guest {
            None => {
                let tokens = HttpServer::start("token", handler)?;
                let realm = format!("http://127.0.0.1:{}/token", tokens.port());
                (tokens, realm, Clients::Host)
            }
            Some((registry, realm)) => {
                let (ca_pem, tls) = tls_for_ip(keys.path(), *realm.ip())?;
                let tokens = HttpServer::start_tls("token", tls, handler)?;
                let clients = Clients::Guest {
                    registry,
                    realm,
                    ca_pem,
                };
                (tokens, format!("https://{realm}/token"), clients)
            }
        };
        let registry = Registry::start_with(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n\
             \x20   rootcertbundle: {}\n",
            issuer.cert().display()
        ))?;
        Ok(Self {
            registry,
            tokens,
            endpoint,
            realm,
            clients,
            _keys: keys,
        })
    }

    /// The registry as its clients name it in image references and
    /// `[[registries.credentials]]`: `127.0.0.1:PORT`, or its guest address.
    pub fn host(&self) -> String {
        match &self.clients {
            Clients::Host => self.registry.host(),
            Clients::Guest { registry, .. } => registry.to_string(),
        }
    }

    /// The token endpoint's URL as the registry's challenge names it.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// For a guest, the CA that signed the token endpoint's certificate
    /// (PEM), for the config's `ca_certs`.
    pub fn ca_pem(&self) -> Option<&str> {
        match &self.clients {
            Clients::Host => None,
            Clients::Guest { ca_pem, .. } => Some(ca_pem),
        }
    }

    /// `net` with the guest's forwards to the registry and the token
    /// endpoint (for clients on the host, `net` as it is).
    pub fn net_user(&self, net: NetUser) -> NetUser {
        match &self.clients {
            Clients::Host => net,
            Clients::Guest {
                registry, realm, ..
            } => net
                .guestfwd(*registry.ip(), registry.port(), self.registry.port())
                .guestfwd(*realm.ip(), realm.port(), self.tokens.port()),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn issuer(&self) -> &Issuer {
        &self.endpoint.issuer
    }

    /// Pushes an OCI archive as `repo:tag` with a token the issuer signs
    /// directly (the token endpoint does not see it); returns the manifest
    /// digest.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<String, TokenRegistryError> {
        let repository = repo_tag.split_once(':').map_or(repo_tag, |(r, _)| r);
        let token = self
            .issuer()
            .repository_token("test-pusher", repository, &["pull", "push"])?;
        Ok(self
            .registry
            .push_with_token(archive, repo_tag, Some(&token))?)
    }

    /// The requests the token endpoint got, with the status it answered.
    pub fn seen(&self) -> Vec<Request> {
        self.tokens.requests()
    }

    /// The tokens it issued.
    pub fn issued(&self) -> Vec<Issued> {
        self.endpoint
            .issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the requests and tokens so far.
    pub fn forget(&self) {
        self.tokens.forget();
        self.endpoint
            .issued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Answers requests without credentials with a 401 (`true`) or a token
    /// without access (`false`, the default: Docker Hub's answer).
    pub fn refuse_anonymous(&self, refuse: bool) {
        self.endpoint
            .refuse_anonymous
            .store(refuse, Ordering::SeqCst);
    }
}
