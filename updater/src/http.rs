//! The update repository over HTTP(S): a [`Fetcher`] for the metadata and
//! a ranged, streaming [`TargetSource`] for the payloads.
//!
//! reqwest (shared with the runtime's image pull) over rustls with the
//! ring provider and the system's CA roots (plus any given in
//! [`HttpConfig::extra_roots_pem`]); no OpenSSL. The agent's callers are
//! synchronous (the metadata workflow's [`Fetcher`], writes to a block
//! device), so each [`HttpRepo`] drives its async client on its own
//! current-thread tokio runtime.
//!
//! Limits: a metadata file is read no further than its maximum length
//! plus one byte, and the whole request has [`HttpConfig::metadata_timeout`].
//! A payload has no overall deadline (it may be large and the link slow),
//! but every read must make progress within [`HttpConfig::read_timeout`];
//! its length is enforced by the installer, which reads at most one byte
//! past the listed length and refuses that byte. No content coding is
//! asked for or decoded, so byte offsets are those of the file.

use std::io::{self, Read};
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use thiserror::Error;

use crate::install::{valid_target_name, TargetSource};
use crate::metadata::{FetchError, Fetcher};

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{url:?} is not an http or https URL")]
    Url { url: String },
    #[error("extra CA roots are not PEM certificates")]
    Roots(#[source] reqwest::Error),
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the HTTP client's runtime")]
    Runtime(#[source] io::Error),
}

/// Why a response was not taken (inside [`FetchError::Transfer`]).
#[derive(Debug, Error)]
pub enum ResponseError {
    #[error("{url}: HTTP status {status}")]
    Status { url: Url, status: StatusCode },
    #[error("{url}: asked for bytes from {offset}, got Content-Range {range:?}")]
    Range {
        url: Url,
        offset: u64,
        range: String,
    },
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub connect_timeout: Duration,
    /// Longest wait for any read (a stalled transfer fails after it).
    pub read_timeout: Duration,
    /// Whole request, for a metadata file.
    pub metadata_timeout: Duration,
    /// CA certificates trusted besides the system's (PEM), e.g. from the
    /// host config.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            metadata_timeout: Duration::from_secs(120),
            extra_roots_pem: None,
        }
    }
}

/// A repository at a base URL (`https://updates.example/atoll/`).
#[derive(Debug)]
pub struct HttpRepo {
    base: Url,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    config: HttpConfig,
}

/// The CA roots an Atoll slot ships (Debian's ca-certificates bundle).
pub const SHIPPED_CA_BUNDLE: &str = atoll_common::layout::SLOT_CA_BUNDLE;

impl HttpRepo {
    pub fn new(base: &str, config: &HttpConfig) -> Result<HttpRepo, HttpError> {
        let bad = || HttpError::Url { url: base.into() };
        let mut base = Url::parse(base).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad());
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // The process-wide provider; someone else may have installed it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .user_agent(concat!("atoll-updater/", env!("CARGO_PKG_VERSION")))
        };
        let extra = match &config.extra_roots_pem {
            Some(pem) => reqwest::Certificate::from_pem_bundle(pem).map_err(HttpError::Roots)?,
            None => Vec::new(),
        };
        // An Atoll root has no system CA store: the bundle the slot ships,
        // if any, and the config's roots are all it trusts. Elsewhere the
        // system's roots plus the config's; with neither, only the config's
        // (so a plain-HTTP repository still works).
        let shipped = match std::fs::read(SHIPPED_CA_BUNDLE) {
            Ok(pem) => Some(reqwest::Certificate::from_pem_bundle(&pem).map_err(HttpError::Roots)?),
            Err(_) => None,
        };
        let client = match shipped {
            Some(mut roots) => {
                roots.extend(extra);
                builder().tls_certs_only(roots).build()
            }
            None => match builder().tls_certs_merge(extra.clone()).build() {
                Ok(c) => Ok(c),
                Err(e) => {
                    log::warn!("no system CA roots ({e}): HTTPS trusts only the config's ca_certs");
                    builder().tls_certs_only(extra).build()
                }
            },
        }
        .map_err(HttpError::Client)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(HttpError::Runtime)?;
        Ok(HttpRepo {
            base,
            client,
            runtime,
            config: config.clone(),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, FetchError> {
        self.base.join(path).map_err(|_| FetchError::NotFound)
    }
}

fn transfer(e: impl std::error::Error + Send + Sync + 'static) -> FetchError {
    FetchError::Transfer(Box::new(e))
}

fn check_status(url: &Url, status: StatusCode) -> Result<(), FetchError> {
    if status == StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound);
    }
    if !status.is_success() {
        return Err(transfer(ResponseError::Status {
            url: url.clone(),
            status,
        }));
    }
    Ok(())
}

impl Fetcher for HttpRepo {
    fn fetch(&mut self, name: &str, max_length: u64) -> Result<Vec<u8>, FetchError> {
        // Names come from the workflow (`N.root.json`, `timestamp.json`).
        if name.contains('/') || name.starts_with('.') {
            return Err(FetchError::NotFound);
        }
        let url = self.url(name)?;
        let request = self
            .client
            .get(url.clone())
            .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))
            .timeout(self.config.metadata_timeout);
        self.runtime.block_on(async {
            let mut response = request.send().await.map_err(transfer)?;
            check_status(&url, response.status())?;
            let too_long = FetchError::TooLong { limit: max_length };
            let announced = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if announced.is_some_and(|n| n > max_length) {
                return Err(too_long);
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transfer)? {
                if (bytes.len() + chunk.len()) as u64 > max_length {
                    return Err(too_long);
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        })
    }
}

impl TargetSource for HttpRepo {
    fn open_target(&mut self, name: &str, offset: u64) -> Result<Box<dyn Read + '_>, FetchError> {
        if !valid_target_name(name) {
            return Err(FetchError::NotFound);
        }
        let url = self.url(&format!("targets/{name}"))?;
        let mut request = self
            .client
            .get(url.clone())
            .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = self
            .runtime
            .block_on(async { request.send().await })
            .map_err(transfer)?;
        let status = response.status();
        check_status(&url, status)?;
        let skip = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let starts_at = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(start, _)| start.parse::<u64>().ok());
                if starts_at != Some(offset) {
                    return Err(transfer(ResponseError::Range {
                        url,
                        offset,
                        range: range.into(),
                    }));
                }
                0
            }
            // The server ignored the Range: skip what we have.
            _ => offset,
        };
        Ok(Box::new(TargetReader {
            runtime: &self.runtime,
            response,
            chunk: Vec::new(),
            pos: 0,
            skip,
        }))
    }
}

/// A payload response as a [`Read`].
struct TargetReader<'a> {
    runtime: &'a tokio::runtime::Runtime,
    response: reqwest::Response,
    chunk: Vec<u8>,
    pos: usize,
    /// Bytes still to drop (a server that answered a Range with 200).
    skip: u64,
}

impl Read for TargetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let response = &mut self.response;
            let next = self
                .runtime
                .block_on(async { response.chunk().await })
                .map_err(io::Error::other)?;
            let Some(chunk) = next else {
                return Ok(0);
            };
            let drop = self.skip.min(chunk.len() as u64) as usize;
            self.skip -= drop as u64;
            self.chunk.clear();
            self.chunk.extend_from_slice(&chunk[drop..]);
            self.pos = 0;
        }
    }
}
