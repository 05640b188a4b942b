//! Kernel modules: which ones Atoll ships, their dependency closure from
//! `modules.dep`, and a reduced module tree (`usr/lib/modules/<release>/`)
//! indexed by `depmod` so that its modules.dep and modules.alias list only
//! what ships.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::Kernel;
use crate::tool::{self, ToolError};

/// Modules in a slot: everything the host loads (plus their dependencies).
/// `isofs` is the module that provides the iso9660 file system.
pub const SLOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_console",
    "virtio_rng",
    "squashfs",
    "erofs",
    "overlay",
    "dm_mod",
    "dm_verity",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "isofs",
    "qemu_fw_cfg",
    "bridge",
    "veth",
    "nf_tables",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_fib_ipv4",
    "nft_ct",
    "ena",
    "gve",
    "ata_piix",
    "sd_mod",
    "button",
    "evdev",
    "softdog",
    // SHA-256 with SSSE3/AVX/AVX2/SHA-NI, loaded for the CPU's features:
    // dm-verity and the module signature checks hash with it.
    "sha256_ssse3",
];

/// Modules in the initramfs: only what stage 1 needs to reach the slot's
/// disk and open the verified root.
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ata_piix",
    "dm_mod",
    "dm_verity",
    // Loaded first where the CPU has SSSE3 (init's coldplug takes CPU
    // feature drivers first): every later module's signature check, and
    // dm-verity, hash with it instead of the generic SHA-256.
    "sha256_ssse3",
];

/// Index files copied from the kernel package next to the modules; depmod
/// reads them (built-in modules and their aliases).
const COPIED_INDEX_FILES: &[&str] = &["modules.builtin", "modules.builtin.modinfo"];

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("modules.dep line {line} has no ':': {text:?}")]
    DepLine { line: usize, text: String },
    #[error("module {name} is not in kernel {release} (neither a module nor built in)")]
    Missing { name: String, release: String },
    #[error("module {module} depends on {dep}, which modules.dep does not list")]
    MissingDep { module: String, dep: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModulesError + '_ {
    move |source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The module name of a module file path: the file name without `.ko`
/// (and any compression suffix), with `-` read as `_` as the kernel does.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// One line of modules.dep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDep {
    /// Path relative to the modules directory, e.g. `kernel/fs/squashfs/squashfs.ko`.
    pub path: String,
    /// Paths of the modules it needs.
    pub deps: Vec<String>,
}

/// A parsed modules.dep, keyed by module name.
#[derive(Debug, Clone, Default)]
pub struct DepTable {
    modules: BTreeMap<String, ModuleDep>,
}

impl DepTable {
    pub fn parse(text: &str) -> Result<Self, ModulesError> {
        let mut modules = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| ModulesError::DepLine {
                line: i + 1,
                text: line.to_string(),
            })?;
            let path = path.trim().to_string();
            let deps = deps.split_whitespace().map(str::to_string).collect();
            modules.insert(module_name(&path), ModuleDep { path, deps });
        }
        Ok(Self { modules })
    }

    pub fn get(&self, name: &str) -> Option<&ModuleDep> {
        self.modules.get(&module_name(name))
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The module files (paths relative to the modules directory) that
    /// `wanted` needs, dependencies included. A wanted module that is built
    /// into the kernel needs no file; one that is neither is an error.
    pub fn closure(
        &self,
        wanted: &[&str],
        builtin: &BTreeSet<String>,
        release: &str,
    ) -> Result<BTreeSet<String>, ModulesError> {
        let by_path: BTreeMap<&str, &ModuleDep> = self
            .modules
            .values()
            .map(|m| (m.path.as_str(), m))
            .collect();
        let mut out = BTreeSet::new();
        let mut todo: Vec<&ModuleDep> = Vec::new();
        for name in wanted {
            match self.get(name) {
                Some(m) => todo.push(m),
                None if builtin.contains(&module_name(name)) => {}
                None => {
                    return Err(ModulesError::Missing {
                        name: name.to_string(),
                        release: release.to_string(),
                    })
                }
            }
        }
        while let Some(m) = todo.pop() {
            if !out.insert(m.path.clone()) {
                continue;
            }
            for dep in &m.deps {
                let d = by_path
                    .get(dep.as_str())
                    .ok_or_else(|| ModulesError::MissingDep {
                        module: m.path.clone(),
                        dep: dep.clone(),
                    })?;
                todo.push(d);
            }
        }
        Ok(out)
    }
}

