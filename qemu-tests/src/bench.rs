//! The boot benchmark behind `qemu-tests bench`: boots a fresh overlay of the
//! image N times; each run measures the first boot (DATA set up for the
//! first time, the machine id drawn: once in a host's life), then reboots
//! through the host API and measures the second boot, the steady state every
//! later boot looks like. Each boot is split into firmware + GRUB (host wall
//! time), kernel, stage 1 and stage 2 to ready (guest milliseconds from the
//! API's `status.boot_times`).
//!
//! The firmware + GRUB share is derived: the wall time from the boot's start
//! (QEMU started, or the kernel's `reboot: Restarting system` line seen) to
//! the ready line, minus the guest's own kernel-start-to-ready time.
//!
//! With `icount` QEMU runs with `-icount shift=0`: the guest clock counts
//! one nanosecond per instruction instead of following the host clock, so
//! the guest's split no longer depends on how busy the host is. Guest and
//! host times are then in different units, and firmware + GRUB is not
//! derived.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use atoll_common::api::{BootTimes, Status};

use crate::vm::{Firmware, Vm, VmBuilder, VmError, BOOT_TIMEOUT, SHUTDOWN_TIMEOUT};

/// The goal for stage 1 + stage 2 (kernel handing over to ready) on a
/// steady-state boot, in ms.
pub const STAGES_TARGET_MS: u64 = 300;

/// QEMU's arguments for `icount`: a guest clock that counts instructions.
pub const ICOUNT_ARGS: [&str; 2] = ["-icount", "shift=0"];

/// The kernel's last console line before the machine resets: where the
/// second boot's wall time starts.
pub const RESTART_LINE: &str = "reboot: Restarting system";

/// How long PID 1 may take after its ready line to read the boot state
/// (it fills the slot table then); the benchmark reboots only after that.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How much longer every wait is under `icount`: a boot takes about twice
/// as long in wall time with SeaBIOS and six times with OVMF (some 80 s).
pub const ICOUNT_SLOWDOWN: u32 = 3;

/// One measured boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSample {
    /// Host wall time from the boot's start (QEMU started, or the reset
    /// seen on the console) to seeing the ready line.
    pub wall_to_ready_ms: u64,
    /// The guest's own split (CLOCK_BOOTTIME, 0 = kernel start).
    pub times: BootTimes,
    /// The DHCP lease's DISCOVER-to-ACK time (guest ms), from `net status`.
    pub lease_ms: Option<u64>,
    /// Guest ms from PID 1's start to the first output line of the
    /// config's first container (the default's `hello`), from its log
    /// record.
    pub first_container_ms: Option<u64>,
}

impl BootSample {
    /// Firmware + GRUB: wall time to ready minus the guest's kernel-to-ready
    /// time (may come out slightly negative if the clocks disagree).
    pub fn firmware_grub_ms(&self) -> i64 {
        self.wall_to_ready_ms as i64 - self.times.total_ms as i64
    }

    pub fn stages_ms(&self) -> u64 {
        self.times.stage1_ms + self.times.stage2_ms
    }

    /// Guest ms from PID 1's start to the end of the stage 2 step whose
    /// name ends with `step` (the steps are consecutive, from PID 1's start).
    pub fn stage2_until(&self, step: &str) -> Option<u64> {
        let mut total = 0;
        for s in &self.times.steps {
            if let Some(name) = s.name.strip_prefix("stage2: ") {
                total += s.ms;
                if name.ends_with(step) {
                    return Some(total);
                }
            }
        }
        None
    }

    /// The table's columns; firmware + GRUB is left out (`None`) when the
    /// guest clock is not the host's (`icount`).
    fn columns(&self, icount: bool) -> [Option<i64>; 7] {
        [
            (!icount).then(|| self.firmware_grub_ms()),
            Some(self.times.kernel_ms as i64),
            Some(self.times.stage1_ms as i64),
            Some(self.times.stage2_ms as i64),
            Some(self.stages_ms() as i64),
            Some(self.times.total_ms as i64),
            Some(self.wall_to_ready_ms as i64),
        ]
    }
}

/// One run: the first boot of a fresh disk, then the boot after an API
/// reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSample {
    pub first: BootSample,
    pub steady: BootSample,
}

