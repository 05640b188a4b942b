//! A small client for the OCI distribution protocol (the Docker registry
//! HTTP API v2): endpoints and mirrors, authentication, manifests and blobs.
//! [`crate::pull`] drives it to put images into the store.
//!
//! - Endpoints: the mirrors configured for the image's registry
//!   (`[registries.mirrors]`), in order, then the registry itself. Docker
//!   Hub's API is on `registry-1.docker.io`. A loopback registry
//!   (`localhost:5000`, `127.0.0.1:5000`) is spoken to over plain HTTP, as
//!   Docker does; everything else over HTTPS (rustls, the system's roots).
//! - Authentication: the first request to an endpoint is `GET /v2/`. A 401
//!   names a challenge in `WWW-Authenticate`: `Bearer realm=…,service=…`
//!   sends us to the token endpoint (anonymously, or with the configured
//!   username and password as basic auth) for a token with the scope
//!   `repository:NAME:pull`; `Basic` takes the username and password
//!   directly. A configured `token` is sent as the bearer token as is. A
//!   later 401 (an expired token, another scope) is answered once from its
//!   own challenge. Credentials are looked up by the host of each endpoint,
//!   so a mirror never sees the registry's password; they are never sent
//!   over plain HTTP to a host other than a loopback one.
//! - Content: a manifest's bytes are hashed; pulled by digest they must
//!   hash to that digest, and a `Docker-Content-Digest` header must agree
//!   with them. Blobs are streamed ([`BlobStream`]) from an offset with
//!   `Range` for resumed downloads. Redirects (registries send blobs to
//!   object storage) are followed; the `Authorization` header is dropped
//!   when a redirect leaves the host.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Mutex;
use std::time::Duration;

use atoll_common::config::{Credential, Registries};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{self, MANIFEST_MAX};
use crate::reference::Reference;

/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response may stay silent before the request fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of an error body read to explain a failed request.
const ERROR_BODY_MAX: u64 = 16 << 10;
/// The most of a token endpoint's answer read.
const TOKEN_BODY_MAX: u64 = 1 << 20;

/// Errors from talking to a registry; each names the URL concerned.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("setting up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: not found{detail}")]
    NotFound { url: String, detail: String },
    #[error("GET {url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("GET {url}: {registry} wants credentials ({scheme}); add them to [[registries.credentials]]")]
    NeedCredentials {
        url: String,
        registry: String,
        scheme: String,
    },
    #[error("GET {url}: access denied with the credentials for {registry}{detail}")]
    Denied {
        url: String,
        registry: String,
        detail: String,
    },
    #[error("GET {url}: no usable authentication challenge in {header:?}")]
    Challenge { url: String, header: String },
    #[error("token endpoint {url}: the answer holds no token")]
    NoToken { url: String },
    #[error("token endpoint {url}: invalid JSON")]
    TokenJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("refusing to send the credentials for {registry} to {url} over plain HTTP")]
    Insecure { url: String, registry: String },
    #[error("GET {url}: more than {max} bytes")]
    TooLarge { url: String, max: u64 },
    #[error("GET {url}: Docker-Content-Digest says {header} but the content hashes to {actual}")]
    HeaderDigest {
        url: String,
        header: Digest,
        actual: Digest,
    },
    #[error("GET {url}: the content hashes to {actual}, not to the digest asked for")]
    DigestMismatch { url: String, actual: Digest },
    #[error("GET {url}: Content-Range {header:?} does not start at byte {offset}")]
    BadRange {
        url: String,
        header: String,
        offset: u64,
    },
    #[error("GET {url}: the server cannot resume at byte {offset}")]
    RangeNotSatisfiable { url: String, offset: u64 },
}

fn http_err(url: &str) -> impl FnOnce(reqwest::Error) -> RegistryError + '_ {
    move |source| RegistryError::Http {
        url: url.to_owned(),
        source,
    }
}

/// The CA roots an Atoll host trusts: the bundle its root file system
/// ships (Debian's ca-certificates) and the config's `ca_certs`. Where
/// neither exists (a build machine), the system's roots are used.
pub const CA_FILES: &[&str] = &[
    atoll_common::layout::SLOT_CA_BUNDLE,
    atoll_common::layout::CONFIG_CA_BUNDLE,
];

