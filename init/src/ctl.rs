//! `atollctl`: the host CLI, a client of PID 1's API (`atoll_common::api`).
//! `bin/atollctl.rs` only parses arguments and calls [`run`].
//!
//! The API socket may also be the host side of the VM's virtio-serial API
//! port (a QEMU `-chardev socket`): it speaks the same lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

mod interactive;

use atoll_common::api::{
    ConfigReport, ConnectReport, ContainerAction, ContainerStatus, ImageInfo, LogRecord, NetStatus,
    Request, Response, Status, UpdateAction, UpdateReport, UpdateSlot,
};

/// Exit codes (also in `atollctl --help`).
pub mod exit {
    pub const OK: i32 = 0;
    /// The host answered with an error.
    pub const HOST_ERROR: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// The API could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// The answer was cut short or not understood.
    pub const PROTOCOL: i32 = 4;
    /// `config validate`: the file is not a valid config (or unreadable).
    pub const INVALID: i32 = 5;
    /// `net connect`: the connection failed.
    pub const UNREACHED: i32 = 6;
    /// `exec`: the command ran over its time and was killed (as timeout(1)).
    pub const EXEC_TIMEOUT: i32 = 124;
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("is PID 1 running? no API socket at {}", path.display())]
    NoSocket { path: PathBuf },
    #[error("nothing is listening on {}: is PID 1 running?", path.display())]
    Refused { path: PathBuf },
    #[error("permission denied on {} (the API is for root)", path.display())]
    Permission { path: PathBuf },
    #[error("connecting to {}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the host")]
    Io(#[source] std::io::Error),
    #[error("the host closed the connection before the answer was complete")]
    Truncated,
    #[error("the host sent something unexpected: {0}")]
    Unexpected(String),
    #[error("the host says: {0}")]
    Host(String),
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::NoSocket { .. }
            | CtlError::Refused { .. }
            | CtlError::Permission { .. }
            | CtlError::Connect { .. } => exit::UNREACHABLE,
            CtlError::Host(_) => exit::HOST_ERROR,
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Io(_) | CtlError::Truncated | CtlError::Unexpected(_) => exit::PROTOCOL,
        }
    }
}

/// A connection to the API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, CtlError> {
        let stream = UnixStream::connect(path).map_err(|e| {
            let path = path.to_path_buf();
            match e.kind() {
                std::io::ErrorKind::NotFound => CtlError::NoSocket { path },
                std::io::ErrorKind::ConnectionRefused => CtlError::Refused { path },
                std::io::ErrorKind::PermissionDenied => CtlError::Permission { path },
                _ => CtlError::Connect { path, source: e },
            }
        })?;
        let writer = stream.try_clone().map_err(CtlError::Io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `req` and hands each answer line to `each` until `done` (or
    /// until `each` returns false). An `error` answer becomes [`CtlError::Host`].
    pub fn call(
        &mut self,
        req: &Request,
        each: impl FnMut(Response) -> bool,
    ) -> Result<(), CtlError> {
        write_json_line(&mut self.writer, req).map_err(CtlError::Io)?;
        read_responses(&mut self.reader, each)
    }

    /// Sends `req` and leaves the answer to the caller: the connection's
    /// two halves (read, write).
    pub fn send(self, req: &Request) -> Result<(BufReader<UnixStream>, UnixStream), CtlError> {
        let mut writer = self.writer;
        write_json_line(&mut writer, req).map_err(CtlError::Io)?;
        Ok((self.reader, writer))
    }

    pub fn status(&mut self) -> Result<Status, CtlError> {
        let mut status = None;
        self.call(&Request::Status, |r| {
            if let Response::Status(s) = r {
                status = Some(*s);
            }
            true
        })?;
        status.ok_or_else(|| CtlError::Unexpected("no status in the answer".into()))
    }
}

/// Reads answer lines, handing each to `each`, until `done` (or until
/// `each` returns false). An `error` answer becomes [`CtlError::Host`].
pub(crate) fn read_responses(
    reader: &mut impl BufRead,
    mut each: impl FnMut(Response) -> bool,
) -> Result<(), CtlError> {
    loop {
        let mut buf = String::new();
        if reader.read_line(&mut buf).map_err(CtlError::Io)? == 0 {
            return Err(CtlError::Truncated);
        }
        if buf.trim().is_empty() {
            continue;
        }
        let resp: Response = serde_json::from_str(&buf)
            .map_err(|e| CtlError::Unexpected(format!("{e}: {}", buf.trim())))?;
        match resp {
            Response::Done => return Ok(()),
            Response::Error { message } => return Err(CtlError::Host(message)),
            other => {
                if !each(other) {
                    return Ok(());
                }
            }
        }
    }
}

/// `1h 02m 03s` style.
pub fn format_duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {sec:02}s")
    } else if m > 0 {
        format!("{m}m {sec:02}s")
    } else {
        format!("{}.{:03} s", s, ms % 1000)
    }
}

/// `3.8 GiB` style.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn mode_name(m: atoll_common::api::BootMode) -> &'static str {
    use atoll_common::api::BootMode::*;
    match m {
        Good => "good",
        Trial => "trial",
        LastResort => "last resort",
        Unknown => "unknown mode",
    }
}

