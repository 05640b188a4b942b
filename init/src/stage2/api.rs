//! The host API server (`atoll_common::api`): on the unix socket
//! [`layout::API_SOCKET`] (mode 0600) and on the virtio-serial port named
//! [`layout::API_VIRTIO_PORT`] when the VM has one.
//!
//! One JSON request per line; the answer is JSON lines ending with `done`
//! or `error` (a followed log ends when the client hangs up). A connection
//! may send several requests one after the other.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::api::{
    ConfigReport, ConnectReport, ImportInput, LogRecord, NetStatus, Request, Response, Status,
    MAX_IMPORT_BYTES, MAX_IMPORT_LINE, MAX_REQUEST_BYTES,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc};

use super::loghub::LogHub;
use super::shutdown::ShutdownKind;

/// A write to a client that takes longer than this ends the session.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before reading the virtio port again when no host is connected.
pub const PORT_RETRY: Duration = Duration::from_millis(100);

/// What the server needs from the rest of PID 1.
#[derive(Debug)]
pub struct ApiContext {
    pub status: Arc<Mutex<Status>>,
    /// Called on the status before it is sent (uptime, disk usage, …).
    pub refresh: Option<fn(&mut Status)>,
    pub hub: &'static LogHub,
    pub shutdown: mpsc::UnboundedSender<ShutdownKind>,
    /// The config in force (`config show`).
    pub config: Arc<Mutex<ConfigReport>>,
    /// The network state (`net status`), kept up to date by the network task.
    pub net: Arc<Mutex<NetStatus>>,
    /// The containers' states (`ps`), kept by the supervisor.
    pub containers: crate::containers::Table,
    /// Requests to the supervisor (`stop`, `start`, `restart`).
    pub container_actions: mpsc::UnboundedSender<crate::containers::ActionRequest>,
    /// Update actions, answered by [`crate::updates::Updates::serve`].
    pub updates: mpsc::UnboundedSender<crate::updates::UpdateRequest>,
}

impl ApiContext {
    fn status(&self) -> Status {
        let mut s = match self.status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Some(f) = self.refresh {
            f(&mut s);
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the API socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Accepts connections forever, one task per client.
pub async fn serve_socket(listener: UnixListener, ctx: Arc<ApiContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let (r, w) = stream.into_split();
                    serve_session(r, w, &ctx).await;
                });
            }
            Err(e) => {
                log::warn!("API socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Line {
    /// A whole line (its newline included).
    Text(String),
    TooLong,
    Eof,
}

/// One line of at most `max` bytes.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, max: usize) -> Line {
    let mut buf = Vec::new();
    let limit = max as u64 + 1;
    match (&mut *reader).take(limit).read_until(b'\n', &mut buf).await {
        Ok(0) | Err(_) => Line::Eof,
        Ok(_) if buf.len() > max => Line::TooLong,
        Ok(_) if !buf.ends_with(b"\n") => Line::Eof, // hung up mid-line
        Ok(_) => Line::Text(String::from_utf8_lossy(&buf).into_owned()),
    }
}

/// Asks the container supervisor for one answer.
async fn ask_supervisor(
    ctx: &ApiContext,
    request: impl FnOnce(tokio::sync::oneshot::Sender<Response>) -> crate::containers::ActionRequest,
) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match ctx.container_actions.send(request(tx)) {
        Ok(()) => rx.await.unwrap_or_else(|_| Response::Error {
            message: "the container supervisor is not running".into(),
        }),
        Err(_) => Response::Error {
            message: "the container supervisor is not running yet".into(),
        },
    }
}

/// Sends a one-response answer: `done` follows unless it is an error.
async fn send_answer<W: AsyncWrite + Unpin>(writer: &mut W, answer: &Response) -> bool {
    let error = matches!(answer, Response::Error { .. });
    send(writer, answer).await && (error || send(writer, &Response::Done).await)
}

