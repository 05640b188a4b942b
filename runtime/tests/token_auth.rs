//! A pull from a registry that really requires a bearer token, as Docker
//! Hub, GHCR and Harbor do: a real `docker-registry` (Debian package
//! docker-registry) configured with `auth: token`, and a token server in
//! the test that checks basic credentials and signs JWTs (RS256, the
//! signing certificate in the `x5c` header) with a throwaway key and
//! self-signed certificate made by the `openssl` command. The registry
//! verifies each token against that certificate (`rootcertbundle`), its
//! issuer, audience (the service), lifetime and `access` claims.
//!
//! The image is pushed over the registry API with a push token; the
//! runtime's pull then goes `GET /v2/` → 401 `Bearer realm=…,service=…` →
//! token endpoint with the config's credentials as basic auth → bearer
//! token → manifest and blobs. Wrong credentials are refused by the token
//! server; no credentials get an anonymous token without access (Docker
//! Hub's answer for a private repository), which the registry refuses.
//! Skips with a printed reason when docker-registry is not installed.

#![cfg(feature = "pull")]

#[path = "common/registry.rs"]
mod test_registry;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_common::config::{Credential, Registries};
use atoll_runtime::digest::Digest;
use atoll_runtime::manifest::{Descriptor, Platform, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use atoll_runtime::pull::{pull, PullError};
use atoll_runtime::reference::Reference;
use atoll_runtime::registry::{self, RegistryError};
use atoll_runtime::store::Store;
use reqwest::Url;
use test_registry::{TestRegistry, REGISTRY_BIN};

/// The registry's `service` (the tokens' audience) and the tokens' issuer.
const SERVICE: &str = "atoll-test-registry";
const ISSUER: &str = "atoll-test-token-issuer";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
const REPO: &str = "test/private";

/// Base64 (RFC 4648): standard with padding, or URL-safe without (JWS).
fn base64(bytes: &[u8], url_safe: bool) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .chain([0, 0].iter())
            .take(3)
            .fold(0u32, |n, &b| n << 8 | u32::from(b));
        for i in 0..=chunk.len() {
            let c = ALPHABET[(n >> (18 - 6 * i)) as usize & 63];
            out.push(match (url_safe, c) {
                (true, b'+') => '-',
                (true, b'/') => '_',
                (_, c) => char::from(c),
            });
        }
        if !url_safe {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A throwaway RSA key and its self-signed certificate: the registry's
/// `rootcertbundle`, and what tokens are signed with.
struct Issuer {
    key: PathBuf,
    cert: PathBuf,
    /// The certificate, DER in standard base64: the `x5c` header.
    x5c: String,
}

impl Issuer {
    fn new(dir: &Path) -> Self {
        let (key, cert) = (dir.join("issuer-key.pem"), dir.join("issuer-cert.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={ISSUER}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("running openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A PEM body is the DER in standard base64, in lines.
        let pem = fs::read_to_string(&cert).expect("certificate");
        let x5c = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>();
        Self { key, cert, x5c }
    }

    /// A JWT for `sub` with `access` (`[{type, name, actions}]`), RS256.
    fn token(&self, sub: &str, access: serde_json::Value) -> String {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let t = now();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": sub, "aud": SERVICE,
            "exp": t + 300, "nbf": t - 10, "iat": t,
            "jti": format!("{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            base64(header.to_string().as_bytes(), true),
            base64(claims.to_string().as_bytes(), true)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running openssl dgst");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing to openssl");
        let out = child.wait_with_output().expect("openssl dgst");
        assert!(
            out.status.success(),
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{input}.{}", base64(&out.stdout, true))
    }
}

/// A request the token server answered: its target and `Authorization`.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    authorization: Option<String>,
}

impl Seen {
    fn query(&self, name: &str) -> Vec<String> {
        Url::parse(&format!("http://token{}", self.target))
            .expect("request target")
            .query_pairs()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }
}

/// The token endpoint, on a loopback port: `GET /token?service=…&scope=…`.
/// [`USER`] and [`PASSWORD`] get the pull and push they ask for, other
/// credentials a 401, no credentials a token without access (Docker Hub)
/// or, once `refuse_anonymous` is set, a 401.
struct TokenServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    refuse_anonymous: Arc<AtomicBool>,
}

impl TokenServer {
    fn start(issuer: Arc<Issuer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("token server port");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refuse_anonymous = Arc::new(AtomicBool::new(false));
        let (log, refuse) = (seen.clone(), refuse_anonymous.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                if let Some(request) = read_request(&conn) {
                    log.lock().expect("log").push(request.clone());
                    answer(&issuer, &request, refuse.load(Ordering::SeqCst), conn);
                }
            }
        });
        Self {
            port,
            seen,
            refuse_anonymous,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    fn forget(&self) {
        self.seen.lock().expect("log").clear();
    }
}

/// The request line and headers of a GET.
fn read_request(conn: &TcpStream) -> Option<Seen> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_owned();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    Some(Seen {
        target,
        authorization,
    })
}

fn answer(issuer: &Issuer, request: &Seen, refuse_anonymous: bool, mut conn: TcpStream) {
    let expected = format!(
        "Basic {}",
        base64(format!("{USER}:{PASSWORD}").as_bytes(), false)
    );
    let (status, body) = match &request.authorization {
        Some(a) if *a == expected => {
            // Grant the pull and push asked for, repository by repository.
            let access: Vec<serde_json::Value> = request
                .query("scope")
                .iter()
                .filter_map(|scope| {
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let actions: Vec<&str> = actions
                        .split(',')
                        .filter(|a| matches!(*a, "pull" | "push"))
                        .collect();
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
                })
                .collect();
            let token = issuer.token(USER, access.into());
            (
                "200 OK",
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300}),
            )
        }
        Some(_) => (
            "401 Unauthorized",
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED",
                                           "message": "incorrect username or password"}]}),
        ),
        None if refuse_anonymous => (
            "401 Unauthorized",
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED",
                                           "message": "authentication required"}]}),
        ),
        None => {
            let token = issuer.token("", serde_json::json!([]));
            ("200 OK", serde_json::json!({"token": token}))
        }
    };
    let body = body.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A `docker-registry` with token auth: tokens from `realm`, signed by
