//! `qemu-tests`: boot an Atoll image interactively (`run`) or measure its
//! boot time (`bench`). The integration tests live in `tests/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qemu_tests::bench;
use qemu_tests::disk;
use qemu_tests::vm::{Firmware, VmBuilder};

#[derive(Debug, Parser)]
#[command(about = "Boot Atoll images under QEMU (TCG)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot the image with the console on this terminal (Ctrl-A X quits).
    /// Each run boots a fresh qcow2 overlay, so the image stays pristine.
    Run {
        /// UEFI (OVMF) instead of BIOS (SeaBIOS).
        #[arg(long)]
        uefi: bool,
        /// The raw image (default: $ATOLL_IMAGE or target/atoll/atoll.raw).
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Boot N times and print the boot time split per run and the median.
    Bench {
        #[arg(long)]
        uefi: bool,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        image: Option<PathBuf>,
    },
}

fn firmware(uefi: bool) -> Firmware {
    if uefi {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

fn image(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(p) => disk::checked_image(&p, "given with --image")?,
        None => disk::base_image()?,
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qemu-tests: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run { uefi, image: img } => {
            let base = image(img)?;
            let status = VmBuilder::new("run")
                .firmware(firmware(uefi))
                .base(&base)
                .run_interactive()?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("qemu-tests: QEMU {status}");
                ExitCode::FAILURE
            })
        }
        Cmd::Bench {
            uefi,
            runs,
            image: img,
        } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let base = image(img)?;
            let fw = firmware(uefi);
            eprintln!("Booting {} {runs} times ({fw}, TCG)...", base.display());
            let mut samples = Vec::new();
            for i in 1..=runs {
                let s = bench::boot_once(fw, Some(&base), i)
                    .with_context(|| format!("boot {i} of {runs}"))?;
                eprintln!(
                    "  run {i}: ready after {} ms wall, stage 1+2 {} ms",
                    s.wall_to_ready_ms,
                    s.stages_ms()
                );
                samples.push(s);
            }
            print!("{}", bench::table(&samples));
            Ok(ExitCode::SUCCESS)
        }
    }
}