/// The human summary printed by `atollctl status`.
pub fn format_status(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let slot = s.booted_slot.map(|x| x.letter()).unwrap_or("?");
    let _ = writeln!(o, "Atoll {} on {}", s.version, s.hostname);
    let _ = writeln!(o, "Machine id:  {}", s.machine_id);
    let _ = writeln!(
        o,
        "Booted:      slot {slot} ({}), {}",
        mode_name(s.boot_mode),
        if s.ready { "ready" } else { "not ready yet" }
    );
    let _ = writeln!(o, "Uptime:      {}", format_duration_ms(s.uptime_ms));
    let t = &s.boot_times;
    if t.total_ms > 0 {
        let _ = writeln!(
            o,
            "Boot time:   {} ms to ready = kernel {} ms + stage 1 {} ms + stage 2 {} ms",
            t.total_ms, t.kernel_ms, t.stage1_ms, t.stage2_ms
        );
    } else {
        let _ = writeln!(o, "Boot time:   not ready yet");
    }
    for step in &t.steps {
        let _ = writeln!(o, "  {:<40} {:>6} ms", step.name, step.ms);
    }
    let _ = writeln!(o, "Slots:");
    let _ = writeln!(
        o,
        "  {:<4} {:<6} {:<4} {:<5} {:<8} {:<12} VERITY",
        "SLOT", "BOOTED", "GOOD", "TRIES", "PRIORITY", "VERSION"
    );
    let mut slots = s.slots.clone();
    slots.sort_by_key(|x| x.priority);
    for x in &slots {
        let verity = if x.verity.len() > 16 {
            format!("{}…", &x.verity[..16])
        } else if x.verity.is_empty() {
            "-".into()
        } else {
            x.verity.clone()
        };
        let _ = writeln!(
            o,
            "  {:<4} {:<6} {:<4} {:<5} {:<8} {:<12} {}",
            x.slot.letter(),
            if x.booted { "*" } else { "" },
            if x.good { "yes" } else { "no" },
            x.tries_left,
            x.priority,
            x.version.as_deref().unwrap_or("-"),
            verity
        );
    }
    if slots.is_empty() {
        let _ = writeln!(o, "  (not read yet)");
    }
    let _ = writeln!(o, "Grubenv:     {}", s.grubenv);
    let d = &s.data;
    let _ = writeln!(
        o,
        "Data (/var): {} {}, {} of {} free",
        d.device.as_deref().unwrap_or("-"),
        d.state,
        format_bytes(d.free_bytes),
        format_bytes(d.size_bytes)
    );
    let r = &s.root;
    let mut root = format!(
        "{} {} {}",
        if r.device.is_empty() { "-" } else { &r.device },
        r.fs_type,
        if r.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
    if let Some(t) = &r.dm_target {
        root.push_str(&format!(", dm {t}"));
    }
    if let Some(v) = &r.verity_status {
        let meaning = match v.as_str() {
            "V" => "verified",
            "C" => "CORRUPTION DETECTED",
            _ => "?",
        };
        root.push_str(&format!(" {v} ({meaning})"));
    }
    let _ = writeln!(o, "Root:        {root}");
    let _ = writeln!(o, "Last shutdown: {}", s.previous_shutdown);
    o
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from microseconds since the epoch.
pub fn format_time_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        (us / 1000) % 1000
    )
}

/// One log line as `atollctl logs` prints it.
pub fn format_log(r: &LogRecord) -> String {
    let who = match (&r.container, r.pid) {
        (Some(c), _) => format!("{c}/{}", r.ident),
        (None, Some(p)) => format!("{}[{p}]", r.ident),
        (None, None) => r.ident.clone(),
    };
    let stream = r
        .stream
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    format!("{} {who}{stream}: {}", format_time_us(r.time_us), r.message)
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status {
        json: bool,
    },
    Logs {
        lines: usize,
        follow: bool,
        ident: Option<String>,
        json: bool,
    },
    Poweroff,
    Reboot,
    ConfigShow {
        json: bool,
    },
    /// Runs locally (also on a build machine): no API needed.
    ConfigValidate {
        file: PathBuf,
    },
    NetStatus {
        json: bool,
    },
    NetConnect {
        addr: String,
        send: Option<String>,
        timeout_ms: Option<u64>,
    },
    /// The containers (`ps`).
    Ps {
        json: bool,
    },
    /// Run a command in a container.
    Exec {
        name: String,
        args: Vec<String>,
        timeout_ms: Option<u64>,
    },
    /// Run a command in a container with this program's stdin, on a
    /// terminal of its own with `tty` (`exec -i`, `exec -it`).
    ExecInteractive {
        name: String,
        args: Vec<String>,
        tty: bool,
    },
    /// A container's or pod's config entry, state and runtime spec (JSON).
    Inspect {
        name: String,
    },
    /// `run`: a container outside the config, once.
    Run {
        container: Box<atoll_common::config::workload::Container>,
        detach: bool,
    },
    /// `stop`, `start`, `restart` of a config container.
    Update {
        action: UpdateAction,
        json: bool,
    },
    Container {
        name: String,
        action: ContainerAction,
    },
    /// `images`.
    Images {
        json: bool,
    },
    /// `pull`, `rmi`, `prune`: the request; its answer is a line.
    Store(Request),
    /// `import FILE`: an OCI archive or `docker save` tar (`-`: stdin).
    Import {
        file: PathBuf,
        name: Option<String>,
    },
}

