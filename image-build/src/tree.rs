//! A staging directory that becomes a file system image (the slot's
//! ext4, the initramfs cpio): files, directories and symlinks with fixed
//! modes, and a sorted walk, so that the image does not depend on the
//! builder's umask or directory order.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file, directory or symlink")]
    Kind { path: PathBuf },
    #[error("{path}: file name is not UTF-8")]
    Name { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of a walked tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the tree's root, `/`-separated, no leading `/`.
    pub path: String,
    pub kind: Kind,
}

/// A staging directory.
#[derive(Debug, Clone)]
pub struct Tree {
    root: PathBuf,
}

impl Tree {
    /// An empty staging directory at `root` (anything there is removed).
    pub fn create(root: &Path) -> Result<Self, TreeError> {
        if root.exists() {
            std::fs::remove_dir_all(root).map_err(io(root))?;
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `rel` inside the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Creates directory `rel` (and its parents).
    pub fn dir(&self, rel: &str) -> Result<(), TreeError> {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).map_err(io(&p))
    }

    fn parent(&self, p: &Path) -> Result<(), TreeError> {
        match p.parent() {
            Some(parent) => std::fs::create_dir_all(parent).map_err(io(parent)),
            None => Ok(()),
        }
    }

    /// Writes file `rel` with `data` and `mode`.
    pub fn file(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), TreeError> {
        let p = self.path(rel);
        self.parent(&p)?;
        std::fs::write(&p, data).map_err(io(&p))?;
        set_mode(&p, mode)
    }

    /// Copies host file `src` to `rel` with `mode`.
    pub fn copy(&self, rel: &str, src: &Path, mode: u32) -> Result<(), TreeError> {
        let p = self.path(rel);
        self.parent(&p)?;
        std::fs::copy(src, &p).map_err(io(src))?;
        set_mode(&p, mode)
    }

    /// Creates symlink `rel` pointing at `target`.
    pub fn symlink(&self, rel: &str, target: &str) -> Result<(), TreeError> {
        let p = self.path(rel);
        self.parent(&p)?;
        std::os::unix::fs::symlink(target, &p).map_err(io(&p))
    }

    /// The merged-/usr layout: /bin, /sbin, /lib, /lib64 are symlinks into /usr.
    pub fn merged_usr(&self) -> Result<(), TreeError> {
        for d in ["bin", "sbin", "lib", "lib64"] {
            self.dir(&format!("usr/{d}"))?;
            self.symlink(d, &format!("usr/{d}"))?;
        }
        Ok(())
    }

    /// Gives every directory mode 0755 and every file 0755 or 0644 (by
    /// whether its owner may execute it), whatever the umask was.
    pub fn normalize_modes(&self) -> Result<(), TreeError> {
        for e in self.walk()? {
            let p = self.path(&e.path);
            match e.kind {
                Kind::Dir { .. } => set_mode(&p, 0o755)?,
                Kind::File { mode, .. } => {
                    set_mode(&p, if mode & 0o100 != 0 { 0o755 } else { 0o644 })?
                }
                Kind::Symlink { .. } => {}
            }
        }
        set_mode(&self.root, 0o755)
    }

    /// Every entry under the root, sorted by path (so a directory comes
    /// before what it holds).
    pub fn walk(&self) -> Result<Vec<Entry>, TreeError> {
        let mut out = Vec::new();
        walk_dir(&self.root, "", &mut out)?;
        out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Ok(out)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), TreeError> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

fn walk_dir(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<(), TreeError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| TreeError::Name { path: path.clone() })?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| TreeError::Name { path: path.clone() })?;
            out.push(Entry {
                path: rel,
                kind: Kind::Symlink { target },
            });
        } else if ft.is_dir() {
            out.push(Entry {
                path: rel.clone(),
                kind: Kind::Dir { mode },
            });
            walk_dir(&path, &rel, out)?;
        } else if ft.is_file() {
            out.push(Entry {
                path: rel,
                kind: Kind::File {
                    mode,
                    size: meta.len(),
                },
            });
        } else {
            return Err(TreeError::Kind { path });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh scratch directory for one test.
    pub(crate) fn scratch(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("image-build-test-{}-{name}", std::process::id()));
        if p.exists() {
            std::fs::remove_dir_all(&p).unwrap();
        }
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn builds_and_walks_sorted() {
        let dir = scratch("tree");
        let t = Tree::create(&dir.join("root")).unwrap();
        t.merged_usr().unwrap();
        t.file("usr/lib/atoll/init", b"\x7fELF", 0o700).unwrap();
        t.file("etc/a-b", b"x", 0o600).unwrap();
        t.file("etc/a/c", b"yy", 0o600).unwrap();
        t.normalize_modes().unwrap();
        let w = t.walk().unwrap();
        let paths: Vec<&str> = w.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        let pos = |p: &str| paths.iter().position(|x| *x == p).unwrap();
        assert!(pos("etc/a") < pos("etc/a/c"));
        let init = w.iter().find(|e| e.path == "usr/lib/atoll/init").unwrap();
        assert_eq!(
            init.kind,
            Kind::File {
                mode: 0o755,
                size: 4
            }
        );
        let c = w.iter().find(|e| e.path == "etc/a/c").unwrap();
        assert_eq!(
            c.kind,
            Kind::File {
                mode: 0o644,
                size: 2
            }
        );
        let lib = w.iter().find(|e| e.path == "lib").unwrap();
        assert_eq!(
            lib.kind,
            Kind::Symlink {
                target: "usr/lib".into()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
