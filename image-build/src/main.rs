//! `image-build`: builds Atoll's disk image. See image-build/README.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use atoll_updater::metadata::time::parse_span;
use atoll_updater::metadata::{RoleName, Rollout, Time, Version};
use clap::{Parser, Subcommand};
use image_build::image::{self, size};
use image_build::kernel::Fetched;
use image_build::keys::{self, KeyDir};
use image_build::release::{self, Expiry, ReleaseOptions};
use image_build::workspace;

#[derive(Debug, Parser)]
#[command(
    name = "image-build",
    version,
    about = "Builds Atoll disk images without root"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the disk image (atoll.raw), build.json and optionally atoll.qcow2.
    Disk {
        /// Output directory (relative paths are from the workspace root).
        #[arg(long, default_value = "target/atoll")]
        out: PathBuf,
        /// Kernel package cache [default: OUT/cache].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The init binary (PID 1).
        #[arg(long, default_value = "target/release/init")]
        init: PathBuf,
        /// The atollctl binary.
        #[arg(long, default_value = "target/release/atollctl")]
        atollctl: PathBuf,
        /// The atoll-runtime binary.
        #[arg(long, default_value = "target/release/atoll-runtime")]
        runtime: PathBuf,
        /// The atoll-updater binary (the update agent).
        #[arg(long, default_value = "target/release/atoll-updater")]
        updater: PathBuf,
        /// The static busybox made into the preloaded image localhost/atoll/busybox.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The CA roots to ship (for registry pulls and updates over HTTPS).
        #[arg(long, default_value = image_build::image::DEFAULT_CA_BUNDLE)]
        ca_bundle: PathBuf,
        /// mke2fs to ship in the slot (with its libraries).
        #[arg(long, default_value = "/usr/sbin/mke2fs")]
        mke2fs: PathBuf,
        /// The update root of trust to ship in the slot (a keys directory's
        /// root.json) [default: target/atoll/keys/root.json, made there as
        /// DEVELOPMENT keys if missing].
        #[arg(long, value_name = "FILE")]
        update_root: Option<PathBuf>,
        /// Also write OUT/atoll.qcow2.
        #[arg(long)]
        qcow2: bool,
        /// The version the slot says it is (os-release VERSION=, build.json)
        /// [default: the binaries' version]; e.g. to cut a newer test release
        /// from the same binaries.
        #[arg(long, value_name = "VERSION")]
        os_version: Option<Version>,
        /// FOR TESTS ONLY: build a slot that fails on purpose, to test
        /// rollbacks; `never-ready` stops its boots short of ready
        /// (docs/updates.md, "Testing rollbacks"). Never ship it.
        #[arg(long, value_name = "FAULT", value_parser = [atoll_common::layout::TEST_FAULT_NEVER_READY])]
        test_fault: Option<String>,
    },
    /// Write an OCI archive of a one-layer busybox image (the preloaded
    /// image's recipe; qemu-tests use it for their test images).
    OciImage {
        /// Image name with tag.
        #[arg(long, default_value = image_build::ociimage::PRELOADED_NAME)]
        name: String,
        /// The static busybox binary.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The image's Cmd (repeat for each word) [default: sh].
        #[arg(long = "cmd", value_name = "WORD")]
        cmd: Vec<String>,
        /// Exposed ports (`80/tcp`).
        #[arg(long = "expose", value_name = "PORT/PROTO")]
        expose: Vec<String>,
        /// The archive to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an image's manifest digest for containers pinned to a
    /// `signature_key` (docs/containers.md, "Signed images"), or make a
    /// signing key (--generate-key).
    SignImage {
        /// Make a new ed25519 private key (PKCS#8 PEM, mode 0600) at FILE
        /// and print its public key as `signature_key` takes it.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "digest", "out_archive", "print_public"])]
        generate_key: Option<PathBuf>,
        /// The private key (PKCS#8 PEM) to sign with.
        #[arg(
            long,
            value_name = "PRIVATE_KEY_FILE",
            required_unless_present = "generate_key"
        )]
        key: Option<PathBuf>,
        /// The image's manifest digest, as `atoll-runtime pull` prints it.
        #[arg(long, value_name = "sha256:HEX", requires = "out_archive")]
        digest: Option<String>,
        /// The OCI archive of the signature artifact to write; push it
        /// with `skopeo copy oci-archive:SIG.tar
        /// docker://REGISTRY/REPO:sha256-HEX.sig`.
        #[arg(long, value_name = "SIG.tar", requires = "digest")]
        out_archive: Option<PathBuf>,
        /// Print the key's public key (as `signature_key` takes it).
        #[arg(long)]
        print_public: bool,
    },
    /// Make sure the pinned kernel package (image-build/kernel.toml) is cached.
    FetchKernel {
        /// Output directory; the package goes to OUT/cache.
        #[arg(long, default_value = "target/atoll")]
        out: PathBuf,
        /// Kernel package cache [default: OUT/cache].
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Make, rotate and show the signing keys of an update repository.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Turn the built slot image into a signed release in the update repository.
    Release {
        /// Keys directory (image-build keys init).
        #[arg(long)]
        keys: PathBuf,
        /// Update repository.
        #[arg(long, default_value = "target/atoll/repo")]
        repo: PathBuf,
        /// Release version [default: build.json's version].
        #[arg(long)]
        version: Option<Version>,
        /// The slot image (ext4 + dm-verity).
        #[arg(long, default_value = "target/atoll/work/slot.img")]
        slot: PathBuf,
        /// build.json of the build that made the slot.
        #[arg(long, default_value = "target/atoll/build.json")]
        build_json: PathBuf,
        /// Expiry of targets.json and snapshot.json (s, m, h, d, w).
        #[arg(long, default_value = "7d", value_parser = parse_span)]
        expires: Duration,
        /// Expiry of timestamp.json: re-sign (image-build resign) more often.
        #[arg(long, default_value = "1d", value_parser = parse_span)]
        timestamp_expires: Duration,
        /// Rollout start (YYYY-MM-DDTHH:MM:SSZ); needs --rollout-duration.
        #[arg(long, value_parser = Time::parse, requires = "rollout_duration")]
        rollout_start: Option<Time>,
        /// Rollout duration, e.g. 24h; starts now without --rollout-start.
        #[arg(long, value_parser = parse_span)]
        rollout_duration: Option<Duration>,
        /// Hosts older than this must not update to this release.
        #[arg(long)]
        min_version: Option<Version>,
    },
    /// Re-sign the repository's metadata with fresh expiries and publish
    /// rotated roots (run from cron, more often than the timestamp expiry).
    Resign {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value = "target/atoll/repo")]
        repo: PathBuf,
        #[arg(long, default_value = "7d", value_parser = parse_span)]
        expires: Duration,
        #[arg(long, default_value = "1d", value_parser = parse_span)]
        timestamp_expires: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Make one ed25519 key per role and root.json version 1.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Root expiry.
        #[arg(long, default_value = "365d", value_parser = parse_span)]
        expires: Duration,
    },
    /// Add a key to a role (optionally revoking one) and sign root N+1.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: RoleName,
        /// Key id to take off the role.
        #[arg(long)]
        revoke: Option<String>,
        /// Expiry of the new root.
        #[arg(long, default_value = "365d", value_parser = parse_span)]
        expires: Duration,
    },
    /// Show the root's version, expiry, roles and keys.
    Show {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-build: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("current directory")?;
    let root = workspace::root_from(&cwd)?;
    let at = |p: &Path| workspace::resolve(&root, p);
    match cli.command {
        Cmd::FetchKernel { out, cache } => {
            let cache = cache.map_or_else(|| at(&out).join("cache"), |c| at(&c));
            let (deb, how) = image::fetch_kernel(&cache)?;
            let how = match how {
                Fetched::Cached => "already cached",
                Fetched::Downloaded => "downloaded",
            };
            println!("{} ({how}, sha256 verified)", deb.display());
        }
        Cmd::OciImage {
            name,
            busybox,
            cmd,
            expose,
            out,
        } => {
            let mut opts = image_build::ociimage::ImageOptions::busybox(&name);
            if !cmd.is_empty() {
                opts.cmd = cmd;
            }
            opts.exposed = expose;
            let w = image_build::ociimage::write_busybox_archive(&busybox, &opts, &out)?;
            println!("{} {} {}", out.display(), w.name, w.manifest_digest);
        }
        Cmd::SignImage {
            generate_key,
            key,
            digest,
            out_archive,
            print_public,
        } => sign_image(generate_key, key, digest, out_archive, print_public, &at)?,
        Cmd::Disk {
            out,
            cache,
            init,
            atollctl,
            runtime,
            updater,
            busybox,
            ca_bundle,
            mke2fs,
            update_root,
            qcow2,
            os_version,
            test_fault,
        } => {
            let out = at(&out);
            let update_root = match update_root {
                Some(file) => at(&file),
                None => dev_update_root(&at(Path::new(keys::DEV_KEYS_DIR)))?,
            };
            let opts = image::DiskOptions {
                cache: cache.map_or_else(|| out.join("cache"), |c| at(&c)),
                out: out.clone(),
                init: at(&init),
                atollctl: at(&atollctl),
                runtime: at(&runtime),
                updater: at(&updater),
                busybox,
                ca_bundle,
                mke2fs,
                update_root,
                qcow2,
                os_version: os_version.map(|v| v.to_string()),
                test_fault,
            };
            let info = image::build_disk(&opts)?;
            let raw = out.join(&info.image);
            println!();
            println!("disk image: {} ({})", raw.display(), size(info.image_size));
            println!("sha256:     {}", info.image_sha256);
            if let Some(q) = &info.qcow2 {
                println!("qcow2:      {}", out.join(q).display());
            }
            println!("build info: {}", out.join("build.json").display());
            println!("update root: {}", opts.update_root.display());
            println!();
            println!(
                "Boot it: ./run.sh (BIOS) or ./run.sh --uefi, or by hand on a throw-away overlay:"
            );
            println!(
                "  qemu-img create -f qcow2 -F raw -b {} /tmp/atoll.qcow2",
                raw.display()
            );
            println!("  qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 512 -nographic -drive file=/tmp/atoll.qcow2,if=virtio");
            println!("  UEFI: add -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
            println!("        -drive if=pflash,format=raw,file=<a copy of /usr/share/OVMF/OVMF_VARS_4M.fd>");
        }
        Cmd::Keys { command } => run_keys(command, &at)?,
        Cmd::Release {
            keys,
            repo,
            version,
            slot,
            build_json,
            expires,
            timestamp_expires,
            rollout_start,
            rollout_duration,
            min_version,
        } => {
            let now = Time::now();
            let opts = ReleaseOptions {
                keys: at(&keys),
                repo: at(&repo),
                version,
                slot: at(&slot),
                build_json: at(&build_json),
                expiry: Expiry {
                    metadata: expires,
                    timestamp: timestamp_expires,
                },
                rollout: rollout_duration.map(|d| Rollout {
                    start: rollout_start.unwrap_or(now),
                    duration: d.as_secs(),
                }),
                min_version,
                now,
            };
            let published = release::release(&opts)?;
            if let Some((name, path, target)) = &published.release {
                println!();
                println!("release:  {name}");
                println!("file:     {} ({})", path.display(), size(target.length));
                println!("sha256:   {}", target.hashes.sha256);
            }
            print_published(&opts.repo, &published);
        }
        Cmd::Resign {
            keys,
            repo,
            expires,
            timestamp_expires,
        } => {
            let repo = at(&repo);
            let expiry = Expiry {
                metadata: expires,
                timestamp: timestamp_expires,
            };
            let published = release::resign(&at(&keys), &repo, expiry, Time::now())?;
            print_published(&repo, &published);
        }
    }
    Ok(())
}

/// The default update root: `dir/root.json`, making development keys in
/// `dir` the first time, and saying loudly what they are.
fn dev_update_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let made = keys::ensure_dev_keys(dir, Time::now())?;
    let root = dir.join("root.json");
    if let Some(change) = made {
        let bar = "=".repeat(76);
        eprintln!("{bar}");
        eprintln!(
            "image-build: WARNING: made DEVELOPMENT update keys in {}",
            dir.display()
        );
        eprintln!(
            "  (no --update-root given; root.json version 1, expires {}).",
            change.root.expires
        );
        eprintln!("  They are NOT FOR PRODUCTION: the private keys sit unprotected in the build");
        eprintln!("  tree, and whoever reads them can sign updates this image trusts. They are");
        eprintln!("  reused by later builds until `cargo clean` deletes them. For real images:");
        eprintln!(
            "    image-build keys init --dir /secure/atoll-keys   (keep the root key offline)"
        );
        eprintln!("    image-build disk --update-root /secure/atoll-keys/root.json");
        eprintln!("  (docs/updates.md, \"Keys\")");
        eprintln!("{bar}");
    } else if keys::is_dev_keys(dir) {
        eprintln!(
            "image-build: warning: the slot trusts the DEVELOPMENT update keys in {} (not for production; see {})",
            dir.display(),
            dir.join(keys::DEV_KEYS_MARKER).display()
        );
    }
    Ok(root)
}

