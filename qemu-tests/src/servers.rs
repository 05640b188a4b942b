//! Servers the tests run on the host loopback (`127.0.0.1`, a free port)
//! for the guest to reach through QEMU user networking
//! ([`crate::vm::NetUser`] forwards a guest address to the port):
//!
//! - [`MetadataServer`]: a cloud metadata service, EC2 (IMDSv2, tokens
//!   required) or OpenStack, serving the user data a test gives it;
//! - [`EchoServer`]: answers one line per connection, to show that a guest
//!   TCP connection reached the host;
//! - [`HttpFileServer`]: a directory over HTTP/1.1 with byte ranges (the
//!   directory can be swapped while it runs, and a file can be made to
//!   stream without end).
//!
//! Each runs in background threads, records what it got, and stops when
//! dropped. The HTTP servers speak just enough HTTP/1.1 for the guest's
//! client and for `curl`: one request per connection, answered with a
//! `Content-Length` (but for an endless file) and `Connection: close` (QEMU's forward relays each
//! guest connection to its own host connection, so the guest sees the
//! close). Requests are bounded ([`MAX_HEAD`], [`MAX_BODY`], [`IO_TIMEOUT`]);
//! what a server cannot read it answers with a 4xx and records with
//! [`Request::error`] set.
//!
//! ```no_run
//! # use qemu_tests::servers::MetadataServer;
//! # use qemu_tests::vm::Vm;
//! # use std::time::Duration;
//! let imds = MetadataServer::ec2(b"hostname = \"from-ec2\"\n".to_vec())?;
//! let vm = Vm::builder("t")
//!     .net_user(imds.net_user())
//!     .smbios_type1("Amazon EC2", "t3.micro")
//!     .start();
//! imds.wait_for_request("GET /latest/user-data", Duration::from_secs(120), |r| {
//!     r.path == "/latest/user-data" && r.status == 200
//! })?;
//! # Ok::<(), qemu_tests::servers::ServerError>(())
//! ```

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::vm::NetUser;

/// Read and write timeout on every connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line and headers, in bytes (431 beyond).
pub const MAX_HEAD: usize = 16 << 10;
/// Most header lines (431 beyond).
pub const MAX_HEADERS: usize = 64;
/// Longest request body (413 beyond).
pub const MAX_BODY: usize = 1 << 20;
/// Longest line the [`EchoServer`] reads.
pub const MAX_ECHO_LINE: usize = 4096;
/// What the [`EchoServer`] puts before the line it echoes.
pub const ECHO_PREFIX: &str = "atoll-test-echo: ";
/// EC2's longest token lifetime, in seconds.
pub const EC2_MAX_TOKEN_TTL: u32 = 21600;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on 127.0.0.1 for the {server} server")]
    Bind {
        server: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the {server} server's thread")]
    Thread {
        server: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a directory to serve")]
    NotADirectory { path: PathBuf },
    #[error("timed out after {timeout:?} waiting for {awaited} at the {server} server on port {port}; it got: {seen}")]
    Timeout {
        awaited: String,
        server: &'static str,
        port: u16,
        timeout: Duration,
        /// What the server got so far, one item a line.
        seen: String,
    },
}

/// One HTTP request as a server read it, and the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (an absolute `http://host/path` is cut to
    /// its path), with any query.
    pub path: String,
    /// Header names and values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the server answered.
    pub status: u16,
    /// Why the request could not be read (method and path are then what was
    /// read of them, possibly empty).
    pub error: Option<String>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The values of query parameter `name`, decoded (`%XX`, `+`), in
    /// order; a malformed value is left out.
    pub fn query(&self, name: &str) -> Vec<String> {
        let Some((_, query)) = self.path.split_once('?') else {
            return Vec::new();
        };
        query
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(&k.replace('+', " "))?;
                (k == name).then(|| percent_decode(&v.replace('+', " ")))?
            })
            .collect()
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.method, self.path, self.status)?;
        if let Some(e) = &self.error {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Polls `found` every 20 ms until it returns something or `timeout` passes.
fn poll<T>(timeout: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = found() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type ConnHandler = dyn Fn(&mut TcpStream) + Send + Sync;

/// What the accept loop and the connection threads share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicUsize,
    /// Clones of the open connections, to shut them down on drop.
    live: Mutex<Vec<(usize, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A TCP server on 127.0.0.1: an accept loop and a thread per connection
/// running `handler`. Dropping it stops the loop, shuts down the open
/// connections and joins every thread.
struct Listener {
    name: &'static str,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(name: &'static str, handler: Arc<ConnHandler>) -> Result<Self, ServerError> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| ServerError::Bind {
                server: name,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            server: name,
            source,
        })?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(name, &listener, &s, &handler))
            .map_err(|source| ServerError::Thread {
                server: name,
                source,
            })?;
        Ok(Self {
            name,
            addr,
            shared,
            accept: Some(accept),
        })
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

fn accept_loop(name: &'static str, listener: &TcpListener, s: &Arc<Shared>, h: &Arc<ConnHandler>) {
    for stream in listener.incoming() {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = stream else { continue };
        let id = s.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if let Ok(clone) = stream.try_clone() {
            lock(&s.live).push((id, clone));
        }
        let (s2, h2) = (Arc::clone(s), Arc::clone(h));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn{id}"))
            .spawn(move || {
                h2(&mut stream);
                linger_close(&mut stream);
                lock(&s2.live).retain(|(i, _)| *i != id);
            });
        let mut threads = lock(&s.threads);
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            // The stream was moved into the closure and dropped: the
            // connection is closed; forget its clone.
            Err(_) => lock(&s.live).retain(|(i, _)| *i != id),
        }
    }
}