/// `run`: starts the container, names it, and unless `detach` sends its
/// output (from the log hub) until it exits.
async fn run<W: AsyncWrite + Unpin>(
    writer: &mut W,
    ctx: &ApiContext,
    container: Box<atoll_common::config::workload::Container>,
    detach: bool,
) -> bool {
    // Subscribed first, so that no line falls between the start and here.
    let mut logs = ctx.hub.subscribe();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = crate::containers::ActionRequest::Run(container, tx);
    let started = match ctx.container_actions.send(req) {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err("the container supervisor is not running".into())),
        Err(_) => Err("the container supervisor is not running yet".into()),
    };
    let (name, mut exit) = match started {
        Ok(s) => s,
        Err(message) => return send(writer, &Response::Error { message }).await,
    };
    let named = Response::Message {
        message: name.clone(),
    };
    if !send(writer, &named).await {
        return false;
    }
    if detach {
        return send(writer, &Response::Done).await;
    }
    let output = |r: &LogRecord| -> Option<Response> {
        let stream = r.stream.clone()?;
        (r.ident == name).then(|| Response::ExecOutput {
            stream,
            data: format!("{}\n", r.message),
        })
    };
    let code = loop {
        tokio::select! {
            rec = logs.recv() => match rec {
                Ok(r) => {
                    if let Some(out) = output(&r) {
                        if !send(writer, &out).await {
                            return false;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("run {name}: {n} log records lost for the client");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            code = &mut exit => break code.ok().flatten(),
        }
    };
    // Its last lines may still be on their way from its pipes.
    while let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(200), logs.recv()).await {
        if let Some(out) = output(&r) {
            if !send(writer, &out).await {
                return false;
            }
        }
    }
    let why = lock_clone(&ctx.containers)
        .into_iter()
        .find(|c| c.name == name && c.pod.is_none())
        .map(|c| c.detail)
        .unwrap_or_default();
    if code.is_none() || code == Some(127) {
        let message = format!("{name}: {why}");
        if !send(writer, &Response::Message { message }).await {
            return false;
        }
    }
    let end = Response::ExecExit {
        code,
        timed_out: false,
    };
    send(writer, &end).await && send(writer, &Response::Done).await
}

/// The terms of an interactive exec.
struct Interactive<'a> {
    tty: bool,
    size: Option<atoll_common::api::TermSize>,
    /// Where a request line read in place of input goes (see [`read_input`]).
    next: &'a mut Option<String>,
}

/// Runs `args` in container `name` for an `exec` (with `timeout`) or an
/// interactive exec, sending the output and the exit; an interactive one
/// reads the client's input lines meanwhile. False when the session is
/// over.
#[allow(clippy::too_many_arguments)]
async fn exec<R, W>(
    reader: &mut BufReader<R>,
    writer: &mut W,
    ctx: &ApiContext,
    name: String,
    args: Vec<String>,
    timeout: Option<Duration>,
    interactive: Option<Interactive<'_>>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (input_task, io, mut next) = match interactive {
        Some(Interactive { tty, size, next }) => {
            let (input_tx, input) = mpsc::unbounded_channel();
            let io = crate::containers::exec::ExecIo { tty, size, input };
            (Some(input_tx), Some(io), Some(next))
        }
        None => (None, None, None),
    };
    let req = crate::containers::ActionRequest::Exec {
        name,
        args,
        timeout,
        io,
        reply: tx,
    };
    if ctx.container_actions.send(req).is_err() {
        send(
            writer,
            &Response::Error {
                message: "the container supervisor is not running yet".into(),
            },
        )
        .await
    } else {
        let mut ok = true;
        let mut error = false;
        let mut input = input_task;
        let mut pending = Vec::new();
        loop {
            let r = tokio::select! {
                r = rx.recv() => r,
                // The client's input, one line each; its
                // hanging up ends the input (and the command).
                got = read_input(reader, &mut pending, &mut input), if input.is_some() => {
                    // The command is killed when its input ends so; its
                    // answers are nobody's any more.
                    match got {
                        Input::More => continue,
                        Input::HungUp => return false,
                        // Over the virtio port, a new client's first line
                        // is how the old one's leaving shows: serve it next.
                        Input::Request(line) => {
                            if let Some(next) = next.as_deref_mut() {
                                *next = Some(line);
                            }
                            return true;
                        }
                    }
                }
            };
            let Some(r) = r else { break };
            error = matches!(r, Response::Error { .. });
            let last = error || matches!(r, Response::ExecExit { .. });
            ok = send(writer, &r).await;
            if !ok || last {
                break;
            }
        }
        // An error answer ends the request by itself.
        ok && (error || send(writer, &Response::Done).await)
    }
}