/// What the benchmark boots, and how.
#[derive(Debug, Clone, Default)]
pub struct BenchConfig {
    pub firmware: Firmware,
    /// The raw image under each run's overlay (`None`: the default image).
    pub base: Option<PathBuf>,
    /// QEMU with [`ICOUNT_ARGS`].
    pub icount: bool,
    /// The config given through fw_cfg (`None`: the built-in default).
    pub config_toml: Option<String>,
}

impl BenchConfig {
    fn builder(&self, run: usize) -> VmBuilder {
        let clock = if self.icount { "-icount" } else { "" };
        let mut b =
            Vm::builder(&format!("bench-{}{clock}-{run}", self.firmware)).firmware(self.firmware);
        if let Some(base) = &self.base {
            b = b.base(base);
        }
        // As a host in a cloud: a NIC with DHCP, and a config (the default
        // one unless told).
        b = b
            .net_user(crate::vm::NetUser::new())
            .fw_cfg_string(atoll_common::layout::FW_CFG_CONFIG, self.config_text());
        if self.icount {
            for a in ICOUNT_ARGS {
                b = b.arg(a);
            }
        }
        b
    }

    /// The config's first container, whose first output line is timed
    /// (`hello` in the default config; `None` if it has none).
    pub fn first_container(&self) -> Option<String> {
        atoll_common::config::parse(self.config_text().as_bytes(), "bench config")
            .ok()?
            .containers
            .first()
            .map(|c| c.name.clone())
    }

    /// The config each boot gets.
    fn config_text(&self) -> &str {
        self.config_toml
            .as_deref()
            .unwrap_or(atoll_common::config::BUILTIN_DEFAULT_TOML)
    }

    /// `base` stretched for `icount`.
    fn timeout(&self, base: Duration) -> Duration {
        if self.icount {
            base * ICOUNT_SLOWDOWN
        } else {
            base
        }
    }
}

/// Run `run`: boots a fresh overlay to ready, reboots it through the API,
/// waits for ready again, and stops the VM.
pub fn run_once(config: &BenchConfig, run: usize) -> Result<RunSample, VmError> {
    let vm = config.builder(run).start()?;
    let (first, _) = measure(&vm, config, vm.started_at())?;
    vm.reboot()?;
    let reset = vm.wait_for(RESTART_LINE, config.timeout(SHUTDOWN_TIMEOUT))?;
    let (steady, status) = measure(&vm, config, reset.seen_at)?;
    // A second boot that still sets DATA up is not the steady state.
    vm.check(
        status.data.state == "mounted" && status.previous_shutdown == "clean",
        || {
            format!(
                "the boot after the API reboot is not a steady-state boot: DATA {:?}, previous shutdown {:?}",
                status.data.state, status.previous_shutdown
            )
        },
    )?;
    vm.quit()?;
    Ok(RunSample { first, steady })
}

/// Waits for the next ready line and the host's status once it has read
/// its boot state (so that a reboot interrupts none of its post-ready
/// work); `since` is when this boot started.
fn measure(vm: &Vm, config: &BenchConfig, since: Instant) -> Result<(BootSample, Status), VmError> {
    let ready = vm.wait_ready(config.timeout(BOOT_TIMEOUT))?;
    let wall = ready.seen_at.saturating_duration_since(since);
    let status = vm.wait_status(
        "the slot table (boot state read after ready)",
        config.timeout(SETTLE_TIMEOUT),
        |s| !s.slots.is_empty(),
    )?;
    let mut lease_ms = None;
    for r in vm.api(&atoll_common::api::Request::NetStatus)? {
        if let atoll_common::api::Response::Net(n) = r {
            lease_ms = n
                .interfaces
                .iter()
                .find_map(|i| i.lease.as_ref().map(|l| l.obtained_in_ms));
        }
    }
    let first_container_ms = first_container_line(vm, &status.boot_times, config)?;
    let sample = BootSample {
        wall_to_ready_ms: duration_ms(wall),
        times: status.boot_times.clone(),
        lease_ms,
        first_container_ms,
    };
    Ok((sample, status))
}