fn sign_image(
    generate_key: Option<PathBuf>,
    key: Option<PathBuf>,
    digest: Option<String>,
    out_archive: Option<PathBuf>,
    print_public: bool,
    at: &dyn Fn(&Path) -> PathBuf,
) -> anyhow::Result<()> {
    use image_build::sign;
    if let Some(path) = generate_key {
        let path = at(&path);
        let key = sign::generate_key(&path)?;
        println!("{}", sign::public_key_text(&key));
        eprintln!(
            "wrote {}; the line above is its public key, for `signature_key` in [[containers]]",
            path.display()
        );
        return Ok(());
    }
    let Some(key_path) = key else {
        anyhow::bail!("give --generate-key FILE, or --key FILE");
    };
    let key = sign::load_key(&at(&key_path))?;
    if print_public {
        println!("{}", sign::public_key_text(&key));
    }
    match (digest, out_archive) {
        (Some(digest), Some(out)) => {
            let out = at(&out);
            let written = sign::signature_archive(&key, &digest, &out)?;
            println!(
                "{} {} {}",
                out.display(),
                written.tag,
                written.manifest_digest
            );
            eprintln!(
                "push it next to the image: skopeo copy oci-archive:{} docker://REGISTRY/REPO:{}",
                out.display(),
                written.tag
            );
        }
        _ if print_public => {}
        _ => anyhow::bail!("--key needs --digest and --out-archive (or --print-public)"),
    }
    Ok(())
}