/// The certificates of those of `files` that exist.
pub fn ca_roots(files: &[&str]) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let mut certs = Vec::new();
    for f in files {
        if let Ok(pem) = std::fs::read(f) {
            certs.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::BadUrl {
                    url: (*f).to_owned(),
                    reason: format!("not a PEM certificate bundle: {e}"),
                }
            })?);
        }
    }
    Ok(certs)
}

/// Builds the HTTP client used for registries and archive URLs: rustls
/// with the ring provider and [`CA_FILES`] (or the system's CA roots),
/// timeouts, redirects.
pub fn http_client() -> Result<reqwest::Client, RegistryError> {
    // reqwest is built without a default provider; a provider installed
    // already (by this or another caller) is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("atoll/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10));
    let roots = ca_roots(CA_FILES)?;
    if !roots.is_empty() {
        builder = builder.tls_certs_only(roots);
    }
    builder.build().map_err(RegistryError::Client)
}

/// One challenge of a `WWW-Authenticate` header: the scheme (lowercase)
/// and its parameters (names lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (RFC 9110 §11.6.1): challenges
/// separated by commas, each a scheme and `name=value` parameters whose
/// values are tokens or quoted strings (which may hold commas and `\"`).
/// Never fails: what cannot be read is skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_ws = |c: u8| c == b' ' || c == b'\t' || c == b'\r' || c == b'\n';
    let is_token = |c: u8| !(is_ws(c) || c == b',' || c == b'=' || c == b'"');
    loop {
        while i < b.len() && (is_ws(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        // Delimiters are ASCII, so these slices fall on char boundaries.
        let token = &header[start..i];
        if token.is_empty() {
            // A stray '=' or a quoted string out of place.
            if b[i] == b'"' {
                read_quoted(b, &mut i);
            } else {
                i += 1;
            }
            continue;
        }
        let mut j = i;
        while j < b.len() && is_ws(b[j]) {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            i = j + 1;
            while i < b.len() && is_ws(b[i]) {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                read_quoted(b, &mut i)
            } else {
                let s = i;
                // token68 values may end in '='.
                while i < b.len() && (is_token(b[i]) || b[i] == b'=') {
                    i += 1;
                }
                header[s..i].to_owned()
            };
            if let Some(c) = out.last_mut() {
                c.params.entry(token.to_ascii_lowercase()).or_insert(value);
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// Reads a quoted string starting at `b[*i] == '"'`, undoing `\` escapes;
/// an unterminated one runs to the end.
fn read_quoted(b: &[u8], i: &mut usize) -> String {
    let mut value = Vec::new();
    *i += 1;
    while *i < b.len() {
        match b[*i] {
            b'"' => {
                *i += 1;
                break;
            }
            b'\\' if *i + 1 < b.len() => {
                value.push(b[*i + 1]);
                *i += 2;
            }
            c => {
                value.push(c);
                *i += 1;
            }
        }
    }
    String::from_utf8_lossy(&value).into_owned()
}

/// Whether `host[:port]` names this machine (`localhost`, 127.0.0.0/8,
/// `[::1]`): such registries are spoken to over plain HTTP.
pub fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A place to pull an image from: a mirror or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]`, without a trailing `/` or `/v2`.
    pub base: String,
    /// `host[:port]`: what credentials are looked up by.
    pub host: String,
    pub mirror: bool,
}

impl Endpoint {
    /// An endpoint from a mirror URL as configured (`https://mirror.gcr.io`,
    /// `http://10.0.0.2:5000/v2/`).
    pub fn mirror(url: &str) -> Result<Self, RegistryError> {
        let parsed = Url::parse(url).map_err(|e| RegistryError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let host = match (parsed.scheme(), parsed.host_str()) {
            ("http" | "https", Some(h)) => match parsed.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            },
            _ => {
                return Err(RegistryError::BadUrl {
                    url: url.to_owned(),
                    reason: "not an http:// or https:// URL with a host".to_owned(),
                })
            }
        };
        let mut base = url.trim_end_matches('/');
        base = base.strip_suffix("/v2").unwrap_or(base);
        Ok(Self {
            base: base.to_owned(),
            host,
            mirror: true,
        })
    }

    /// The registry `reference` names (over HTTP when it is a loopback one).
    pub fn registry(reference: &Reference) -> Self {
        Self::registry_with(reference, &[])
    }

    /// The registry `reference` names, over plain HTTP when it is a
    /// loopback one or listed in `insecure` (`[registries] insecure`).
    pub fn registry_with(reference: &Reference, insecure: &[String]) -> Self {
        let plain = is_loopback(reference.api_host())
            || insecure
                .iter()
                .any(|h| h == reference.registry() || h == reference.api_host());
        let scheme = if plain { "http" } else { "https" };
        Self {
            base: format!("{scheme}://{}", reference.api_host()),
            host: reference.registry().to_owned(),
            mirror: false,
        }
    }

    /// `BASE/v2/`: the version check, where authentication starts.
    pub fn ping_url(&self) -> String {
        format!("{}/v2/", self.base)
    }

    /// `BASE/v2/REPOSITORY/manifests/TAG_OR_DIGEST`.
    pub fn manifest_url(&self, repository: &str, reference: &str) -> String {
        format!("{}/v2/{repository}/manifests/{reference}", self.base)
    }

    /// `BASE/v2/REPOSITORY/blobs/DIGEST`.
    pub fn blob_url(&self, repository: &str, digest: &Digest) -> String {
        format!("{}/v2/{repository}/blobs/{digest}", self.base)
    }
}

/// Where to pull `reference` from, in order: its registry's mirrors, then
/// the registry. Mirror URLs that do not parse are skipped with a warning
/// (the config validator refuses them already).
pub fn endpoints(reference: &Reference, config: &Registries) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for url in config
        .mirrors
        .get(reference.registry())
        .into_iter()
        .flatten()
    {
        match Endpoint::mirror(url) {
            Ok(e) => out.push(e),
            Err(e) => log::warn!("skipping mirror: {e}"),
        }
    }
    out.push(Endpoint::registry_with(reference, &config.insecure));
    out
}

/// How requests to one endpoint authenticate.
#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Anonymous => "Anonymous",
            Self::Basic { .. } => "Basic(<redacted>)",
            Self::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

impl Auth {
    fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match self {
            Self::Anonymous => request,
            Self::Basic { username, password } => request.basic_auth(username, Some(password)),
            Self::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// A token endpoint's answer (`token`, or OAuth2's `access_token`).
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The registry's JSON error body: `{"errors":[{"code":…,"message":…}]}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A manifest as the registry sent it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    /// The sha256 of `bytes`.
    pub digest: Digest,
    pub content_type: Option<String>,
}

/// A blob being received, from `offset` on.
#[derive(Debug)]
pub struct BlobStream {
    url: String,
    offset: u64,
    response: Response,
}

impl BlobStream {
    /// The byte the content starts at: the offset asked for, or 0 when the
    /// server sent the whole blob.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next piece of the content; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<impl Deref<Target = [u8]>>, RegistryError> {
        self.response.chunk().await.map_err(http_err(&self.url))
    }
}

/// A registry client for one pull: credentials from the config, and the
/// authentication of each endpoint and repository cached.
pub struct RegistryClient {
    http: reqwest::Client,
    credentials: Vec<Credential>,
    auth: Mutex<HashMap<String, Auth>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("credentials", &self.credentials.len())
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(config: &Registries) -> Result<Self, RegistryError> {
        Ok(Self {
            http: http_client()?,
            credentials: config.credentials.clone(),
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn credential(&self, endpoint: &Endpoint) -> Option<&Credential> {
        self.credentials
            .iter()
            .find(|c| c.registry == endpoint.host)
    }

    fn cached_auth(&self, key: &str) -> Option<Auth> {
        self.auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn cache_auth(&self, key: String, auth: Auth) {
        self.auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, auth);
    }

    /// The authentication for `repository` at `endpoint`: cached, or found
    /// by `GET /v2/` and its challenge.
    async fn auth_for(&self, endpoint: &Endpoint, repository: &str) -> Result<Auth, RegistryError> {
        let key = format!("{} {repository}", endpoint.base);
        if let Some(auth) = self.cached_auth(&key) {
            return Ok(auth);
        }
        let url = endpoint.ping_url();
        let response = self.http.get(&url).send().await.map_err(http_err(&url))?;
        let auth = match response.status() {
            s if s.is_success() => Auth::Anonymous,
            StatusCode::UNAUTHORIZED => {
                self.login(endpoint, repository, &url, response.headers())
                    .await?
            }
            _ => return Err(status_error(&url, response).await),
        };
        self.cache_auth(key, auth.clone());
        Ok(auth)
    }

    /// Answers the challenges of a 401 from `url`.
    async fn login(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Auth, RegistryError> {
        let raw: Vec<&str> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let challenges: Vec<Challenge> = raw.iter().flat_map(|h| parse_challenges(h)).collect();
        let credential = self.credential(endpoint);
        let login = credential.and_then(|c| Some((c.username.as_ref()?, c.password.as_ref()?)));
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(token) = credential.and_then(|c| c.token.as_ref()) {
                return Ok(Auth::Bearer(token.clone()));
            }
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| RegistryError::Challenge {
                    url: url.to_owned(),
                    header: raw.join(", "),
                })?;
            let scope = bearer
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{repository}:pull"));
            let token = self
                .fetch_token(
                    endpoint,
                    realm,
                    bearer.params.get("service").map(String::as_str),
                    &scope,
                    login,
                )
                .await?;
            return Ok(Auth::Bearer(token));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some((username, password)) = login else {
                return Err(RegistryError::NeedCredentials {
                    url: url.to_owned(),
                    registry: endpoint.host.clone(),
                    scheme: "basic".to_owned(),
                });
            };
            check_secure(url, endpoint)?;
            return Ok(Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            });
        }
        Err(RegistryError::Challenge {
            url: url.to_owned(),
            header: raw.join(", "),
        })
    }

    /// Gets a bearer token from the token endpoint `realm`.
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        login: Option<(&String, &String)>,
    ) -> Result<String, RegistryError> {
        let url = token_url(realm, service, scope)?;
        let mut request = self.http.get(url.as_str());
        if let Some((username, password)) = login {
            check_secure(url.as_str(), endpoint)?;
            request = request.basic_auth(username, Some(password));
        }
        let response = request.send().await.map_err(http_err(url.as_str()))?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            if login.is_none() {
                // Refused anonymously: it is not the credentials' fault.
                return Err(RegistryError::NeedCredentials {
                    url: url.to_string(),
                    registry: endpoint.host.clone(),
                    scheme: "bearer".to_owned(),
                });
            }
            let detail = error_detail(response).await;
            return Err(RegistryError::Denied {
                url: url.to_string(),
                registry: endpoint.host.clone(),
                detail,
            });
        }
        if !response.status().is_success() {
            return Err(status_error(url.as_str(), response).await);
        }
        let body = read_limited(response, url.as_str(), TOKEN_BODY_MAX).await?;
        parse_token(&body).map_err(|e| match e {
            Some(source) => RegistryError::TokenJson {
                url: url.to_string(),
                source,
            },
            None => RegistryError::NoToken {
                url: url.to_string(),
            },
        })
    }

    /// `GET url` with the endpoint's authentication; a 401 is answered once
    /// from its own challenge. Returns responses of any other status.
    async fn get(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        url: &str,
        extra: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let auth = self.auth_for(endpoint, repository).await?;
        let request = extra(auth.apply(self.http.get(url)));
        let response = request.send().await.map_err(http_err(url))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let scheme = header_str(response.headers(), WWW_AUTHENTICATE.as_str())
            .and_then(|h| parse_challenges(&h).into_iter().next())
            .map_or_else(|| "bearer".to_owned(), |c| c.scheme);
        let auth = self
            .login(endpoint, repository, url, response.headers())
            .await?;
        self.cache_auth(format!("{} {repository}", endpoint.base), auth.clone());
        let request = extra(auth.apply(self.http.get(url)));
        let response = request.send().await.map_err(http_err(url))?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            if self.credential(endpoint).is_none() {
                // An anonymous token without access (Docker Hub's answer
                // for a private repository): credentials are missing.
                return Err(RegistryError::NeedCredentials {
                    url: url.to_owned(),
                    registry: endpoint.host.clone(),
                    scheme,
                });
            }
            let detail = error_detail(response).await;
            return Err(RegistryError::Denied {
                url: url.to_owned(),
                registry: endpoint.host.clone(),
                detail,
            });
        }
        Ok(response)
    }

    /// Fetches a manifest or index by tag or digest (`reference`), checking
    /// its bytes against the digest asked for and `Docker-Content-Digest`.
    pub async fn manifest(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = endpoint.manifest_url(repository, reference);
        let response = self
            .get(endpoint, repository, &url, |r| {
                r.header(ACCEPT, manifest::ACCEPT)
            })
            .await?;
        if !response.status().is_success() {
            return Err(status_error(&url, response).await);
        }
        let content_type = header_str(response.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(response.headers(), "docker-content-digest")
            .and_then(|h| h.trim().parse::<Digest>().ok());
        let bytes = read_limited(response, &url, MANIFEST_MAX).await?;
        let digest = Digest::of(&bytes);
        if let Ok(wanted) = reference.parse::<Digest>() {
            if wanted != digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    actual: digest,
                });
            }
        }
        if let Some(header) = header_digest {
            if header != digest {
                return Err(RegistryError::HeaderDigest {
                    url,
                    header,
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            bytes,
            digest,
            content_type,
        })
    }

    /// Starts receiving a blob at byte `offset` (`Range: bytes=OFFSET-`).
    /// The server may send the whole blob instead: see
    /// [`BlobStream::offset`].
    pub async fn blob(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let url = endpoint.blob_url(repository, digest);
        let response = self
            .get(endpoint, repository, &url, |r| {
                if offset > 0 {
                    r.header(RANGE, format!("bytes={offset}-"))
                } else {
                    r
                }
            })
            .await?;
        let start = match response.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let header =
                    header_str(response.headers(), CONTENT_RANGE.as_str()).unwrap_or_default();
                if content_range_start(&header) != Some(offset) {
                    return Err(RegistryError::BadRange {
                        url,
                        header,
                        offset,
                    });
                }
                offset
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                return Err(RegistryError::RangeNotSatisfiable { url, offset })
            }
            s if s == StatusCode::OK => 0,
            _ => return Err(status_error(&url, response).await),
        };
        Ok(BlobStream {
            url,
            offset: start,
            response,
        })
    }

    /// Fetches a small blob (a config) whole, at most `max` bytes, checking
    /// its digest.
    pub async fn blob_bytes(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let stream = self.blob(endpoint, repository, digest, 0).await?;
        let url = stream.url.clone();
        let bytes = read_limited(stream.response, &url, max).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch { url, actual });
        }
        Ok(bytes)
    }
}