/// Closes a connection without losing the answer: a close with unread
/// request bytes (a pipelined second request, the rest of an oversized
/// head) would send an RST that can discard the answer at the client. So
/// half-close, then read and drop what is left for up to a second.
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; if that fails, leave the thread be.
        let woken = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.accept.take() {
            if woken {
                let _ = t.join();
            }
        }
        for (_, s) in lock(&self.shared.live).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1, the small part the servers need

/// A response body: bytes, a slice of a file streamed from disk, or a
/// whole file followed by zeros without end (no `Content-Length`: the body
/// ends when the connection does).
enum Body {
    Bytes(Vec<u8>),
    File { file: File, start: u64, len: u64 },
    Endless { file: File },
}

pub(crate) struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body.into()),
        }
    }

    fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "text/plain", body)
    }

    /// An error page: the reason phrase as text.
    fn status(status: u16) -> Self {
        Self::text(status, format!("{status} {}\n", reason(status)))
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body's length; `None` for an endless one.
    fn len(&self) -> Option<u64> {
        match &self.body {
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File { len, .. } => Some(*len),
            Body::Endless { .. } => None,
        }
    }

    /// Writes the response (no body for HEAD).
    fn write_to(self, w: &mut impl Write, head_only: bool) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(len) = self.len() {
            head += &format!("Content-Length: {len}\r\n");
        }
        head += "Connection: close\r\n";
        for (n, v) in &self.headers {
            head += &format!("{n}: {v}\r\n");
        }
        head += "\r\n";
        w.write_all(head.as_bytes())?;
        if !head_only {
            match self.body {
                Body::Bytes(b) => w.write_all(&b)?,
                Body::File {
                    mut file,
                    start,
                    len,
                } => {
                    file.seek(SeekFrom::Start(start))?;
                    let sent = io::copy(&mut file.take(len), w)?;
                    if sent != len {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while being sent",
                        ));
                    }
                }
                // Until a write fails: the client closed, or stopped
                // reading for IO_TIMEOUT, or the server is dropped.
                Body::Endless { mut file } => {
                    io::copy(&mut file, w)?;
                    let zeros = [0u8; 64 << 10];
                    loop {
                        w.write_all(&zeros)?;
                    }
                }
            }
        }
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Why a request could not be read: the status to answer, what was read of
/// the method and path, and a note for [`Request::error`].
#[derive(Debug, PartialEq, Eq)]
struct Unreadable {
    status: u16,
    method: String,
    path: String,
    why: String,
}

fn unreadable(status: u16, why: impl Into<String>) -> Unreadable {
    Unreadable {
        status,
        method: String::new(),
        path: String::new(),
        why: why.into(),
    }
}