/// the key of `cert`.
fn start_registry(realm: &str, cert: &Path) -> TestRegistry {
    TestRegistry::start(&format!(
        "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n\
         \x20   rootcertbundle: {}\n",
        cert.display()
    ))
}

fn base(registry: &TestRegistry) -> String {
    format!("http://{}", registry.host())
}

/// A one-layer image: its layer tar, config and manifest.
struct TestImage {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        let data = b"pulled with a bearer token";
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, "hello", &data[..]).expect("tar");
        let layer = tar.into_inner().expect("tar");
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer)]}
        }))
        .expect("config");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": Descriptor::new(OCI_CONFIG, Digest::of(&config), config.len() as u64),
            "layers": [Descriptor::new(OCI_LAYER_TAR, Digest::of(&layer), layer.len() as u64)],
        }))
        .expect("manifest");
        Self {
            layer,
            config,
            manifest,
        }
    }

    fn digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    /// Pushes the blobs and the manifest as `tag` with a bearer token.
    async fn push(&self, http: &reqwest::Client, base: &str, token: &str, tag: &str) {
        for blob in [&self.config, &self.layer] {
            let digest = Digest::of(blob);
            let start = format!("{base}/v2/{REPO}/blobs/uploads/");
            let r = http
                .post(&start)
                .bearer_auth(token)
                .send()
                .await
                .expect("POST upload");
            assert_eq!(
                r.status(),
                202,
                "POST {start}: {}",
                r.text().await.unwrap_or_default()
            );
            let location = r.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned();
            let mut url = Url::parse(&start)
                .and_then(|u| u.join(&location))
                .expect("upload URL");
            url.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let r = http
                .put(url)
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(blob.clone())
                .send()
                .await
                .expect("PUT blob");
            assert_eq!(r.status(), 201, "PUT blob {digest}");
        }
        let r = http
            .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
            .bearer_auth(token)
            .header("content-type", OCI_MANIFEST)
            .body(self.manifest.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = r.status();
        assert_eq!(
            status,
            201,
            "PUT manifest: {}",
            r.text().await.unwrap_or_default()
        );
    }
}

fn credentials(registry: &TestRegistry, username: &str, password: &str) -> Registries {
    Registries {
        credentials: vec![Credential {
            registry: registry.host(),
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            token: None,
        }],
        ..Registries::default()
    }
}

