//! Kernel modules: the depmod database and modalias coldplug.
//!
//! [`ModuleDb`] reads the text files `depmod` writes into
//! `/usr/lib/modules/<release>/` (`modules.dep`, `modules.alias`,
//! `modules.builtin`, and `modules.builtin.modinfo` when present) and loads
//! modules with `finit_module(2)`, dependencies first. [`ModuleDb::coldplug`]
//! does what `udevadm trigger` and udev's kmod builtin do at boot for bus
//! devices: it reads the `MODALIAS` of every device in `/sys/bus/*/devices`
//! (from its `uevent`, which also covers the CPUs, whose devices have no
//! `modalias` file), matches it against the `modules.alias` patterns (shell
//! globs, as `fnmatch(3)` without flags) and loads what matches. It repeats,
//! looking only at devices it has not seen, while loading drivers makes new
//! devices appear (virtio_pci creates the virtio devices that virtio_blk
//! binds to).
//!
//! Why the bus directories rather than a walk of /sys/devices: the walk
//! visits ~3200 entries in a small QEMU guest and took 85–130 ms per pass
//! under TCG; the bus listing reads ~270 entries for the same aliases.
//! Class-only devices are not looked at: of them only input devices carry a
//! MODALIAS (mousedev, joydev), which a server does not need at boot.
//!
//! Both init stages use it: stage 1 for the storage drivers in the
//! initramfs, stage 2 for the rest from the root.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use atoll_common::error::error_chain;
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// Where module trees live (`<SLOT_MODULES>/<release>/`).
pub use atoll_common::layout::SLOT_MODULES as MODULES_ROOT;

/// Coldplug stops after this many rounds of "load, look for new devices".
const MAX_COLDPLUG_PASSES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: malformed line {text:?}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("cannot tell the running kernel's release")]
    Uname(#[source] Errno),
    #[error("no module, built-in or alias named {0:?}")]
    NotFound(String),
    #[error("cannot open module {name} ({})", path.display())]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading module {name} ({}) failed{}", path.display(), errno_hint(*source))]
    Load {
        name: String,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("module {name} needs {dependency}")]
    Dependency {
        name: String,
        dependency: String,
        #[source]
        source: Box<ModuleError>,
    },
    #[error("module {0} depends on itself in modules.dep")]
    Cycle(String),
}

/// What the kernel usually means by an errno from `finit_module`.
fn errno_hint(e: Errno) -> &'static str {
    match e {
        Errno::ENOENT => " (unknown symbol: a dependency is missing, see dmesg)",
        Errno::ENOEXEC => " (not a module for this kernel)",
        Errno::EKEYREJECTED | Errno::EKEYREVOKED | Errno::EBADMSG => " (module signature rejected)",
        Errno::ENODEV | Errno::ENXIO => " (no matching hardware)",
        _ => "",
    }
}

/// What [`ModuleDb::coldplug`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdplugReport {
    /// Modules newly loaded, dependencies included, in load order.
    pub loaded: Vec<String>,
    /// Modules that could not be loaded, with the reason.
    pub failed: Vec<(String, String)>,
    pub elapsed_ms: u64,
}

/// The module name the kernel uses: `dm-verity` and `dm_verity` are one module.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a `modules.dep` path (`kernel/drivers/md/dm-verity.ko` → `dm_verity`).
fn name_of_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    (!stem.is_empty()).then(|| normalize(stem))
}

#[derive(Debug, Clone)]
struct Module {
    /// Relative to the tree (or absolute, as old depmods wrote).
    path: PathBuf,
    /// All dependencies, by name.
    deps: Vec<String>,
}

/// `modules.alias` patterns, bucketed by their literal bus prefix (the text
/// before the first `:`) so a modalias is matched against its own bus only.
#[derive(Debug, Default)]
struct AliasTable {
    by_prefix: HashMap<String, Vec<(String, String)>>,
    /// Patterns whose prefix has glob characters: checked for every string.
    wild: Vec<(String, String)>,
}

fn prefix(s: &str) -> &str {
    s.split(':').next().unwrap_or(s)
}

impl AliasTable {
    fn add(&mut self, pattern: &str, module: &str) {
        let p = prefix(pattern);
        let entry = (pattern.to_string(), normalize(module));
        if p.contains(['*', '?', '[', '\\']) {
            self.wild.push(entry);
        } else {
            self.by_prefix.entry(p.to_string()).or_default().push(entry);
        }
    }

    /// Modules whose pattern matches `s`, each once, in file order.
    fn lookup(&self, s: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let bucket = self.by_prefix.get(prefix(s)).map(Vec::as_slice);
        for (pattern, module) in bucket.unwrap_or(&[]).iter().chain(&self.wild) {
            if fnmatch(pattern, s) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }
}

/// How modules get into the kernel; a recording double stands in for it in tests.
trait Kernel {
    /// Whether the module is loaded (or built in with a sysfs entry).
    fn is_loaded(&self, name: &str) -> bool;
    /// Loads the module file; `Ok(false)` when the kernel already had it.
    fn insert(&self, name: &str, path: &Path) -> Result<bool, ModuleError>;
}

/// The running kernel: /sys/module and `finit_module(2)`.
struct RunningKernel;

impl Kernel for RunningKernel {
    fn is_loaded(&self, name: &str) -> bool {
        Path::new("/sys/module").join(name).exists()
    }

