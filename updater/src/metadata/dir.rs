//! A [`Fetcher`] over a repository in a local directory (a mounted USB
//! stick, or the repository `image-build release` just wrote, which it
//! checks through the same workflow the hosts run).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

use super::client::{FetchError, Fetcher};

#[derive(Debug, Clone)]
pub struct DirFetcher {
    pub dir: PathBuf,
}

impl DirFetcher {
    pub fn new(dir: impl Into<PathBuf>) -> DirFetcher {
        DirFetcher { dir: dir.into() }
    }
}

impl Fetcher for DirFetcher {
    fn fetch(&mut self, name: &str, max_length: u64) -> Result<Vec<u8>, FetchError> {
        // Names come from the workflow (`N.root.json`, `timestamp.json`):
        // never a path.
        if name.contains('/') || name.starts_with('.') {
            return Err(FetchError::NotFound);
        }
        let file = match File::open(self.dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(FetchError::NotFound),
            Err(e) => return Err(FetchError::Transfer(Box::new(e))),
        };
        let mut bytes = Vec::new();
        file.take(max_length.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| FetchError::Transfer(Box::new(e)))?;
        if bytes.len() as u64 > max_length {
            return Err(FetchError::TooLong { limit: max_length });
        }
        Ok(bytes)
    }
}