/// `import`: sends the archive at `file` (`-`: stdin) as
/// [`atoll_common::api::ImportInput`] lines, showing progress on stderr
/// every 16 MiB; returns the host's answer (what it imported).
pub fn import(client: Client, file: &Path, name: Option<String>) -> Result<String, CtlError> {
    use atoll_common::api::{ImportInput, IMPORT_CHUNK};
    use base64::Engine as _;
    let mut source: Box<dyn Read> = if file == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| CtlError::Usage(format!("cannot open {}: {e}", file.display())))?,
        )
    };
    let (mut reader, mut writer) = client.send(&Request::Import { name })?;
    let mut buf = Vec::with_capacity(IMPORT_CHUNK);
    let mut sent = 0u64;
    let mut shown = 0u64;
    let sending = (|| -> Result<(), CtlError> {
        loop {
            buf.clear();
            let n = (&mut source)
                .take(IMPORT_CHUNK as u64)
                .read_to_end(&mut buf)
                .map_err(|e| CtlError::Usage(format!("reading {}: {e}", file.display())))?;
            if n == 0 {
                break;
            }
            let input = ImportInput::Data {
                base64: base64::engine::general_purpose::STANDARD.encode(&buf),
            };
            write_json_line(&mut writer, &input).map_err(CtlError::Io)?;
            sent += n as u64;
            if sent - shown >= 16 << 20 {
                shown = sent;
                eprintln!("atollctl: sent {}", format_bytes(sent));
            }
        }
        write_json_line(&mut writer, &ImportInput::End).map_err(CtlError::Io)
    })();
    let mut message = None;
    let answer = read_responses(&mut reader, |r| {
        if let Response::Message { message: m } = r {
            message = Some(m);
        }
        true
    });
    // The host's refusal says more than a write that failed because of it.
    answer?;
    sending?;
    message.ok_or_else(|| CtlError::Unexpected("no message in the answer".into()))
}

/// Writes `value` as one line of JSON: how every request and every input
/// line goes to the API.
pub(crate) fn write_json_line(
    w: &mut impl Write,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// `images`: one line per image.
pub fn format_images(list: &[ImageInfo]) -> String {
    if list.is_empty() {
        return "no images in the store\n".to_string();
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "DIGEST".to_string(),
        "SIZE".to_string(),
        "USED BY".to_string(),
    ]];
    for i in list {
        let short = i
            .digest
            .split_once(':')
            .map_or(i.digest.as_str(), |(_, h)| h);
        rows.push([
            i.name.clone(),
            format!("sha256:{}", short.get(..12).unwrap_or(short)),
            format_bytes(i.size),
            i.used_by.join(","),
        ]);
    }
    format_table(&rows)
}

/// `ps`: one line per container.
pub fn format_containers(list: &[ContainerStatus]) -> String {
    if list.is_empty() {
        return "no containers in the config\n".to_string();
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "STATE".to_string(),
        "PID".to_string(),
        "RESTARTS".to_string(),
        "IMAGE".to_string(),
        "DETAIL".to_string(),
    ]];
    for c in list {
        let name = match &c.pod {
            Some(p) => format!("{p}/{}", c.name),
            None => c.name.clone(),
        };
        let mut state = c.state.to_string();
        if let Some(h) = &c.health {
            state.push_str(&format!(" ({h})"));
        }
        let mut detail = c.detail.clone();
        if !c.ports.is_empty() {
            let ports = c.ports.join(",");
            detail = if detail.is_empty() {
                ports
            } else {
                format!("{ports}; {detail}")
            };
        }
        rows.push([
            name,
            state,
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restarts.to_string(),
            c.image.clone(),
            detail,
        ]);
    }
    format_table(&rows)
}