/// Guest ms from PID 1's start (kernel + stage 1) to the newest record of
/// the config's first container's stdout (this boot's first line: the
/// default config's `hello` prints one); `None` without a container.
fn first_container_line(
    vm: &Vm,
    times: &BootTimes,
    config: &BenchConfig,
) -> Result<Option<u64>, VmError> {
    let Some(name) = config.first_container() else {
        return Ok(None);
    };
    let deadline = Instant::now() + config.timeout(SETTLE_TIMEOUT);
    let pid1_start_us = (times.kernel_ms + times.stage1_ms) * 1000;
    loop {
        let req = atoll_common::api::Request::Logs {
            lines: 0,
            follow: false,
            ident: Some(name.clone()),
        };
        let newest = vm
            .api(&req)?
            .into_iter()
            .filter_map(|r| match r {
                atoll_common::api::Response::Log(l) => Some(l),
                _ => None,
            })
            .rfind(|l| l.stream.as_deref() == Some("stdout"));
        // A record from this boot: after PID 1 started (the store also
        // holds the previous boot's).
        if let Some(l) = newest.filter(|l| l.boottime_us >= pid1_start_us) {
            return Ok(Some((l.boottime_us - pid1_start_us) / 1000));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The median (the lower middle one for an even count); 0 when empty.
pub fn median(values: &[i64]) -> i64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n => v[(n - 1) / 2],
    }
}

const HEADERS: [&str; 8] = [
    "run",
    "firmware+GRUB",
    "kernel",
    "stage 1",
    "stage 2",
    "stage 1+2",
    "kernel→ready",
    "wall→ready",
];
/// The stage 1 + stage 2 column.
const STAGES_COLUMN: usize = 5;

/// Which boot of the runs a table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// The first boot of a fresh disk.
    First,
    /// The boot after an API reboot: every later boot looks like it.
    Steady,
}

impl Boot {
    fn title(self) -> &'static str {
        match self {
            Boot::First => "first boot (fresh disk: DATA set up, machine id drawn; once per host)",
            Boot::Steady => "steady-state boot (after an API reboot)",
        }
    }
}

fn cell(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// One boot of every run as an aligned table (ms), one row per run plus
/// the median; the steady-state table carries the stage 1 + stage 2 target
/// beside its column and says whether the median meets it.
pub fn table(boot: Boot, samples: &[BootSample], icount: bool) -> String {
    let cols: Vec<[Option<i64>; 7]> = samples.iter().map(|s| s.columns(icount)).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    rows.push(HEADERS.iter().map(|h| h.to_string()).collect());
    for (i, c) in cols.iter().enumerate() {
        let mut row = vec![(i + 1).to_string()];
        row.extend(c.iter().map(|v| cell(*v)));
        rows.push(row);
    }
    let medians: Vec<Option<i64>> = (0..7)
        .map(|c| {
            let v: Vec<i64> = cols.iter().filter_map(|r| r[c]).collect();
            (!v.is_empty()).then(|| median(&v))
        })
        .collect();
    let mut row = vec!["median".to_string()];
    row.extend(medians.iter().map(|v| cell(*v)));
    rows.push(row);
    if boot == Boot::Steady {
        let target = format!("target ≤ {STAGES_TARGET_MS}");
        rows.push(
            (0..HEADERS.len())
                .map(|c| {
                    if c == STAGES_COLUMN {
                        target.clone()
                    } else {
                        String::new()
                    }
                })
                .collect(),
        );
    }

    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("{}\n", boot.title());
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    if boot == Boot::Steady {
        let m = medians[STAGES_COLUMN - 1].unwrap_or(0);
        out.push_str(&format!(
            "stage 1 + stage 2 median {m} ms: {} the {STAGES_TARGET_MS} ms target\n",
            if m <= STAGES_TARGET_MS as i64 {
                "meets"
            } else {
                "misses"
            }
        ));
    }
    out
}

/// The DHCP lease target: DISCOVER to ACK under QEMU user networking.
pub const LEASE_TARGET_MS: u64 = 100;

/// The target for PID 1's start to the first container's first line.
pub const FIRST_CONTAINER_TARGET_MS: u64 = 500;

/// Provisioning: guest ms from PID 1's start to the config applied, to
/// the network configured and to the first container line, and the DHCP
/// lease time, per run and boot.
pub fn provisioning_table(runs: &[RunSample]) -> String {
    let mut out = String::from(
        "provisioning (guest ms from PID 1 start; lease = DHCP DISCOVER to ACK; \
         container = the config's first container's first output line)\n",
    );
    out.push_str(&format!(
        "{:<8} {:>15} {:>19} {:>9} {:>10}\n",
        "boot", "config applied", "network configured", "lease", "container"
    ));
    let mut leases = Vec::new();
    let mut firsts = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for (name, b) in [("first", &r.first), ("steady", &r.steady)] {
            out.push_str(&format!(
                "{:<8} {:>15} {:>19} {:>9} {:>10}\n",
                format!("{}/{name}", i + 1),
                cell(b.stage2_until("config: applied").map(|v| v as i64)),
                cell(b.stage2_until("network configured").map(|v| v as i64)),
                cell(b.lease_ms.map(|v| v as i64)),
                cell(b.first_container_ms.map(|v| v as i64)),
            ));
            leases.extend(b.lease_ms.map(|v| v as i64));
            if name == "steady" {
                firsts.extend(b.first_container_ms.map(|v| v as i64));
            }
        }
    }
    if !firsts.is_empty() {
        let m = median(&firsts);
        out.push_str(&format!(
            "first container line, steady-state median {m} ms: {} the {FIRST_CONTAINER_TARGET_MS} ms target\n",
            if m <= FIRST_CONTAINER_TARGET_MS as i64 {
                "meets"
            } else {
                "misses"
            }
        ));
    }
    if leases.is_empty() {
        out.push_str("no DHCP lease was reported\n");
    } else {
        let m = median(&leases);
        out.push_str(&format!(
            "DHCP lease median {m} ms: {} the {LEASE_TARGET_MS} ms target\n",
            if m <= LEASE_TARGET_MS as i64 {
                "meets"
            } else {
                "misses"
            }
        ));
    }
    out
}

