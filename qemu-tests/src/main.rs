//! `qemu-tests`: boot an Atoll image interactively (`run`) or measure its
//! boot time (`bench`). The integration tests live in `tests/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qemu_tests::bench;
use qemu_tests::disk;
use qemu_tests::vm::{Firmware, NetUser, VmBuilder};

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
        /// Size of the VM's disk in GiB; the host grows DATA to fill it on
        /// first boot. At least the image's size.
        #[arg(long, default_value_t = 8)]
        disk_gib: u64,
        /// The host config to pass in fw_cfg (`opt/dev.atoll/config`).
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Pass no config (the host uses its last good or built-in one).
        #[arg(long, conflicts_with = "config")]
        no_config: bool,
    },
    /// Boot N fresh disks, each twice (first boot, then the steady-state
    /// boot after an API reboot), and print both boot time splits per run
    /// and their medians.
    Bench {
        /// UEFI (OVMF) instead of BIOS (SeaBIOS).
        #[arg(long)]
        uefi: bool,
        /// How many fresh disks to boot.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The raw image (default: $ATOLL_IMAGE or target/atoll/atoll.raw).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Run QEMU with `-icount shift=0`: the guest clock counts
        /// instructions, so the guest's split does not depend on host load.
        #[arg(long)]
        icount: bool,
        /// Also print each boot's named steps (stage 1 drivers, stage 2
        /// mounts, network, ...) with their guest ms: where the time goes.
        #[arg(long)]
        steps: bool,
        /// The provisioning config (TOML) given to each boot through fw_cfg
        /// instead of the built-in default (configs/default.toml), e.g. to
        /// see what its containers or network cost.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
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
        Cmd::Run {
            uefi,
            image: img,
            disk_gib,
            config,
            no_config,
        } => {
            let base = image(img)?;
            let image_size = std::fs::metadata(&base)?.len();
            let disk_size = disk_gib.saturating_mul(1 << 30).max(image_size);
            // A user-mode NIC the guest can get out through, as any VM.
            let mut vm = VmBuilder::new("run")
                .firmware(firmware(uefi))
                .base(&base)
                .overlay_size(disk_size)
                .net_user(NetUser::new().open());
            if !no_config {
                let config = if config.is_relative() && !config.exists() {
                    disk::workspace_root().join(&config)
                } else {
                    config
                };
                // Check it here first: a typo is clearer before a boot.
                let bytes = std::fs::read(&config)
                    .with_context(|| format!("reading the config {}", config.display()))?;
                atoll_common::config::parse(&bytes, &config.display().to_string())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!(
                    "qemu-tests: booting with the config {} (fw_cfg {})",
                    config.display(),
                    atoll_common::layout::FW_CFG_CONFIG
                );
                vm = vm.fw_cfg_file(atoll_common::layout::FW_CFG_CONFIG, &config);
            }
            let status = vm.run_interactive()?;
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
            icount,
            steps,
            config: config_file,
        } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let config_toml = match &config_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    // Refused here, not after a boot that falls back to
                    // the last good config.
                    if let Err(e) =
                        atoll_common::config::parse(text.as_bytes(), &path.display().to_string())
                    {
                        anyhow::bail!("{}", e.lines().join("\n"));
                    }
                    Some(text)
                }
                None => None,
            };
            let base = image(img)?;
            let fw = firmware(uefi);
            eprintln!(
                "Booting {} {runs} times, twice each ({fw}, TCG{})...",
                base.display(),
                if icount { ", -icount shift=0" } else { "" }
            );
            let config = bench::BenchConfig {
                firmware: fw,
                base: Some(base),
                icount,
                config_toml,
            };
            let mut samples = Vec::new();
            for i in 1..=runs {
                let s =
                    bench::run_once(&config, i).with_context(|| format!("run {i} of {runs}"))?;
                eprintln!(
                    "  run {i}: first boot ready after {} ms wall, stage 1+2 {} ms; \
                     steady-state ready after {} ms wall, stage 1+2 {} ms",
                    s.first.wall_to_ready_ms,
                    s.first.stages_ms(),
                    s.steady.wall_to_ready_ms,
                    s.steady.stages_ms()
                );
                if steps {
                    eprint!("{}", bench::steps_table(i, &s));
                }
                samples.push(s);
            }
            print!("{}", bench::report(&samples, icount));
            Ok(ExitCode::SUCCESS)
        }
    }
}
