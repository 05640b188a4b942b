//! Stage 1: PID 1 in the initramfs (docs/boot.md, "Boot flow" step 3).
//!
//! Mount /proc, /sys, /dev and /run; load drivers by modalias until the
//! booted slot's partition (found by its GPT name) shows up, plus dm_verity;
//! open dm-verity over it with the root hash from the kernel command line;
//! mount the verified ext4 (built into the kernel) read-only on /sysroot;
//! switch root and execute
//! stage 2 (`/usr/lib/atoll/init`). Any failure prints
//! `atoll: stage 1 failed: <reason>` and reboots after 5 s: GRUB already
//! counted this try, so it falls back to the other slot when tries run out.

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atoll_common::api::{BootStep, Stage1Times};
use atoll_common::error::error_chain;
use atoll_common::layout::{self, Slot};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::clock;
use crate::cmdline::{BootArgs, CmdlineError};
use crate::dm::{self, DmError};
use crate::modules::{ModuleDb, ModuleError};
use crate::superblock::{self, SuperblockError};
use crate::switch_root::{self, SwitchRootError};
use crate::sysblock::SysBlock;

/// Where the verified root is mounted before it becomes `/`.
const SYSROOT: &str = "/sysroot";
/// Block devices and partitions, with their uevent (PARTNAME, DEVNAME).
const CLASS_BLOCK: &str = "/sys/class/block";
/// How long to wait for the slot's partition to show up.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
const DEVICE_POLL: Duration = Duration::from_millis(10);
/// Pause before rebooting after a failure, so the console can be read.
const FAIL_DELAY: Duration = Duration::from_secs(5);
/// The mounts that move into the new root.
const MOVED_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
/// Modules stage 1 needs whatever the hardware.
const REQUIRED_MODULES: [&str; 1] = ["dm_verity"];

