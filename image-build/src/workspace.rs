//! Finding the Cargo workspace root, against which the command line's
//! relative paths (`target/atoll`, `target/release/init`) are resolved.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("no Cargo.toml with a [workspace] section in {start} or any parent: run image-build inside the Atoll repository")]
    NotFound { start: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Walks up from `start` to the first directory whose Cargo.toml has a
/// `[workspace]` table.
pub fn root_from(start: &Path) -> Result<PathBuf, WorkspaceError> {
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).map_err(|source| WorkspaceError::Read {
            path: manifest.clone(),
            source,
        })?;
        if text.lines().any(|l| l.trim() == "[workspace]") {
            return Ok(dir.to_path_buf());
        }
    }
    Err(WorkspaceError::NotFound {
        start: start.to_path_buf(),
    })
}

/// Resolves `path` against the workspace root unless it is absolute.
pub fn resolve(root: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_workspace() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = root_from(here).unwrap();
        assert_eq!(root, here.parent().unwrap());
        assert_eq!(resolve(&root, Path::new("/abs")), PathBuf::from("/abs"));
        assert_eq!(resolve(&root, Path::new("target")), root.join("target"));
    }

    #[test]
    fn outside_a_workspace_is_an_error() {
        assert!(matches!(
            root_from(Path::new("/")),
            Err(WorkspaceError::NotFound { .. })
        ));
    }
}