/// Refuses to send credentials over plain HTTP, except to loopback hosts.
fn check_secure(url: &str, endpoint: &Endpoint) -> Result<(), RegistryError> {
    let parsed = Url::parse(url).map_err(|e| RegistryError::BadUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let loopback = parsed
        .host_str()
        .is_some_and(|h| is_loopback(h.trim_start_matches('[').trim_end_matches(']')));
    if parsed.scheme() == "https" || loopback {
        Ok(())
    } else {
        Err(RegistryError::Insecure {
            url: url.to_owned(),
            registry: endpoint.host.clone(),
        })
    }
}

/// The token request: `REALM?service=SERVICE&scope=SCOPE`.
pub fn token_url(realm: &str, service: Option<&str>, scope: &str) -> Result<Url, RegistryError> {
    let mut url = Url::parse(realm).map_err(|e| RegistryError::BadUrl {
        url: realm.to_owned(),
        reason: e.to_string(),
    })?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(RegistryError::BadUrl {
            url: realm.to_owned(),
            reason: "the token realm is not an http:// or https:// URL".to_owned(),
        });
    }
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
    }
    Ok(url)
}

/// The token from a token endpoint's answer; `Err(None)` when it has none.
fn parse_token(body: &[u8]) -> Result<String, Option<serde_json::Error>> {
    let answer: TokenAnswer = serde_json::from_slice(body).map_err(Some)?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or(None)
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL`.
pub fn content_range_start(header: &str) -> Option<u64> {
    let range = header.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a response body whole, failing past `max` bytes.
pub async fn read_limited(
    mut response: Response,
    url: &str,
    max: u64,
) -> Result<Vec<u8>, RegistryError> {
    if response.content_length().is_some_and(|l| l > max) {
        return Err(RegistryError::TooLarge {
            url: url.to_owned(),
            max,
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_err(url))? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(RegistryError::TooLarge {
                url: url.to_owned(),
                max,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `" (CODE: message)"` from a registry's error body, or nothing.
async fn error_detail(response: Response) -> String {
    let Ok(body) = read_limited(response, "", ERROR_BODY_MAX).await else {
        return String::new();
    };
    serde_json::from_slice::<ErrorBody>(&body)
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map(|e| format!(" ({}: {})", e.code, e.message))
        .unwrap_or_default()
}

/// The error for an unexpected status.
pub async fn status_error(url: &str, response: Response) -> RegistryError {
    let status = response.status();
    let detail = error_detail(response).await;
    if status == StatusCode::NOT_FOUND {
        RegistryError::NotFound {
            url: url.to_owned(),
            detail,
        }
    } else {
        RegistryError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            [Challenge {
                scheme: "bearer".into(),
                params: params(&[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/alpine:pull"),
                ]),
            }]
        );
    }

    #[test]
    fn commas_quotes_and_several_challenges() {
        let c = parse_challenges(
            "Basic realm=\"Registry, \\\"main\\\"\" , BEARER  Realm = https://t.example/token ,\
             scope=\"repository:a/b:pull,push\",error=insufficient_scope",
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params, params(&[("realm", "Registry, \"main\"")]));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(
            c[1].params,
            params(&[
                ("realm", "https://t.example/token"),
                ("scope", "repository:a/b:pull,push"),
                ("error", "insufficient_scope"),
            ])
        );
    }

    #[test]
    fn odd_challenges() {
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(" , ,").is_empty());
        // A token68 credential and an unterminated quote.
        let c = parse_challenges("Negotiate abc123==, Basic realm=\"x");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "negotiate");
        assert_eq!(c[1].params, params(&[("realm", "x")]));
        // Parameters before any scheme are dropped; the first one wins.
        let c = parse_challenges("realm=x Bearer realm=a,realm=b");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].params, params(&[("realm", "a")]));
    }

    proptest! {
        #[test]
        fn challenges_never_panic(s in "\\PC{0,80}") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn challenges_on_bytes_never_panic(s in "[ ,=\"\\\\a-zA-Z\u{e9}]{0,40}") {
            let _ = parse_challenges(&s);
        }
    }

    fn config(mirrors: &[(&str, &[&str])], credentials: &[&str]) -> Registries {
        Registries {
            mirrors: mirrors
                .iter()
                .map(|(r, urls)| (r.to_string(), urls.iter().map(|u| u.to_string()).collect()))
                .collect(),
            credentials: credentials
                .iter()
                .map(|r| Credential {
                    registry: r.to_string(),
                    username: Some("u".into()),
                    password: Some("p".into()),
                    token: None,
                })
                .collect(),
            insecure: Vec::new(),
        }
    }

    #[test]
    fn mirrors_first_then_the_registry() {
        let r = Reference::parse("alpine:3.19").unwrap();
        let c = config(
            &[
                (
                    "docker.io",
                    &["https://mirror.gcr.io", "http://10.0.0.2:5000/hub/v2/"],
                ),
                ("quay.io", &["https://quay-mirror.example"]),
            ],
            &[],
        );
        let e = endpoints(&r, &c);
        let bases: Vec<&str> = e.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "https://mirror.gcr.io",
                "http://10.0.0.2:5000/hub",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(e[1].host, "10.0.0.2:5000");
        assert!(e[0].mirror && e[1].mirror && !e[2].mirror);
        assert_eq!(e[2].host, "docker.io");
        // No mirrors for this registry: just the registry.
        let r = Reference::parse(&format!("ghcr.io/o/app@sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(endpoints(&r, &c), [Endpoint::registry(&r)]);
        // A bad mirror URL is skipped.
        let c = config(&[("docker.io", &["ftp://x", "https://m.example"])], &[]);
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(endpoints(&r, &c).len(), 2);
    }

    #[test]
    fn urls() {
        let r = Reference::parse("alpine:3.19").unwrap();
        let e = Endpoint::registry(&r);
        assert_eq!(e.ping_url(), "https://registry-1.docker.io/v2/");
        assert_eq!(
            e.manifest_url(r.repository(), &r.manifest_ref()),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3.19"
        );
        let d = Digest::of(b"x");
        assert_eq!(
            e.blob_url("library/alpine", &d),
            format!("https://registry-1.docker.io/v2/library/alpine/blobs/{d}")
        );
        let local = Reference::parse("localhost:5000/app:1").unwrap();
        assert_eq!(
            Endpoint::registry(&local).ping_url(),
            "http://localhost:5000/v2/"
        );
        let m = Endpoint::mirror("https://mirror.example/prefix/").unwrap();
        assert_eq!(
            m.manifest_url("library/alpine", "latest"),
            "https://mirror.example/prefix/v2/library/alpine/manifests/latest"
        );
        assert_eq!(
            token_url(
                "https://auth.docker.io/token?x=1",
                Some("registry.docker.io"),
                "repository:library/alpine:pull"
            )
            .unwrap()
            .as_str(),
            "https://auth.docker.io/token?x=1&service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull"
        );
        assert!(token_url("file:///etc/passwd", None, "s").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn insecure_registries_over_plain_http() {
        let r = Reference::parse("10.0.2.100:5000/app:1").unwrap();
        let mut c = Registries::default();
        assert_eq!(
            endpoints(&r, &c)[0].ping_url(),
            "https://10.0.2.100:5000/v2/"
        );
        c.insecure = vec!["10.0.2.100:5000".into()];
        assert_eq!(
            endpoints(&r, &c)[0].ping_url(),
            "http://10.0.2.100:5000/v2/"
        );
        let other = Reference::parse("10.0.2.100:5001/app:1").unwrap();
        assert!(endpoints(&other, &c)[0].ping_url().starts_with("https://"));
    }

    #[test]
    fn credentials_by_endpoint_host_and_only_over_tls() {
        let c = config(
            &[("docker.io", &["https://m.example"])],
            &["docker.io", "10.0.0.2:5000"],
        );
        let client = RegistryClient::new(&c).unwrap();
        let r = Reference::parse("alpine").unwrap();
        let e = endpoints(&r, &c);
        assert!(client.credential(&e[0]).is_none(), "the mirror gets none");
        assert_eq!(client.credential(&e[1]).unwrap().registry, "docker.io");
        let plain = Endpoint::mirror("http://10.0.0.2:5000").unwrap();
        assert!(client.credential(&plain).is_some());
        assert!(matches!(
            check_secure("http://10.0.0.2:5000/token", &plain),
            Err(RegistryError::Insecure { .. })
        ));
        assert!(check_secure("http://127.0.0.1:5000/token", &plain).is_ok());
        assert!(check_secure("https://10.0.0.2:5000/token", &plain).is_ok());
        let secret = Auth::Bearer("s3cret".into());
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn tokens_and_ranges() {
        assert_eq!(
            parse_token(br#"{"token":"t","expires_in":300}"#).unwrap(),
            "t"
        );
        assert_eq!(parse_token(br#"{"access_token":"a"}"#).unwrap(), "a");
        assert!(matches!(parse_token(br#"{"token":""}"#), Err(None)));
        assert!(matches!(parse_token(b"<html>"), Err(Some(_))));
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 5-9/*"), Some(5));
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(content_range_start(""), None);
    }
}