/// Both boots' named steps of run `run`, side by side (guest ms each).
pub fn steps_table(run: usize, r: &RunSample) -> String {
    let mut out = format!(
        "run {run}: steps (guest ms)\n{:>8} {:>8}  step\n",
        "first", "steady"
    );
    let mut names: Vec<&str> = r
        .first
        .times
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for s in &r.steady.times.steps {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let ms = |b: &BootSample, name: &str| {
        cell(
            b.times
                .steps
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.ms as i64),
        )
    };
    for name in names {
        out.push_str(&format!(
            "{:>8} {:>8}  {name}\n",
            ms(&r.first, name),
            ms(&r.steady, name)
        ));
    }
    out
}

/// Both tables and a note on the units.
pub fn report(runs: &[RunSample], icount: bool) -> String {
    let first: Vec<BootSample> = runs.iter().map(|r| r.first.clone()).collect();
    let steady: Vec<BootSample> = runs.iter().map(|r| r.steady.clone()).collect();
    let note = if icount {
        "all times in ms; guest columns (kernel .. kernel→ready) in icount time (-icount shift=0: \
         1 ns per guest instruction, independent of host load), wall→ready in host time; \
         firmware+GRUB is not derived under icount\n"
    } else {
        "all times in ms; firmware+GRUB = wall→ready − kernel→ready (host wall time, \
         from QEMU's start or the kernel's restart line)\n"
    };
    format!(
        "{}\n{}\n{}{note}",
        table(Boot::First, &first, icount),
        table(Boot::Steady, &steady, icount),
        provisioning_table(runs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timed_container_is_the_configs_first() {
        let default = BenchConfig::default();
        assert_eq!(default.first_container().as_deref(), Some("hello"));
        let none = BenchConfig {
            config_toml: Some("[network]\ndhcp_default = true\n".into()),
            ..BenchConfig::default()
        };
        assert_eq!(none.first_container(), None);
        let two = BenchConfig {
            config_toml: Some(
                "[[containers]]\nname = \"web\"\nimage = \"localhost/atoll/busybox:latest\"\n\
                 [[containers]]\nname = \"db\"\nimage = \"localhost/atoll/busybox:latest\"\n"
                    .into(),
            ),
            ..BenchConfig::default()
        };
        assert_eq!(two.first_container().as_deref(), Some("web"));
    }

    fn sample(wall: u64, k: u64, s1: u64, s2: u64) -> BootSample {
        BootSample {
            wall_to_ready_ms: wall,
            times: BootTimes {
                kernel_ms: k,
                stage1_ms: s1,
                stage2_ms: s2,
                total_ms: k + s1 + s2,
                steps: vec![],
            },
            lease_ms: None,
            first_container_ms: None,
        }
    }

    #[test]
    fn provisioning_split() {
        use atoll_common::api::BootStep;
        let mut a = sample(1000, 500, 100, 200);
        let step = |name: &str, ms| BootStep {
            name: name.into(),
            ms,
        };
        a.times.steps = vec![
            step("stage1: modules", 90),
            step("stage2: mounts", 10),
            step("stage2: config: local sources", 20),
            step("stage2: config: applied", 5),
            step("stage2: network configured", 40),
        ];
        a.lease_ms = Some(25);
        assert_eq!(a.stage2_until("config: applied"), Some(35));
        assert_eq!(a.stage2_until("network configured"), Some(75));
        assert_eq!(a.stage2_until("nothing"), None);
        let t = provisioning_table(&[RunSample {
            first: a.clone(),
            steady: a,
        }]);
        assert!(t.contains("1/steady"), "{t}");
        assert!(
            t.contains("DHCP lease median 25 ms: meets the 100 ms target"),
            "{t}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
    }

    #[test]
    fn split_and_tables() {
        let s = sample(6000, 1800, 120, 150);
        assert_eq!(s.firmware_grub_ms(), 6000 - 2070);
        assert_eq!(s.stages_ms(), 270);
        let samples = [
            s,
            sample(7000, 1900, 200, 300),
            sample(6500, 1850, 100, 100),
        ];
        let t = table(Boot::Steady, &samples, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("steady-state"), "{t}");
        assert!(lines[1].starts_with("run"), "{t}");
        assert!(lines[1].contains("stage 1+2"), "{t}");
        // Columns line up: every row has the same length up to the last column.
        let width = lines[1].chars().count();
        for l in &lines[3..7] {
            assert_eq!(l.chars().count(), width, "{t}");
        }
        assert!(lines[6].starts_with("median"), "{t}");
        assert!(lines[6].contains("6500"), "{t}");
        // The target sits under the stage 1+2 column.
        let col_end = lines[1].find("stage 1+2").unwrap() + "stage 1+2".len();
        let target_end = lines[7].find("target ≤ 300").unwrap() + "target ≤ 300".len();
        assert_eq!(
            lines[1][..col_end].chars().count(),
            lines[7][..target_end].chars().count(),
            "{t}"
        );
        assert!(t.contains("median 270 ms: meets"), "{t}");

        let t = table(Boot::First, &samples, false);
        assert!(t.starts_with("first boot"), "{t}");
        assert!(!t.contains("target"), "{t}");
        assert!(t.lines().last().unwrap().starts_with("median"), "{t}");
    }

    #[test]
    fn icount_leaves_out_firmware_grub() {
        let samples = [sample(60000, 1800, 120, 500), sample(61000, 1800, 130, 400)];
        let t = table(Boot::Steady, &samples, true);
        let median = t.lines().find(|l| l.starts_with("median")).unwrap();
        let cells: Vec<&str> = median.split_whitespace().collect();
        assert_eq!(cells[1], "-", "{t}");
        assert_eq!(cells[5], "530", "{t}"); // stage 1+2: 620 and 530
        assert!(t.contains("median 530 ms: misses"), "{t}");
    }

    #[test]
    fn report_has_both_tables() {
        let runs = [RunSample {
            first: sample(9000, 1800, 800, 1200),
            steady: sample(6000, 1800, 120, 150),
        }];
        let r = report(&runs, false);
        let first = r.find("first boot").unwrap();
        let steady = r.find("steady-state boot").unwrap();
        assert!(first < steady, "{r}");
        assert!(r[first..steady].contains("2000"), "{r}"); // first stage 1+2
        assert!(r[steady..].contains("median 270 ms: meets"), "{r}");
        assert!(report(&runs, true).contains("icount"));
    }
}