#[derive(Debug, thiserror::Error)]
pub enum Stage1Error {
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot read /proc/cmdline")]
    Cmdline(#[source] std::io::Error),
    #[error("bad kernel command line")]
    BootArgs(#[source] CmdlineError),
    #[error("the kernel command line has no {0}= (booted without Atoll's GRUB?)")]
    MissingArg(&'static str),
    #[error("cannot read the module database")]
    ModuleDb(#[source] ModuleError),
    #[error("cannot load {name}")]
    Module {
        name: &'static str,
        #[source]
        source: ModuleError,
    },
    #[error("no partition named {label} after {waited_ms} ms (block devices: {seen})")]
    NoSlot {
        label: &'static str,
        waited_ms: u64,
        seen: String,
    },
    #[error("cannot read the slot headers on {}", device.display())]
    Superblock {
        device: PathBuf,
        #[source]
        source: SuperblockError,
    },
    #[error("cannot set up dm-verity on {}", device.display())]
    Verity {
        device: PathBuf,
        #[source]
        source: DmError,
    },
    #[error(
        "cannot mount {} (dm-verity over {}) on {SYSROOT}: {cause}",
        device.display(),
        slot_device.display()
    )]
    MountRoot {
        device: PathBuf,
        slot_device: PathBuf,
        cause: String,
        #[source]
        source: Errno,
    },
    #[error("{} is missing or unreadable in the slot: {cause}", path.display())]
    NoInit {
        path: PathBuf,
        cause: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} in the slot is not a regular file", path.display())]
    InitNotFile { path: PathBuf },
    #[error("cannot switch root")]
    SwitchRoot(#[source] SwitchRootError),
}

/// A line on the console. Write errors are ignored: there is nowhere else
/// to report them, and PID 1 must not panic over a missing console.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `log` records from the modules code, on the console.
struct ConsoleLog;

impl log::Log for ConsoleLog {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            say(&format!(
                "atoll: stage 1: {}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            ));
        }
    }
    fn flush(&self) {}
}

static CONSOLE_LOG: ConsoleLog = ConsoleLog;

/// Runs stage 1; never returns. Outside PID 1 it refuses to do anything.
pub fn main() -> ! {
    let start_ms = clock::boottime_ms();
    if std::process::id() != 1 {
        eprintln!("atoll: stage 1 runs only as PID 1 in the initramfs");
        std::process::exit(1);
    }
    std::panic::set_hook(Box::new(|info| {
        say(&format!("atoll: stage 1 failed: panic: {info}"));
        reboot();
    }));
    if log::set_logger(&CONSOLE_LOG).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    match run(start_ms) {
        Ok(never) => match never {},
        Err(e) => {
            say(&format!("atoll: stage 1 failed: {}", error_chain(&e)));
            reboot()
        }
    }
}

/// After a failure: wait so the console can be read, sync, reboot. If even
/// that fails, sleep forever (PID 1 must not exit).
fn reboot() -> ! {
    say(&format!(
        "atoll: stage 1: rebooting in {} s",
        FAIL_DELAY.as_secs()
    ));
    std::thread::sleep(FAIL_DELAY);
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    say(&format!("atoll: stage 1: reboot failed: {e}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Named durations, in the order they happened.
struct Steps {
    steps: Vec<BootStep>,
    last: Instant,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            steps: Vec::new(),
            last: Instant::now(),
        }
    }

    /// Closes the step that ran since the previous call; returns its ms.
    fn done(&mut self, name: &str) -> u64 {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_millis() as u64;
        self.last = now;
        self.steps.push(BootStep {
            name: name.to_string(),
            ms,
        });
        ms
    }
}

fn run(start_ms: u64) -> Result<Infallible, Stage1Error> {
    let mut steps = Steps::new();
    mount_api_filesystems()?;
    // This binary, held open: switching root deletes its file.
    let own = std::fs::File::open("/proc/self/exe");
    ensure_console();

    let args = BootArgs::from_proc()
        .map_err(Stage1Error::Cmdline)?
        .map_err(Stage1Error::BootArgs)?;
    let slot = args
        .slot
        .ok_or(Stage1Error::MissingArg(layout::cmdline::SLOT))?;
    let root_hash = args
        .verity
        .ok_or(Stage1Error::MissingArg(layout::cmdline::VERITY))?;
    steps.done("mounts");

    let db = ModuleDb::running_kernel_dir()
        .and_then(|dir| ModuleDb::open(&dir))
        .map_err(Stage1Error::ModuleDb)?;
    // Drivers until the slot's partition shows up; stage 2 loads the rest,
    // and binds the virtio functions that are not storage (pcidefer.rs).
    crate::pcidefer::defer(Path::new(crate::pcidefer::PCI_BUS));
    let report =
        db.coldplug_until(&mut || !SysBlock::new(CLASS_BLOCK).named(slot.label()).is_empty());
    let failed = report.failed.len();
    let mut modules = report.loaded;
    modules.extend(load_required(&db)?);
    let modules_ms = steps.done("modules");

    let slot_device = wait_for_slot(slot)?;
    steps.done("device-wait");

    let params = superblock::read_verity_params(&slot_device, &root_hash).map_err(|source| {
        Stage1Error::Superblock {
            device: slot_device.clone(),
            source,
        }
    })?;
    let root_device =
        dm::create_verity(layout::VERITY_DM_NAME, &slot_device, &slot_device, &params).map_err(
            |source| Stage1Error::Verity {
                device: slot_device.clone(),
                source,
            },
        )?;
    steps.done("verity");

    mount_root(&root_device, &slot_device)?;
    let init = Path::new(SYSROOT).join(layout::SLOT_INIT.trim_start_matches('/'));
    match std::fs::metadata(&init) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(Stage1Error::InitNotFile { path: init }),
        Err(source) => {
            return Err(Stage1Error::NoInit {
                cause: verity_cause(),
                path: init,
                source,
            })
        }
    }
    let verity = match dm::target_status(layout::VERITY_DM_NAME) {
        Ok(Some((_, status))) if status == "V" => "verity ok".to_string(),
        Ok(Some((target, status))) => format!("{target} status {status}"),
        Ok(None) => "verity status unknown".to_string(),
        Err(e) => format!("verity status unknown ({})", error_chain(&e)),
    };
    let stage2 = match own {
        Ok(own) => same_build(&own, &init).map(|()| own),
        Err(e) => Err(format!("cannot open /proc/self/exe: {e}")),
    };
    if let Err(why) = &stage2 {
        log::warn!("stage 2 runs from the slot's {}: {why}", layout::SLOT_INIT);
    }
    steps.done("mount");

    switch_root::switch_root(Path::new(SYSROOT), &MOVED_MOUNTS, layout::INITRD_MARKER)
        .map_err(Stage1Error::SwitchRoot)?;
    steps.done("switch-root");

    let end_ms = clock::boottime_ms();
    let module_count = modules.len();
    let times = Stage1Times {
        start_ms,
        end_ms,
        steps: steps.steps,
        modules,
        slot_device: slot_device.display().to_string(),
    };
    if let Err(e) = write_times(&times) {
        log::warn!("cannot write {}: {e}", layout::STAGE1_TIMES);
    }
    say(&format!(
        "atoll: stage 1: slot {slot} on {}, {} modules in {modules_ms} ms{}, {verity}, \
         switching root ({} ms)",
        slot_device.display(),
        module_count,
        if failed == 0 {
            String::new()
        } else {
            format!(" ({failed} failed)")
        },
        end_ms.saturating_sub(start_ms)
    ));
    let slot_init = Path::new(layout::SLOT_INIT);
    if let Ok(own) = stage2 {
        let e = switch_root::exec_file(&own, slot_init);
        log::warn!("{}; running the slot's copy", error_chain(&e));
    }
    Err(Stage1Error::SwitchRoot(switch_root::exec(slot_init)))
}

/// Whether the slot's `init` is the same build as this binary (the same GNU
/// build id: image-build puts one binary in both the initramfs and the
/// slot). Then stage 1 runs stage 2 from its own copy, already in RAM,
/// instead of paging the binary in from the slot (dm-verity hashes checked
/// on every first touch: about a quarter of a second of a boot under TCG
/// when the slot was squashfs). `Err` says why not.
fn same_build(own: &std::fs::File, slot_init: &Path) -> Result<(), String> {
    let theirs = std::fs::File::open(slot_init).map_err(|e| format!("cannot open it: {e}"))?;
    let mine =
        crate::elf::build_id(own).map_err(|e| format!("this binary: {}", error_chain(&e)))?;
    let slot = crate::elf::build_id(&theirs).map_err(|e| error_chain(&e))?;
    if mine == slot {
        Ok(())
    } else {
        Err(format!(
            "build id {} is not this initramfs's {}",
            hex::encode(&slot),
            hex::encode(&mine)
        ))
    }
}

/// Loads [`REQUIRED_MODULES`]; returns what was newly loaded.
fn load_required(db: &ModuleDb) -> Result<Vec<String>, Stage1Error> {
    let mut loaded = Vec::new();
    for name in REQUIRED_MODULES {
        let mut newly = db
            .load_all(name)
            .map_err(|source| Stage1Error::Module { name, source })?;
        loaded.append(&mut newly);
    }
    Ok(loaded)
}

/// One API file system to mount.
struct ApiMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// What stage 1 mounts before anything else.
fn api_mounts() -> [ApiMount; 4] {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        ApiMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: common,
            data: None,
        },
        ApiMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: common,
            data: None,
        },
        ApiMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        ApiMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ]
}