/// Formats an error with its sources, as the CLI shows it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[test]
fn pull_from_a_token_auth_registry() {
    if !Path::new(REGISTRY_BIN).exists() {
        eprintln!("skipping: {REGISTRY_BIN} is not installed (apt-get install docker-registry)");
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let issuer = Arc::new(Issuer::new(keys.path()));
    let tokens = TokenServer::start(issuer.clone());
    let registry = start_registry(&tokens.realm(), &issuer.cert);
    let image = TestImage::new();
    let name = format!("{}/{REPO}:v1", registry.host());
    let reference = Reference::parse(&name).expect("reference");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");

    rt.block_on(async {
        let http = registry::http_client().expect("HTTP client");
        // The registry really wants a token: a bare request gets the
        // challenge that names the token server.
        let r = http
            .get(format!("{}/v2/{REPO}/manifests/v1", base(&registry)))
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().expect("challenge");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(&tokens.realm()), "{challenge}");
        assert!(challenge.contains(SERVICE), "{challenge}");
        // A token signed by another key is refused.
        let other = keys.path().join("other");
        fs::create_dir(&other).expect("mkdir");
        let forged = Issuer::new(&other).token(
            USER,
            serde_json::json!([{"type": "repository", "name": REPO, "actions": ["pull"]}]),
        );
        let r = http
            .get(format!("{}/v2/{REPO}/manifests/v1", base(&registry)))
            .bearer_auth(forged)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(r.status(), 401, "a token from another key");
        // Push with a token for pull and push.
        let scope = format!("repository:{REPO}:pull,push");
        let r = http
            .get(registry::token_url(&tokens.realm(), Some(SERVICE), &scope).expect("token URL"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .expect("GET token");
        assert_eq!(r.status(), 200);
        let answer: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("token answer")).expect("token JSON");
        let token = answer["token"].as_str().expect("token").to_owned();
        image.push(&http, &base(&registry), &token, "v1").await;
    });
    tokens.forget();

    // No credentials: an anonymous token without access, refused by the
    // registry (Docker Hub, Harbor); or no token at all (the token server's
    // 401). Either way the error says the registry wants credentials.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for refuse in [false, true] {
        tokens.refuse_anonymous.store(refuse, Ordering::SeqCst);
        let e = rt
            .block_on(pull(
                &store,
                &reference,
                &Registries::default(),
                &Platform::default(),
                &|_| {},
            ))
            .expect_err("a pull without credentials");
        let text = chain(&e);
        assert!(
            matches!(
                e,
                PullError::Registry(RegistryError::NeedCredentials { .. })
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} wants credentials", registry.host())),
            "{text}"
        );
        assert!(text.contains("[[registries.credentials]]"), "{text}");
        assert!(store.images().expect("images").is_empty());
    }
    let seen = tokens.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| s.authorization.is_none()),
        "{seen:?}"
    );
    tokens.refuse_anonymous.store(false, Ordering::SeqCst);
    tokens.forget();

    // Wrong credentials: the token server's 401, naming the registry whose
    // credentials were refused.
    let e = rt
        .block_on(pull(
            &store,
            &reference,
            &credentials(&registry, USER, "wrong"),
            &Platform::default(),
            &|_| {},
        ))
        .expect_err("a pull with a wrong password");
    let text = chain(&e);
    assert!(
        matches!(e, PullError::Registry(RegistryError::Denied { .. })),
        "{text}"
    );
    assert!(text.contains(&registry.host()), "{text}");
    assert!(text.contains(&tokens.realm()), "{text}");
    assert!(text.contains("incorrect username or password"), "{text}");
    assert!(store.images().expect("images").is_empty());
    tokens.forget();

    // The right credentials: the image is in the store by its digest.
    let digest = rt
        .block_on(pull(
            &store,
            &reference,
            &credentials(&registry, USER, PASSWORD),
            &Platform::default(),
            &|_| {},
        ))
        .unwrap_or_else(|e| panic!("pull: {}\nregistry log:\n{}", chain(&e), registry.log()));
    assert_eq!(digest, image.digest());
    let stored = store.image(&name).expect("the pulled image");
    assert_eq!(stored.descriptor.digest, image.digest());
    assert!(store.has_blob(&Digest::of(&image.layer)));
    assert!(store.has_blob(&Digest::of(&image.config)));
    let seen = tokens.seen();
    let wanted = format!("repository:{REPO}:pull");
    let login = format!(
        "Basic {}",
        base64(format!("{USER}:{PASSWORD}").as_bytes(), false)
    );
    assert!(
        seen.iter().any(|s| s.query("scope") == [wanted.clone()]
            && s.query("service") == [SERVICE]
            && s.authorization.as_deref() == Some(login.as_str())),
        "no token request for {wanted} from {USER}: {seen:?}"
    );

    // A configured token is sent as it is, with no token server visit.
    tokens.forget();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let token = issuer.token(
        "ci",
        serde_json::json!([{"type": "repository", "name": REPO, "actions": ["pull"]}]),
    );
    let config = Registries {
        credentials: vec![Credential {
            registry: registry.host(),
            username: None,
            password: None,
            token: Some(token),
        }],
        ..Registries::default()
    };
    let digest = rt
        .block_on(pull(
            &store,
            &reference,
            &config,
            &Platform::default(),
            &|_| {},
        ))
        .unwrap_or_else(|e| panic!("pull with a token: {}", chain(&e)));
    assert_eq!(digest, image.digest());
    assert!(tokens.seen().is_empty(), "{:?}", tokens.seen());
}