/// `import`: receives the archive ([`ImportInput`] lines) into a file
/// under [`atoll_common::layout::VAR_IMPORT_DIR`], has the supervisor import it, and
/// removes the file. Returns whether the session goes on.
async fn import<R, W>(
    reader: &mut BufReader<R>,
    writer: &mut W,
    ctx: &ApiContext,
    name: Option<String>,
    next: &mut Option<String>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(atoll_common::layout::VAR_IMPORT_DIR);
    let path = dir.join(format!("{}-{n}.tar", std::process::id()));
    let received = receive_archive(reader, dir, &path, next).await;
    let answer = match received {
        Ok(Received::Archive(bytes)) => {
            log::info!("import: received an archive of {bytes} bytes");
            let request = crate::containers::images::StoreRequest::Import {
                archive: path.clone(),
                name,
            };
            ask_supervisor(ctx, |tx| {
                crate::containers::ActionRequest::Store(request, tx)
            })
            .await
        }
        Ok(Received::Left) => {
            let _ = tokio::fs::remove_file(&path).await;
            log::info!("import: its client left before the end of the archive");
            return true;
        }
        Err(message) => Response::Error {
            message: format!("import: {message}"),
        },
    };
    let _ = tokio::fs::remove_file(&path).await;
    send_answer(writer, &answer).await
}

/// How an import's upload ended.
enum Received {
    /// The whole archive, this many bytes.
    Archive(u64),
    /// The client left: a new request came instead (kept in `next`).
    Left,
}

/// Writes the archive sent as [`ImportInput`] lines to `path`.
async fn receive_archive<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    dir: &Path,
    path: &Path,
    next: &mut Option<String>,
) -> Result<Received, String> {
    use base64::Engine as _;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut total = 0u64;
    loop {
        let line = match read_line(reader, MAX_IMPORT_LINE).await {
            Line::Text(l) => l,
            Line::TooLong => {
                return Err(format!("an input line longer than {MAX_IMPORT_LINE} bytes"))
            }
            Line::Eof => return Err("the client hung up before the end of the archive".into()),
        };
        let input: ImportInput = match serde_json::from_str(&line) {
            Ok(i) => i,
            Err(e) => {
                if serde_json::from_str::<Request>(&line).is_ok() {
                    *next = Some(line);
                    return Ok(Received::Left);
                }
                return Err(format!("input that is not part of an archive: {e}"));
            }
        };
        match input {
            ImportInput::Data { base64 } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(base64.as_bytes())
                    .map_err(|e| {
                        format!("archive data that is not base64 after {total} bytes: {e}")
                    })?;
                total += bytes.len() as u64;
                if total > MAX_IMPORT_BYTES {
                    return Err(format!(
                        "the archive is larger than {} GiB",
                        MAX_IMPORT_BYTES >> 30
                    ));
                }
                file.write_all(&bytes)
                    .await
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            ImportInput::End => {
                file.flush()
                    .await
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                return Ok(Received::Archive(total));
            }
        }
    }
}

/// What came from the client of an interactive exec.
enum Input {
    /// Input, handed on.
    More,
    /// The client hung up, or sent something that is neither input nor a
    /// request.
    HungUp,
    /// A request line: a new client (the old one left without a word, as
    /// on the virtio port, where hanging up is not seen).
    Request(String),
}

