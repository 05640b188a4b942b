//! The pinned Debian kernel package (`image-build/kernel.toml`): fetching it
//! into the cache with `apt-get download`, checking its sha256, and
//! unpacking it with `dpkg-deb -x`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::tool::{self, ToolError};

/// `image-build/kernel.toml`, embedded at build time.
const PIN_TOML: &str = include_str!("../kernel.toml");

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("image-build/kernel.toml is invalid")]
    Pin(#[source] toml::de::Error),
    #[error("image-build/kernel.toml: sha256 {0:?} is not 64 hex digits")]
    PinHash(String),
    #[error("{path}: sha256 is {actual}, but kernel.toml pins {expected}; the file was deleted")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("apt-get download ran but {path} is not there")]
    NotDownloaded { path: PathBuf },
    #[error("{path}: expected exactly one directory under lib/modules, found {found:?}")]
    ModulesDir { path: PathBuf, found: Vec<String> },
    #[error("the kernel package has no {path}")]
    NoVmlinuz { path: PathBuf },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kernel package pin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    /// Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// sha256 of the .deb, lower-case hex.
    pub sha256: String,
}

impl KernelPin {
    /// The pin from `image-build/kernel.toml`.
    pub fn pinned() -> Result<Self, KernelError> {
        Self::parse(PIN_TOML)
    }

    pub fn parse(text: &str) -> Result<Self, KernelError> {
        let mut pin: KernelPin = toml::from_str(text).map_err(KernelError::Pin)?;
        pin.sha256 = pin.sha256.to_ascii_lowercase();
        if pin.sha256.len() != 64 || !pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KernelError::PinHash(pin.sha256));
        }
        Ok(pin)
    }

    /// The file name `apt-get download` gives the package (an epoch's `:`
    /// becomes `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks `path` against the pinned sha256; a file that does not match is
/// deleted, so that the next run downloads it again.
pub fn verify(path: &Path, pin: &KernelPin) -> Result<(), KernelError> {
    let actual = sha256_file(path)?;
    if actual == pin.sha256 {
        return Ok(());
    }
    std::fs::remove_file(path).map_err(io(path))?;
    Err(KernelError::HashMismatch {
        path: path.to_path_buf(),
        expected: pin.sha256.clone(),
        actual,
    })
}

/// Whether the fetch downloaded the package or found it in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Cached,
    Downloaded,
}

/// Makes sure the pinned package is in `cache` and matches its sha256,
/// downloading it with `apt-get download` when it is missing. A cached copy
/// that does not match is deleted and downloaded again; a download that does
/// not match is an error.
pub fn fetch(pin: &KernelPin, cache: &Path) -> Result<(PathBuf, Fetched), KernelError> {
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let deb = cache.join(pin.deb_file_name());
    if deb.is_file() {
        match verify(&deb, pin) {
            Ok(()) => return Ok((deb, Fetched::Cached)),
            Err(KernelError::HashMismatch { actual, .. }) => eprintln!(
                "warning: cached {} has sha256 {actual}, not the pinned {}: deleted, downloading again",
                deb.display(),
                pin.sha256
            ),
            Err(e) => return Err(e),
        }
    }
    tool::run(
        Command::new("apt-get")
            .arg("download")
            .arg(format!("{}={}", pin.package, pin.version))
            .current_dir(cache),
    )?;
    if !deb.is_file() {
        return Err(KernelError::NotDownloaded { path: deb });
    }
    verify(&deb, pin)?;
    Ok((deb, Fetched::Downloaded))
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The unpacked package tree (holds `lib/modules/<release>`).
    pub tree: PathBuf,
    pub vmlinuz: PathBuf,
}

impl Kernel {
    /// `<tree>/lib/modules/<release>`.
    pub fn modules_dir(&self) -> PathBuf {
        self.tree.join("lib/modules").join(&self.release)
    }
}

/// Unpacks `deb` into `dest` (emptied first) with `dpkg-deb -x`.
pub fn unpack(deb: &Path, dest: &Path) -> Result<Kernel, KernelError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    tool::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    let modules = dest.join("lib/modules");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&modules).map_err(io(&modules))? {
        let entry = entry.map_err(io(&modules))?;
        if entry.path().is_dir() {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let [release] =
        <[String; 1]>::try_from(found.clone()).map_err(|_| KernelError::ModulesDir {
            path: modules.clone(),
            found,
        })?;
    let vmlinuz = dest.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(KernelError::NoVmlinuz { path: vmlinuz });
    }
    Ok(Kernel {
        release,
        tree: dest.to_path_buf(),
        vmlinuz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_kernel_parses() {
        let pin = KernelPin::pinned().unwrap();
        assert_eq!(pin.package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(
            pin.deb_file_name(),
            "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"
        );
    }

    #[test]
    fn epoch_is_escaped_like_apt() {
        let pin = KernelPin::parse(
            "package = \"p\"\nversion = \"1:2.3\"\nsha256 = \"e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee\"\n",
        )
        .unwrap();
        assert_eq!(pin.deb_file_name(), "p_1%3a2.3_amd64.deb");
    }

    #[test]
    fn bad_pins_are_refused() {
        assert!(matches!(
            KernelPin::parse("package = \"p\"\nversion = \"1\"\nsha256 = \"abc\"\n"),
            Err(KernelError::PinHash(_))
        ));
        assert!(matches!(
            KernelPin::parse("package = \"p\"\n"),
            Err(KernelError::Pin(_))
        ));
    }

    #[test]
    fn wrong_hash_names_both_and_deletes() {
        let dir = std::env::temp_dir().join(format!("image-build-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k.deb");
        std::fs::write(&file, b"not a kernel").unwrap();
        let pin = KernelPin::pinned().unwrap();
        let err = verify(&file, &pin).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&pin.sha256), "{msg}");
        assert!(msg.contains(&sha256_file_of(b"not a kernel")), "{msg}");
        assert!(!file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sha256_file_of(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }
}
