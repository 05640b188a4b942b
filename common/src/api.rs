//! The host API: what PID 1 serves on [`crate::layout::API_SOCKET`] (and on
//! the virtio-serial port [`crate::layout::API_VIRTIO_PORT`]) and `atollctl`
//! speaks.
//!
//! Wire format: the client sends one [`Request`] as a line of JSON; the
//! server answers with lines of JSON [`Response`]s, ending with
//! [`Response::Done`] or [`Response::Error`] (a followed log never ends until
//! the client hangs up). Unknown fields are ignored, so later issues can add
//! methods and fields without breaking older clients.

use serde::{Deserialize, Serialize};

use crate::layout::Slot;

/// Longest request line the server reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Request {
    /// Host status.
    Status,
    /// Log records, oldest first.
    Logs {
        /// How many of the newest records to send (default 100, 0 = all kept).
        #[serde(default = "default_lines")]
        lines: usize,
        /// Keep sending new records as they arrive.
        #[serde(default)]
        follow: bool,
        /// Only records from this identifier (e.g. `init`, a container name).
        #[serde(default)]
        ident: Option<String>,
    },
    /// Clean shutdown, then power off.
    Poweroff,
    /// Clean shutdown, then reboot.
    Reboot,
    /// The config in force: where it came from, its state, its text (secrets redacted).
    ConfigShow,
    /// Interfaces, addresses, leases, routes, DNS and time sync.
    NetStatus,
    /// Open a TCP connection from the host (a reachability check), optionally
    /// send `send`, and report what came back.
    NetConnect {
        /// `HOST:PORT` (an IP address or a name resolved with the host's DNS).
        addr: String,
        #[serde(default)]
        send: Option<String>,
        /// Give up after this many milliseconds (default 5000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The config's containers (and pods' containers) and their states.
    Containers,
    /// Stop, start or restart one of the config's containers (or a pod,
    /// all its containers).
    ContainerAction {
        name: String,
        action: ContainerAction,
    },
    /// Run a command in a running container (`NAME` or `POD/NAME`), with
    /// its environment, user and privileges; stdin is /dev/null. The
    /// answer: `exec-output` chunks, then `exec-exit`.
    Exec {
        name: String,
        args: Vec<String>,
        /// Kill it after this many milliseconds (default 60000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Run a command in a running container with its stdin connected to
    /// the client, and with `tty` on a terminal of its own (`atollctl exec
    /// -it`). After this line the client sends [`ExecInput`] lines (input,
    /// window size, end of input); the answer is as for [`Request::Exec`]
    /// (with a terminal, all output comes as `stdout`). There is no time
    /// limit: the command is killed when the client hangs up.
    ExecInteractive {
        name: String,
        args: Vec<String>,
        #[serde(default)]
        tty: bool,
        /// The terminal's size at the start (with `tty`).
        #[serde(default)]
        size: Option<TermSize>,
    },
    /// The update agent: its status, or an action (docs/updates.md). The
    /// answer: [`Response::Update`] (or [`Response::Error`]).
    Update { action: UpdateAction },
    /// The images in the host's store. The answer: [`Response::Images`].
    Images,
    /// Pull an image into the store (a reference as Docker parses it). The
    /// answer: [`Response::Message`] naming the digest.
    Pull { image: String },
    /// Remove an image's name from the store; refused while the config
    /// uses it. Its blobs go at the next [`Request::Prune`].
    RemoveImage { image: String },
    /// Remove blobs and unpacked layers no image names.
    Prune,
    /// Import the images of an OCI archive or a `docker save` tar sent by
    /// the client (offline, no registry): after this line the client
    /// sends the archive as [`ImportInput`] lines, then `end`. The answer:
    /// [`Response::Message`] naming what was imported.
    Import {
        /// The name for an image the archive leaves unnamed.
        #[serde(default)]
        name: Option<String>,
    },
    /// Everything about one of the config's containers or pods (`NAME`,
    /// `POD` or `POD/NAME`). The answer: [`Response::Inspect`].
    Inspect { name: String },
    /// Run a container that is not in the config (`atollctl run`): once,
    /// never restarted, its writable layer removed when it exits, gone at
    /// the next boot. The entry is checked as a config entry would be
    /// (an empty name gets one made up). The answer: a
    /// [`Response::Message`] naming it, then (unless `detach`) its output
    /// as `exec-output` and its end as `exec-exit`.
    Run {
        container: Box<crate::config::workload::Container>,
        #[serde(default)]
        detach: bool,
    },
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Archive bytes per [`ImportInput::Data`] line: base64 makes 64 KiB of
/// them a line of 87,384 bytes, well under [`MAX_IMPORT_LINE`].
pub const IMPORT_CHUNK: usize = 48 * 1024;
/// Longest [`ImportInput`] line the server reads.
pub const MAX_IMPORT_LINE: usize = 128 * 1024;
/// Largest archive the server takes through [`Request::Import`].
pub const MAX_IMPORT_BYTES: u64 = 8 << 30;

/// What the client of a [`Request::Import`] sends after it, one JSON line
/// each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "import", rename_all = "kebab-case")]
pub enum ImportInput {
    /// The next bytes of the archive, base64 (standard alphabet, padded).
    Data { base64: String },
    /// The archive is complete.
    End,
}

/// What the client of a [`Request::ExecInteractive`] sends after it, one
/// JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum ExecInput {
    /// Bytes for the command's stdin (text: the client's input as UTF-8).
    Data { data: String },
    /// The client's terminal changed size.
    Resize(TermSize),
    /// End of input: the command's stdin is closed (without a terminal),
    /// or gets the terminal's end-of-file character (with one).
    Eof,
}

/// What `inspect` tells about a container or a pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    pub name: String,
    /// `container` or `pod`.
    pub kind: String,
    /// Its state (a pod: each of its containers, init containers first).
    pub containers: Vec<ContainerStatus>,
    /// Its entry in the config as PID 1 runs it, defaults filled in.
    pub config: serde_json::Value,
    /// The OCI runtime spec (`config.json`) each running container was
    /// started with, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub specs: std::collections::BTreeMap<String, serde_json::Value>,
}