/// Reads one [`ExecInput`] line from the client of an interactive exec
/// and hands it on. Anything but input ends the input (`input` dropped,
/// so the command is killed). Cancel safe: a line read in part stays in
/// `pending` for the next call.
async fn read_input<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    pending: &mut Vec<u8>,
    input: &mut Option<mpsc::UnboundedSender<atoll_common::api::ExecInput>>,
) -> Input {
    let room = (MAX_REQUEST_BYTES + 1).saturating_sub(pending.len()) as u64;
    let ended = match (&mut *reader).take(room).read_until(b'\n', pending).await {
        Ok(0) | Err(_) => true,
        Ok(_) => pending.len() > MAX_REQUEST_BYTES || !pending.ends_with(b"\n"),
    };
    if ended {
        *input = None;
        return Input::HungUp;
    }
    let line = std::mem::take(pending);
    if line.trim_ascii().is_empty() {
        return Input::More;
    }
    match serde_json::from_slice(&line) {
        Ok(msg) => {
            if let Some(tx) = input.as_ref() {
                let _ = tx.send(msg);
            }
            Input::More
        }
        Err(e) => {
            *input = None;
            if serde_json::from_slice::<Request>(&line).is_ok() {
                log::info!("interactive exec: its client left; the command is killed");
                Input::Request(String::from_utf8_lossy(&line).into_owned())
            } else {
                log::warn!(
                    "interactive exec: input that is not input ({e}); the command is killed"
                );
                Input::HungUp
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, resp: &Response) -> bool {
    let mut line = match serde_json::to_vec(resp) {
        Ok(l) => l,
        Err(_) => return false,
    };
    line.push(b'\n');
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, async {
            w.write_all(&line).await?;
            w.flush().await
        })
        .await,
        Ok(Ok(()))
    )
}

/// Serves requests from one client until it hangs up.
pub async fn serve_session<R, W>(reader: R, mut writer: W, ctx: &ApiContext)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(reader);
    // A request that arrived while an interactive exec read its input.
    let mut next: Option<String> = None;
    loop {
        let line = match next.take() {
            Some(l) => Line::Text(l),
            None => read_line(&mut reader, MAX_REQUEST_BYTES).await,
        };
        let line = match line {
            Line::Text(l) => l,
            Line::Eof => return,
            Line::TooLong => {
                let _ = send(
                    &mut writer,
                    &Response::Error {
                        message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                    },
                )
                .await;
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                if !send(
                    &mut writer,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                )
                .await
                {
                    return;
                }
                continue;
            }
        };
        let keep_going = match req {
            Request::Status => {
                send(&mut writer, &Response::Status(Box::new(ctx.status()))).await
                    && send(&mut writer, &Response::Done).await
            }
            Request::Logs {
                lines,
                follow,
                ident,
            } => logs(&mut reader, &mut writer, ctx, lines, follow, ident).await,
            Request::Poweroff | Request::Reboot => {
                let kind = if req == Request::Poweroff {
                    ShutdownKind::Poweroff
                } else {
                    ShutdownKind::Reboot
                };
                log::info!("{kind} requested through the API");
                let _ = send(&mut writer, &Response::Done).await;
                let _ = ctx.shutdown.send(kind);
                false
            }
            Request::ConfigShow => {
                let r = lock_clone(&ctx.config);
                send(&mut writer, &Response::Config(Box::new(r))).await
                    && send(&mut writer, &Response::Done).await
            }
            Request::NetStatus => {
                let r = lock_clone(&ctx.net);
                send(&mut writer, &Response::Net(Box::new(r))).await
                    && send(&mut writer, &Response::Done).await
            }
            Request::Containers => {
                let r = lock_clone(&ctx.containers);
                send(&mut writer, &Response::Containers(r)).await
                    && send(&mut writer, &Response::Done).await
            }
            Request::Exec {
                name,
                args,
                timeout_ms,
            } => {
                let timeout =
                    Duration::from_millis(timeout_ms.unwrap_or(60_000).clamp(1, 86_400_000));
                exec(
                    &mut reader,
                    &mut writer,
                    ctx,
                    name,
                    args,
                    Some(timeout),
                    None,
                )
                .await
            }
            Request::ExecInteractive {
                name,
                args,
                tty,
                size,
            } => {
                let interactive = Interactive {
                    tty,
                    size,
                    next: &mut next,
                };
                exec(
                    &mut reader,
                    &mut writer,
                    ctx,
                    name,
                    args,
                    None,
                    Some(interactive),
                )
                .await
            }
            Request::Run { container, detach } => run(&mut writer, ctx, container, detach).await,
            Request::Inspect { name } => {
                let answer = ask_supervisor(ctx, |tx| {
                    crate::containers::ActionRequest::Inspect(name, tx)
                })
                .await;
                send_answer(&mut writer, &answer).await
            }
            Request::ContainerAction { name, action } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let req = crate::containers::ActionRequest::Action(name, action, tx);
                let answer = match ctx.container_actions.send(req) {
                    Ok(()) => rx
                        .await
                        .unwrap_or_else(|_| Err("the container supervisor is not running".into())),
                    Err(_) => Err("the container supervisor is not running yet".into()),
                };
                let r = match answer {
                    Ok(()) => Response::Done,
                    Err(message) => Response::Error { message },
                };
                send(&mut writer, &r).await
            }
            Request::Import { name } => {
                import(&mut reader, &mut writer, ctx, name, &mut next).await
            }
            Request::Images
            | Request::Pull { .. }
            | Request::RemoveImage { .. }
            | Request::Prune => {
                use crate::containers::images::StoreRequest;
                let request = match req {
                    Request::Pull { image } => StoreRequest::Pull(image),
                    Request::RemoveImage { image } => StoreRequest::Remove(image),
                    Request::Prune => StoreRequest::Prune,
                    _ => StoreRequest::List,
                };
                let answer = ask_supervisor(ctx, |tx| {
                    crate::containers::ActionRequest::Store(request, tx)
                })
                .await;
                send_answer(&mut writer, &answer).await
            }
            Request::Update { action } => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let req = crate::updates::UpdateRequest { action, reply };
                let answer = match ctx.updates.send(req) {
                    Ok(()) => rx
                        .await
                        .unwrap_or_else(|_| Err("the update service stopped".into())),
                    Err(_) => Err("the update service is not running".into()),
                };
                match answer {
                    Ok(report) => {
                        send(&mut writer, &Response::Update(Box::new(report))).await
                            && send(&mut writer, &Response::Done).await
                    }
                    Err(message) => send(&mut writer, &Response::Error { message }).await,
                }
            }
            Request::NetConnect {
                addr,
                send: payload,
                timeout_ms,
            } => {
                let t = Duration::from_millis(timeout_ms.unwrap_or(5000).clamp(1, 60_000));
                let r = connect(&addr, payload.as_deref(), t).await;
                send(&mut writer, &Response::Connect(r)).await
                    && send(&mut writer, &Response::Done).await
            }
        };
        if !keep_going {
            return;
        }
    }
}

