//! The machine id: 32 lower-case hex digits, made from getrandom on the
//! first boot and kept on DATA forever (`/var/lib/atoll/machine-id`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MachineIdError {
    #[error("getrandom")]
    Random(#[source] nix::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether `s` is a machine id (32 lower-case hex digits, not all zero).
pub fn valid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// A fresh random id.
pub fn generate() -> Result<String, MachineIdError> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`,
        // which lives across the call.
        let n = unsafe {
            nix::libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(MachineIdError::Random(e));
        }
        filled += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What [`load_or_create`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineId {
    pub id: String,
    /// False when this boot made the id (first boot, or the file was bad).
    pub existed: bool,
}

/// Reads the id at `path`, or stores a new one from `make` (normally [`generate`]).
pub fn load_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, MachineIdError>,
) -> Result<MachineId, MachineIdError> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if valid(s) {
            return Ok(MachineId {
                id: s.to_string(),
                existed: true,
            });
        }
        log::warn!(
            "{} holds no valid machine id; making a new one",
            path.display()
        );
    }
    let id = make()?;
    let write_err = |source| MachineIdError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(write_err)?;
    if let Ok(f) = std::fs::File::open(&tmp) {
        let _ = f.sync_all();
    }
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(MachineId { id, existed: false })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage2::testutil::TempDir;

    #[test]
    fn made_once_then_kept() {
        let dir = TempDir::new("machine-id");
        let path = dir.path().join("lib/atoll/machine-id");
        let first = load_or_create(&path, generate).unwrap();
        assert!(!first.existed);
        assert!(valid(&first.id), "{}", first.id);
        let again = load_or_create(&path, generate).unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.existed);
        std::fs::write(&path, "garbage").unwrap();
        let fresh = load_or_create(&path, generate).unwrap();
        assert!(!fresh.existed && fresh.id != first.id);
    }

    #[test]
    fn validity() {
        assert!(valid("0123456789abcdef0123456789abcdef"));
        assert!(!valid("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid("00000000000000000000000000000000"));
        assert!(!valid("0123"));
    }
}
