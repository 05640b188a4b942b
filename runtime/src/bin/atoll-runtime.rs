//! `atoll-runtime`: the runc-compatible OCI runtime command line
//! (shared/DESIGN.md, "Names"). A thin front end over
//! `atoll_runtime::oci`: it parses runc's flags, runs one lifecycle step
//! and, on failure, prints the error chain as runc does (logrus text on
//! stderr, and to `--log` in `--log-format` text or json, where
//! containerd reads it) and exits 1.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use atoll_common::config::{Registries, SignatureKey, TextValue};
use atoll_runtime::manifest::Platform;
use atoll_runtime::oci::lifecycle::{self, CreateOptions};
use atoll_runtime::oci::state::rfc3339_now;
use atoll_runtime::oci::{StateRoot, DEFAULT_ROOT};
use atoll_runtime::pull::Progress;
use atoll_runtime::reference::Reference;
use atoll_runtime::signature;
use atoll_runtime::store::Store;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "atoll-runtime",
    version,
    about = "Atoll's OCI runtime (runc-compatible command line)"
)]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Append errors to this file (engines read it).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accepted for runc compatibility.
    #[arg(long, global = true)]
    debug: bool,
    /// systemd cgroup driver: not supported (refused).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (`auto`, `true`, `false`).
    #[arg(long, global = true, hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The bundle directory (config.json and the rootfs).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// A unix socket to receive the pty master (process.terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted; pivot_root is always used.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted; no session keyring is made.
    #[arg(long)]
    no_new_keyring: bool,
    /// Extra fds to pass (only 0 is supported).
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// The container id.
    id: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container: set up everything, hold before the user program.
    Create(CreateArgs),
    /// Start a created container's user program.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init.
    Kill {
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a stopped container (--force: kill it first).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[arg(short, long)]
        detach: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Pull an image from its registry into the image store (not a runc
    /// command: PID 1 runs it for the config's containers, so the TLS
    /// stack never runs as PID 1). Prints progress, then the manifest digest.
    Pull {
        /// The image store.
        #[arg(long, default_value = atoll_common::layout::VAR_IMAGES)]
        store: PathBuf,
        /// The host config whose [registries] (mirrors, credentials,
        /// insecure) apply [default: none].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The image reference (`nginx:1.27`, `registry:5000/app@sha256:…`).
        reference: String,
    },
    /// Check an image in the store against an ed25519 key (not a runc
    /// command: PID 1 runs it before starting a container with a
    /// `signature_key`). Uses the stored signature, else fetches the
    /// `sha256-<hex>.sig` artifact from the image's repository and stores
    /// it once it verifies. Prints the verified manifest digest; exits 1
    /// if the image is not signed by KEY.
    Verify {
        /// The image store.
        #[arg(long, default_value = atoll_common::layout::VAR_IMAGES)]
        store: PathBuf,
        /// The host config whose [registries] (mirrors, credentials,
        /// insecure) apply [default: none].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The ed25519 public key, 32 bytes in base64 or hex (as the
        /// config's `signature_key`).
        #[arg(long, value_name = "KEY")]
        key: String,
        /// The image reference, as it was pulled.
        image: String,
    },
    /// Import the images of an OCI archive or `docker save` tar into the store.
    Import {
        #[arg(long, default_value = atoll_common::layout::VAR_IMAGES)]
        store: PathBuf,
        /// Name for an image the archive leaves unnamed.
        #[arg(long)]
        name: Option<String>,
        archive: PathBuf,
    },
    /// List containers.
    #[command(alias = "ps")]
    List {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

fn create_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    if args.preserve_fds != 0 {
        bail!("--preserve-fds is not supported");
    }
    Ok(CreateOptions {
        bundle: args.bundle.clone(),
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
    })
}

/// Runs the command; `Ok(code)` is the exit code.
fn run(cli: &Cli) -> anyhow::Result<i32> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: atoll-runtime manages cgroup v2 directly (cgroupfs)");
    }
    let root = StateRoot::new(&cli.root);
    match &cli.command {
        Command::Create(args) => {
            lifecycle::create(&root, &args.id, &create_options(args)?)?;
        }
        Command::Start { id } => lifecycle::start(&root, id)?,
        Command::State { id } => {
            let state = lifecycle::state(&root, id)?;
            let json = serde_json::to_string_pretty(&state).context("encoding the state")?;
            println!("{json}");
        }
        Command::Kill { all, id, signal } => {
            let sig = lifecycle::parse_signal(signal)?;
            lifecycle::kill(&root, id, sig, *all)?;
        }
        Command::Delete { force, id } => lifecycle::delete(&root, id, *force)?,
        Command::Run { detach, create } => {
            let (_, mut container) =
                lifecycle::create(&root, &create.id, &create_options(create)?)?;
            if let Err(e) = lifecycle::start(&root, &create.id) {
                let _ = lifecycle::delete(&root, &create.id, true);
                return Err(e.into());
            }
            if *detach {
                return Ok(0);
            }
            let status = container.wait().context("waiting for the container")?;
            lifecycle::delete(&root, &create.id, true)?;
            return Ok(status.code());
        }
        Command::Pull {
            store,
            config,
            reference,
        } => pull(store, config.as_deref(), reference)?,
        Command::Verify {
            store,
            config,
            key,
            image,
        } => verify(store, config.as_deref(), key, image)?,
        Command::Import {
            store,
            name,
            archive,
        } => {
            let store = Store::open(store).context("opening the image store")?;
            let name = name
                .as_deref()
                .map(Reference::parse)
                .transpose()
                .context("--name")?;
            let file = std::fs::File::open(archive)
                .with_context(|| format!("opening {}", archive.display()))?;
            let names = atoll_runtime::import::import_archive(
                &store,
                std::io::BufReader::new(file),
                name.as_ref(),
                &Platform::default(),
            )
            .with_context(|| format!("importing {}", archive.display()))?;
            for n in names {
                println!("{n}");
            }
        }
        Command::List { format, quiet } => {
            let states = lifecycle::list(&root)?;
            if *quiet {
                for s in &states {
                    println!("{}", s.id);
                }
            } else if *format == ListFormat::Json {
                println!("{}", serde_json::to_string(&states).context("encoding")?);
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
                for s in &states {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created,
                        if s.owner.is_empty() { "root" } else { &s.owner }
                    );
                }
            }
        }
    }
    Ok(0)
}

