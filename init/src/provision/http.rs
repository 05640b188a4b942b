//! The smallest HTTP/1.1 client the metadata service needs: one request per
//! connection (`Connection: close`), a bounded answer, a bounded time.
//!
//! Cloud metadata services speak plain HTTP on a link-local address, so a
//! TLS-capable client (and the megabytes it would add to PID 1) buys
//! nothing here.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most an answer (head and body) may hold.
pub const MAX_RESPONSE: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {} ms", .limit.as_millis())]
    Timeout { addr: String, limit: Duration },
    #[error("{addr} sent more than {MAX_RESPONSE} bytes")]
    TooLarge { addr: String },
    #[error("{addr} sent a malformed answer: {why}")]
    Malformed { addr: String, why: String },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `addr` (`HOST:PORT`) with `headers` and an empty
/// body, and reads the whole answer, all within `limit`.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Result<Response, HttpError> {
    let work = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: atoll-init/{}\r\nAccept: */*\r\n",
            atoll_common::VERSION
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "GET" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        let io = |source| HttpError::Io {
            addr: addr.to_string(),
            source,
        };
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(HttpError::TooLarge {
                    addr: addr.to_string(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            // Stop early once a Content-Length body is complete (some
            // servers keep the connection open despite `close`).
            if let Ok(Some(r)) = parse(&buf) {
                return Ok(r);
            }
        }
        parse_complete(&buf).map_err(|why| HttpError::Malformed {
            addr: addr.to_string(),
            why,
        })
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            addr: addr.to_string(),
            limit,
        }),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status, headers, and where the body starts.
type Head = (u16, Vec<(String, String)>, usize);

/// Head of an answer, if `buf` holds all of it.
fn head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "header is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("header line {l:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Some((status, headers, end + 4)))
}

fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, String> {
    match headers.iter().find(|(k, _)| k == "content-length") {
        None => Ok(None),
        Some((_, v)) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("Content-Length {v:?}")),
    }
}

fn chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"))
}

/// An answer, if `buf` already holds all of it (known by its Content-Length).
fn parse(buf: &[u8]) -> Result<Option<Response>, String> {
    let Some((status, headers, start)) = head(buf)? else {
        return Ok(None);
    };
    if chunked(&headers) {
        return Ok(None);
    }
    match content_length(&headers)? {
        Some(len) if buf.len() - start >= len => Ok(Some(Response {
            status,
            body: buf[start..start + len].to_vec(),
            headers,
        })),
        _ => Ok(None),
    }
}

/// The answer once the server closed the connection.
fn parse_complete(buf: &[u8]) -> Result<Response, String> {
    let (status, headers, start) = head(buf)?.ok_or("the answer ended inside its header")?;
    let rest = &buf[start..];
    let body = if chunked(&headers) {
        dechunk(rest)?
    } else {
        match content_length(&headers)? {
            Some(len) if rest.len() < len => {
                return Err(format!("body ended after {} of {len} bytes", rest.len()))
            }
            Some(len) => rest[..len].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("chunk size line not ended")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunk size not UTF-8")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("chunk ended early".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
        // Not complete yet.
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel").unwrap(),
            None
        );
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel").is_err());
    }

    #[test]
    fn parses_chunked_and_close_delimited() {
        let r = parse_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_complete(b"HTTP/1.0 404 Not Found\r\n\r\nnothing").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"nothing");
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_complete(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_complete(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n").is_err());
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(parse_complete(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn talks_to_a_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            req
        });
        let r = request(
            &addr,
            "PUT",
            "/latest/api/token",
            &[("X-Test", "1")],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let req = server.join().unwrap();
        assert!(
            req.starts_with("PUT /latest/api/token HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("X-Test: 1\r\n"));
        assert!(req.contains("Content-Length: 0\r\n"));
    }

    #[tokio::test]
    async fn times_out_on_a_silent_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let e = request(&addr, "GET", "/", &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        drop(listener);
    }
}
