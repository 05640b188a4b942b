//! `image-build`: builds Atoll's disk image. See image-build/README.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use image_build::image::{self, size};
use image_build::kernel::Fetched;
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
        /// mke2fs to ship in the slot (with its libraries).
        #[arg(long, default_value = "/usr/sbin/mke2fs")]
        mke2fs: PathBuf,
        /// Also write OUT/atoll.qcow2.
        #[arg(long)]
        qcow2: bool,
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
        Cmd::Disk {
            out,
            cache,
            init,
            atollctl,
            mke2fs,
            qcow2,
        } => {
            let out = at(&out);
            let opts = image::DiskOptions {
                cache: cache.map_or_else(|| out.join("cache"), |c| at(&c)),
                out: out.clone(),
                init: at(&init),
                atollctl: at(&atollctl),
                mke2fs,
                qcow2,
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
            println!();
            println!(
                "Boot it: ./run.sh (BIOS) or ./run.sh --uefi, or by hand on a throw-away overlay:"
            );
            println!(
                "  qemu-img create -f qcow2 -F raw -b {} /tmp/atoll.qcow2",
                raw.display()
            );
            println!("  qemu-system-x86_64 -accel tcg -m 512 -nographic -drive file=/tmp/atoll.qcow2,if=virtio");
            println!("  UEFI: add -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
            println!("        -drive if=pflash,format=raw,file=<a copy of /usr/share/OVMF/OVMF_VARS_4M.fd>");
        }
    }
    Ok(())
}