/// Names of the built-in modules, from modules.builtin (one path a line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// Runs `depmod -b <base> <release>`, which indexes `<base>/lib/modules/<release>`.
pub fn depmod(base: &Path, release: &str) -> Result<(), ModulesError> {
    tool::run(Command::new("depmod").arg("-b").arg(base).arg(release))?;
    Ok(())
}

/// The kernel's full module index, from a depmod run over the unpacked package.
#[derive(Debug)]
pub struct KernelModules {
    pub release: String,
    pub dir: PathBuf,
    pub deps: DepTable,
    pub builtin: BTreeSet<String>,
}

impl KernelModules {
    /// Runs depmod over the whole unpacked kernel package and reads the result.
    pub fn index(kernel: &Kernel) -> Result<Self, ModulesError> {
        depmod(&kernel.tree, &kernel.release)?;
        let dir = kernel.modules_dir();
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io(&p))
        };
        Ok(Self {
            release: kernel.release.clone(),
            deps: DepTable::parse(&read("modules.dep")?)?,
            builtin: parse_builtin(&read("modules.builtin")?),
            dir,
        })
    }

    /// Copies the modules `wanted` needs into `<root>/usr/lib/modules/<release>/`
    /// and indexes that reduced tree with depmod. Returns the module count.
    pub fn install(&self, wanted: &[&str], root: &Path) -> Result<usize, ModulesError> {
        let files = self.deps.closure(wanted, &self.builtin, &self.release)?;
        let usr = root.join("usr");
        let dest = usr.join("lib/modules").join(&self.release);
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        for rel in &files {
            let src = self.dir.join(rel);
            let dst = dest.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
        for name in COPIED_INDEX_FILES {
            let src = self.dir.join(name);
            std::fs::copy(&src, dest.join(name)).map_err(io(&src))?;
        }
        // modules.order keeps the kernel's order for the modules that ship.
        let order_path = self.dir.join("modules.order");
        let order = std::fs::read_to_string(&order_path).map_err(io(&order_path))?;
        let kept: String = order
            .lines()
            .filter(|l| files.contains(l.trim()))
            .map(|l| format!("{l}\n"))
            .collect();
        let dst = dest.join("modules.order");
        std::fs::write(&dst, kept).map_err(io(&dst))?;
        depmod(&usr, &self.release)?;
        Ok(files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko:
kernel/drivers/md/dm-mod.ko:
kernel/fs/nls/nls_iso8859-1.ko:
kernel/drivers/net/unused.ko:
";

    #[test]
    fn names_follow_the_kernel() {
        assert_eq!(module_name("kernel/drivers/md/dm-mod.ko"), "dm_mod");
        assert_eq!(
            module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"),
            "nls_iso8859_1"
        );
        assert_eq!(module_name("squashfs"), "squashfs");
    }

    #[test]
    fn closure_follows_dependencies() {
        let t = DepTable::parse(DEP).unwrap();
        assert_eq!(t.len(), 10);
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\n");
        let got = t
            .closure(
                &["dm_verity", "virtio_pci", "nls_iso8859_1", "ext4"],
                &builtin,
                "k",
            )
            .unwrap();
        let want: BTreeSet<String> = [
            "kernel/drivers/md/dm-verity.ko",
            "kernel/drivers/md/dm-bufio.ko",
            "kernel/drivers/md/dm-mod.ko",
            "kernel/drivers/virtio/virtio_pci.ko",
            "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/fs/nls/nls_iso8859-1.ko",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn missing_module_is_named() {
        let t = DepTable::parse(DEP).unwrap();
        let err = t
            .closure(&["virtio_blk"], &BTreeSet::new(), "6.1.0-test")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "module virtio_blk is not in kernel 6.1.0-test (neither a module nor built in)"
        );
    }

    #[test]
    fn dangling_dependency_is_an_error() {
        let t = DepTable::parse("kernel/a.ko: kernel/b.ko\n").unwrap();
        assert!(matches!(
            t.closure(&["a"], &BTreeSet::new(), "k"),
            Err(ModulesError::MissingDep { .. })
        ));
    }

    #[test]
    fn malformed_line_is_an_error() {
        assert!(matches!(
            DepTable::parse("kernel/a.ko\n"),
            Err(ModulesError::DepLine { line: 1, .. })
        ));
    }
}