fn mount_api_filesystems() -> Result<(), Stage1Error> {
    for m in api_mounts() {
        let _ = std::fs::create_dir_all(m.target);
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            // Already mounted (a kernel with CONFIG_DEVTMPFS_MOUNT may have).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(Stage1Error::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    let _ = std::fs::create_dir_all(SYSROOT);
    Ok(())
}

/// The kernel opens /dev/console for PID 1 only if the initramfs has that
/// node; without it, stdin/out/err are closed. Open it from devtmpfs then.
fn ensure_console() {
    use std::os::fd::AsRawFd;
    if nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(console.as_raw_fd(), fd);
        }
    }
}

/// Waits for the slot's partition and returns its device node.
fn wait_for_slot(slot: Slot) -> Result<PathBuf, Stage1Error> {
    let class_block = Path::new(CLASS_BLOCK);
    let sys_block = SysBlock::new(class_block);
    let start = Instant::now();
    loop {
        let found = sys_block.named(slot.label());
        if let Some(first) = found.first() {
            if found.len() > 1 {
                log::warn!(
                    "several partitions are named {}: {}; using {first}",
                    slot.label(),
                    found.join(", ")
                );
            }
            let node = Path::new("/dev").join(first);
            if node.exists() {
                return Ok(node);
            }
        }
        if start.elapsed() >= DEVICE_TIMEOUT {
            let mut seen: Vec<String> = std::fs::read_dir(class_block)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            seen.sort();
            return Err(Stage1Error::NoSlot {
                label: slot.label(),
                waited_ms: start.elapsed().as_millis() as u64,
                seen: if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(" ")
                },
            });
        }
        std::thread::sleep(DEVICE_POLL);
    }
}

/// What a read error under dm-verity most likely means, from the target's
/// status (`C` once it has seen a block that does not match the tree).
fn verity_cause() -> String {
    match dm::target_status(layout::VERITY_DM_NAME) {
        Ok(Some((_, status))) if status.starts_with('C') => {
            "dm-verity found a block that does not match the root hash: the slot is corrupted \
             or atoll.verity is not this slot's root hash (see the kernel's \
             \"device-mapper: verity\" lines)"
                .into()
        }
        _ => "likely verity corruption or a wrong root hash (see the kernel's \
              \"device-mapper: verity\" lines)"
            .into(),
    }
}

fn mount_root(device: &Path, slot_device: &Path) -> Result<(), Stage1Error> {
    mount(
        Some(device),
        SYSROOT,
        Some("ext4"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|source| Stage1Error::MountRoot {
        device: device.to_path_buf(),
        slot_device: slot_device.to_path_buf(),
        cause: verity_cause(),
        source,
    })
}

fn write_times(times: &Stage1Times) -> std::io::Result<()> {
    let path = Path::new(layout::STAGE1_TIMES);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec(times)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn api_mounts_cover_what_moves() {
        let targets: Vec<_> = api_mounts().iter().map(|m| m.target).collect();
        for m in MOVED_MOUNTS {
            assert!(targets.contains(&m), "{m}");
        }
    }

    #[test]
    fn verity_error_names_each_cause_once() {
        let e = Stage1Error::Verity {
            device: "/dev/vda3".into(),
            source: DmError::Ioctl {
                op: "table load",
                name: "atoll-root".into(),
                source: Errno::EINVAL,
            },
        };
        assert_eq!(
            error_chain(&e),
            "cannot set up dm-verity on /dev/vda3: device-mapper table load on \"atoll-root\" \
             failed: EINVAL: Invalid argument"
        );
    }
}
