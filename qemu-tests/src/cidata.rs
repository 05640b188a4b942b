//! NoCloud seed images: a small vfat or iso9660 volume labelled `CIDATA`
//! holding `user-data` (and `meta-data`), the second provisioning source
//! the guest looks for. Built as an ordinary user without mounting:
//! `mkfs.vfat` + `mcopy` (dosfstools, mtools), or `genisoimage` (falling
//! back to `xorriso -as mkisofs`). Give the image to the guest with
//! [`crate::vm::VmBuilder::extra_disk`] (format raw); it is `/dev/vdb`.
//!
//! ```no_run
//! # use qemu_tests::cidata::Cidata;
//! # use qemu_tests::vm::{DiskFormat, Vm};
//! # let dir = tempfile::tempdir().unwrap();
//! let seed = Cidata::iso(dir.path(), &[("user-data", b"hostname = \"a\"\n"), ("meta-data", b"")])?;
//! let vm = Vm::builder("t").extra_disk(&seed, DiskFormat::Raw).start();
//! # Ok::<(), qemu_tests::cidata::CidataError>(())
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The label NoCloud seeds carry (cloud-init also accepts `cidata`).
pub const LABEL: &str = "CIDATA";

#[derive(Debug, thiserror::Error)]
pub enum CidataError {
    #[error("seed file name {0:?} must be a plain file name")]
    BadName(String),
    #[error("volume label {0:?} must be 1..=11 characters (vfat) of A-Z, 0-9, _ or -")]
    BadLabel(String),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {tool} (is it installed? {package}; scripts/install-deps.sh installs it)")]
    Spawn {
        tool: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CidataError + '_ {
    move |source| CidataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The files and label of a seed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidata {
    label: String,
    files: Vec<(String, Vec<u8>)>,
}

impl Default for Cidata {
    fn default() -> Self {
        Self::new()
    }
}

impl Cidata {
    /// An empty seed labelled [`LABEL`].
    pub fn new() -> Self {
        Self {
            label: LABEL.to_string(),
            files: Vec::new(),
        }
    }

    /// Another label (e.g. `cidata`, or a wrong one the guest must ignore).
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// A file in the volume's root directory.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    fn with_files(files: &[(&str, &[u8])]) -> Self {
        files.iter().fold(Self::new(), |seed, (name, contents)| {
            seed.file(name, *contents)
        })
    }

    /// A vfat seed labelled `CIDATA` holding `files`, written to
    /// `dir/cidata.vfat` (replaced if it exists).
    pub fn vfat(dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf, CidataError> {
        let out = dir.join("cidata.vfat");
        Self::with_files(files).write_vfat(&out)?;
        Ok(out)
    }

    /// An iso9660 (Joliet, Rock Ridge) seed with volume id `CIDATA` holding
    /// `files`, written to `dir/cidata.iso` (replaced if it exists).
    pub fn iso(dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf, CidataError> {
        let out = dir.join("cidata.iso");
        Self::with_files(files).write_iso(&out)?;
        Ok(out)
    }

    fn check(&self) -> Result<(), CidataError> {
        let label_ok = (1..=11).contains(&self.label.len())
            && self
                .label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !label_ok {
            return Err(CidataError::BadLabel(self.label.clone()));
        }
        for (name, _) in &self.files {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(CidataError::BadName(name.clone()));
            }
        }
        Ok(())
    }

    /// Writes the files into a fresh staging directory next to `out`.
    fn stage(&self, out: &Path) -> Result<tempfile::TempDir, CidataError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".cidata-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        for (name, contents) in &self.files {
            let path = staging.path().join(name);
            std::fs::write(&path, contents).map_err(io(&path))?;
        }
        Ok(staging)
    }