/// One image in the store, as `atollctl images` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The canonical name (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest digest the name points to.
    pub digest: String,
    /// The layers' compressed size in bytes.
    pub size: u64,
    /// The config's containers that use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// What [`Request::Update`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateAction {
    /// The agent's status.
    Status,
    /// Check now, as a scheduled check would: install a newer release and
    /// reboot if the strategy says so.
    Check,
    /// Check now and install a newer release whatever the schedule and
    /// strategy say, without rebooting.
    Apply,
    /// Reboot into the installed release (refused when none is installed).
    Reboot,
    /// Offer the other slot (if good) at the next reboot; the running
    /// release goes on the bad list.
    Rollback,
    /// The agent's status, for its history.
    History,
}

/// A slot as the update agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSlot {
    pub slot: Slot,
    /// The release in it, if known.
    pub version: Option<String>,
    /// Marked good in grubenv.
    pub good: bool,
    /// Tries left while not good.
    pub tries: u8,
}

/// A download into the inactive slot, in payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateDownload {
    /// The target's name in the repository.
    pub name: String,
    pub version: String,
    pub slot: Slot,
    pub done: u64,
    pub total: u64,
}

/// A release installed and offered to the boot loader, not yet booted good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePending {
    pub version: String,
    pub slot: Slot,
    /// RFC 3339, UTC.
    pub installed_at: String,
    pub boot_id: String,
    /// With the `window` strategy: when the reboot into it is due (the
    /// next maintenance window's start; RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_at: Option<String>,
}

/// Why a release is on the bad list (it is never installed again by the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    /// RFC 3339, UTC.
    pub since: String,
    pub reason: String,
}

/// One line of the agent's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEvent {
    /// RFC 3339, UTC.
    pub at: String,
    pub what: String,
}

/// The update agent's status: what `atoll-updater status` prints (the
/// updater's tests check that its output parses as this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub strategy: crate::config::UpdateStrategy,
    /// The booted slot.
    pub current: UpdateSlot,
    pub other: UpdateSlot,
    /// The slot the boot loader picks next.
    pub next_boot: Slot,
    #[serde(default)]
    pub last_check: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub download: Option<UpdateDownload>,
    #[serde(default)]
    pub pending: Option<UpdatePending>,
    /// By version.
    #[serde(default)]
    pub bad: std::collections::BTreeMap<String, BadRelease>,
    /// Oldest first.
    #[serde(default)]
    pub history: Vec<UpdateEvent>,
}

/// The answer to [`Request::Update`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    pub action: UpdateAction,
    /// What the action did, in a sentence (`up to date`, `installed 0.2.0
    /// into slot B; rebooting`, …).
    pub outcome: String,
    /// The agent's status after the action (absent if it could not be read).
    #[serde(default)]
    pub status: Option<UpdateStatus>,
    /// Whether the agent (`atoll-updater run`) is running under PID 1, or
    /// why not.
    pub agent: String,
}

