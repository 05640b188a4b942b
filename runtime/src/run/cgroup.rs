//! A cgroup v2 directory per container: controllers enabled down the
//! tree, limits written (memory.max, cpu.max, pids.max, io.weight), the
//! container's first process moved in, and the directory removed (after
//! `cgroup.kill`) on cleanup.
//!
//! The parent (for example `/sys/fs/cgroup/atoll`) is created if missing;
//! its ancestors up to the cgroup2 mount get the needed controllers in
//! `cgroup.subtree_control`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spec::Resources;

/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Errors managing a container's cgroup; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0:?} is not on a cgroup v2 filesystem")]
    NotCgroup2(PathBuf),
    #[error("controller {controller} is not available in {path:?} (has: {available})")]
    Missing {
        controller: String,
        path: PathBuf,
        available: String,
    },
    #[error("cgroup name {0:?} must be one path component")]
    BadName(String),
    #[error("writing {value:?} to {path:?}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {path:?}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether `path` is on cgroup2.
pub fn is_cgroup2(path: &Path) -> bool {
    // f_type's integer type differs between architectures.
    #[allow(clippy::useless_conversion)]
    rustix::fs::statfs(path).is_ok_and(|s| i64::from(s.f_type) == CGROUP2_MAGIC)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// The controllers a set of limits needs.
pub fn controllers_for(resources: &Resources) -> Vec<&'static str> {
    let mut c = Vec::new();
    if resources.memory.as_ref().is_some_and(|m| m.limit.is_some()) {
        c.push("memory");
    }
    if resources
        .cpu
        .as_ref()
        .is_some_and(|m| m.quota.is_some() || m.period.is_some())
    {
        c.push("cpu");
    }
    if resources.pids.is_some() {
        c.push("pids");
    }
    if resources
        .block_io
        .as_ref()
        .is_some_and(|b| b.weight.is_some())
    {
        c.push("io");
    }
    c
}

/// The files and values for a set of limits, in writing order.
pub fn limit_files(resources: &Resources) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if let Some(limit) = resources.memory.as_ref().and_then(|m| m.limit) {
        files.push((
            "memory.max",
            if limit < 0 {
                "max".to_string()
            } else {
                limit.to_string()
            },
        ));
    }
    if let Some(cpu) = &resources.cpu {
        if cpu.quota.is_some() || cpu.period.is_some() {
            let quota = match cpu.quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            files.push((
                "cpu.max",
                format!("{quota} {}", cpu.period.unwrap_or(100_000)),
            ));
        }
    }
    if let Some(p) = &resources.pids {
        files.push((
            "pids.max",
            if p.limit <= 0 {
                "max".to_string()
            } else {
                p.limit.to_string()
            },
        ));
    }
    if let Some(w) = resources.block_io.as_ref().and_then(|b| b.weight) {
        files.push(("io.weight", format!("default {w}")));
    }
    files
}

/// A container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Create `parent/name` with `resources` applied.
    pub fn create(parent: &Path, name: &str, resources: &Resources) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CgroupError::BadName(name.to_string()));
        }
        std::fs::create_dir_all(parent).map_err(|source| CgroupError::Create {
            path: parent.to_path_buf(),
            source,
        })?;
        if !is_cgroup2(parent) {
            return Err(CgroupError::NotCgroup2(parent.to_path_buf()));
        }
        let wanted = controllers_for(resources);
        // Ancestors from the mount's root down to the parent.
        let mut chain: Vec<&Path> = parent.ancestors().take_while(|p| is_cgroup2(p)).collect();
        chain.reverse();
        for dir in chain {
            let available = read(&dir.join("cgroup.controllers"))?;
            let enabled = read(&dir.join("cgroup.subtree_control"))?;
            for c in &wanted {
                if !available.split_whitespace().any(|a| a == *c) {
                    return Err(CgroupError::Missing {
                        controller: c.to_string(),
                        path: dir.to_path_buf(),
                        available: available.trim().to_string(),
                    });
                }
                if !enabled.split_whitespace().any(|a| a == *c) {
                    write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
                }
            }
        }
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path, source }),
        }
        let cgroup = Cgroup { path };
        for (file, value) in limit_files(resources) {
            write(&cgroup.path.join(file), &value)?;
        }
        Ok(cgroup)
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Move a process in (`cgroup.procs`).
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// The pids in it.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(read(&self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Kill everything in it (`cgroup.kill`, Linux 5.14) and remove it,
    /// waiting up to a second for the processes to go.
    pub fn remove(self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() && !self.pids()?.is_empty() {
            write(&kill, "1")?;
        }
        let mut last = None;
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(CgroupError::Remove {
            path: self.path.clone(),
            source: last.unwrap_or_else(|| io::Error::other("busy")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::spec::{BlockIoResources, CpuResources, MemoryResources, PidsResources};

    fn all() -> Resources {
        Resources {
            memory: Some(MemoryResources {
                limit: Some(64 << 20),
            }),
            cpu: Some(CpuResources {
                quota: Some(50_000),
                period: None,
            }),
            pids: Some(PidsResources { limit: 64 }),
            block_io: Some(BlockIoResources { weight: Some(200) }),
        }
    }

    #[test]
    fn limits_map_to_files() {
        assert_eq!(
            limit_files(&all()),
            vec![
                ("memory.max", "67108864".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("pids.max", "64".to_string()),
                ("io.weight", "default 200".to_string()),
            ]
        );
        assert_eq!(controllers_for(&all()), vec!["memory", "cpu", "pids", "io"]);
        assert!(limit_files(&Resources::default()).is_empty());
        let unlimited = Resources {
            memory: Some(MemoryResources { limit: Some(-1) }),
            cpu: Some(CpuResources {
                quota: Some(-1),
                period: Some(20_000),
            }),
            pids: Some(PidsResources { limit: 0 }),
            block_io: None,
        };
        assert_eq!(
            limit_files(&unlimited),
            vec![
                ("memory.max", "max".to_string()),
                ("cpu.max", "max 20000".to_string()),
                ("pids.max", "max".to_string()),
            ]
        );
    }

    #[test]
    fn refuses_bad_names_and_non_cgroup2() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Cgroup::create(dir.path(), "../x", &all()),
            Err(CgroupError::BadName(_))
        ));
        assert!(matches!(
            Cgroup::create(dir.path(), "c1", &all()),
            Err(CgroupError::NotCgroup2(_))
        ));
    }

    /// On a real cgroup v2 tree with the controllers: create, limit, move
    /// a child process in, remove.
    #[test]
    fn real_cgroup_v2_limits() {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| is_cgroup2(p));
        let Some(root) = root else {
            eprintln!("skipped: no cgroup v2 mount");
            return;
        };
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = controllers_for(&all())
            .into_iter()
            .filter(|c| !controllers.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() || !rustix::process::geteuid().is_root() {
            eprintln!("skipped: cgroup v2 at {root:?} lacks {missing:?} (hybrid host) or not root");
            return;
        }
        let parent = root.join("atoll-test");
        let name = format!("unit-{}", std::process::id());
        let cg = Cgroup::create(&parent, &name, &all()).expect("create");
        assert_eq!(
            std::fs::read_to_string(cg.path().join("memory.max"))
                .expect("read")
                .trim(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(cg.path().join("pids.max"))
                .expect("read")
                .trim(),
            "64"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        cg.add(pid).expect("add");
        assert_eq!(cg.pids().expect("pids"), vec![pid]);
        cg.remove().expect("remove");
        let _ = child.wait();
        let _ = std::fs::remove_dir(&parent);
    }
}