/// Reads one request. `Ok(None)`: the peer closed without sending a byte.
fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, Unreadable> {
    let mut head = Vec::new();
    // Read until the empty line that ends the head, one line at a time, so
    // that nothing of the body is consumed.
    loop {
        let mut line = Vec::new();
        let room = (MAX_HEAD + 1 - head.len()) as u64;
        let n = r
            .by_ref()
            .take(room)
            .read_until(b'\n', &mut line)
            .map_err(|e| unreadable(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(unreadable(400, "connection closed inside the request head"))
            };
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(unreadable(
                431,
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        if !line.ends_with(b"\n") {
            return Err(unreadable(400, "connection closed inside the request head"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let head = String::from_utf8(head).map_err(|_| unreadable(400, "request head is not UTF-8"))?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => {
            return Err(unreadable(
                400,
                format!("bad request line {request_line:?}"),
            ))
        }
    };
    let path = origin_form(target);
    let fail = |status: u16, why: String| Unreadable {
        status,
        method: method.to_string(),
        path: path.clone(),
        why,
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(fail(400, format!("bad method {method:?}")));
    }
    if !path.starts_with('/') {
        return Err(fail(400, format!("bad request target {target:?}")));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(fail(505, format!("version {version:?}")));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if headers.len() == MAX_HEADERS {
            return Err(fail(431, format!("more than {MAX_HEADERS} headers")));
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) if !n.is_empty() && !n.contains([' ', '\t']) => (n, v),
            _ => return Err(fail(400, format!("bad header line {line:?}"))),
        };
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: path.clone(),
        headers,
        body: Vec::new(),
        status: 0,
        error: None,
    };
    if req.header("Transfer-Encoding").is_some() {
        return Err(fail(501, "Transfer-Encoding in a request".into()));
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [v] => v
            .parse::<usize>()
            .map_err(|_| fail(400, format!("Content-Length {v:?}")))?,
        _ => return Err(fail(400, "more than one Content-Length".into())),
    };
    if len > MAX_BODY {
        return Err(fail(413, format!("body of {len} bytes over {MAX_BODY}")));
    }
    req.body = vec![0; len];
    r.read_exact(&mut req.body)
        .map_err(|e| fail(400, format!("reading the {len}-byte body: {e}")))?;
    Ok(Some(req))
}

/// `http://host:port/path` → `/path`; anything else as it is.
fn origin_form(target: &str) -> String {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            return match rest.find('/') {
                Some(i) => rest[i..].to_string(),
                None => "/".to_string(),
            };
        }
    }
    target.to_string()
}

pub(crate) type HttpHandler = dyn Fn(&Request) -> Response + Send + Sync;

/// Serves one request on `stream` (TCP, or TLS over it) with `handler` and
/// records it in `log`.
fn serve_http(stream: &mut (impl Read + Write), handler: &HttpHandler, log: &Mutex<Vec<Request>>) {
    let read = read_request(&mut BufReader::new(&mut *stream));
    let (mut req, resp) = match read {
        Ok(None) => return,
        Ok(Some(req)) => {
            let resp = handler(&req);
            (req, resp)
        }
        Err(u) => {
            let req = Request {
                method: u.method,
                path: u.path,
                headers: Vec::new(),
                body: Vec::new(),
                status: 0,
                error: Some(u.why),
            };
            (req, Response::status(u.status))
        }
    };
    req.status = resp.status;
    let head_only = req.method == "HEAD";
    lock(log).push(req);
    let _ = resp.write_to(stream, head_only);
}

/// [`serve_http`] over TLS (closed with a `close_notify`).
fn serve_https(
    stream: &mut TcpStream,
    tls: &Arc<rustls::ServerConfig>,
    handler: &HttpHandler,
    log: &Mutex<Vec<Request>>,
) {
    let mut session = match rustls::ServerConnection::new(Arc::clone(tls)) {
        Ok(session) => session,
        Err(e) => {
            lock(log).push(Request {
                method: String::new(),
                path: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
                status: 0,
                error: Some(format!("TLS session: {e}")),
            });
            return;
        }
    };
    let mut tls_stream = rustls::Stream::new(&mut session, stream);
    serve_http(&mut tls_stream, handler, log);
    tls_stream.conn.send_close_notify();
    let _ = tls_stream.flush();
}

/// An HTTP server: a [`Listener`] with a request log; HTTPS with a
/// [`rustls::ServerConfig`]. A request whose TLS handshake fails is
/// logged with [`Request::error`] saying why.
pub(crate) struct HttpServer {
    listener: Listener,
    log: Arc<Mutex<Vec<Request>>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.listener.name)
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    pub(crate) fn start(
        name: &'static str,
        handler: Arc<HttpHandler>,
    ) -> Result<Self, ServerError> {
        Self::listen(name, handler, None)
    }

    pub(crate) fn start_tls(
        name: &'static str,
        tls: Arc<rustls::ServerConfig>,
        handler: Arc<HttpHandler>,
    ) -> Result<Self, ServerError> {
        Self::listen(name, handler, Some(tls))
    }

    fn listen(
        name: &'static str,
        handler: Arc<HttpHandler>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, ServerError> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        let conn: Arc<ConnHandler> = Arc::new(move |s: &mut TcpStream| match &tls {
            None => serve_http(s, &*handler, &l),
            Some(tls) => serve_https(s, tls, &*handler, &l),
        });
        Ok(Self {
            listener: Listener::start(name, conn)?,
            log,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.listener.addr.port()
    }

    pub(crate) fn requests(&self) -> Vec<Request> {
        lock(&self.log).clone()
    }

    pub(crate) fn forget(&self) {
        lock(&self.log).clear();
    }

    fn wait_for_request(
        &self,
        awaited: &str,
        timeout: Duration,
        pred: impl Fn(&Request) -> bool,
    ) -> Result<Request, ServerError> {
        poll(timeout, || {
            lock(&self.log).iter().find(|r| pred(r)).cloned()
        })
        .ok_or_else(|| {
            let seen: Vec<String> = self.requests().iter().map(|r| r.to_string()).collect();
            ServerError::Timeout {
                awaited: awaited.to_string(),
                server: self.listener.name,
                port: self.listener.addr.port(),
                timeout,
                seen: if seen.is_empty() {
                    "no requests".into()
                } else {
                    seen.join("; ")
                },
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Cloud metadata

/// Which cloud a [`MetadataServer`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// EC2's instance metadata service with IMDSv2 required: a token from
    /// `PUT /latest/api/token` on every `GET /latest/…`.
    Ec2,
    /// OpenStack's metadata service: `GET /openstack/latest/user_data` and
    /// `/openstack/latest/meta_data.json`.
    OpenStack,
}

/// What a [`MetadataServer`] says about the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// EC2 `instance-id`, OpenStack `uuid`.
    pub id: String,
    pub hostname: String,
    /// `None`: the instance has no user data (404, as the clouds answer).
    pub user_data: Option<Vec<u8>>,
}

impl Instance {
    fn new(cloud: Cloud, user_data: Option<Vec<u8>>) -> Self {
        match cloud {
            Cloud::Ec2 => Self {
                id: "i-0a70110c0ffee0001".into(),
                hostname: "ip-169-254-0-15.ec2.internal".into(),
                user_data,
            },
            Cloud::OpenStack => Self {
                id: "a7011000-0000-4000-8000-00000000c0de".into(),
                hostname: "atoll-test.novalocal".into(),
                user_data,
            },
        }
    }
}

/// A cloud metadata service on the host loopback; see [`Cloud`]. Give it to
/// the guest with [`MetadataServer::net_user`], and tell the guest which
/// cloud it is on with [`crate::vm::VmBuilder::smbios_type1`]
/// (`"Amazon EC2"`, or product `"OpenStack Nova"`).
pub struct MetadataServer {
    cloud: Cloud,
    http: HttpServer,
    imds: Arc<Imds>,
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer")
            .field("cloud", &self.cloud)
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

/// The metadata service's state.
struct Imds {
    cloud: Cloud,
    instance: Instance,
    /// EC2 tokens handed out, with their expiry.
    tokens: Mutex<Vec<(String, Instant)>>,
}

impl MetadataServer {
    /// EC2 (IMDSv2) serving `user_data` (`None`: no user data, 404).
    pub fn ec2(user_data: impl Into<Option<Vec<u8>>>) -> Result<Self, ServerError> {
        Self::start(Cloud::Ec2, Instance::new(Cloud::Ec2, user_data.into()))
    }

    /// OpenStack serving `user_data` (`None`: no user data, 404).
    pub fn openstack(user_data: impl Into<Option<Vec<u8>>>) -> Result<Self, ServerError> {
        Self::start(
            Cloud::OpenStack,
            Instance::new(Cloud::OpenStack, user_data.into()),
        )
    }

    /// `cloud` describing `instance`.
    pub fn start(cloud: Cloud, instance: Instance) -> Result<Self, ServerError> {
        let imds = Arc::new(Imds {
            cloud,
            instance,
            tokens: Mutex::new(Vec::new()),
        });
        let i = Arc::clone(&imds);
        let http = HttpServer::start("metadata", Arc::new(move |r: &Request| i.handle(r)))?;
        Ok(Self { cloud, http, imds })
    }

    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    pub fn instance(&self) -> &Instance {
        &self.imds.instance
    }

    pub fn port(&self) -> u16 {
        self.http.listener.addr.port()
    }

    /// The user network that forwards 169.254.169.254:80 here
    /// ([`NetUser::metadata`]).
    pub fn net_user(&self) -> NetUser {
        NetUser::metadata(self.port())
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// TCP connections so far (each guest connection is one).
    pub fn connections(&self) -> usize {
        self.http.listener.connections()
    }

    /// Waits for a request `pred` holds for (looking at every request so
    /// far first); `awaited` names it in the error.
    pub fn wait_for_request(
        &self,
        awaited: &str,
        timeout: Duration,
        pred: impl Fn(&Request) -> bool,
    ) -> Result<Request, ServerError> {
        self.http.wait_for_request(awaited, timeout, pred)
    }

    /// Makes every EC2 token handed out so far invalid (401 from now on).
    pub fn expire_tokens(&self) {
        lock(&self.imds.tokens).clear();
    }
}

/// A fresh random token: 64 hex digits from std's randomly keyed SipHash.
fn random_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (0..4)
        .map(|_| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            h.write_u128(nanos);
            format!("{:016x}", h.finish())
        })
        .collect()
}

impl Imds {
    fn handle(&self, r: &Request) -> Response {
        match self.cloud {
            Cloud::Ec2 => self.ec2(r),
            Cloud::OpenStack => self.openstack(r),
        }
    }

    fn user_data(&self) -> Response {
        match &self.instance.user_data {
            Some(d) => Response::new(200, "application/octet-stream", d.clone()),
            None => Response::status(404),
        }
    }

    fn ec2(&self, r: &Request) -> Response {
        let path = r.path_only();
        if path == "/latest/api/token" {
            if r.method != "PUT" {
                return Response::status(405).header("Allow", "PUT");
            }
            // IMDS refuses tokens asked through a proxy.
            if r.header("X-Forwarded-For").is_some() {
                return Response::status(403);
            }
            let ttl = r
                .header("X-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|t| (1..=EC2_MAX_TOKEN_TTL).contains(t));
            let Some(ttl) = ttl else {
                return Response::status(400);
            };
            let token = random_token();
            let expiry = Instant::now() + Duration::from_secs(ttl.into());
            let mut tokens = lock(&self.tokens);
            tokens.retain(|(_, e)| *e > Instant::now());
            tokens.push((token.clone(), expiry));
            return Response::text(200, token)
                .header("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string());
        }
        if !(path == "/latest" || path.starts_with("/latest/")) {
            return Response::status(404);
        }
        if r.method != "GET" && r.method != "HEAD" {
            return Response::status(405).header("Allow", "GET, HEAD");
        }
        let now = Instant::now();
        let valid = r.header("X-aws-ec2-metadata-token").is_some_and(|t| {
            lock(&self.tokens)
                .iter()
                .any(|(token, expiry)| token == t && *expiry > now)
        });
        if !valid {
            return Response::status(401);
        }
        let i = &self.instance;
        match path.trim_end_matches('/') {
            "/latest" => {
                let mut listing = "dynamic\nmeta-data\n".to_string();
                if i.user_data.is_some() {
                    listing += "user-data\n";
                }
                Response::text(200, listing)
            }
            "/latest/user-data" => self.user_data(),
            "/latest/meta-data" => Response::text(
                200,
                "hostname\ninstance-id\ninstance-type\nlocal-hostname\n",
            ),
            "/latest/meta-data/instance-id" => Response::text(200, i.id.clone()),
            "/latest/meta-data/instance-type" => Response::text(200, "t3.micro"),
            "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname" => {
                Response::text(200, i.hostname.clone())
            }
            _ => Response::status(404),
        }
    }

    fn openstack(&self, r: &Request) -> Response {
        let path = r.path_only().trim_end_matches('/');
        if !(path == "/openstack" || path.starts_with("/openstack/")) {
            return Response::status(404);
        }
        if r.method != "GET" && r.method != "HEAD" {
            return Response::status(405).header("Allow", "GET, HEAD");
        }
        let i = &self.instance;
        match path {
            "/openstack" => Response::text(200, "2018-08-27\nlatest\n"),
            "/openstack/latest" | "/openstack/2018-08-27" => {
                let mut listing = "meta_data.json\n".to_string();
                if i.user_data.is_some() {
                    listing += "user_data\n";
                }
                Response::text(200, listing)
            }
            "/openstack/latest/user_data" | "/openstack/2018-08-27/user_data" => self.user_data(),
            "/openstack/latest/meta_data.json" | "/openstack/2018-08-27/meta_data.json" => {
                let name = i.hostname.split('.').next().unwrap_or_default();
                let meta = serde_json::json!({
                    "uuid": i.id,
                    "hostname": i.hostname,
                    "name": name,
                    "launch_index": 0,
                    "availability_zone": "nova",
                    "project_id": "a70110000000400080000000000000ff",
                    "meta": {},
                    "public_keys": {},
                });
                Response::new(200, "application/json", meta.to_string())
            }
            _ => Response::status(404),
        }
    }
}

// ---------------------------------------------------------------------------
// Echo

/// Reads one line per connection and answers `atoll-test-echo: <line>\n`
/// ([`ECHO_PREFIX`]), then closes: a guest that prints the answer shows its
/// connection went through QEMU's forward to the host loopback.
pub struct EchoServer {
    listener: Listener,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoServer")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl EchoServer {
    pub fn start() -> Result<Self, ServerError> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        let handler: Arc<ConnHandler> = Arc::new(move |s: &mut TcpStream| echo(s, &l));
        Ok(Self {
            listener: Listener::start("echo", handler)?,
            lines,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.addr.port()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.listener.connections()
    }

    /// The lines echoed so far (without their line end).
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).clone()
    }

    /// Waits until a line holding `text` has been echoed, and returns it.
    pub fn wait_for_line(&self, text: &str, timeout: Duration) -> Result<String, ServerError> {
        poll(timeout, || {
            lock(&self.lines).iter().find(|l| l.contains(text)).cloned()
        })
        .ok_or_else(|| ServerError::Timeout {
            awaited: format!("a line holding {text:?}"),
            server: self.listener.name,
            port: self.port(),
            timeout,
            seen: format!(
                "{} connections, lines {:?}",
                self.connections(),
                self.lines()
            ),
        })
    }
}

fn echo(stream: &mut TcpStream, lines: &Mutex<Vec<String>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut line = Vec::new();
    // A read error (timeout, reset) ends the line where it is.
    let _ = BufReader::new(read_half)
        .take(MAX_ECHO_LINE as u64)
        .read_until(b'\n', &mut line);
    if line.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&line)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let answer = format!("{ECHO_PREFIX}{text}\n");
    lock(lines).push(text);
    let _ = stream.write_all(answer.as_bytes());
}

// ---------------------------------------------------------------------------
// Files

/// Serves the files under a directory over HTTP/1.1 (`GET`, `HEAD`), with
/// single byte ranges (`Range: bytes=a-b`, `a-`, `-n`: 206 with
/// `Content-Range`; 416 past the end; several ranges: the whole file).
/// Directories are not listed; `..` is refused.
///
/// What it serves can change while it runs, for tests that show a guest
/// one repository after another: [`HttpFileServer::set_root`] swaps the
/// directory, and [`HttpFileServer::set_endless`] makes a `GET` of one
/// path answer with the file followed by zeros without end (an endless
/// download).
pub struct HttpFileServer {
    served: Arc<Mutex<Served>>,
    http: HttpServer,
}

/// What an [`HttpFileServer`] answers with, read at each request.
#[derive(Debug, Clone)]
struct Served {
    root: PathBuf,
    /// The request path (`/targets/x`) that streams without end.
    endless: Option<String>,
}

impl std::fmt::Debug for HttpFileServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFileServer")
            .field("served", &*lock(&self.served))
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

fn check_dir(root: &Path) -> Result<(), ServerError> {
    if !root.is_dir() {
        return Err(ServerError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    Ok(())
}

impl HttpFileServer {
    pub fn serve(root: &Path) -> Result<Self, ServerError> {
        check_dir(root)?;
        let served = Arc::new(Mutex::new(Served {
            root: root.to_path_buf(),
            endless: None,
        }));
        let s = Arc::clone(&served);
        let http = HttpServer::start(
            "file",
            Arc::new(move |req: &Request| {
                let now = lock(&s).clone();
                serve_file(&now, req)
            }),
        )?;
        Ok(Self { served, http })
    }

    pub fn port(&self) -> u16 {
        self.http.listener.addr.port()
    }

    /// The directory served now.
    pub fn root(&self) -> PathBuf {
        lock(&self.served).root.clone()
    }

    /// Serves `root` from the next request on (one being answered keeps
    /// its file).
    pub fn set_root(&self, root: &Path) -> Result<(), ServerError> {
        check_dir(root)?;
        lock(&self.served).root = root.to_path_buf();
        Ok(())
    }

    /// From the next request on, a `GET` of `path` (`/targets/x`, matched
    /// without its query) answers 200 with the file and then zeros without
    /// end, with no `Content-Length` and ignoring any `Range`, until the
    /// client closes the connection, stops reading for [`IO_TIMEOUT`], or
    /// the server is dropped. `None`: every file ends again.
    pub fn set_endless(&self, path: Option<&str>) {
        lock(&self.served).endless = path.map(str::to_string);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.http.requests()
    }

    /// See [`MetadataServer::wait_for_request`].
    pub fn wait_for_request(
        &self,
        awaited: &str,
        timeout: Duration,
        pred: impl Fn(&Request) -> bool,
    ) -> Result<Request, ServerError> {
        self.http.wait_for_request(awaited, timeout, pred)
    }
}

/// `%XX` escapes decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file under `root` a request path names, if it names one safely.
fn file_under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = percent_decode(path.strip_prefix('/')?)?;
    let rel = Path::new(&rel);
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// A `Range` header against a file of `len` bytes: `Ok(None)` for the whole
/// file (no header, one that is not understood, or several ranges),
/// `Ok(Some((start, end_inclusive)))`, or `Err(())` when unsatisfiable.
fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        // bytes=-n: the last n bytes.
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (Ok(start), Err(_)) if b.is_empty() => (start, len.saturating_sub(1)),
        (Ok(start), Ok(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        _ => return Ok(None),
    };
    if range.0 >= len {
        return Err(());
    }
    Ok(Some(range))
}

fn serve_file(served: &Served, r: &Request) -> Response {
    if r.method != "GET" && r.method != "HEAD" {
        return Response::status(405).header("Allow", "GET, HEAD");
    }
    let Some(path) = file_under(&served.root, r.path_only()) else {
        return Response::status(404);
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Response::status(404),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Response::status(403),
        Err(_) => return Response::status(500),
    };
    let len = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Response::status(404),
        Err(_) => return Response::status(500),
    };
    if served.endless.as_deref() == Some(r.path_only()) {
        return Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: Body::Endless { file },
        };
    }
    let (status, start, end, content_range) = match parse_range(r.header("Range"), len) {
        Ok(None) => (200, 0, len, None),
        Ok(Some((a, b))) => (206, a, b + 1, Some(format!("bytes {a}-{b}/{len}"))),
        Err(()) => {
            return Response::status(416)
                .header("Content-Range", format!("bytes */{len}"))
                .header("Accept-Ranges", "bytes")
        }
    };
    let mut resp = Response {
        status,
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("Accept-Ranges".into(), "bytes".into()),
        ],
        body: Body::File {
            file,
            start,
            len: end - start,
        },
    };
    if let Some(cr) = content_range {
        resp = resp.header("Content-Range", cr);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as a client read it (the connection read to its end).
    #[derive(Debug)]
    struct Got {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Got {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends `raw` to the server and reads the whole answer until it closes.
    fn send(port: u16, raw: &[u8]) -> Got {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(&all)));
        let head = String::from_utf8(all[..split].to_vec()).unwrap();
        let body = all[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        let got = Got {
            status,
            headers,
            body,
        };
        if let Some(len) = got.header("Content-Length") {
            if !raw.starts_with(b"HEAD ") {
                assert_eq!(len.parse::<usize>().unwrap(), got.body.len(), "{got:?}");
            }
        }
        got
    }

    fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
        for (n, v) in headers {
            raw += &format!("{n}: {v}\r\n");
        }
        raw += "Connection: close\r\n\r\n";
        send(port, raw.as_bytes())
    }

    fn token(port: u16, ttl: &str) -> Got {
        request(
            port,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
        )
    }

    #[test]
    fn query_parameters_are_decoded_in_order() {
        let r = Request {
            method: "GET".into(),
            path: "/token?service=a+b&scope=repository%3Atest%2Fx%3Apull&scope=s2&bad=%zz&flag"
                .into(),
            headers: Vec::new(),
            body: Vec::new(),
            status: 200,
            error: None,
        };
        assert_eq!(r.query("service"), ["a b"]);
        assert_eq!(r.query("scope"), ["repository:test/x:pull", "s2"]);
        assert!(r.query("bad").is_empty());
        assert_eq!(r.query("flag"), [""]);
        assert!(r.query("missing").is_empty());
        let bare = Request {
            path: "/token".into(),
            ..r
        };
        assert!(bare.query("scope").is_empty());
    }

    #[test]
    fn ec2_imdsv2_token_flow() {
        let imds = MetadataServer::ec2(b"#cloud-config\nhostname: a\n".to_vec()).unwrap();
        let port = imds.port();

        let t = token(port, "21600");
        assert_eq!(t.status, 200);
        assert_eq!(t.header("Content-Type"), Some("text/plain"));
        assert_eq!(
            t.header("X-aws-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        let tok = String::from_utf8(t.body).unwrap();
        assert_eq!(tok.len(), 64, "{tok}");
        let auth = [("X-aws-ec2-metadata-token", tok.as_str())];

        let ud = request(port, "GET", "/latest/user-data", &auth);
        assert_eq!(ud.status, 200);
        assert_eq!(ud.body, b"#cloud-config\nhostname: a\n");
        let id = request(port, "GET", "/latest/meta-data/instance-id", &auth);
        assert_eq!((id.status, id.body), (200, b"i-0a70110c0ffee0001".to_vec()));
        let host = request(port, "GET", "/latest/meta-data/hostname", &auth);
        assert_eq!(host.body, imds.instance().hostname.as_bytes());
        let listing = request(port, "GET", "/latest/meta-data/", &auth);
        assert!(String::from_utf8(listing.body)
            .unwrap()
            .contains("instance-id\n"));
        assert_eq!(
            request(port, "GET", "/latest/meta-data/nope", &auth).status,
            404
        );
        assert_eq!(request(port, "GET", "/nope", &auth).status, 404);

        // Without a token, or with a wrong one: 401.
        assert_eq!(request(port, "GET", "/latest/user-data", &[]).status, 401);
        let wrong = [("X-aws-ec2-metadata-token", "AAAA")];
        assert_eq!(
            request(port, "GET", "/latest/meta-data/instance-id", &wrong).status,
            401
        );
        // A second token is another one; both work.
        let tok2 = String::from_utf8(token(port, "1").body).unwrap();
        assert_ne!(tok, tok2);
        let auth2 = [("X-aws-ec2-metadata-token", tok2.as_str())];
        assert_eq!(
            request(port, "GET", "/latest/user-data", &auth2).status,
            200
        );
        imds.expire_tokens();
        assert_eq!(request(port, "GET", "/latest/user-data", &auth).status, 401);

        // What the server recorded.
        let reqs = imds.requests();
        assert_eq!(reqs[0].method, "PUT");
        assert_eq!(reqs[0].path, "/latest/api/token");
        assert_eq!(
            reqs[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        assert_eq!(reqs[0].status, 200);
        assert_eq!(
            reqs[1].header("X-aws-ec2-metadata-token"),
            Some(tok.as_str())
        );
        assert_eq!(imds.connections(), reqs.len());
        let r = imds
            .wait_for_request("a 401", Duration::from_secs(1), |r| r.status == 401)
            .unwrap();
        assert_eq!(r.path, "/latest/user-data");
    }

    #[test]
    fn ec2_token_requests_are_checked() {
        let imds = MetadataServer::ec2(None).unwrap();
        let port = imds.port();
        for bad in ["0", "21601", "-1", "x", ""] {
            assert_eq!(token(port, bad).status, 400, "ttl {bad:?}");
        }
        assert_eq!(request(port, "PUT", "/latest/api/token", &[]).status, 400);
        assert_eq!(request(port, "GET", "/latest/api/token", &[]).status, 405);
        let proxied = [
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "10.0.0.1"),
        ];
        assert_eq!(
            request(port, "PUT", "/latest/api/token", &proxied).status,
            403
        );
        // A token expires after its TTL.
        let tok = String::from_utf8(token(port, "1").body).unwrap();
        let auth = [("X-aws-ec2-metadata-token", tok.as_str())];
        // No user data: 404, once authorised.
        assert_eq!(request(port, "GET", "/latest/user-data", &auth).status, 404);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(request(port, "GET", "/latest/user-data", &auth).status, 401);
    }

    #[test]
    fn openstack_user_data_and_meta_data() {
        let os = MetadataServer::openstack(b"user data".to_vec()).unwrap();
        let port = os.port();
        let ud = request(port, "GET", "/openstack/latest/user_data", &[]);
        assert_eq!((ud.status, ud.body), (200, b"user data".to_vec()));
        let md = request(port, "GET", "/openstack/latest/meta_data.json", &[]);
        assert_eq!(md.status, 200);
        assert_eq!(md.header("Content-Type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&md.body).unwrap();
        assert_eq!(v["uuid"], os.instance().id);
        assert_eq!(v["hostname"], "atoll-test.novalocal");
        assert_eq!(v["name"], "atoll-test");
        assert_eq!(request(port, "GET", "/openstack/latest/", &[]).status, 200);
        assert_eq!(request(port, "GET", "/latest/user-data", &[]).status, 404);
        assert_eq!(
            request(port, "POST", "/openstack/latest/user_data", &[]).status,
            405
        );
        // HEAD: the headers of GET, no body.
        let head = request(port, "HEAD", "/openstack/latest/user_data", &[]);
        assert_eq!(head.header("Content-Length"), Some("9"));
        assert!(head.body.is_empty());

        let none = MetadataServer::openstack(None).unwrap();
        let ud = request(none.port(), "GET", "/openstack/latest/user_data", &[]);
        assert_eq!(ud.status, 404);
        assert_eq!(none.net_user().guestfwds[0].host_port, none.port());
    }

    #[test]
    fn keep_alive_clients_get_one_answer_and_a_close() {
        let imds = MetadataServer::openstack(b"x".to_vec()).unwrap();
        // Two pipelined requests on one connection: the first is answered,
        // then the server closes.
        let got = send(
            imds.port(),
            b"GET /openstack/latest/user_data HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!((got.status, got.body.as_slice()), (200, &b"x"[..]));
        assert_eq!(got.header("Connection"), Some("close"));
        assert_eq!(imds.requests().len(), 1);
        // An absolute-form target and a body are read too.
        let got = send(
            imds.port(),
            b"PUT http://169.254.169.254/latest/api/token HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(got.status, 404);
        let r = imds.requests().pop().unwrap();
        assert_eq!(
            (r.path.as_str(), r.body.as_slice()),
            ("/latest/api/token", &b"abc"[..])
        );
    }

    #[test]
    fn unreadable_requests_get_a_4xx_and_are_recorded() {
        let imds = MetadataServer::ec2(None).unwrap();
        let port = imds.port();
        let cases: [(&[u8], u16); 8] = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"get / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET /x HTTP/1.1\r\nHost: a\r\n", 400), // closed inside the head
        ];
        for (raw, status) in cases {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.write_all(raw).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut all = String::new();
            s.read_to_string(&mut all).unwrap();
            assert!(
                all.starts_with(&format!("HTTP/1.1 {status} ")),
                "{:?}: {all}",
                String::from_utf8_lossy(raw)
            );
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(send(port, huge.as_bytes()).status, 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: a\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(send(port, many.as_bytes()).status, 431);
        let reqs = imds.requests();
        assert_eq!(reqs.len(), 10);
        assert!(reqs.iter().all(|r| r.error.is_some()), "{reqs:?}");
        assert_eq!(reqs[2].method, "GET");
        assert!(reqs[2].to_string().contains("HTTP/2"), "{}", reqs[2]);
        // A connection that sends nothing is not a request.
        drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(imds.requests().len(), 10);
    }

    #[test]
    fn wait_for_request_times_out_naming_what_it_saw() {
        let imds = MetadataServer::ec2(None).unwrap();
        request(imds.port(), "GET", "/latest/user-data", &[]);
        let e = imds
            .wait_for_request(
                "GET /latest/user-data with a token",
                Duration::from_millis(100),
                |r| r.status == 200,
            )
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("with a token"), "{s}");
        assert!(s.contains("GET /latest/user-data -> 401"), "{s}");
    }

    #[test]
    fn echo_answers_one_line_per_connection() {
        let echo = EchoServer::start().unwrap();
        for (i, sent) in ["hello from the guest\n", "second\r\n", "no newline"]
            .iter()
            .enumerate()
        {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, echo.port())).unwrap();
            s.write_all(sent.as_bytes()).unwrap();
            if !sent.ends_with('\n') {
                s.shutdown(Shutdown::Write).unwrap();
            }
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            let line = sent.trim_end_matches(['\r', '\n']);
            assert_eq!(got, format!("atoll-test-echo: {line}\n"));
            assert_eq!(echo.connections(), i + 1);
        }
        assert_eq!(
            echo.lines(),
            ["hello from the guest", "second", "no newline"]
        );
        assert_eq!(
            echo.wait_for_line("from the guest", Duration::from_secs(1))
                .unwrap(),
            "hello from the guest"
        );
        let e = echo
            .wait_for_line("never", Duration::from_millis(50))
            .unwrap_err();
        assert!(e.to_string().contains("3 connections"), "{e}");
        // A silent connection is counted but not echoed.
        drop(TcpStream::connect((Ipv4Addr::LOCALHOST, echo.port())).unwrap());
        assert!(poll(Duration::from_secs(1), || (echo.connections() == 4)
            .then_some(()))
        .is_some());
        assert_eq!(echo.lines().len(), 3);
    }

    #[test]
    fn dropping_a_server_closes_its_port_and_open_connections() {
        let echo = EchoServer::start().unwrap();
        let port = echo.port();
        let mut idle = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(poll(Duration::from_secs(1), || (echo.connections() == 1)
            .then_some(()))
        .is_some());
        let started = Instant::now();
        drop(echo);
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut buf = [0u8; 1];
        assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }

    #[test]
    fn file_server_serves_files_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/update.img"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let files = HttpFileServer::serve(dir.path()).unwrap();
        let port = files.port();

        let all = request(port, "GET", "/sub/update.img", &[]);
        assert_eq!(all.status, 200);
        assert_eq!(all.header("Accept-Ranges"), Some("bytes"));
        assert_eq!(all.body, data);
        let part = request(port, "GET", "/sub/update.img", &[("Range", "bytes=10-19")]);
        assert_eq!(part.status, 206);
        assert_eq!(part.header("Content-Range"), Some("bytes 10-19/100000"));
        assert_eq!(part.body, &data[10..20]);
        let tail = request(port, "GET", "/sub/update.img", &[("Range", "bytes=99990-")]);
        assert_eq!(tail.body, &data[99990..]);
        let last = request(port, "GET", "/sub/update.img", &[("Range", "bytes=-5")]);
        assert_eq!(
            last.header("Content-Range"),
            Some("bytes 99995-99999/100000")
        );
        let past = request(
            port,
            "GET",
            "/sub/update.img",
            &[("Range", "bytes=5-999999")],
        );
        assert_eq!(past.body, &data[5..]);
        let beyond = request(
            port,
            "GET",
            "/sub/update.img",
            &[("Range", "bytes=100000-")],
        );
        assert_eq!(beyond.status, 416);
        assert_eq!(beyond.header("Content-Range"), Some("bytes */100000"));
        let multi = request(
            port,
            "GET",
            "/sub/update.img",
            &[("Range", "bytes=0-1,5-6")],
        );
        assert_eq!((multi.status, multi.body.len()), (200, data.len()));
        let head = request(port, "HEAD", "/sub/update.img", &[]);
        assert_eq!(head.header("Content-Length"), Some("100000"));
        assert!(head.body.is_empty());
        let encoded = request(
            port,
            "GET",
            "/sub%2Fupdate.img?v=1",
            &[("Range", "bytes=0-0")],
        );
        assert_eq!(encoded.body, &data[..1]);
        assert_eq!(request(port, "GET", "/empty", &[]).status, 200);
        assert_eq!(
            request(port, "GET", "/empty", &[("Range", "bytes=0-")]).status,
            416
        );

        for path in [
            "/",
            "/sub",
            "/missing",
            "/../etc/passwd",
            "/sub/../sub/update.img",
            "/%zz",
        ] {
            assert_eq!(request(port, "GET", path, &[]).status, 404, "{path}");
        }
        assert_eq!(request(port, "PUT", "/empty", &[]).status, 405);
        let r = files
            .wait_for_request("a range", Duration::from_secs(1), |r| {
                r.header("Range") == Some("bytes=10-19")
            })
            .unwrap();
        assert_eq!(r.status, 206);
        assert!(HttpFileServer::serve(&dir.path().join("empty")).is_err());
    }

    #[test]
    fn file_server_swaps_its_root_and_streams_without_end() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(one.path().join("f"), b"one").unwrap();
        std::fs::write(two.path().join("f"), b"two").unwrap();
        let files = HttpFileServer::serve(one.path()).unwrap();
        let port = files.port();
        assert_eq!(request(port, "GET", "/f", &[]).body, b"one");
        files.set_root(two.path()).unwrap();
        assert_eq!(files.root(), two.path());
        assert_eq!(request(port, "GET", "/f", &[]).body, b"two");
        assert!(files.set_root(&two.path().join("f")).is_err());
        assert_eq!(files.root(), two.path());

        // Endless: the file, then zeros for as long as the client reads.
        files.set_endless(Some("/f"));
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /f?x=1 HTTP/1.1\r\nRange: bytes=1-\r\n\r\n")
            .unwrap();
        let mut got = vec![0u8; 4 << 20];
        s.read_exact(&mut got).unwrap();
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&got[..split]).to_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        let body = &got[split + 4..];
        assert_eq!(&body[..3], b"two");
        assert!(body[3..].iter().all(|b| *b == 0));
        drop(s);
        // Other paths, and the path again once it is turned off, end.
        std::fs::write(two.path().join("g"), b"g").unwrap();
        assert_eq!(request(port, "GET", "/g", &[]).body, b"g");
        files.set_endless(None);
        assert_eq!(request(port, "GET", "/f", &[]).body, b"two");
    }

    #[test]
    fn range_parsing() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=3-3"), 10), Ok(Some((3, 3))));
        assert_eq!(parse_range(Some("bytes=-20"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=-0"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=-"), 10), Ok(None));
    }

    #[test]
    fn tokens_are_distinct() {
        let mut seen: Vec<String> = (0..100).map(|_| random_token()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100);
        assert!(seen
            .iter()
            .all(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
