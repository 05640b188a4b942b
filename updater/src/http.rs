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
//!
//! The end of a payload response is the end of the file (the installer
//! refuses a file that ends short of its signed length), so a transfer cut
//! before the end the server announced (`Content-Length`, or the last byte
//! of a 206's `Content-Range`) is an error, which the installer resumes.
//! A 416 to a resume's Range means the file ends at or before the offset:
//! an empty rest, which the installer refuses as short.

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
        if status == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
            // Nothing from `offset` on: the file is no longer than that.
            return Ok(Box::new(io::empty()));
        }
        check_status(&url, status)?;
        let (skip, announced) = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                match content_range(range) {
                    Some((start, end)) if start == offset => (0, Some(end + 1 - start)),
                    _ => {
                        return Err(transfer(ResponseError::Range {
                            url,
                            offset,
                            range: range.into(),
                        }))
                    }
                }
            }
            // The server ignored the Range: skip what we have.
            _ => (offset, response.content_length()),
        };
        Ok(Box::new(TargetReader {
            runtime: &self.runtime,
            response,
            chunk: Vec::new(),
            pos: 0,
            skip,
            announced,
            received: 0,
        }))
    }
}

/// `bytes FIRST-LAST/LENGTH` (LENGTH may be `*`): the first and last byte.
fn content_range(value: &str) -> Option<(u64, u64)> {
    let (range, _length) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then_some((first, last))
}

/// A payload response as a [`Read`].
struct TargetReader<'a> {
    runtime: &'a tokio::runtime::Runtime,
    response: reqwest::Response,
    chunk: Vec<u8>,
    pos: usize,
    /// Bytes still to drop (a server that answered a Range with 200).
    skip: u64,
    /// The body's length as the server announced it, if it did.
    announced: Option<u64>,
    /// Body bytes received so far.
    received: u64,
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
                // hyper fails a body cut short of its Content-Length; this
                // catches a connection-delimited 206 that stops early.
                return match self.announced {
                    Some(n) if self.received < n => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the connection closed after {} of the {n} bytes announced",
                            self.received
                        ),
                    )),
                    _ => Ok(0),
                };
            };
            self.received += chunk.len() as u64;
            let drop = self.skip.min(chunk.len() as u64) as usize;
            self.skip -= drop as u64;
            self.chunk.clear();
            self.chunk.extend_from_slice(&chunk[drop..]);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// A server on 127.0.0.1 that reads each request's head and answers
    /// with `answer`, then closes; the repository's URL.
    fn serve(answer: impl Fn(&mut TcpStream) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/repo/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line.trim().is_empty() {
                        break;
                    }
                    line.clear();
                }
                answer(&mut stream);
            }
        });
        url
    }

    fn canned(head: &'static str, body: Vec<u8>) -> impl Fn(&mut TcpStream) + Send + 'static {
        move |s: &mut TcpStream| {
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    }

    fn client(url: &str) -> HttpRepo {
        let config = HttpConfig {
            read_timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        };
        HttpRepo::new(url, &config).unwrap()
    }

    fn read_all(repo: &mut HttpRepo, offset: u64) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut reader = repo.open_target("atoll-0.2.0.slot.zst", offset).unwrap();
        reader.read_to_end(&mut body).map(|_| body)
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 10-99/100"), Some((10, 99)));
        assert_eq!(content_range("bytes 0-0/*"), Some((0, 0)));
        assert_eq!(content_range("bytes 10-9/100"), None);
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(content_range("items 1-2/3"), None);
    }

    /// A whole response ends cleanly where the file ends, even short of
    /// what the installer expects: that is the file the server has.
    #[test]
    fn a_complete_body_ends_the_file() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 40\r\nconnection: close\r\n\r\n";
        let mut repo = client(&serve(canned(head, vec![7; 40])));
        assert_eq!(read_all(&mut repo, 0).unwrap(), vec![7; 40]);
        // A server that ignores the Range: the bytes before it are dropped.
        assert_eq!(read_all(&mut repo, 30).unwrap(), vec![7; 10]);
    }

    /// A body cut before the length the server announced is an error (the
    /// installer resumes it), not the end of the file.
    #[test]
    fn a_body_cut_short_of_its_length_is_an_error() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n";
        let mut repo = client(&serve(canned(head, vec![7; 40])));
        assert!(read_all(&mut repo, 0).is_err());

        // Without a Content-Length, a 206's Content-Range says where it ends.
        let head = "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 10-99/100\r\n\
                    connection: close\r\n\r\n";
        let mut repo = client(&serve(canned(head, vec![7; 30])));
        let e = read_all(&mut repo, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("after 30 of the 90 bytes"), "{e}");
    }

    /// A 416 to a resume: the file ends at or before the offset.
    #[test]
    fn a_range_past_the_end_is_an_empty_rest() {
        let head = "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */100\r\n\
                    content-length: 0\r\nconnection: close\r\n\r\n";
        let mut repo = client(&serve(canned(head, Vec::new())));
        assert_eq!(read_all(&mut repo, 200).unwrap(), Vec::<u8>::new());
        // From byte 0 it is a plain error.
        assert!(repo.open_target("atoll-0.2.0.slot.zst", 0).is_err());
    }

    /// A server that never stops: the reader goes on as long as asked (the
    /// installer stops one byte past the signed length).
    #[test]
    fn an_endless_body_reads_on() {
        let url = serve(|s: &mut TcpStream| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
            while s.write_all(&[0; 4096]).is_ok() {}
        });
        let mut repo = client(&url);
        let reader = repo.open_target("atoll-0.2.0.slot.zst", 0).unwrap();
        let mut got = Vec::new();
        reader.take(1 << 20).read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 1 << 20);
    }
}
