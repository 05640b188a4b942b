//! `atollctl`: the Atoll host CLI. Argument parsing only; the work is in
//! `atoll_init::ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use atoll_common::api::{ContainerAction, Request, UpdateAction};
use atoll_init::ctl::{self, Command};
use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the host answered with an error
  2  bad command line
  3  the host API could not be reached (no socket, nothing listening, no permission)
  4  the answer was cut short or not understood
  5  config validate: the file is not a valid config
  6  net connect: the connection failed
  exec: the command's own exit status; 124 when it ran over --timeout";

/// Talk to the Atoll host (PID 1's API).
#[derive(Debug, Parser)]
#[command(name = "atollctl", version = atoll_common::VERSION, after_help = EXIT_CODES)]
struct Cli {
    /// The API socket: PID 1's unix socket, or the host side of the VM's
    /// `dev.atoll.api` virtio-serial port.
    #[arg(long, global = true, default_value = atoll_common::layout::API_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of `run`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, booted slot, boot time, slots, data, root, uptime.
    Status {
        /// The raw status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The host's log (PID 1, services, containers), oldest first.
    Logs {
        /// How many of the newest records (0 = all kept).
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing new records as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Only records from this identifier or container.
        #[arg(long)]
        ident: Option<String>,
        /// A container's name (the same as --ident NAME).
        #[arg(conflicts_with = "ident")]
        container: Option<String>,
        /// One JSON record per line.
        #[arg(long)]
        json: bool,
    },
    /// Shut down cleanly and power off.
    Poweroff,
    /// Shut down cleanly and reboot.
    Reboot,
    /// The host config (docs/config.md).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The host's network.
    #[command(subcommand)]
    Net(NetCmd),
    /// The config's containers: state, pid, restarts, image.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a running container (`NAME` or `POD/NAME`) with its
    /// environment, user and privileges. Without -i its stdin is /dev/null
    /// and it is killed after --timeout; with -i it reads this program's
    /// stdin (-t: on a terminal of its own) and runs until it exits or
    /// this program is interrupted. Exits with the command's exit status.
    Exec {
        /// Kill the command after this many seconds (not with -i).
        #[arg(long, default_value_t = 60, conflicts_with = "interactive")]
        timeout: u64,
        /// Connect stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (needs -i and a terminal on stdin).
        #[arg(short, long, requires = "interactive")]
        tty: bool,
        name: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A container's or pod's (`NAME`, `POD`, `POD/NAME`) config entry with
    /// its defaults, its state, and the OCI runtime spec it runs with, as JSON.
    Inspect { name: String },
    /// Run a container that is not in the config, once (never restarted;
    /// its writable layer is removed when it exits; not started again at
    /// boot). Prints its output and exits with its exit status; with -d
    /// prints its name and leaves it running (`atollctl logs/stop NAME`).
    Run {
        /// Print the name and return; the container runs on.
        #[arg(short, long)]
        detach: bool,
        /// Its name [default: run-XXXXXX].
        #[arg(long)]
        name: Option<String>,
        /// none, host or bridge.
        #[arg(long, default_value = "bridge")]
        network: String,
        /// KEY=VALUE in its environment (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// SRC:DST[:ro], SRC a path under /var or a volume name (repeatable).
        #[arg(short, long = "volume", value_name = "SRC:DST")]
        volume: Vec<String>,
        /// HOST:CONTAINER[/udp] on the bridge (repeatable).
        #[arg(short, long = "publish", value_name = "HOST:CONTAINER")]
        publish: Vec<String>,
        /// Its root file system read-only.
        #[arg(long)]
        read_only: bool,
        /// Memory limit (512M, 1G).
        #[arg(long)]
        memory: Option<String>,
        /// UID[:GID] or a user name from the image.
        #[arg(short, long)]
        user: Option<String>,
        /// The working directory.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Replaces the image's entrypoint.
        #[arg(long)]
        entrypoint: Option<String>,
        /// The image (a reference as Docker parses it).
        image: String,
        /// Replace the image's command (CMD).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop a container (SIGTERM, SIGKILL after 10 s) until `start` or the next boot.
    Stop { name: String },
    /// Start a stopped or exited container.
    Start { name: String },
    /// Stop and start a container.
    Restart { name: String },
    /// The update agent (docs/updates.md).
    #[command(subcommand)]
    Update(UpdateCmd),
    /// The images in the host's store: name, digest, size, the config's
    /// containers that use them.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Pull an image into the store (e.g. `busybox`, `ghcr.io/org/app:1`,
    /// `REPO@sha256:…`) with the config's registry settings.
    Pull { image: String },
    /// Remove an image from the store (refused while the config uses it);
    /// its space comes back at the next `prune`.
    Rmi { image: String },
    /// Remove the blobs and unpacked layers no image names.
    Prune,
    /// Import the images of an OCI archive or a `docker save` tar into the
    /// store, with no registry (FILE `-`: standard input).
    Import {
        /// Name for an image the archive leaves unnamed.
        #[arg(long)]
        name: Option<String>,
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UpdateCmd {
    /// Slots and their releases, the last check, a download, bad releases.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check now, as the schedule would: install a newer release and
    /// reboot if the strategy says so.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Check now and install a newer release whatever the schedule and
    /// strategy; no reboot.
    Apply {
        #[arg(long)]
        json: bool,
    },
    /// Reboot into the installed release.
    Reboot {
        #[arg(long)]
        json: bool,
    },
    /// Boot the other (good) slot at the next reboot; the running release
    /// goes on the bad list.
    Rollback {
        #[arg(long)]
        json: bool,
    },
    /// What the agent did: installs, reboots, rollbacks, refusals.
    History {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// The config in force, where it came from, and any errors (secrets redacted).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Checks a config file (TOML or #cloud-config, gzip or not) without a
    /// host: runs anywhere, e.g. on a build machine before shipping it.
    Validate {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NetCmd {
    /// Interfaces, addresses, DHCP leases, routes, DNS and time sync.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Opens a TCP connection from the host (can it reach a registry, a
    /// server?), optionally sends a line, and prints what comes back.
    Connect {
        /// HOST:PORT
        addr: String,
        /// Text to send once connected (a newline is added).
        #[arg(long)]
        send: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = match cli.cmd {
        Cmd::Status { json } => Command::Status { json },
        Cmd::Logs {
            lines,
            follow,
            ident,
            container,
            json,
        } => Command::Logs {
            lines,
            follow,
            ident: ident.or(container),
            json,
        },
        Cmd::Ps { json } => Command::Ps { json },
        Cmd::Exec {
            interactive: true,
            tty,
            name,
            command,
            ..
        } => Command::ExecInteractive {
            name,
            args: command,
            tty,
        },
        Cmd::Exec {
            timeout,
            name,
            command,
            ..
        } => Command::Exec {
            name,
            args: command,
            timeout_ms: Some(timeout.saturating_mul(1000)),
        },
        Cmd::Inspect { name } => Command::Inspect { name },
        Cmd::Run {
            detach,
            name,
            network,
            env,
            volume,
            publish,
            read_only,
            memory,
            user,
            workdir,
            entrypoint,
            image,
            args,
        } => {
            let spec = atoll_init::ctl::RunSpec {
                name,
                image,
                entrypoint,
                args,
                env,
                network,
                volumes: volume,
                ports: publish,
                read_only,
                memory,
                user,
                workdir,
            };
            match spec.container() {
                Ok(container) => Command::Run {
                    container: Box::new(container),
                    detach,
                },
                Err(e) => {
                    eprintln!("atollctl: run: {e}");
                    return ExitCode::from(atoll_init::ctl::exit::USAGE as u8);
                }
            }
        }
        Cmd::Stop { name } => Command::Container {
            name,
            action: ContainerAction::Stop,
        },
        Cmd::Start { name } => Command::Container {
            name,
            action: ContainerAction::Start,
        },
        Cmd::Restart { name } => Command::Container {
            name,
            action: ContainerAction::Restart,
        },
        Cmd::Update(u) => {
            let (action, json) = match u {
                UpdateCmd::Status { json } => (UpdateAction::Status, json),
                UpdateCmd::Check { json } => (UpdateAction::Check, json),
                UpdateCmd::Apply { json } => (UpdateAction::Apply, json),
                UpdateCmd::Reboot { json } => (UpdateAction::Reboot, json),
                UpdateCmd::Rollback { json } => (UpdateAction::Rollback, json),
                UpdateCmd::History { json } => (UpdateAction::History, json),
            };
            Command::Update { action, json }
        }
        Cmd::Images { json } => Command::Images { json },
        Cmd::Pull { image } => Command::Store(Request::Pull { image }),
        Cmd::Rmi { image } => Command::Store(Request::RemoveImage { image }),
        Cmd::Prune => Command::Store(Request::Prune),
        Cmd::Import { name, file } => Command::Import { file, name },
        Cmd::Poweroff => Command::Poweroff,
        Cmd::Reboot => Command::Reboot,
        Cmd::Config(ConfigCmd::Show { json }) => Command::ConfigShow { json },
        Cmd::Config(ConfigCmd::Validate { file }) => Command::ConfigValidate { file },
        Cmd::Net(NetCmd::Status { json }) => Command::NetStatus { json },
        Cmd::Net(NetCmd::Connect {
            addr,
            send,
            timeout_ms,
        }) => Command::NetConnect {
            addr,
            send: send.map(|s| s + "\n"),
            timeout_ms: Some(timeout_ms),
        },
    };
    let code = match ctl::run(&cli.socket, cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atollctl: {}", atoll_common::error::error_chain(&e));
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