/// Rows of columns, each column as wide as its widest cell (the last one
/// not padded), two spaces apart, no trailing blanks.
fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate().take(N.saturating_sub(1)) {
            line.push_str(&format!("{:<w$}  ", r[i], w = *w));
        }
        if let Some(last) = r.last() {
            line.push_str(last);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `config show`.
pub fn format_config_report(r: &ConfigReport) -> String {
    let mut out = format!("# source: {}\n# state:  {}\n", r.source, r.state);
    for e in &r.errors {
        out.push_str(&format!("# error:  {e}\n"));
    }
    for t in &r.tried {
        out.push_str(&format!("# tried:  {t}\n"));
    }
    out.push('\n');
    out.push_str(&r.toml);
    if !r.toml.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `net status`.
pub fn format_net_status(n: &NetStatus) -> String {
    let mut out = String::new();
    for i in &n.interfaces {
        let state = match (i.up, i.carrier) {
            (true, true) => "up",
            (true, false) => "up, no carrier",
            (false, _) => "down",
        };
        let mac = if i.mac.is_empty() {
            String::new()
        } else {
            format!(", mac {}", i.mac)
        };
        out.push_str(&format!(
            "{:<10} {:<12} {state}, mtu {}{mac}\n",
            i.name, i.method, i.mtu
        ));
        for a in &i.addresses {
            out.push_str(&format!("           {a}\n"));
        }
        if let Some(l) = &i.lease {
            out.push_str(&format!(
                "           lease {} from {}{}: renew in {}, expires in {} (got in {} ms)\n",
                l.address,
                l.server,
                l.gateway
                    .as_deref()
                    .map(|g| format!(", gateway {g}"))
                    .unwrap_or_default(),
                format_duration_ms(l.renew_in_s.saturating_mul(1000)),
                format_duration_ms(l.expires_in_s.saturating_mul(1000)),
                l.obtained_in_ms
            ));
        }
        if let Some(e) = &i.error {
            out.push_str(&format!("           error: {e}\n"));
        }
    }
    if !n.routes.is_empty() {
        out.push_str("routes:\n");
        for r in &n.routes {
            out.push_str(&format!("  {r}\n"));
        }
    }
    out.push_str(&format!(
        "dns:    {}\n",
        if n.dns.is_empty() {
            "none".to_string()
        } else {
            n.dns.join(", ")
        }
    ));
    if !n.search.is_empty() {
        out.push_str(&format!("search: {}\n", n.search.join(" ")));
    }
    let ntp = &n.ntp;
    out.push_str(&format!(
        "ntp:    {}",
        if ntp.servers.is_empty() {
            "no servers".to_string()
        } else {
            ntp.servers.join(", ")
        }
    ));
    match (&ntp.synced_from, ntp.last_offset_ms) {
        (Some(s), Some(o)) => out.push_str(&format!("; synced from {s}, offset {o} ms")),
        (Some(s), None) => out.push_str(&format!("; synced from {s}")),
        _ => out.push_str("; not synced"),
    }
    if let Some(e) = &ntp.error {
        out.push_str(&format!(" ({e})"));
    }
    out.push('\n');
    out
}

/// `net connect`.
pub fn format_connect(addr: &str, r: &ConnectReport) -> String {
    let mut out = if r.connected {
        format!(
            "connected to {} in {} ms\n",
            r.peer.as_deref().unwrap_or(addr),
            r.elapsed_ms
        )
    } else {
        String::new()
    };
    if !r.received.is_empty() {
        out.push_str(&r.received);
        if !r.received.ends_with('\n') {
            out.push('\n');
        }
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

/// `config validate FILE`: the exit code and what to print (to stdout when
/// valid, to stderr when not).
pub fn validate_file(file: &Path) -> (i32, String) {
    let name = file.display().to_string();
    match std::fs::read(file) {
        Err(e) => (exit::INVALID, format!("atollctl: reading {name}: {e}\n")),
        Ok(bytes) => match atoll_common::config::parse(&bytes, &name) {
            Ok(_) => (exit::OK, format!("{name}: valid\n")),
            Err(e) => (exit::INVALID, format!("{e}\n")),
        },
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Writes an `exec-output` chunk to this program's stdout or stderr.
pub(crate) fn write_output(stream: &str, data: &str) -> std::io::Result<()> {
    if stream == "stderr" {
        let mut e = std::io::stderr().lock();
        e.write_all(data.as_bytes())?;
        e.flush()
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(data.as_bytes())?;
        o.flush()
    }
}

/// `atollctl run`'s options, before they become a config entry.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub name: Option<String>,
    pub image: String,
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub network: String,
    pub volumes: Vec<String>,
    pub ports: Vec<String>,
    pub read_only: bool,
    pub memory: Option<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

impl RunSpec {
    /// The `[[containers]]` entry these options make; the host checks it
    /// further, as a config entry.
    pub fn container(&self) -> Result<atoll_common::config::workload::Container, String> {
        let mut env = serde_json::Map::new();
        for e in &self.env {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| format!("--env {e:?}: expected KEY=VALUE"))?;
            env.insert(k.to_string(), v.into());
        }
        let mut entry = serde_json::json!({
            "name": self.name.clone().unwrap_or_default(),
            "image": self.image,
            "args": self.args,
            "env": env,
            "network": self.network,
            "volumes": self.volumes,
            "ports": self.ports,
            "read_only": self.read_only,
            "restart": "no",
        });
        let optional = [
            ("memory", &self.memory),
            ("user", &self.user),
            ("workdir", &self.workdir),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                entry[key] = v.clone().into();
            }
        }
        if let Some(e) = &self.entrypoint {
            entry["command"] = serde_json::json!([e]);
        }
        let c = serde_json::from_value(entry).map_err(|e| e.to_string())?;
        crate::containers::check_adhoc(&c)?;
        Ok(c)
    }
}

/// Runs a command against the API at `socket`; returns the exit code.
pub fn run(socket: &Path, cmd: Command) -> Result<i32, CtlError> {
    if let Command::ConfigValidate { file } = &cmd {
        let (code, text) = validate_file(file);
        if code == exit::OK {
            print!("{text}");
        } else {
            eprint!("{text}");
        }
        return Ok(code);
    }
    let mut client = Client::connect(socket)?;
    let stdout = std::io::stdout();
    match cmd {
        Command::Status { json } => {
            let s = client.status()?;
            let mut out = stdout.lock();
            let text = if json {
                serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
            } else {
                format_status(&s)
            };
            let _ = out.write_all(text.as_bytes());
        }
        Command::Logs {
            lines,
            follow,
            ident,
            json,
        } => {
            let req = Request::Logs {
                lines,
                follow,
                ident,
            };
            client.call(&req, |r| {
                if let Response::Log(rec) = r {
                    let line = if json {
                        serde_json::to_string(&rec).unwrap_or_default()
                    } else {
                        format_log(&rec)
                    };
                    let mut out = stdout.lock();
                    // Stop when stdout goes away (e.g. piped into head).
                    return writeln!(out, "{line}").and_then(|_| out.flush()).is_ok();
                }
                true
            })?;
        }
        Command::Poweroff => {
            client.call(&Request::Poweroff, |_| true)?;
            println!("the host is powering off");
        }
        Command::Reboot => {
            client.call(&Request::Reboot, |_| true)?;
            println!("the host is rebooting");
        }
        Command::ConfigValidate { .. } => {}
        Command::ConfigShow { json } => {
            let mut got = None;
            client.call(&Request::ConfigShow, |r| {
                if let Response::Config(c) = r {
                    got = Some(*c);
                }
                true
            })?;
            let r = got.ok_or_else(|| CtlError::Unexpected("no config in the answer".into()))?;
            if json {
                print_json(&r);
            } else {
                print!("{}", format_config_report(&r));
            }
        }
        Command::NetStatus { json } => {
            let mut got = None;
            client.call(&Request::NetStatus, |r| {
                if let Response::Net(n) = r {
                    got = Some(*n);
                }
                true
            })?;
            let n =
                got.ok_or_else(|| CtlError::Unexpected("no network status in the answer".into()))?;
            if json {
                print_json(&n);
            } else {
                print!("{}", format_net_status(&n));
            }
        }
        Command::NetConnect {
            addr,
            send,
            timeout_ms,
        } => {
            let mut got = None;
            let req = Request::NetConnect {
                addr: addr.clone(),
                send,
                timeout_ms,
            };
            client.call(&req, |r| {
                if let Response::Connect(c) = r {
                    got = Some(c);
                }
                true
            })?;
            let c = got.ok_or_else(|| CtlError::Unexpected("no report in the answer".into()))?;
            print!("{}", format_connect(&addr, &c));
            if c.error.is_some() {
                return Ok(exit::UNREACHED);
            }
        }
        Command::Ps { json } => {
            let mut got = None;
            client.call(&Request::Containers, |r| {
                if let Response::Containers(c) = r {
                    got = Some(c);
                }
                true
            })?;
            let list =
                got.ok_or_else(|| CtlError::Unexpected("no containers in the answer".into()))?;
            if json {
                print_json(&list);
            } else {
                print!("{}", format_containers(&list));
            }
        }
        Command::Exec {
            name,
            args,
            timeout_ms,
        } => {
            let req = Request::Exec {
                name,
                args,
                timeout_ms,
            };
            let mut end = None;
            client.call(&req, |r| {
                match r {
                    Response::ExecOutput { stream, data } => {
                        // Output that cannot be written is dropped.
                        let _ = write_output(&stream, &data);
                    }
                    Response::ExecExit { code, timed_out } => end = Some((code, timed_out)),
                    _ => {}
                }
                true
            })?;
            return match end {
                Some((_, true)) => {
                    eprintln!("atollctl: exec: the command ran over its time and was killed");
                    Ok(exit::EXEC_TIMEOUT)
                }
                Some((Some(code), false)) => Ok(code.clamp(0, 255)),
                _ => Err(CtlError::Unexpected("no exit status in the answer".into())),
            };
        }
        Command::ExecInteractive { name, args, tty } => {
            return interactive::exec(client, name, args, tty);
        }
        Command::Run { container, detach } => {
            let mut code = None;
            let mut lines = Vec::new();
            client.call(&Request::Run { container, detach }, |r| {
                match r {
                    Response::Message { message } => lines.push(message),
                    Response::ExecOutput { stream, data } => {
                        // Like exec's: output that cannot be written is dropped.
                        let _ = write_output(&stream, &data);
                    }
                    Response::ExecExit { code: c, .. } => code = Some(c),
                    _ => {}
                }
                true
            })?;
            // The first line names the container; any other says why it ended.
            let mut lines = lines.into_iter();
            let name = lines.next().unwrap_or_default();
            if detach {
                println!("{name}");
                return Ok(exit::OK);
            }
            for why in lines {
                eprintln!("atollctl: run: {why}");
            }
            return match code {
                Some(Some(c)) => Ok(c.clamp(0, 255)),
                Some(None) => {
                    eprintln!("atollctl: run: {name} was stopped by the host's shutdown");
                    Ok(exit::HOST_ERROR)
                }
                None => Err(CtlError::Unexpected("no exit status in the answer".into())),
            };
        }
        Command::Inspect { name } => {
            let mut got = None;
            client.call(&Request::Inspect { name }, |r| {
                if let Response::Inspect(i) = r {
                    got = Some(i);
                }
                true
            })?;
            let i =
                got.ok_or_else(|| CtlError::Unexpected("no inspection in the answer".into()))?;
            print_json(&i);
        }
        Command::Container { name, action } => {
            let req = Request::ContainerAction {
                name: name.clone(),
                action,
            };
            client.call(&req, |_| true)?;
            let done = match action {
                ContainerAction::Stop => "stopping",
                ContainerAction::Start => "starting",
                ContainerAction::Restart => "restarting",
            };
            println!("{name}: {done}");
        }
        Command::Images { json } => {
            let mut got = None;
            client.call(&Request::Images, |r| {
                if let Response::Images(l) = r {
                    got = Some(l);
                }
                true
            })?;
            let list = got.ok_or_else(|| CtlError::Unexpected("no images in the answer".into()))?;
            if json {
                print_json(&list);
            } else {
                print!("{}", format_images(&list));
            }
        }
        Command::Import { file, name } => {
            let m = import(client, &file, name)?;
            let _ = writeln!(stdout.lock(), "{m}");
        }
        Command::Store(req) => {
            let mut got = None;
            client.call(&req, |r| {
                if let Response::Message { message } = r {
                    got = Some(message);
                }
                true
            })?;
            let m = got.ok_or_else(|| CtlError::Unexpected("no message in the answer".into()))?;
            println!("{m}");
        }
        Command::Update { action, json } => {
            let mut got = None;
            client.call(&Request::Update { action }, |r| {
                if let Response::Update(u) = r {
                    got = Some(*u);
                }
                true
            })?;
            let r =
                got.ok_or_else(|| CtlError::Unexpected("no update report in the answer".into()))?;
            if json {
                print_json(&r);
            } else if action == UpdateAction::History {
                print!("{}", format_update_history(&r));
            } else {
                print!("{}", format_update(&r));
            }
        }
    }
    Ok(exit::OK)
}

fn update_slot(s: &UpdateSlot, booted: bool, next: bool) -> String {
    let mut line = format!(
        "slot {}{}: {}, ",
        s.slot,
        if booted { " (booted)" } else { "" },
        s.version.as_deref().unwrap_or("release unknown")
    );
    if s.good {
        line.push_str("good");
    } else if s.tries > 0 {
        line.push_str(&format!("on trial, {} tries left", s.tries));
    } else {
        line.push_str("not bootable");
    }
    if next {
        line.push_str(" [next boot]");
    }
    line
}

/// `atollctl update status|check|apply|reboot|rollback`.
pub fn format_update(r: &UpdateReport) -> String {
    let mut out = String::new();
    if r.outcome != "status" {
        out.push_str(&format!("{}\n", r.outcome));
    }
    out.push_str(&format!("agent: {}\n", r.agent));
    let Some(s) = &r.status else {
        return out;
    };
    let strategy = match s.strategy {
        atoll_common::config::UpdateStrategy::Immediate => "immediate",
        atoll_common::config::UpdateStrategy::Window => "window",
        atoll_common::config::UpdateStrategy::Off => "off",
    };
    out.push_str(&format!("strategy: {strategy}\n"));
    out.push_str(&update_slot(
        &s.current,
        true,
        s.next_boot == s.current.slot,
    ));
    out.push('\n');
    out.push_str(&update_slot(&s.other, false, s.next_boot == s.other.slot));
    out.push('\n');
    out.push_str(&format!(
        "last check: {}\n",
        s.last_check.as_deref().unwrap_or("never")
    ));
    if let Some(e) = &s.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    if let Some(d) = &s.download {
        let pct = d.done.saturating_mul(100).checked_div(d.total).unwrap_or(0);
        out.push_str(&format!(
            "download: {} ({}) into slot {}: {} of {} ({pct}%)\n",
            d.name,
            d.version,
            d.slot,
            format_bytes(d.done),
            format_bytes(d.total)
        ));
    }
    if let Some(p) = &s.pending {
        let when = match &p.reboot_at {
            Some(t) => format!("the host reboots into it at {t} (maintenance window)"),
            None => "boots at the next reboot".to_string(),
        };
        out.push_str(&format!(
            "installed: {} in slot {} at {}, {when}\n",
            p.version, p.slot, p.installed_at
        ));
    }
    if s.bad.is_empty() {
        out.push_str("bad releases: none\n");
    } else {
        out.push_str("bad releases (never installed again by the agent):\n");
        for (v, b) in &s.bad {
            out.push_str(&format!("  {v} since {}: {}\n", b.since, b.reason));
        }
    }
    out
}

/// `atollctl update history`: oldest first.
pub fn format_update_history(r: &UpdateReport) -> String {
    let events = r
        .status
        .as_ref()
        .map(|s| s.history.as_slice())
        .unwrap_or(&[]);
    if events.is_empty() {
        return "no update history yet\n".into();
    }
    events
        .iter()
        .map(|e| format!("{}  {}\n", e.at, e.what))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// `import` against a stand-in server: the request, the archive in
    /// base64 chunks, `end`; the host's message comes back, and its
    /// refusal becomes an error.
    #[test]
    fn import_streams_the_archive_and_returns_the_answer() {
        use atoll_common::api::{ImportInput, IMPORT_CHUNK};
        use base64::Engine as _;
        let dir = crate::stage2::testutil::TempDir::new("ctl-import");
        let socket = dir.path().join("api.sock");
        let archive = dir.path().join("a.tar");
        let bytes: Vec<u8> = (0..IMPORT_CHUNK * 2 + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&archive, &bytes).unwrap();
        for refuse in [false, true] {
            let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            let server = std::thread::spawn(move || {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let req: Request = serde_json::from_str(&line).unwrap();
                assert_eq!(
                    req,
                    Request::Import {
                        name: Some("x:1".into())
                    }
                );
                let mut got = Vec::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    match serde_json::from_str::<ImportInput>(&line).unwrap() {
                        ImportInput::Data { base64 } => got.extend(
                            base64::engine::general_purpose::STANDARD
                                .decode(base64)
                                .unwrap(),
                        ),
                        ImportInput::End => break,
                    }
                }
                let answer = if refuse {
                    vec![Response::Error {
                        message: "importing the archive: no".into(),
                    }]
                } else {
                    vec![
                        Response::Message {
                            message: "imported x:1".into(),
                        },
                        Response::Done,
                    ]
                };
                let mut conn = conn;
                for r in answer {
                    write_json_line(&mut conn, &r).unwrap();
                }
                got
            });
            let client = Client::connect(&socket).unwrap();
            let r = import(client, &archive, Some("x:1".into()));
            assert_eq!(server.join().unwrap(), bytes);
            match r {
                Ok(m) => assert!(!refuse && m == "imported x:1", "{m}"),
                Err(CtlError::Host(m)) => assert!(refuse && m.contains("no"), "{m}"),
                Err(e) => panic!("{e}"),
            }
            std::fs::remove_file(&socket).unwrap();
        }
    }

    #[test]
    fn run_options_make_a_config_entry() {
        use atoll_common::config::workload::NetworkMode;
        let spec = RunSpec {
            image: "busybox".into(),
            entrypoint: Some("/bin/sh".into()),
            args: vec!["-c".into(), "echo hi".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            network: "none".into(),
            volumes: vec!["data:/data".into()],
            read_only: true,
            memory: Some("64M".into()),
            ..RunSpec::default()
        };
        let c = spec.container().unwrap();
        assert_eq!(c.name, "");
        assert_eq!(c.command, ["/bin/sh"]);
        assert_eq!(c.args, ["-c", "echo hi"]);
        assert_eq!(c.env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(c.network, NetworkMode::None);
        assert!(c.read_only && c.memory.is_some() && c.volumes.len() == 1);

        let bad_env = RunSpec {
            env: vec!["NOEQUALS".into()],
            ..spec.clone()
        };
        assert!(bad_env.container().unwrap_err().contains("KEY=VALUE"));
        let bad_net = RunSpec {
            network: "wifi".into(),
            ..spec.clone()
        };
        assert!(bad_net.container().unwrap_err().contains("wifi"));
        let bad_memory = RunSpec {
            memory: Some("lots".into()),
            ..spec
        };
        let e = bad_memory.container().unwrap_err();
        assert!(e.contains("memory") && e.contains("lots"), "{e}");
    }

    use super::*;
    use atoll_common::api::*;
    use atoll_common::layout::Slot;

    #[test]
    fn images_table() {
        assert_eq!(format_images(&[]), "no images in the store\n");
        let list = vec![
            ImageInfo {
                name: "docker.io/library/busybox:latest".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 2 * 1024 * 1024,
                used_by: vec!["hello".into(), "web/side".into()],
            },
            ImageInfo {
                name: "localhost/x:1".into(),
                digest: "sha256:0123".into(),
                size: 10,
                used_by: vec![],
            },
        ];
        let out = format_images(&list);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME "), "{out}");
        assert!(
            lines[1].contains("sha256:abababababab ") && lines[1].ends_with("hello,web/side"),
            "{out}"
        );
        assert!(
            lines[2].contains("sha256:0123 ") && !lines[2].ends_with(' '),
            "{out}"
        );
        // The columns line up.
        assert_eq!(lines[1].find("sha256"), lines[2].find("sha256"), "{out}");
    }

    #[test]
    fn update_status_in_words() {
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(
            "0.2.0".to_string(),
            BadRelease {
                since: "2026-03-01T00:00:00Z".into(),
                reason: "the host came back on slot A".into(),
            },
        );
        let r = UpdateReport {
            action: UpdateAction::Status,
            outcome: "status".into(),
            agent: "running (pid 7)".into(),
            status: Some(UpdateStatus {
                strategy: atoll_common::config::UpdateStrategy::Immediate,
                current: UpdateSlot {
                    slot: Slot::A,
                    version: Some("0.1.0".into()),
                    good: true,
                    tries: 0,
                },
                other: UpdateSlot {
                    slot: Slot::B,
                    version: None,
                    good: false,
                    tries: 0,
                },
                next_boot: Slot::A,
                last_check: Some("2026-03-01T00:05:00Z".into()),
                last_error: None,
                download: Some(UpdateDownload {
                    name: "atoll-0.3.0.slot.zst".into(),
                    version: "0.3.0".into(),
                    slot: Slot::B,
                    done: 1 << 20,
                    total: 4 << 20,
                }),
                pending: None,
                bad,
                history: vec![UpdateEvent {
                    at: "2026-03-01T00:00:00Z".into(),
                    what: "0.2.0 rolled back".into(),
                }],
            }),
        };
        let text = format_update(&r);
        assert!(!text.contains("status\n"), "{text}");
        assert!(
            text.contains("slot A (booted): 0.1.0, good [next boot]"),
            "{text}"
        );
        assert!(
            text.contains("slot B: release unknown, not bootable"),
            "{text}"
        );
        assert!(text.contains("(25%)"), "{text}");
        assert!(
            text.contains("0.2.0 since 2026-03-01T00:00:00Z: the host came back"),
            "{text}"
        );
        assert_eq!(
            format_update_history(&r),
            "2026-03-01T00:00:00Z  0.2.0 rolled back\n"
        );
        let mut waiting = r.clone();
        if let Some(s) = waiting.status.as_mut() {
            s.pending = Some(atoll_common::api::UpdatePending {
                version: "0.3.0".into(),
                slot: Slot::B,
                installed_at: "2026-03-02T01:00:00Z".into(),
                boot_id: "b".into(),
                reboot_at: Some("2026-03-03T02:00:00Z".into()),
            });
        }
        let text = format_update(&waiting);
        assert!(
            text.contains(
                "installed: 0.3.0 in slot B at 2026-03-02T01:00:00Z, the host reboots into it at \
                 2026-03-03T02:00:00Z (maintenance window)"
            ),
            "{text}"
        );
    }

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            hostname: "atoll-0123abcd".into(),
            machine_id: "0123abcd0123abcd0123abcd0123abcd".into(),
            booted_slot: Some(Slot::B),
            boot_mode: BootMode::Trial,
            ready: true,
            uptime_ms: 83_000,
            boot_times: BootTimes {
                kernel_ms: 1800,
                stage1_ms: 150,
                stage2_ms: 120,
                total_ms: 2070,
                steps: vec![BootStep {
                    name: "stage2: data".into(),
                    ms: 40,
                }],
            },
            slots: vec![
                SlotStatus {
                    slot: Slot::A,
                    booted: false,
                    good: true,
                    tries_left: 0,
                    priority: 1,
                    verity: "a".repeat(64),
                    version: None,
                },
                SlotStatus {
                    slot: Slot::B,
                    booted: true,
                    good: true,
                    tries_left: 0,
                    priority: 0,
                    verity: "b".repeat(64),
                    version: Some("0.1.0".into()),
                },
            ],
            grubenv: "ok".into(),
            data: DataStatus {
                device: Some("/dev/vda5".into()),
                state: "grown".into(),
                size_bytes: 4 * 1024 * 1024 * 1024,
                free_bytes: 3 * 1024 * 1024 * 1024,
            },
            root: RootStatus {
                device: "/dev/mapper/atoll-root".into(),
                fs_type: "ext4".into(),
                read_only: true,
                dm_target: Some("verity".into()),
                verity_status: Some("V".into()),
            },
            previous_shutdown: "clean".into(),
        }
    }

    #[test]
    fn status_summary() {
        let text = format_status(&status());
        assert!(text.contains("Atoll 0.1.0 on atoll-0123abcd"));
        assert!(text.contains("slot B (trial), ready"));
        assert!(text.contains("Uptime:      1m 23s"));
        assert!(
            text.contains("2070 ms to ready = kernel 1800 ms + stage 1 150 ms + stage 2 120 ms")
        );
        assert!(text.contains("stage2: data"));
        // B first: it has priority 0.
        let b = text.find("  B    *").unwrap();
        let a = text.find("  A         ").unwrap();
        assert!(b < a, "{text}");
        assert!(text.contains("/dev/vda5 grown, 3.0 GiB of 4.0 GiB free"));
        assert!(text.contains("ext4 read-only, dm verity V (verified)"));
        assert!(text.contains("Last shutdown: clean"));
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(format_time_us(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time_us(1_709_210_096_789_000),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(format_duration_ms(1234), "1.234 s");
        assert_eq!(format_duration_ms(3_723_000), "1h 02m 03s");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536 * 1024), "1.5 MiB");
    }

    #[test]
    fn log_lines() {
        let mut r = LogRecord {
            time_us: 1_000_000,
            boottime_us: 0,
            priority: 6,
            ident: "agent".into(),
            pid: Some(42),
            message: "hello".into(),
            container: None,
            stream: None,
        };
        assert_eq!(format_log(&r), "1970-01-01T00:00:01.000Z agent[42]: hello");
        r.container = Some("web".into());
        r.stream = Some("stderr".into());
        assert_eq!(
            format_log(&r),
            "1970-01-01T00:00:01.000Z web/agent (stderr): hello"
        );
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let e = Client::connect(Path::new("/nonexistent/api.sock")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "is PID 1 running? no API socket at /nonexistent/api.sock"
        );
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
    }

    #[test]
    fn net_status_summary() {
        let n = NetStatus {
            interfaces: vec![
                InterfaceStatus {
                    name: "lo".into(),
                    mtu: 65536,
                    up: true,
                    carrier: true,
                    method: "loopback".into(),
                    addresses: vec!["127.0.0.1/8".into()],
                    ..Default::default()
                },
                InterfaceStatus {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into(),
                    mtu: 1500,
                    up: true,
                    carrier: false,
                    method: "dhcp".into(),
                    addresses: vec![],
                    lease: Some(LeaseStatus {
                        address: "10.0.2.15/24".into(),
                        server: "10.0.2.2".into(),
                        gateway: Some("10.0.2.2".into()),
                        renew_in_s: 60,
                        rebind_in_s: 90,
                        expires_in_s: 120,
                        obtained_in_ms: 25,
                    }),
                    error: Some("no carrier".into()),
                },
            ],
            routes: vec!["default via 10.0.2.2 dev eth0".into()],
            dns: vec!["10.0.2.3".into()],
            search: vec![],
            ntp: NtpStatus {
                servers: vec!["10.0.2.2".into()],
                synced_from: Some("10.0.2.2:123".into()),
                last_offset_ms: Some(-3),
                error: None,
            },
        };
        let t = format_net_status(&n);
        assert!(t.contains("lo         loopback     up, mtu 65536\n"), "{t}");
        assert!(
            t.contains("eth0       dhcp         up, no carrier, mtu 1500, mac 52:54:00:12:34:56"),
            "{t}"
        );
        assert!(
            t.contains("lease 10.0.2.15/24 from 10.0.2.2, gateway 10.0.2.2"),
            "{t}"
        );
        assert!(t.contains("error: no carrier"), "{t}");
        assert!(t.contains("  default via 10.0.2.2 dev eth0\n"), "{t}");
        assert!(t.contains("dns:    10.0.2.3\n"), "{t}");
        assert!(
            t.contains("ntp:    10.0.2.2; synced from 10.0.2.2:123, offset -3 ms"),
            "{t}"
        );
    }

    #[test]
    fn config_report_and_connect() {
        let r = ConfigReport {
            source: "last good config (from fw_cfg opt/dev.atoll/config)".into(),
            state: "fallback: the config from fw_cfg has errors".into(),
            errors: vec!["fw_cfg:3:1: key `network.x`: unknown field `x`".into()],
            tried: vec!["fw_cfg: found 10 bytes".into()],
            toml: "hostname = \"a\"".into(),
        };
        let t = format_config_report(&r);
        assert!(t.starts_with("# source: last good config"), "{t}");
        assert!(t.contains("# error:  fw_cfg:3:1: key `network.x`"), "{t}");
        assert!(t.ends_with("\nhostname = \"a\"\n"), "{t}");
        let c = ConnectReport {
            connected: true,
            peer: Some("10.0.2.100:8080".into()),
            received: "hi".into(),
            error: None,
            elapsed_ms: 3,
        };
        assert_eq!(
            format_connect("x:1", &c),
            "connected to 10.0.2.100:8080 in 3 ms\nhi\n"
        );
        let c = ConnectReport {
            error: Some("connecting to x:1: refused".into()),
            ..Default::default()
        };
        assert_eq!(
            format_connect("x:1", &c),
            "error: connecting to x:1: refused\n"
        );
    }

    #[test]
    fn container_table() {
        assert_eq!(format_containers(&[]), "no containers in the config\n");
        let c = ContainerStatus {
            name: "web".into(),
            pod: None,
            image: "nginx:1.27".into(),
            image_digest: None,
            state: ContainerState::Restarting,
            detail: "exit status 1; restarting in 500 ms".into(),
            pid: None,
            started_at: None,
            restarts: 3,
            exit_code: Some(1),
            health: Some("unhealthy".into()),
            network: "bridge".into(),
            address: None,
            ports: vec!["8080:80/tcp".into()],
        };
        let t = format_containers(&[c]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(
            lines[1].contains("restarting (unhealthy)")
                && lines[1].contains("8080:80/tcp; exit status 1; restarting in 500 ms")
                && lines[1].contains(" 3 "),
            "{t}"
        );
    }

    #[test]
    fn validates_files_without_a_host() {
        let dir = crate::stage2::testutil::TempDir::new("validate");
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "hostname = \"ok\"\n").unwrap();
        let (code, text) = validate_file(&good);
        assert_eq!(code, exit::OK, "{text}");
        assert!(text.ends_with(": valid\n"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "hostname = \"ok\"\n[network]\nnope = 1\n").unwrap();
        let (code, text) = validate_file(&bad);
        assert_eq!(code, exit::INVALID);
        assert!(text.contains("bad.toml:3:"), "{text}");
        assert!(text.contains("network.nope"), "{text}");
        let (code, _) = validate_file(&dir.path().join("missing.toml"));
        assert_eq!(code, exit::INVALID);
    }
}