/// What [`Request::ContainerAction`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerAction {
    /// Stop it (SIGTERM, then SIGKILL after the grace period) and keep it
    /// stopped until `start` or the next boot.
    Stop,
    Start,
    Restart,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerState {
    /// Waiting for the containers and pods it depends on.
    Waiting,
    /// Getting its image (import of a preloaded one, or a pull).
    Pulling,
    Starting,
    Running,
    /// Exited, and will start again after a backoff.
    Restarting,
    /// Exited and not restarted (by its restart policy).
    Exited,
    /// Stopped on request.
    Stopped,
    /// Cannot run (a bad image, a policy that gave up); `detail` says why.
    Failed,
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ContainerState::Waiting => "waiting",
            ContainerState::Pulling => "pulling",
            ContainerState::Starting => "starting",
            ContainerState::Running => "running",
            ContainerState::Restarting => "restarting",
            ContainerState::Exited => "exited",
            ContainerState::Stopped => "stopped",
            ContainerState::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// One container, as `atollctl ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    /// The pod it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The image as the config names it.
    pub image: String,
    /// The manifest digest it runs (once started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    pub state: ContainerState,
    /// Why it is in that state (`exit status 1; restarting in 4 s`, an error).
    #[serde(default)]
    pub detail: String,
    /// The container init's pid on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When it last started (UTC, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Restarts on this boot.
    #[serde(default)]
    pub restarts: u32,
    /// The last exit code (128 + signal when killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `starting`, `healthy` or `unhealthy` for a container with a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// `bridge`, `host` or `none`.
    pub network: String,
    /// Its address on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Published ports, `HOST:CONTAINER/PROTO`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

fn default_lines() -> usize {
    100
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Log(LogRecord),
    Config(Box<ConfigReport>),
    Net(Box<NetStatus>),
    Connect(ConnectReport),
    Containers(Vec<ContainerStatus>),
    /// Output of an `exec`: `stream` is `stdout` or `stderr`.
    ExecOutput {
        stream: String,
        data: String,
    },
    /// How an `exec` ended: its exit code (128 + N for signal N), or
    /// `timed_out` (then it was killed).
    ExecExit {
        code: Option<i32>,
        timed_out: bool,
    },
    Update(Box<UpdateReport>),
    Images(Vec<ImageInfo>),
    Inspect(Box<Inspection>),
    /// What a request did, in a line (pull, remove, prune).
    Message {
        message: String,
    },
    /// The request was carried out (poweroff/reboot) or the answer is complete.
    Done,
    Error {
        message: String,
    },
}

/// How this boot came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// The slot was already known good.
    Good,
    /// The slot is on trial: it becomes good when this boot gets ready.
    Trial,
    /// No slot was good or had tries left; the boot loader booted the first anyway.
    LastResort,
    /// The kernel command line did not say (e.g. booted by hand).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub hostname: String,
    pub machine_id: String,
    pub booted_slot: Option<Slot>,
    pub boot_mode: BootMode,
    /// Whether the host has printed its ready line.
    pub ready: bool,
    pub uptime_ms: u64,
    pub boot_times: BootTimes,
    pub slots: Vec<SlotStatus>,
    /// What happened to grubenv on this boot (ok, repaired from the good copy, …).
    pub grubenv: String,
    pub data: DataStatus,
    pub root: RootStatus,
    /// How the previous boot ended: `clean`, `unclean`, or `unknown` (first boot).
    pub previous_shutdown: String,
}

/// The mounted root file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootStatus {
    /// The block device mounted on / (e.g. /dev/mapper/atoll-root).
    pub device: String,
    pub fs_type: String,
    pub read_only: bool,
    /// The device-mapper target under the root (`verity`), if any.
    pub dm_target: Option<String>,
    /// dm-verity's status: `V` (verified so far) or `C` (corruption seen).
    pub verity_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub booted: bool,
    pub good: bool,
    pub tries_left: u8,
    /// Position in the boot order (0 = tried first).
    pub priority: usize,
    pub verity: String,
    /// The version installed in the slot, when known.
    pub version: Option<String>,
}

/// Boot time split, in milliseconds of guest CLOCK_BOOTTIME (0 = kernel start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// Kernel start to stage 1 start.
    pub kernel_ms: u64,
    /// Stage 1 (initramfs: drivers, dm-verity, switch root).
    pub stage1_ms: u64,
    /// Stage 2 start to ready.
    pub stage2_ms: u64,
    /// Kernel start to ready.
    pub total_ms: u64,
    /// Named steps inside the stages, in order, each with its duration.
    pub steps: Vec<BootStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStep {
    pub name: String,
    pub ms: u64,
}

