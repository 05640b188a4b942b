//! The DATA partition of a fresh disk: an empty ext4 (label ATOLL-DATA),
//! made with `mke2fs` on a plain file. Its UUID and directory hash seed are
//! derived from the inputs and `E2FSPROGS_FAKE_TIME` fixes its time stamps,
//! so it is the same bytes every time. PID 1 grows it to the end of the
//! disk on first boot.

use std::path::{Path, PathBuf};
use std::process::Command;

use atoll_common::layout;

use crate::tool::{self, ToolError};

/// Time stamp of the DATA file system (2000-01-01 00:00:00 UTC).
pub const FAKE_TIME: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Makes the ext4 image `out` of `size` bytes.
pub fn mke2fs(
    out: &Path,
    size: u64,
    uuid: &uuid::Uuid,
    hash_seed: &uuid::Uuid,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    if out.exists() {
        std::fs::remove_file(out).map_err(io)?;
    }
    std::fs::File::create(out)
        .and_then(|f| f.set_len(size))
        .map_err(io)?;
    tool::run(
        Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", FAKE_TIME.to_string())
            // Ignore a user's ~/.mke2fs.conf-style overrides of the defaults.
            .env_remove("MKE2FS_CONFIG")
            .args(["-q", "-F", "-t", "ext4"])
            // 4 KiB blocks and one inode per 16 KiB whatever the size, since
            // the file system is grown far beyond these 128 MiB.
            .args(["-b", "4096", "-i", "16384", "-I", "256"])
            .args(["-L", layout::DATA_FS_LABEL])
            .arg("-U")
            .arg(uuid.to_string())
            .arg("-E")
            .arg(format!("hash_seed={hash_seed},root_owner=0:0,nodiscard"))
            .arg(out),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::tests::scratch;

    #[test]
    fn same_ids_same_bytes() {
        let dir = scratch("data");
        let u = crate::ids::uuid("data fs", b"x");
        let s = crate::ids::uuid("data hash seed", b"x");
        let a = dir.join("a");
        let b = dir.join("b");
        mke2fs(&a, 16 << 20, &u, &s).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        mke2fs(&b, 16 << 20, &u, &s).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        let out = tool::stdout(Command::new("dumpe2fs").arg("-h").arg(&a)).unwrap();
        assert!(out.contains(&u.to_string()), "{out}");
        assert!(out.contains("ATOLL-DATA"), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