fn lock_clone<T: Clone>(m: &Mutex<T>) -> T {
    match m.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Most of a peer's answer that a reachability check reports.
const CONNECT_READ_MAX: usize = 4096;

/// A reachability check: connect to `addr`, send `payload`, read until the
/// peer closes, 4 KiB arrive or `limit` runs out (the whole check, connect
/// included, is bounded by `limit`).
pub async fn connect(addr: &str, payload: Option<&str>, limit: Duration) -> ConnectReport {
    let start = std::time::Instant::now();
    let mut report = ConnectReport::default();
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        report.connected = true;
        report.peer = stream.peer_addr().ok().map(|a| a.to_string());
        if let Some(p) = payload {
            stream
                .write_all(p.as_bytes())
                .await
                .map_err(|e| format!("sending: {e}"))?;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while buf.len() < CONNECT_READ_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("receiving: {e}")),
            }
        }
        buf.truncate(CONNECT_READ_MAX);
        Ok::<_, String>(buf)
    };
    let got = tokio::time::timeout(limit, work).await;
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match got {
        Ok(Ok(buf)) => report.received = String::from_utf8_lossy(&buf).into_owned(),
        Ok(Err(e)) => report.error = Some(e),
        Err(_) if report.connected => {
            report.error = Some(format!("no end of answer within {} ms", limit.as_millis()))
        }
        Err(_) => {
            report.error = Some(format!(
                "connecting to {addr}: timed out after {} ms",
                limit.as_millis()
            ))
        }
    }
    report
}

fn wanted(r: &LogRecord, ident: Option<&str>) -> bool {
    ident.is_none_or(|i| r.ident == i || r.container.as_deref() == Some(i))
}

