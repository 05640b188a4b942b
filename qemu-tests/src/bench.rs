//! The boot benchmark behind `qemu-tests bench`: boots a fresh overlay of the
//! image N times and splits each boot into firmware + GRUB (host wall time
//! from QEMU's start to the kernel's start), kernel, stage 1 and stage 2 to
//! ready (guest milliseconds from the API's `status.boot_times`).
//!
//! The firmware + GRUB share is derived: the wall time at which the harness
//! saw the ready line, minus the guest's own kernel-start-to-ready time.

use std::path::Path;
use std::time::Duration;

use atoll_common::api::BootTimes;

use crate::vm::{Firmware, Vm, VmError, BOOT_TIMEOUT};

/// The goal for stage 1 + stage 2 (kernel handing over to ready), in ms.
pub const STAGES_TARGET_MS: u64 = 300;

/// One measured boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSample {
    /// Host wall time from starting QEMU to seeing the ready line.
    pub wall_to_ready_ms: u64,
    /// The guest's own split (CLOCK_BOOTTIME, 0 = kernel start).
    pub times: BootTimes,
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

    fn columns(&self) -> [i64; 7] {
        [
            self.firmware_grub_ms(),
            self.times.kernel_ms as i64,
            self.times.stage1_ms as i64,
            self.times.stage2_ms as i64,
            self.stages_ms() as i64,
            self.times.total_ms as i64,
            self.wall_to_ready_ms as i64,
        ]
    }
}

/// Boots once on a fresh overlay of `base` (or the default image), reads
/// the status, and stops the VM.
pub fn boot_once(
    firmware: Firmware,
    base: Option<&Path>,
    run: usize,
) -> Result<BootSample, VmError> {
    let mut builder = Vm::builder(&format!("bench-{firmware}-{run}")).firmware(firmware);
    if let Some(b) = base {
        builder = builder.base(b);
    }
    let vm = builder.start()?;
    let ready = vm.wait_ready(BOOT_TIMEOUT)?;
    let wall = ready.seen_at.saturating_duration_since(vm.started_at());
    let status = vm.status()?;
    vm.quit()?;
    Ok(BootSample {
        wall_to_ready_ms: duration_ms(wall),
        times: status.boot_times,
    })
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

/// The results as an aligned table (ms), one row per run plus the median,
/// with the stage 1 + stage 2 target beside its column.
pub fn table(samples: &[BootSample]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    rows.push(HEADERS.iter().map(|h| h.to_string()).collect());
    for (i, s) in samples.iter().enumerate() {
        let mut row = vec![(i + 1).to_string()];
        row.extend(s.columns().iter().map(|v| v.to_string()));
        rows.push(row);
    }
    let medians: Vec<i64> = (0..7)
        .map(|c| median(&samples.iter().map(|s| s.columns()[c]).collect::<Vec<_>>()))
        .collect();
    let mut row = vec!["median".to_string()];
    row.extend(medians.iter().map(|v| v.to_string()));
    rows.push(row);
    let target = format!("target ≤ {STAGES_TARGET_MS}");
    rows.push(
        (0..HEADERS.len())
            .map(|c| {
                if c == 5 {
                    target.clone()
                } else {
                    String::new()
                }
            })
            .collect(),
    );

    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
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
    let m = medians[4];
    out.push_str(&format!(
        "all times in ms; stage 1 + stage 2 median {m} ms: {} the {STAGES_TARGET_MS} ms target\n",
        if m <= STAGES_TARGET_MS as i64 {
            "meets"
        } else {
            "misses"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
    }

    #[test]
    fn split_and_table() {
        let s = sample(6000, 1800, 120, 150);
        assert_eq!(s.firmware_grub_ms(), 6000 - 2070);
        assert_eq!(s.stages_ms(), 270);
        let t = table(&[
            s,
            sample(7000, 1900, 200, 300),
            sample(6500, 1850, 100, 100),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("run"), "{t}");
        assert!(lines[0].contains("stage 1+2"), "{t}");
        // Columns line up: every row has the same length up to the last column.
        let width = lines[0].chars().count();
        for l in &lines[2..6] {
            assert_eq!(l.chars().count(), width, "{t}");
        }
        assert!(lines[5].starts_with("median"), "{t}");
        assert!(lines[5].contains("6500"), "{t}");
        assert!(lines[6].contains("target ≤ 300"), "{t}");
        assert!(t.contains("median 270 ms: meets"), "{t}");
    }
}