/// Stage 1's report to stage 2, written to [`crate::layout::STAGE1_TIMES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage1Times {
    /// CLOCK_BOOTTIME in ms when stage 1 started.
    pub start_ms: u64,
    /// CLOCK_BOOTTIME in ms just before stage 1 executed stage 2.
    pub end_ms: u64,
    pub steps: Vec<BootStep>,
    /// Modules stage 1 loaded.
    pub modules: Vec<String>,
    /// The block device of the booted slot (e.g. /dev/vda3).
    pub slot_device: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStatus {
    /// The DATA partition's device, if found.
    pub device: Option<String>,
    /// `mounted`, `created`, `grown`, or `failed: <reason>` (then /var is a tmpfs).
    pub state: String,
    pub size_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Wall-clock time in microseconds since the Unix epoch.
    pub time_us: u64,
    /// CLOCK_BOOTTIME in microseconds, for ordering within a boot.
    pub boottime_us: u64,
    /// syslog priority 0 (emerg) .. 7 (debug).
    pub priority: u8,
    /// SYSLOG_IDENTIFIER, or the process name.
    pub ident: String,
    pub pid: Option<u32>,
    pub message: String,
    /// The container that wrote the record, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `stdout` or `stderr` for container output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(r#"{"method":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request = serde_json::from_str(r#"{"method":"logs","follow":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                lines: 100,
                follow: true,
                ident: None
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"method":"nope"}"#).is_err());
        let r: Request =
            serde_json::from_str(r#"{"method":"update","action":"rollback"}"#).unwrap();
        assert_eq!(
            r,
            Request::Update {
                action: UpdateAction::Rollback
            }
        );
    }

    #[test]
    fn interactive_exec_wire_format() {
        let r: Request = serde_json::from_str(
            r#"{"method":"exec-interactive","name":"web","args":["sh"],"tty":true,"size":{"rows":24,"cols":80}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::ExecInteractive {
                name: "web".into(),
                args: vec!["sh".into()],
                tty: true,
                size: Some(TermSize { rows: 24, cols: 80 }),
            }
        );
        for (line, input) in [
            (
                r#"{"input":"data","data":"ls\n"}"#,
                ExecInput::Data {
                    data: "ls\n".into(),
                },
            ),
            (
                r#"{"input":"resize","rows":50,"cols":132}"#,
                ExecInput::Resize(TermSize {
                    rows: 50,
                    cols: 132,
                }),
            ),
            (r#"{"input":"eof"}"#, ExecInput::Eof),
        ] {
            assert_eq!(serde_json::from_str::<ExecInput>(line).unwrap(), input);
            assert_eq!(serde_json::to_string(&input).unwrap(), line);
        }
        assert!(serde_json::from_str::<ExecInput>(r#"{"input":"resize","rows":1}"#).is_err());
    }

    #[test]
    fn response_round_trip() {
        let r = Response::Error {
            message: "x".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), r);
        assert_eq!(serde_json::to_string(&Response::Done).unwrap(), r#""done""#);
    }
}

/// The config in force and how it got there (`atollctl config show`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConfigReport {
    /// Where the config in force came from: `fw_cfg opt/dev.atoll/config`,
    /// `CIDATA /dev/vdb user-data`, `metadata http://169.254.169.254 (ec2)`,
    /// `last good (…)`, or `built-in default`.
    pub source: String,
    /// `applied`, or why the config found this boot is not the one in force.
    pub state: String,
    /// Problems with the config found this boot (source, line, key, message).
    #[serde(default)]
    pub errors: Vec<String>,
    /// The sources tried this boot, in order, and what each gave.
    #[serde(default)]
    pub tried: Vec<String>,
    /// The effective config as TOML, secrets redacted.
    pub toml: String,
}

/// Network state (`atollctl net status`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetStatus {
    pub interfaces: Vec<InterfaceStatus>,
    /// Routes, one per line as `ip route` would print them.
    pub routes: Vec<String>,
    pub dns: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
    pub ntp: NtpStatus,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Link detected.
    pub carrier: bool,
    /// `dhcp`, `static`, `loopback` or `unconfigured`.
    pub method: String,
    /// Addresses as `ADDR/PREFIX` (IPv4 and IPv6).
    pub addresses: Vec<String>,
    pub lease: Option<LeaseStatus>,
    /// The last problem configuring this interface, if any.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub address: String,
    pub server: String,
    pub gateway: Option<String>,
    /// Seconds until renewal (T1), rebinding (T2) and expiry, from now.
    pub renew_in_s: u64,
    pub rebind_in_s: u64,
    pub expires_in_s: u64,
    /// Milliseconds from the first DISCOVER to the ACK.
    pub obtained_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NtpStatus {
    pub servers: Vec<String>,
    /// The server that last set the clock, if any.
    pub synced_from: Option<String>,
    /// The correction applied at the last sync, in milliseconds.
    pub last_offset_ms: Option<i64>,
    /// The last problem, if any.
    pub error: Option<String>,
}

/// The answer to a reachability check.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    pub connected: bool,
    /// The peer address actually used.
    pub peer: Option<String>,
    /// What the peer sent back (lossy UTF-8, at most 4 KiB).
    pub received: String,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}