/// Sends the log tail, then (when following) new records until the client hangs up.
async fn logs<R, W>(
    reader: &mut BufReader<R>,
    writer: &mut W,
    ctx: &ApiContext,
    lines: usize,
    follow: bool,
    ident: Option<String>,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribe first so nothing falls between the tail and the stream.
    let mut rx = ctx.hub.subscribe();
    let hub = ctx.hub;
    let id = ident.clone();
    // Reading up to 16 MiB of store is not for the event loop's thread.
    let tail = tokio::task::spawn_blocking(move || hub.tail(lines, id.as_deref()))
        .await
        .unwrap_or_default();
    let mut last = tail.last().map(|r| r.boottime_us).unwrap_or(0);
    for r in tail {
        if !send(writer, &Response::Log(r)).await {
            return false;
        }
    }
    if !follow {
        return send(writer, &Response::Done).await;
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            rec = rx.recv() => match rec {
                Ok(r) => {
                    if r.boottime_us < last || !wanted(&r, ident.as_deref()) {
                        continue;
                    }
                    last = r.boottime_us;
                    if !send(writer, &Response::Log(r)).await {
                        return false;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = super::loghub::init_record(4, format!("({n} log records skipped: the client read too slowly)"));
                    if !send(writer, &Response::Log(note)).await {
                        return false;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            n = reader.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return false;
                }
            }
        }
    }
}

/// The device node of the virtio-serial port named `name`, if the VM has one.
pub fn find_virtio_port(sys_ports: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(sys_ports).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("name")).ok()?;
        (n.trim() == name).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// Serves the API on a virtio-serial port forever. When no host is
/// connected reads return EOF at once; we retry every [`PORT_RETRY`].
pub async fn serve_port(dev: PathBuf, ctx: Arc<ApiContext>) {
    use tokio::net::unix::pipe;
    let mut warned = false;
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(&dev)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .and_then(|(r, w)| {
                Ok((
                    pipe::Receiver::from_file_unchecked(r)?,
                    pipe::Sender::from_file_unchecked(w)?,
                ))
            });
        let (mut rx, mut tx) = match opened {
            Ok(p) => p,
            Err(e) => {
                if !warned {
                    log::warn!("API port {}: {e}; retrying", dev.display());
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            serve_session(&mut rx, &mut tx, &ctx).await;
            tokio::time::sleep(PORT_RETRY).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;
    use atoll_common::api::{
        BootMode, BootTimes, ContainerState, ContainerStatus, DataStatus, RootStatus, UpdateAction,
        UpdateReport,
    };
    use atoll_common::layout;
    use tokio::net::UnixStream;

    #[test]
    fn an_imported_archive_is_received_whole_or_refused() {
        use base64::Engine as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let data = |b: &[u8]| format!("{{\"import\":\"data\",\"base64\":\"{}\"}}\n", b64(b));
        let end = "{\"import\":\"end\"}\n";
        rt.block_on(async {
            let tmp = TempDir::new("import");
            let dir = tmp.path().join("import");
            let path = dir.join("a.tar");
            let mut next = None;
            // Two chunks, then the end: the file holds both.
            let wire = format!(
                "{}{}{end}{{\"method\":\"status\"}}\n",
                data(b"abc"),
                data(b"def")
            );
            let mut reader = BufReader::new(wire.as_bytes());
            let r = receive_archive(&mut reader, &dir, &path, &mut next).await;
            assert!(matches!(r, Ok(Received::Archive(6))));
            assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
            // What follows is the next request, left in the reader.
            assert!(
                matches!(read_line(&mut reader, MAX_REQUEST_BYTES).await, Line::Text(l) if l.contains("status"))
            );
            assert!(next.is_none());

            // A request instead of data: the client left; it is served next.
            let wire = format!("{}{{\"method\":\"status\"}}\n", data(b"abc"));
            let mut reader = BufReader::new(wire.as_bytes());
            let r = receive_archive(&mut reader, &dir, &path, &mut next).await;
            assert!(matches!(r, Ok(Received::Left)));
            assert!(next.as_deref().is_some_and(|l| l.contains("status")));

            // Bad base64, garbage, a hang-up before the end: errors.
            for (wire, why) in [
                (
                    "{\"import\":\"data\",\"base64\":\"%%\"}\n".to_string(),
                    "not base64",
                ),
                ("junk\n".to_string(), "not part of an archive"),
                (data(b"abc"), "hung up"),
            ] {
                let mut reader = BufReader::new(wire.as_bytes());
                match receive_archive(&mut reader, &dir, &path, &mut None).await {
                    Err(e) => assert!(e.contains(why), "{e}"),
                    Ok(_) => panic!("{wire:?} was taken"),
                }
            }
        });
    }

    #[test]
    fn interactive_input_is_handed_on_until_a_new_client_or_a_hang_up() {
        use atoll_common::api::ExecInput;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let wire = concat!(
                "{\"input\":\"data\",\"data\":\"ls\\n\"}\n",
                "\n",
                "{\"method\":\"status\"}\n",
            );
            let mut reader = BufReader::new(wire.as_bytes());
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut input = Some(tx);
            let mut pending = Vec::new();
            assert!(matches!(
                read_input(&mut reader, &mut pending, &mut input).await,
                Input::More
            ));
            assert_eq!(
                rx.recv().await,
                Some(ExecInput::Data {
                    data: "ls\n".into()
                })
            );
            assert!(matches!(
                read_input(&mut reader, &mut pending, &mut input).await,
                Input::More
            ));
            // A request: the old client left, the line is the new one's.
            match read_input(&mut reader, &mut pending, &mut input).await {
                Input::Request(l) => assert_eq!(l, "{\"method\":\"status\"}\n"),
                _ => panic!("the request was not handed back"),
            }
            assert!(input.is_none(), "the input must end with the old client");

            // Garbage, and a line cut off by the hang-up, end the input.
            for wire in ["not json\n", "{\"input\":\"eo"] {
                let (tx, _rx) = mpsc::unbounded_channel();
                let mut input = Some(tx);
                let mut reader = BufReader::new(wire.as_bytes());
                assert!(matches!(
                    read_input(&mut reader, &mut Vec::new(), &mut input).await,
                    Input::HungUp
                ));
                assert!(input.is_none());
            }
        });
    }

    pub(crate) fn sample_status() -> Status {
        Status {
            version: "0.1.0".into(),
            hostname: "atoll-01234567".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            booted_slot: Some(layout::Slot::A),
            boot_mode: BootMode::Good,
            ready: true,
            uptime_ms: 1234,
            boot_times: BootTimes::default(),
            slots: vec![],
            grubenv: "ok".into(),
            data: DataStatus::default(),
            root: RootStatus::default(),
            previous_shutdown: "clean".into(),
        }
    }

    async fn request(path: &Path, req: &str) -> (UnixStream, Vec<Response>) {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut r = BufReader::new(&mut s);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let resp: Response = serde_json::from_str(&line).unwrap();
            let end = matches!(resp, Response::Done | Response::Error { .. });
            out.push(resp);
            if end {
                break;
            }
        }
        (s, out)
    }

    #[test]
    fn serves_status_logs_and_shutdown() {
        let dir = TempDir::new("api");
        let path = dir.path().join("api.sock");
        let hub: &'static LogHub = Box::leak(Box::new(LogHub::new(false)));
        hub.push(super::super::loghub::init_record(6, "one".into()));
        let mut r = super::super::loghub::init_record(6, "two".into());
        r.ident = "web".into();
        hub.push(r);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (actions_tx, mut actions_rx) = mpsc::unbounded_channel::<crate::containers::ActionRequest>();
            let (updates_tx, mut updates_rx) =
                mpsc::unbounded_channel::<crate::updates::UpdateRequest>();
            let ctx = Arc::new(ApiContext {
                status: Arc::new(Mutex::new(sample_status())),
                refresh: Some(|s: &mut Status| s.uptime_ms = 99),
                hub,
                shutdown: tx,
                config: Arc::default(),
                net: Arc::default(),
                containers: Arc::new(Mutex::new(vec![ContainerStatus {
                    name: "web".into(),
                    pod: None,
                    image: "nginx".into(),
                    image_digest: None,
                    state: ContainerState::Running,
                    detail: String::new(),
                    pid: Some(7),
                    started_at: None,
                    restarts: 2,
                    exit_code: None,
                    health: None,
                    network: "host".into(),
                    address: None,
                    ports: Vec::new(),
                }])),
                container_actions: actions_tx,
                updates: updates_tx,
            });
            // A stand-in for the update service: reports one status.
            tokio::spawn(async move {
                while let Some(req) = updates_rx.recv().await {
                    let r = if req.action == UpdateAction::Rollback {
                        Err("slot B (0.1.0) is not marked good".to_string())
                    } else {
                        Ok(UpdateReport {
                            action: req.action,
                            outcome: "up to date".into(),
                            status: None,
                            agent: "running (pid 9)".into(),
                        })
                    };
                    let _ = req.reply.send(r);
                }
            });
            // A stand-in for the supervisor: knows "web" only.
            tokio::spawn(async move {
                while let Some(req) = actions_rx.recv().await {
                    let crate::containers::ActionRequest::Action(name, _action, reply) = req else {
                        continue;
                    };
                    let r: Result<(), String> = if name == "web" {
                        Ok(())
                    } else {
                        Err(format!("no container named {name:?}"))
                    };
                    let _ = reply.send(r);
                }
            });
            let listener = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            tokio::spawn(serve_socket(listener, ctx));

            let (_, out) = request(&path, "{\"method\":\"status\"}\n").await;
            let Response::Status(s) = &out[0] else {
                panic!("{out:?}")
            };
            assert_eq!(s.uptime_ms, 99);
            assert_eq!(out[1], Response::Done);

            let (_, out) = request(&path, "{\"method\":\"logs\",\"lines\":1}\n").await;
            assert!(matches!(&out[0], Response::Log(r) if r.message == "two"));
            assert_eq!(out.len(), 2);
            let (_, out) = request(&path, "{\"method\":\"logs\",\"ident\":\"init\"}\n").await;
            assert_eq!(out.len(), 2);

            let (_, out) = request(&path, "{\"method\":\"containers\"}\n").await;
            assert!(matches!(&out[0], Response::Containers(c) if c[0].name == "web" && c[0].restarts == 2));
            let (_, out) = request(
                &path,
                "{\"method\":\"container-action\",\"name\":\"web\",\"action\":\"restart\"}\n",
            )
            .await;
            assert_eq!(out, vec![Response::Done]);
            let (_, out) = request(
                &path,
                "{\"method\":\"container-action\",\"name\":\"db\",\"action\":\"stop\"}\n",
            )
            .await;
            assert!(matches!(&out[0], Response::Error { message } if message.contains("db")));

            let (_, out) =
                request(&path, "{\"method\":\"update\",\"action\":\"check\"}\n").await;
            assert!(
                matches!(&out[0], Response::Update(r) if r.outcome == "up to date" && r.action == UpdateAction::Check),
                "{out:?}"
            );
            assert_eq!(out[1], Response::Done);
            let (_, out) =
                request(&path, "{\"method\":\"update\",\"action\":\"rollback\"}\n").await;
            assert!(
                matches!(&out[..], [Response::Error { message }] if message.contains("not marked good")),
                "{out:?}"
            );

            let (_, out) = request(&path, "nonsense\n").await;
            assert!(matches!(&out[0], Response::Error { .. }));

            // Follow: the tail, then new records as they come.
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(b"{\"method\":\"logs\",\"lines\":1,\"follow\":true,\"ident\":\"web\"}\n")
                .await
                .unwrap();
            let (rd, _wr) = s.split();
            let mut rd = BufReader::new(rd);
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            assert!(line.contains("\"two\""));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut r = super::super::loghub::init_record(6, "three".into());
            r.ident = "web".into();
            hub.push(super::super::loghub::init_record(6, "not web".into()));
            hub.push(r);
            line.clear();
            tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(line.contains("\"three\""), "{line}");

            let (_, out) = request(&path, "{\"method\":\"poweroff\"}\n").await;
            assert_eq!(out, vec![Response::Done]);
            assert_eq!(rx.recv().await, Some(ShutdownKind::Poweroff));
        });
    }

    #[test]
    fn finds_the_virtio_port_by_name() {
        let dir = TempDir::new("vports");
        for (d, n) in [
            ("vport1p1", "org.qemu.guest_agent.0"),
            ("vport2p1", "dev.atoll.api"),
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
            std::fs::write(dir.path().join(d).join("name"), format!("{n}\n")).unwrap();
        }
        assert_eq!(
            find_virtio_port(dir.path(), layout::API_VIRTIO_PORT),
            Some(PathBuf::from("/dev/vport2p1"))
        );
        assert_eq!(find_virtio_port(dir.path(), "nope"), None);
    }
}