    fn insert(&self, name: &str, path: &Path) -> Result<bool, ModuleError> {
        let file = File::open(path).map_err(|source| ModuleError::Open {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(source) => Err(ModuleError::Load {
                name: name.to_string(),
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// The depmod database of one kernel release.
#[derive(Debug)]
pub struct ModuleDb {
    dir: PathBuf,
    modules: HashMap<String, Module>,
    builtin: HashSet<String>,
    aliases: AliasTable,
    /// Aliases of built-in modules (`modules.builtin.modinfo`).
    builtin_aliases: AliasTable,
}

impl ModuleDb {
    /// Reads the database in `dir` (`/usr/lib/modules/<release>`).
    /// `modules.dep` is required; `modules.alias`, `modules.builtin` and
    /// `modules.builtin.modinfo` are read when present.
    pub fn open(dir: &Path) -> Result<ModuleDb, ModuleError> {
        let read = |file: &str, required: bool| -> Result<Option<Vec<u8>>, ModuleError> {
            let path = dir.join(file);
            match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ModuleError::Read { path, source }),
            }
        };
        let text =
            |b: Option<Vec<u8>>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
        let mut db = ModuleDb {
            dir: dir.to_path_buf(),
            modules: HashMap::new(),
            builtin: HashSet::new(),
            aliases: AliasTable::default(),
            builtin_aliases: AliasTable::default(),
        };
        db.parse_dep(&dir.join("modules.dep"), &text(read("modules.dep", true)?))?;
        db.parse_alias(
            &dir.join("modules.alias"),
            &text(read("modules.alias", false)?),
        )?;
        for line in text(read("modules.builtin", false)?).lines() {
            if let Some(name) = name_of_path(line.trim()) {
                db.builtin.insert(name);
            }
        }
        if let Some(modinfo) = read("modules.builtin.modinfo", false)? {
            db.parse_builtin_modinfo(&modinfo);
        }
        Ok(db)
    }

    /// The database of the running kernel: `/usr/lib/modules/$(uname -r)`.
    pub fn for_running_kernel() -> Result<ModuleDb, ModuleError> {
        Self::open(&Self::running_kernel_dir()?)
    }

    /// `/usr/lib/modules/$(uname -r)`.
    pub fn running_kernel_dir() -> Result<PathBuf, ModuleError> {
        let uts = nix::sys::utsname::uname().map_err(ModuleError::Uname)?;
        Ok(Path::new(MODULES_ROOT).join(uts.release()))
    }

    /// The tree this database describes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn parse_dep(&mut self, path: &Path, text: &str) -> Result<(), ModuleError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || ModuleError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
            };
            let (module, deps) = line.split_once(':').ok_or_else(bad)?;
            let name = name_of_path(module.trim()).ok_or_else(bad)?;
            let deps = deps
                .split_whitespace()
                .map(|d| name_of_path(d).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            self.modules.insert(
                name,
                Module {
                    path: PathBuf::from(module.trim()),
                    deps,
                },
            );
        }
        Ok(())
    }

    fn parse_alias(&mut self, path: &Path, text: &str) -> Result<(), ModuleError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module), None) => {
                    self.aliases.add(pattern, module)
                }
                _ => {
                    return Err(ModuleError::Parse {
                        path: path.to_path_buf(),
                        line: i + 1,
                        text: line.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// `modules.builtin.modinfo`: NUL-separated `module.key=value` records.
    fn parse_builtin_modinfo(&mut self, bytes: &[u8]) {
        for record in bytes.split(|&b| b == 0) {
            let Ok(record) = std::str::from_utf8(record) else {
                continue;
            };
            if let Some((module, alias)) = record
                .split_once('=')
                .and_then(|(key, value)| Some((key.strip_suffix(".alias")?, value)))
            {
                self.builtin_aliases.add(alias, module);
            }
        }
    }

    /// Whether the kernel has this module built in.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The modules whose `modules.alias` pattern matches `s` (a modalias or an
    /// alias such as `fs-squashfs`), each once, in file order.
    pub fn lookup_alias(&self, s: &str) -> Vec<String> {
        self.aliases.lookup(s)
    }

    /// `name` and its dependencies in load order (dependencies first).
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        self.visit(&normalize(name), &mut Vec::new(), &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if order.iter().any(|m| m == name) {
            return Ok(());
        }
        if stack.iter().any(|m| m == name) {
            return Err(ModuleError::Cycle(name.to_string()));
        }
        let module = self
            .modules
            .get(name)
            .ok_or_else(|| ModuleError::NotFound(name.to_string()))?;
        stack.push(name.to_string());
        for dep in &module.deps {
            if !self.builtin.contains(dep) {
                self.visit(dep, stack, order)?;
            }
        }
        stack.pop();
        order.push(name.to_string());
        Ok(())
    }

    /// Loads a module by name (`dm-verity`, `dm_verity`) or alias
    /// (`fs-squashfs`), dependencies first. Returns whether anything was
    /// newly loaded: `Ok(false)` for built-in and already loaded modules.
    pub fn load(&self, name: &str) -> Result<bool, ModuleError> {
        Ok(!self.load_all(name)?.is_empty())
    }

    /// As [`ModuleDb::load`], returning the modules newly loaded
    /// (dependencies included, in load order).
    pub fn load_all(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let mut newly = Vec::new();
        self.load_with(&RunningKernel, name, &mut HashSet::new(), &mut newly)?;
        Ok(newly)
    }

    /// Loads `name` (a module name or alias) through `kernel`, appending what
    /// it newly loaded to `newly`. `done` holds the modules already tried.
    fn load_with(
        &self,
        kernel: &dyn Kernel,
        name: &str,
        done: &mut HashSet<String>,
        newly: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        let norm = normalize(name);
        if self.builtin.contains(&norm) {
            return Ok(());
        }
        if self.modules.contains_key(&norm) {
            return self.load_module(kernel, &norm, done, newly);
        }
        let targets = self.aliases.lookup(name);
        if targets.is_empty() {
            if !self.builtin_aliases.lookup(name).is_empty() {
                return Ok(());
            }
            return Err(ModuleError::NotFound(name.to_string()));
        }
        // Like modprobe: every module the alias names; the first error wins.
        let mut first_err = None;
        for target in targets {
            if let Err(e) = self.load_with(kernel, &target, done, newly) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn load_module(
        &self,
        kernel: &dyn Kernel,
        name: &str,
        done: &mut HashSet<String>,
        newly: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if kernel.is_loaded(name) {
            return Ok(());
        }
        let order = self.load_order(name)?;
        for m in &order {
            if !done.insert(m.clone()) || kernel.is_loaded(m) {
                continue;
            }
            let Some(module) = self.modules.get(m) else {
                return Err(ModuleError::NotFound(m.clone()));
            };
            match kernel.insert(m, &self.dir.join(&module.path)) {
                Ok(true) => newly.push(m.clone()),
                Ok(false) => {}
                Err(e) if m == name => return Err(e),
                Err(e) => {
                    return Err(ModuleError::Dependency {
                        name: name.to_string(),
                        dependency: m.clone(),
                        source: Box::new(e),
                    })
                }
            }
        }
        Ok(())
    }

    /// Loads the drivers for the devices the kernel has found: the
    /// MODALIAS of every device under /sys/bus matched against
    /// `modules.alias`. A module that fails is recorded and logged, never
    /// fatal.
    pub fn coldplug(&self) -> ColdplugReport {
        self.coldplug_with(&RunningKernel, Path::new("/sys/bus"), None, None)
    }

    /// Coldplug for the devices whose modalias `wanted` accepts only (e.g.
    /// the NICs, which the boot needs before ready); [`ModuleDb::coldplug`]
    /// loads the rest later.
    pub fn coldplug_matching(&self, wanted: &dyn Fn(&str) -> bool) -> ColdplugReport {
        self.coldplug_with(&RunningKernel, Path::new("/sys/bus"), None, Some(wanted))
    }

    /// Coldplug for a boot that needs one device: stops as soon as
    /// `enough()` holds (checked first, and after every module that
    /// loaded). Among the drivers that could load next it picks the one
    /// with the fewest bytes of modules still to load, and looks for new
    /// devices after each, so a disk behind virtio_pci is reached through
    /// virtio_blk before, say, the IDE stack (libata, scsi_mod, ata_piix:
    /// ~430 ms under QEMU TCG) is loaded for a controller with no disk.
    /// What it leaves out, stage 2's full coldplug loads.
    pub fn coldplug_until(&self, enough: &mut dyn FnMut() -> bool) -> ColdplugReport {
        self.coldplug_with(&RunningKernel, Path::new("/sys/bus"), Some(enough), None)
    }

    fn coldplug_with(
        &self,
        kernel: &dyn Kernel,
        buses: &Path,
        mut enough: Option<&mut dyn FnMut() -> bool>,
        wanted: Option<&dyn Fn(&str) -> bool>,
    ) -> ColdplugReport {
        let start = Instant::now();
        let mut report = ColdplugReport::default();
        let mut scanner = Scanner::default();
        let mut done = HashSet::new();
        // (module, the modalias it is for), in discovery order.
        let mut pending: Vec<(String, String)> = Vec::new();
        let add = |pending: &mut Vec<(String, String)>, aliases: Vec<String>| {
            for alias in aliases {
                if wanted.is_some_and(|w| !w(&alias)) {
                    continue;
                }
                for module in self.aliases.lookup(&alias) {
                    if !pending.iter().any(|(m, _)| *m == module) {
                        pending.push((module, alias.clone()));
                    }
                }
            }
        };
        let check =
            |enough: &mut Option<&mut dyn FnMut() -> bool>| enough.as_mut().is_some_and(|f| f());
        let mut passes = 0;
        let mut satisfied = check(&mut enough);
        while !satisfied {
            if pending.is_empty() {
                // New drivers may have created new devices (virtio_pci → virtio0).
                if passes == MAX_COLDPLUG_PASSES {
                    break;
                }
                passes += 1;
                add(&mut pending, scanner.scan(buses));
                if pending.is_empty() {
                    break;
                }
            }
            let next = if let Some(i) = pending.iter().position(|(_, a)| is_cpu_modalias(a)) {
                i
            } else if enough.is_some() {
                let costs = pending
                    .iter()
                    .map(|(m, _)| self.load_cost(kernel, m, &done));
                costs
                    .enumerate()
                    .min_by_key(|&(_, cost)| cost)
                    .map_or(0, |(i, _)| i)
            } else {
                0
            };
            let (module, alias) = pending.remove(next);
            if done.contains(&module) {
                continue;
            }
            let mut newly = Vec::new();
            let result = self.load_with(kernel, &module, &mut done, &mut newly);
            let loaded = !newly.is_empty();
            report.loaded.append(&mut newly);
            if let Err(e) = result {
                let reason = error_chain(&e);
                log::warn!("module {module} for {alias}: {reason}");
                report.failed.push((module, reason));
            }
            if loaded && enough.is_some() {
                satisfied = check(&mut enough);
                add(&mut pending, scanner.scan(buses));
            }
        }
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        report
    }

    /// Bytes of module files that loading `name` would still load
    /// (`u64::MAX` when it cannot be resolved).
    fn load_cost(&self, kernel: &dyn Kernel, name: &str, done: &HashSet<String>) -> u64 {
        let Ok(order) = self.load_order(name) else {
            return u64::MAX;
        };
        order
            .iter()
            .filter(|m| !done.contains(*m) && !kernel.is_loaded(m))
            .filter_map(|m| self.modules.get(m))
            .map(|m| std::fs::metadata(self.dir.join(&m.path)).map_or(0, |md| md.len()))
            .sum()
    }
}

/// Whether a modalias is a network device's: a PCI network controller
/// (class 02), a virtio network device, or a Xen/Hyper-V-style virtual NIC
/// on its own bus is left to the full coldplug.
pub fn is_network_modalias(alias: &str) -> bool {
    (alias.starts_with("pci:") && alias.contains("bc02")) || alias.starts_with("virtio:d00000001v")
}

/// Whether a modalias is a CPU's (`cpu:type:x86,…:feature:…`). Coldplug
/// loads the drivers these match first, whatever their size: they are
/// faster versions of what the kernel already has built in (SHA-256 with
/// SSSE3/AVX2), and every module loaded after them has its signature
/// hashed with them.
pub fn is_cpu_modalias(alias: &str) -> bool {
    alias.starts_with("cpu:")
}

/// Whether a modalias is QEMU's fw_cfg device (ACPI `QEMU0002`).
pub fn is_fw_cfg_modalias(alias: &str) -> bool {
    alias.starts_with("acpi:QEMU0002:")
}

/// The devices coldplug has looked at, and the aliases it has seen.
#[derive(Debug, Default)]
struct Scanner {
    devices: HashSet<PathBuf>,
    aliases: HashSet<String>,
}

impl Scanner {
    /// The aliases of devices under `buses` not seen before, each once.
    fn scan(&mut self, buses: &Path) -> Vec<String> {
        let mut fresh = Vec::new();
        let aliases = &mut self.aliases;
        scan_buses(buses, &mut self.devices, &mut |alias| {
            if aliases.insert(alias.to_string()) {
                fresh.push(alias.to_string());
            }
        });
        fresh
    }
}

/// Calls `found` with the MODALIAS of every device in `buses/*/devices/`
/// that is not yet in `seen` (and adds it there).
fn scan_buses(buses: &Path, seen: &mut HashSet<PathBuf>, found: &mut dyn FnMut(&str)) {
    for bus in sorted_entries(buses) {
        for path in sorted_entries(&bus.join("devices")) {
            if seen.contains(&path) {
                continue;
            }
            if let Ok(uevent) = std::fs::read_to_string(path.join("uevent")) {
                if let Some(alias) = uevent.lines().find_map(|l| l.strip_prefix("MODALIAS=")) {
                    found(alias);
                }
            }
            seen.insert(path);
        }
    }
}

/// The entries of `dir` by name (empty when it cannot be read), so that
/// drivers load in the same order on every boot.
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

/// Shell-style glob match of a whole string, as `fnmatch(pattern, s, 0)`:
/// `*` any run of characters, `?` one character, `[...]` a set (`!` or `^`
/// negates, `a-z` ranges, a leading `]` is literal), `\` escapes; a `[`
/// without its `]` is an ordinary character. Works on bytes (module aliases
/// are ASCII). Character classes (`[[:alpha:]]`) are not supported: depmod
/// never writes them.
pub fn fnmatch(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, next string pos).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match match_set(p, pi, s[si]) {
                Set::Match(next) => Some(next),
                Set::NoMatch | Set::Invalid => None,
                Set::Unclosed => (s[si] == b'[').then_some(pi + 1),
            },
            // A trailing backslash matches nothing, as in glibc.
            Some(b'\\') => p.get(pi + 1).and_then(|&c| (s[si] == c).then_some(pi + 2)),
            Some(&c) => (s[si] == c).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                si += 1;
            }
            (None, Some((after, from))) => {
                pi = after;
                si = from + 1;
                star = Some((after, from + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The outcome of matching one character against a `[...]` set.
enum Set {
    /// It matched; the pattern goes on at this index.
    Match(usize),
    NoMatch,
    /// No closing `]`: the `[` is an ordinary character.
    Unclosed,
    /// A range runs into the end of the pattern: glibc matches nothing then.
    Invalid,
}

/// Matches `c` against the set starting at `p[start] == b'['`, following
/// glibc's reading of odd sets (a member that matches before an unclosed
/// end makes the `[` literal; a range or escape cut off by the end of the
/// pattern matches nothing).
fn match_set(p: &[u8], start: usize, c: u8) -> Set {
    let at = |i: usize| p.get(i).copied();
    let mut i = start + 1;
    let negate = matches!(at(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    // The first member may be `]`.
    let mut member = at(i);
    i += 1;
    loop {
        let lo = match member {
            None => return Set::Unclosed,
            Some(b'\\') => {
                let Some(escaped) = at(i) else {
                    return Set::Invalid;
                };
                i += 1;
                escaped
            }
            Some(m) => m,
        };
        let is_range = at(i) == Some(b'-') && !matches!(at(i + 1), None | Some(b']'));
        if !is_range && lo == c {
            return skip_set(p, i, negate);
        }
        member = at(i);
        i += 1;
        if member == Some(b'-') && at(i) != Some(b']') {
            let mut hi = at(i);
            i += 1;
            if hi == Some(b'\\') {
                hi = at(i);
                i += 1;
            }
            let Some(hi) = hi else {
                return Set::Invalid;
            };
            if lo <= c && c <= hi {
                return skip_set(p, i, negate);
            }
            member = at(i);
            i += 1;
        }
        if member == Some(b']') {
            return if negate { Set::Match(i) } else { Set::NoMatch };
        }
    }
}

/// After a member matched at `i`: find the set's end.
fn skip_set(p: &[u8], mut i: usize, negate: bool) -> Set {
    loop {
        match p.get(i) {
            None => return Set::Unclosed,
            Some(b']') => {
                return if negate {
                    Set::NoMatch
                } else {
                    Set::Match(i + 1)
                }
            }
            Some(b'\\') => {
                if p.get(i + 1).is_none() {
                    return Set::Invalid;
                }
                i += 2;
            }
            Some(_) => i += 1,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::RefCell;
    use std::ffi::CString;

    use super::*;

    /// Patterns from the Debian 6.1.0-56-cloud-amd64 modules.alias (depmod).
    const PATTERNS: &[&str] = &[
        "pci:v00001AF4d*sv*sd*bc*sc*i*",
        "virtio:d00000002v*",
        "virtio:d00000001v*",
        "virtio:d00000008v*",
        "pci:v00008086d00007010sv*sd*bc*sc*i*",
        "pci:v*d*sv*sd*bc01sc01i*",
        "pci:v*d*sv*sd*bc01sc06i01*",
        "pci:v00001B36d00000010sv*sd*bc*sc*i*",
        "pci:v*d*sv*sd*bc01sc08i02*",
        "acpi*:PNP0C0C:*",
        "acpi*:ACPI0013:*",
        "acpi*:QEMU0002:*",
        "platform:pcspkr",
        "cpu:type:x86,ven*fam*mod*:feature:*0099*",
        "cpu:type:x86,ven0000fam0006mod0086:feature:*",
        "fs-squashfs",
        "devname:mapper/control",
        "char-major-10-236",
        "dm-verity",
        "crypto-sha256",
        "virtio:d0000001Av*",
    ];

    /// Real modalias strings from a QEMU guest and a cloud VM.
    const MODALIASES: &[&str] = &[
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00",
        "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
        "pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00",
        "pci:v00008086d00000D57sv00000000sd00000000bc06sc00i00",
        "virtio:d00000002v00001AF4",
        "virtio:d00000001v00001AF4",
        "virtio:d0000001Av00001AF4",
        "acpi:PNP0C0C:",
        "acpi:ACPI0013:",
        "acpi:QEMU0002:",
        "acpi:PNP0A08:PNP0A03:",
        "platform:pcspkr",
        "platform:serial8250",
        "cpu:type:x86,ven0002fam0019mod0001:feature:,0000,0001,0002,0099,00C0",
        "cpu:type:x86,ven0000fam0006mod0086:feature:,0000",
        "fs-squashfs",
        "devname:mapper/control",
        "dm-verity",
    ];

    fn libc_fnmatch(pattern: &str, s: &str) -> bool {
        let (p, s) = (CString::new(pattern).unwrap(), CString::new(s).unwrap());
        // SAFETY: both pointers are valid NUL-terminated strings for the call.
        unsafe { nix::libc::fnmatch(p.as_ptr(), s.as_ptr(), 0) == 0 }
    }

    #[test]
    fn glob_agrees_with_libc_on_real_aliases() {
        for p in PATTERNS {
            for s in MODALIASES {
                assert_eq!(fnmatch(p, s), libc_fnmatch(p, s), "{p} vs {s}");
            }
        }
        assert!(fnmatch(PATTERNS[0], MODALIASES[0]));
        assert!(fnmatch("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!fnmatch("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(fnmatch("acpi*:PNP0C0C:*", "acpi:PNP0C0C:"));
    }

    /// With `ATOLL_TEST_MODULES=/usr/lib/modules/<release>` (a depmod'ed
    /// tree), every pattern of its modules.alias is checked against libc.
    #[test]
    fn glob_agrees_with_libc_on_a_whole_modules_alias() {
        let Some(dir) = std::env::var_os("ATOLL_TEST_MODULES") else {
            eprintln!("ATOLL_TEST_MODULES not set: whole-file comparison not run");
            return;
        };
        let text = std::fs::read_to_string(Path::new(&dir).join("modules.alias")).unwrap();
        let mut n = 0;
        for line in text.lines().filter(|l| l.starts_with("alias ")) {
            let pattern = line.split_whitespace().nth(1).unwrap();
            for s in MODALIASES.iter().chain(PATTERNS) {
                assert_eq!(
                    fnmatch(pattern, s),
                    libc_fnmatch(pattern, s),
                    "{pattern} vs {s}"
                );
                n += 1;
            }
        }
        assert!(n > 1000);
    }

    #[test]
    fn glob_agrees_with_libc_on_edge_cases() {
        let patterns = [
            "",
            "*",
            "**",
            "?",
            "a*b",
            "a*b*c",
            "*a",
            "a?c",
            "[abc]",
            "[!abc]",
            "[^abc]",
            "[a-c]x",
            "[]]",
            "[]a]",
            "[!]]",
            "[",
            "a[",
            "a[b",
            "[a-]",
            "[-a]",
            "\\*",
            "a\\",
            "\\[a]",
            "[\\]]",
            "x*[0-9]?y",
            "*:*:*",
            "[z-a]",
            "[a-c-e]",
        ];
        let strings = [
            "", "a", "b", "ab", "abc", "aXbYc", "acb", "*", "[", "a[", "a[b", "]", "-", "x12y",
            "x1y", "a:b:c", "\\", "a\\", "[a]", "z", "d", "e", "ba",
        ];
        for p in patterns {
            for s in strings {
                assert_eq!(
                    fnmatch(p, s),
                    libc_fnmatch(p, s),
                    "pattern {p:?} string {s:?}"
                );
            }
        }
    }

    #[test]
    fn glob_agrees_with_libc_on_generated_cases() {
        // A small deterministic generator over a tiny alphabet hits the
        // backtracking paths far more often than real aliases do.
        let alphabet = b"ab*?[]!^-\\";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..100_000 {
            let plen = (next() % 9) as usize;
            let slen = (next() % 6) as usize;
            let p: String = (0..plen)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            let s: String = (0..slen)
                .map(|_| b"ab[]-"[(next() % 5) as usize] as char)
                .collect();
            assert_eq!(
                fnmatch(&p, &s),
                libc_fnmatch(&p, &s),
                "pattern {p:?} string {s:?}"
            );
        }
    }

    /// A module tree in a fresh temporary directory.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!(
                "atoll-modules-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }
        fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // Excerpt of the real modules.dep (depmod on 6.1.0-56-cloud-amd64).
    const DEP: &str = "\
kernel/fs/squashfs/squashfs.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/lib/libcrc32c.ko: kernel/crypto/crc32c_generic.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/arch/x86/crypto/sha256-ssse3.ko:
";

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias fs-squashfs squashfs
alias devname:mapper/control dm_mod
alias char-major-10-236 dm_mod
alias pci:v*d*sv*sd*bc01sc00i* missing_driver
alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix
alias cpu:type:x86,ven*fam*mod*:feature:*0089* sha256_ssse3
";

    const BUILTIN: &str = "kernel/crypto/crc32c_generic.ko\nkernel/fs/binfmt_script.ko\n";

    fn db(tree: &Tree) -> ModuleDb {
        tree.write("modules.dep", DEP);
        tree.write("modules.alias", ALIAS);
        tree.write("modules.builtin", BUILTIN);
        tree.write(
            "modules.builtin.modinfo",
            "ext4.alias=fs-ext4\0ext4.license=GPL\0crc32c_generic.alias=crypto-crc32c\0",
        );
        ModuleDb::open(&tree.0).unwrap()
    }

    /// Records what would be loaded; `loaded` starts with what is "in the kernel".
    #[derive(Default)]
    struct FakeKernel {
        loaded: RefCell<Vec<String>>,
        failing: Vec<&'static str>,
        /// Devices that appear once a module is loaded: (module, dir, modalias).
        hotplug: Vec<(&'static str, PathBuf, &'static str)>,
    }

    impl Kernel for FakeKernel {
        fn is_loaded(&self, name: &str) -> bool {
            self.loaded.borrow().iter().any(|m| m == name)
        }
        fn insert(&self, name: &str, path: &Path) -> Result<bool, ModuleError> {
            assert!(
                path.ends_with(format!("{}.ko", name.replace('_', "-")))
                    || path.ends_with(format!("{name}.ko"))
            );
            if self.failing.contains(&name) {
                return Err(ModuleError::Load {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    source: Errno::ENOENT,
                });
            }
            for (module, dir, alias) in &self.hotplug {
                if *module == name {
                    std::fs::create_dir_all(dir).unwrap();
                    std::fs::write(dir.join("uevent"), format!("MODALIAS={alias}\n")).unwrap();
                }
            }
            self.loaded.borrow_mut().push(name.to_string());
            Ok(true)
        }
    }

    #[test]
    fn parses_dep_and_orders_dependencies_first() {
        let tree = Tree::new("order");
        let db = db(&tree);
        assert_eq!(
            db.load_order("dm-verity").unwrap(),
            ["dm_mod", "dm_bufio", "reed_solomon", "dm_verity"]
        );
        assert_eq!(
            db.load_order("virtio_pci").unwrap(),
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci"
            ]
        );
        // A built-in dependency is not loaded.
        assert_eq!(db.load_order("libcrc32c").unwrap(), ["libcrc32c"]);
        assert!(db.is_builtin("crc32c-generic"));
        assert!(matches!(
            db.load_order("nope"),
            Err(ModuleError::NotFound(_))
        ));
    }

    #[test]
    fn refuses_malformed_and_cyclic_files() {
        let tree = Tree::new("bad");
        tree.write(
            "modules.dep",
            "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n",
        );
        let db = ModuleDb::open(&tree.0).unwrap();
        assert!(matches!(db.load_order("a"), Err(ModuleError::Cycle(_))));
        tree.write("modules.dep", "kernel/a.ko kernel/b.ko\n");
        let err = ModuleDb::open(&tree.0).unwrap_err();
        assert!(matches!(err, ModuleError::Parse { line: 1, .. }), "{err}");
        tree.write("modules.dep", "");
        tree.write("modules.alias", "alias onlyonefield\n");
        assert!(matches!(
            ModuleDb::open(&tree.0),
            Err(ModuleError::Parse { .. })
        ));
        std::fs::remove_file(tree.0.join("modules.dep")).unwrap();
        assert!(matches!(
            ModuleDb::open(&tree.0),
            Err(ModuleError::Read { .. })
        ));
    }

    #[test]
    fn resolves_names_and_aliases() {
        let tree = Tree::new("alias");
        let db = db(&tree);
        assert_eq!(db.lookup_alias("fs-squashfs"), ["squashfs"]);
        assert_eq!(
            db.lookup_alias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_pci", "missing_driver"]
        );
        assert!(db.lookup_alias("virtio:d00000001v00001AF4").is_empty());

        let k = FakeKernel::default();
        let mut newly = Vec::new();
        db.load_with(&k, "fs-squashfs", &mut HashSet::new(), &mut newly)
            .unwrap();
        db.load_with(&k, "dm-verity", &mut HashSet::new(), &mut newly)
            .unwrap();
        assert_eq!(
            newly,
            [
                "squashfs",
                "dm_mod",
                "dm_bufio",
                "reed_solomon",
                "dm_verity"
            ]
        );
        // Loaded, built-in (by name or alias): nothing more to do.
        let mut again = Vec::new();
        for name in [
            "dm_verity",
            "char-major-10-236",
            "crc32c_generic",
            "fs-ext4",
        ] {
            db.load_with(&k, name, &mut HashSet::new(), &mut again)
                .unwrap();
        }
        assert!(again.is_empty());
        let err = db.load_with(&k, "fs-nope", &mut HashSet::new(), &mut again);
        assert!(matches!(err, Err(ModuleError::NotFound(_))));
    }

    /// A device as sysfs shows it under /sys/bus/<bus>/devices/<name>.
    fn device(tree: &Tree, bus: &str, name: &str, modalias: &str) {
        tree.write(
            &format!("sys/bus/{bus}/devices/{name}/uevent"),
            &format!("DRIVER=x\nMODALIAS={modalias}\n"),
        );
    }

    #[test]
    fn coldplug_loads_each_match_once_and_follows_new_devices() {
        let tree = Tree::new("coldplug");
        let db = db(&tree);
        let pci = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00";
        device(&tree, "pci", "0000:00:04.0", pci);
        device(&tree, "pci", "0000:00:05.0", pci);
        device(&tree, "platform", "serial8250", "platform:serial8250");
        tree.write("sys/bus/cpu/devices/cpu0/uevent", "DEVTYPE=cpu\n");
        let k = FakeKernel {
            hotplug: vec![(
                "virtio_pci",
                tree.0.join("sys/bus/virtio/devices/virtio0"),
                "virtio:d00000002v00001AF4",
            )],
            ..FakeKernel::default()
        };
        k.loaded.borrow_mut().push("virtio_ring".into());
        let report = db.coldplug_with(&k, &tree.0.join("sys/bus"), None, None);
        assert_eq!(
            report.loaded,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        // Named by modules.alias but absent from the tree: recorded, not fatal.
        assert_eq!(
            report.failed,
            [(
                "missing_driver".to_string(),
                "no module, built-in or alias named \"missing_driver\"".to_string()
            )]
        );
    }

    /// A virtio disk's PCI function in `tree`, and a kernel on which
    /// virtio_pci makes its virtio device appear and virtio_blk its
    /// partition (the returned path).
    fn virtio_disk(tree: &Tree) -> (PathBuf, FakeKernel) {
        device(
            tree,
            "pci",
            "0000:00:04.0",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        );
        let disk = tree.0.join("class/block/vda3");
        let k = FakeKernel {
            hotplug: vec![
                (
                    "virtio_pci",
                    tree.0.join("sys/bus/virtio/devices/virtio0"),
                    "virtio:d00000002v00001AF4",
                ),
                ("virtio_blk", disk.clone(), "-"),
            ],
            ..FakeKernel::default()
        };
        (disk, k)
    }

    #[test]
    fn coldplug_until_takes_the_cheapest_way_to_the_disk() {
        let tree = Tree::new("until");
        let db = db(&tree);
        // Module sizes as in 6.1.0-56-cloud-amd64 (KiB).
        for (path, kib) in [
            ("kernel/drivers/scsi/scsi_common.ko", 30),
            ("kernel/drivers/scsi/scsi_mod.ko", 260),
            ("kernel/drivers/ata/libata.ko", 420),
            ("kernel/drivers/ata/ata_piix.ko", 50),
            ("kernel/drivers/virtio/virtio.ko", 33),
            ("kernel/drivers/virtio/virtio_ring.ko", 77),
            ("kernel/drivers/virtio/virtio_pci.ko", 62),
            ("kernel/drivers/virtio/virtio_pci_modern_dev.ko", 32),
            ("kernel/drivers/virtio/virtio_pci_legacy_dev.ko", 16),
            ("kernel/drivers/block/virtio_blk.ko", 58),
        ] {
            tree.write(path, &"x".repeat(kib * 1024));
        }
        // The IDE controller sorts first, as on QEMU's i440fx machine.
        device(
            &tree,
            "pci",
            "0000:00:01.1",
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
        );
        let (disk, k) = virtio_disk(&tree);
        let mut checks = 0;
        let report = db.coldplug_with(
            &k,
            &tree.0.join("sys/bus"),
            Some(&mut || {
                checks += 1;
                disk.exists()
            }),
            None,
        );
        assert_eq!(
            report.loaded,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        // Once before anything, then after each of the two loads.
        assert_eq!(checks, 3);

        // Already there (a built-in driver): nothing to load.
        let report = db.coldplug_with(&k, &tree.0.join("sys/bus"), Some(&mut || true), None);
        assert!(report.loaded.is_empty());

        // Never there: every driver gets its turn, as in a full coldplug.
        let k = FakeKernel::default();
        let report = db.coldplug_with(&k, &tree.0.join("sys/bus"), Some(&mut || false), None);
        assert!(
            report.loaded.contains(&"ata_piix".to_string()),
            "{:?}",
            report.loaded
        );
        assert!(report.loaded.contains(&"virtio_pci".to_string()));
    }

    #[test]
    fn coldplug_until_takes_cpu_feature_drivers_first() {
        let tree = Tree::new("cpu-first");
        let with_sse = db(&tree);
        // Larger than the whole virtio stack, so only its kind puts it first.
        tree.write(
            "kernel/arch/x86/crypto/sha256-ssse3.ko",
            &"x".repeat(900 * 1024),
        );
        for path in [
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio_pci.ko",
            "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
            "kernel/drivers/block/virtio_blk.ko",
        ] {
            tree.write(path, &"x".repeat(40 * 1024));
        }
        let (disk, k) = virtio_disk(&tree);
        // A CPU with SSSE3 (feature 0x89) among others, as QEMU's `max`.
        device(
            &tree,
            "cpu",
            "cpu0",
            "cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0002,0089,009C,0125",
        );
        let report = with_sse.coldplug_with(
            &k,
            &tree.0.join("sys/bus"),
            Some(&mut || disk.exists()),
            None,
        );
        assert_eq!(
            report.loaded.first().map(String::as_str),
            Some("sha256_ssse3")
        );
        assert_eq!(report.loaded.last().map(String::as_str), Some("virtio_blk"));
        assert!(report.failed.is_empty(), "{:?}", report.failed);

        // A CPU without SSSE3: nothing for it.
        let tree = Tree::new("cpu-plain");
        let plain = db(&tree);
        device(
            &tree,
            "cpu",
            "cpu0",
            "cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0002",
        );
        let report = plain.coldplug_with(
            &FakeKernel::default(),
            &tree.0.join("sys/bus"),
            Some(&mut || false),
            None,
        );
        assert!(report.loaded.is_empty(), "{:?}", report.loaded);
    }

    #[test]
    fn coldplug_matching_loads_only_the_wanted_devices() {
        let tree = Tree::new("matching");
        let db = db(&tree);
        device(
            &tree,
            "pci",
            "0000:00:01.1",
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",
        );
        device(&tree, "virtio", "virtio0", "virtio:d00000002v00001AF4");
        let k = FakeKernel::default();
        let wanted = |a: &str| a.starts_with("virtio:d00000002");
        let report = db.coldplug_with(&k, &tree.0.join("sys/bus"), None, Some(&wanted));
        assert!(report.loaded.contains(&"virtio_blk".to_string()));
        assert!(
            !report.loaded.contains(&"ata_piix".to_string()),
            "{:?}",
            report.loaded
        );
        assert!(is_network_modalias(
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(is_network_modalias("virtio:d00000001v00001AF4"));
        assert!(!is_network_modalias(
            "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80"
        ));
        assert!(is_fw_cfg_modalias("acpi:QEMU0002:"));
    }

    #[test]
    fn coldplug_reports_a_failing_dependency() {
        let tree = Tree::new("depfail");
        let db = db(&tree);
        device(&tree, "virtio", "virtio0", "virtio:d00000002v00001AF4");
        let k = FakeKernel {
            failing: vec!["virtio_ring"],
            ..FakeKernel::default()
        };
        let report = db.coldplug_with(&k, &tree.0.join("sys/bus"), None, None);
        assert_eq!(report.loaded, ["virtio"]);
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0]
                .1
                .starts_with("module virtio_blk needs virtio_ring: loading"),
            "{:?}",
            report.failed
        );
    }
}