    /// Writes a vfat image to `out` (replaced if it exists): `mkfs.vfat`
    /// sized for the files, then `mcopy` for each.
    pub fn write_vfat(&self, out: &Path) -> Result<(), CidataError> {
        self.check()?;
        let staging = self.stage(out)?;
        remove_if_exists(out)?;
        // The files, a cluster of slack each, and room for the FAT and root
        // directory: mkfs.vfat picks FAT12 for these sizes.
        let data: u64 = self
            .files
            .iter()
            .map(|(_, c)| c.len() as u64 / 1024 + 4)
            .sum();
        let kib = (data + 512).max(1440);
        run(
            Command::new("mkfs.vfat")
                .arg("-n")
                .arg(&self.label)
                .arg("-C")
                .arg(out)
                .arg(kib.to_string()),
            "mkfs.vfat",
            "Debian package dosfstools",
        )?;
        for (name, _) in &self.files {
            run(
                Command::new("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(out)
                    .arg(staging.path().join(name))
                    .arg(format!("::{name}")),
                "mcopy",
                "Debian package mtools",
            )?;
        }
        Ok(())
    }

    /// Writes an iso9660 image (Joliet and Rock Ridge, as cloud-init's docs
    /// make it) to `out` (replaced if it exists), with `genisoimage`, or
    /// `xorriso -as mkisofs` if that is missing.
    pub fn write_iso(&self, out: &Path) -> Result<(), CidataError> {
        self.check()?;
        let staging = self.stage(out)?;
        remove_if_exists(out)?;
        let mkisofs_args = |c: &mut Command| {
            c.arg("-quiet")
                .arg("-output")
                .arg(out)
                .arg("-volid")
                .arg(&self.label)
                .arg("-joliet")
                .arg("-rock")
                .arg(staging.path());
        };
        let mut genisoimage = Command::new("genisoimage");
        mkisofs_args(&mut genisoimage);
        match run(
            &mut genisoimage,
            "genisoimage",
            "Debian package genisoimage",
        ) {
            Err(CidataError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let mut xorriso = Command::new("xorriso");
                xorriso.args(["-as", "mkisofs"]);
                mkisofs_args(&mut xorriso);
                run(
                    &mut xorriso,
                    "genisoimage or xorriso",
                    "Debian package genisoimage",
                )
            }
            other => other,
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<(), CidataError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

fn run(cmd: &mut Command, tool: &str, package: &'static str) -> Result<(), CidataError> {
    let output = cmd.output().map_err(|source| CidataError::Spawn {
        tool: tool.to_string(),
        package,
        source,
    })?;
    if !output.status.success() {
        return Err(CidataError::Tool {
            command: format!("{cmd:?}"),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The file-system label of a vfat or iso9660 image, read from its bytes
/// (what `blkid -s LABEL` shows), or `None` if it is neither.
pub fn volume_label(image: &Path) -> Result<Option<String>, CidataError> {
    let mut f = File::open(image).map_err(io(image))?;
    let mut read_at = |at: u64, len: usize| -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0; len];
        f.seek(SeekFrom::Start(at))?;
        match f.read_exact(&mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    };
    // iso9660: the primary volume descriptor in sector 16.
    if let Some(pvd) = read_at(0x8000, 0x48).map_err(io(image))? {
        if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
            return Ok(Some(trimmed(&pvd[0x28..0x48])));
        }
    }
    let Some(boot) = read_at(0, 512).map_err(io(image))? else {
        return Ok(None);
    };
    if boot[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    // FAT32 has no 16-bit sectors-per-FAT count; its extended BPB (and the
    // label in it) sits further on.
    let fat32 = boot[0x16..0x18] == [0, 0];
    let (sig, label) = if fat32 { (0x42, 0x47) } else { (0x26, 0x2b) };
    if boot[sig] != 0x29 {
        return Ok(None);
    }
    Ok(Some(trimmed(&boot[label..label + 11])))
}

fn trimmed(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER_DATA: &[u8] = b"hostname = \"seeded\"\n# comma, and a second line\n";
    const META_DATA: &[u8] = b"instance-id: iid-atoll-test\n";

    fn files() -> [(&'static str, &'static [u8]); 2] {
        [("user-data", USER_DATA), ("meta-data", META_DATA)]
    }

    fn blkid_label(image: &Path) -> Option<String> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "LABEL"])
            .arg(image)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    #[test]
    fn vfat_seed_has_the_label_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let image = Cidata::vfat(dir.path(), &files()).unwrap();
        assert_eq!(image, dir.path().join("cidata.vfat"));
        assert_eq!(volume_label(&image).unwrap().as_deref(), Some("CIDATA"));
        if let Some(label) = blkid_label(&image) {
            assert_eq!(label, "CIDATA");
        }
        for (name, contents) in files() {
            let out = Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&image)
                .arg(format!("::{name}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(out.stdout, contents, "{name}");
        }
        // Building again in the same place replaces the image.
        Cidata::vfat(dir.path(), &[("user-data", b"x")]).unwrap();
        // No staging directory is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn iso_seed_has_the_volume_id_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let image = Cidata::iso(dir.path(), &files()).unwrap();
        assert_eq!(image, dir.path().join("cidata.iso"));
        assert_eq!(volume_label(&image).unwrap().as_deref(), Some("CIDATA"));
        if let Some(label) = blkid_label(&image) {
            assert_eq!(label, "CIDATA");
        }
        // The Rock Ridge names are the ones the guest looks for.
        for (name, contents) in files() {
            let out = Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&image)
                .arg("-x")
                .arg(format!("/{name}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(out.stdout, contents, "{name}");
        }
    }

    #[test]
    fn other_labels_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 3 << 20];
        let seed = Cidata::new().label("cidata").file("user-data", big.clone());
        let image = dir.path().join("lower.img");
        seed.write_vfat(&image).unwrap();
        assert_eq!(volume_label(&image).unwrap().as_deref(), Some("cidata"));
        let image = dir.path().join("lower.iso");
        seed.write_iso(&image).unwrap();
        assert_eq!(volume_label(&image).unwrap().as_deref(), Some("cidata"));
    }

    #[test]
    fn bad_names_and_labels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", "..", "a/b"] {
            let e = Cidata::vfat(dir.path(), &[(name, b"x")]).unwrap_err();
            assert!(matches!(e, CidataError::BadName(_)), "{e}");
        }
        for label in ["", "TWELVE_CHARS", "A B"] {
            let e = Cidata::new().label(label).write_iso(&dir.path().join("x"));
            assert!(matches!(e, Err(CidataError::BadLabel(_))), "{e:?}");
        }
    }

    #[test]
    fn volume_label_of_something_else_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 64 << 10]).unwrap();
        assert_eq!(volume_label(&zeros).unwrap(), None);
        let short = dir.path().join("short");
        std::fs::write(&short, b"abc").unwrap();
        assert_eq!(volume_label(&short).unwrap(), None);
        assert!(volume_label(&dir.path().join("missing")).is_err());
    }
}
