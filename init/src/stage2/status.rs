//! The pieces of the host status that are read from the system: the root
//! mount, the slot's version, the boot time split.

use std::path::Path;

use atoll_common::api::{BootStep, BootTimes, RootStatus, Stage1Times, Status};
use atoll_common::layout;

use super::mounts;
use crate::clock;

/// Reads `KEY=value` (value optionally quoted) from an os-release file.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// The version of the booted slot, from /usr/lib/os-release.
pub fn slot_version(path: &Path) -> Option<String> {
    os_release_value(&std::fs::read_to_string(path).ok()?, "VERSION")
}

/// The boot time split from stage 1's report and stage 2's own steps.
/// Stage 2 starts where stage 1 ended (just before it executed stage 2), so
/// the exec itself (loading the binary and its libraries) counts, as its own
/// first step; without stage 1's report, at `stage2_start_ms`.
pub fn boot_times(
    stage1: Option<&Stage1Times>,
    stage2_start_ms: u64,
    ready_ms: Option<u64>,
    stage2_steps: &[BootStep],
) -> BootTimes {
    let (kernel_ms, stage1_ms, mut steps, stage2_from) = match stage1 {
        Some(s) => (
            s.start_ms,
            s.end_ms.saturating_sub(s.start_ms),
            s.steps
                .iter()
                .map(|st| BootStep {
                    name: format!("stage1: {}", st.name),
                    ms: st.ms,
                })
                .chain(std::iter::once(BootStep {
                    name: "stage2: exec".into(),
                    ms: stage2_start_ms.saturating_sub(s.end_ms),
                }))
                .collect(),
            s.end_ms.min(stage2_start_ms),
        ),
        None => (0, 0, Vec::new(), stage2_start_ms),
    };
    steps.extend(stage2_steps.iter().map(|st| BootStep {
        name: format!("stage2: {}", st.name),
        ms: st.ms,
    }));
    let (stage2_ms, total_ms) = match ready_ms {
        Some(r) => (r.saturating_sub(stage2_from), r),
        None => (0, 0),
    };
    BootTimes {
        kernel_ms,
        stage1_ms,
        stage2_ms,
        total_ms,
        steps,
    }
}

/// Stage 2's step clock: each [`Steps::done`] records the time since the last.
#[derive(Debug)]
pub struct Steps {
    last_ms: u64,
    pub steps: Vec<BootStep>,
}

impl Steps {
    pub fn starting_at(ms: u64) -> Self {
        Self {
            last_ms: ms,
            steps: Vec::new(),
        }
    }

    pub fn done(&mut self, name: &str) {
        let now = clock::boottime_ms();
        self.steps.push(BootStep {
            name: name.to_string(),
            ms: now.saturating_sub(self.last_ms),
        });
        self.last_ms = now;
    }
}

/// The root file system from mountinfo, with dm-verity's view of it.
pub fn root_status() -> RootStatus {
    let mounts = mounts::read_mountinfo();
    let mut root = match mounts::mount_at(&mounts, "/") {
        Some(m) => RootStatus {
            device: m.source.clone(),
            fs_type: m.fs_type.clone(),
            read_only: m.read_only(),
            dm_target: None,
            verity_status: None,
        },
        None => RootStatus::default(),
    };
    if let Ok(Some((target, status))) = crate::dm::target_status(layout::VERITY_DM_NAME) {
        if target == "verity" {
            root.verity_status = Some(status.trim().to_string());
        }
        root.dm_target = Some(target);
    }
    root
}

/// Updates the parts of the status that change while the host runs.
pub fn refresh(status: &mut Status) {
    status.uptime_ms = clock::boottime_ms();
    if let Ok(h) = nix::unistd::gethostname() {
        status.hostname = h.to_string_lossy().into_owned();
    }
    super::data::fill_usage(&mut status.data, Path::new("/var"));
    status.root = root_status();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_os_release() {
        let t = "NAME=Atoll\nVERSION=\"0.1.0\"\nBUILD_ID='abc'\nKERNEL=6.1.0\n";
        assert_eq!(os_release_value(t, "VERSION").as_deref(), Some("0.1.0"));
        assert_eq!(os_release_value(t, "BUILD_ID").as_deref(), Some("abc"));
        assert_eq!(os_release_value(t, "KERNEL").as_deref(), Some("6.1.0"));
        assert_eq!(os_release_value(t, "NAM"), None);
    }

    #[test]
    fn splits_boot_time() {
        let s1 = Stage1Times {
            start_ms: 1800,
            end_ms: 1900,
            steps: vec![BootStep {
                name: "modules".into(),
                ms: 60,
            }],
            modules: vec![],
            slot_device: "/dev/vda3".into(),
        };
        let s2 = [BootStep {
            name: "data".into(),
            ms: 40,
        }];
        let t = boot_times(Some(&s1), 1910, Some(2010), &s2);
        // Stage 2 counts from stage 1's end: the exec's 10 ms are its own.
        assert_eq!(
            (t.kernel_ms, t.stage1_ms, t.stage2_ms, t.total_ms),
            (1800, 100, 110, 2010)
        );
        assert_eq!(t.steps[0].name, "stage1: modules");
        assert_eq!(
            (t.steps[1].name.as_str(), t.steps[1].ms),
            ("stage2: exec", 10)
        );
        assert_eq!(t.steps[2].name, "stage2: data");
        let t = boot_times(None, 5, None, &[]);
        assert_eq!(t.total_ms, 0);
    }
}