fn run_keys(command: KeysCmd, at: &dyn Fn(&Path) -> PathBuf) -> anyhow::Result<()> {
    match command {
        KeysCmd::Init { dir, expires } => {
            let dir = KeyDir::new(at(&dir));
            let change = keys::init(&dir, Time::now(), expires)?;
            for (role, keyid) in &change.added {
                println!("{role:<9} key {keyid}");
            }
            println!(
                "root of trust: {} (version 1, expires {}); ship it as /usr/lib/atoll/update-root.json",
                change.path.display(),
                change.root.expires
            );
            println!(
                "private keys:  {} (keep the root key offline)",
                dir.dir.join("keys").display()
            );
        }
        KeysCmd::Rotate {
            dir,
            role,
            revoke,
            expires,
        } => {
            let dir = KeyDir::new(at(&dir));
            let change = keys::rotate(&dir, role, revoke.as_deref(), Time::now(), expires)?;
            for (role, keyid) in &change.added {
                println!("{role:<9} key {keyid} added");
            }
            if let Some(keyid) = &change.revoked {
                println!("{role:<9} key {keyid} revoked");
            }
            println!(
                "root version {} written to {}; publish it with image-build resign",
                change.root.version,
                change.path.display()
            );
        }
        KeysCmd::Show { dir } => print!("{}", keys::show(&KeyDir::new(at(&dir)))?),
    }
    Ok(())
}

fn print_published(repo: &Path, p: &release::Published) {
    println!(
        "repo:     {} (root {}, targets {}, snapshot {}, timestamp {})",
        repo.display(),
        p.root_version,
        p.targets_version,
        p.snapshot_version,
        p.timestamp_version
    );
    println!(
        "timestamp expires {}: run image-build resign before then",
        p.timestamp_expires
    );
}