/// The `[registries]` of the host config at `config`, or none.
fn registries(config: Option<&Path>) -> anyhow::Result<Registries> {
    Ok(match config {
        Some(path) => {
            atoll_common::config::validate_file(path)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .registries
        }
        None => Registries::default(),
    })
}

/// `verify`: one line on stdout when the image is signed by the key.
fn verify(store: &Path, config: Option<&Path>, key: &str, image: &str) -> anyhow::Result<()> {
    let key = SignatureKey::parse_text(key)
        .map_err(|e| anyhow::anyhow!("--key: {e} ({})", SignatureKey::EXPECTED))?;
    let registries = registries(config)?;
    let reference = Reference::parse(image).context("image reference")?;
    let store = Store::open(store).context("opening the image store")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let (digest, source) = rt.block_on(signature::verify_image(
        &store,
        &reference,
        &registries,
        &key.0,
    ))?;
    let source = match source {
        signature::Source::Store => "stored signature",
        signature::Source::Registry => "signature fetched from the registry and stored",
    };
    println!(
        "{reference}: {digest} verified with key {} ({source})",
        signature::key_text(&key.0)
    );
    Ok(())
}

/// `pull`: progress on stdout, one line per event worth a line.
fn pull(store: &Path, config: Option<&Path>, reference: &str) -> anyhow::Result<()> {
    let registries = registries(config)?;
    let reference = Reference::parse(reference).context("image reference")?;
    let store = Store::open(store).context("opening the image store")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let name = reference.to_string();
    let progress = |p: &Progress| match p {
        Progress::Resolved {
            manifest,
            layers,
            size,
        } => println!("{name}: {manifest}, {layers} layers, {size} bytes"),
        Progress::LayerDone {
            digest,
            size,
            cached,
        } => println!(
            "{name}: layer {digest} {size} bytes{}",
            if *cached {
                " (already in the store)"
            } else {
                ""
            }
        ),
        Progress::Layer { .. } | Progress::Archive { .. } => {}
    };
    let digest = rt
        .block_on(atoll_runtime::pull::pull(
            &store,
            &reference,
            &registries,
            &Platform::default(),
            &progress,
        ))
        .with_context(|| format!("pulling {name}"))?;
    println!("{name}: pulled {digest}");
    Ok(())
}

/// Report an error as runc does: logrus text on stderr, and the chosen
/// format in the log file.
fn report(cli: &Cli, err: &anyhow::Error) {
    // The error and its causes, joined with ": ".
    let msg = format!("{err:#}");
    let time = rfc3339_now();
    let text = format!("time={time:?} level=error msg={msg:?}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Some(path) = &cli.log {
        let line = match cli.log_format {
            LogFormat::Text => text,
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({"level": "error", "msg": msg, "time": time})
            ),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let _ = cli.debug;
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            report(&cli, &e);
            std::process::exit(1);
        }
    }
}
