//! The shared libraries of the dynamically linked binaries Atoll ships
//! (init, atollctl, mke2fs), found with `ldd` on the build host and laid out
//! as in Debian with merged /usr: libraries in `/usr/lib/x86_64-linux-gnu/`
//! under their soname, the loader at `/usr/lib64/ld-linux-x86-64.so.2`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{self, ToolError};
use crate::tree::{Tree, TreeError};

/// Where libraries go inside a root.
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";
/// Where the dynamic loader goes inside a root (`/lib64` links to `usr/lib64`).
pub const LOADER: &str = "usr/lib64/ld-linux-x86-64.so.2";

#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    #[error("{binary}: ldd cannot find {soname}")]
    NotFound { binary: PathBuf, soname: String },
    #[error("{binary}: unexpected ldd output line {line:?}")]
    Line { binary: PathBuf, line: String },
    #[error("{binary}: two libraries named {soname}: {first} and {second}")]
    Clash {
        binary: PathBuf,
        soname: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// What `ldd` says a binary needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LddOutput {
    /// soname → path on the build host.
    pub libs: BTreeMap<String, PathBuf>,
    /// The dynamic loader, if the binary is dynamically linked.
    pub loader: Option<PathBuf>,
}

/// Parses the output of `ldd BINARY`.
pub fn parse_ldd(binary: &Path, text: &str) -> Result<LddOutput, LibsError> {
    let mut out = LddOutput::default();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty()
            || line == "statically linked"
            || line.contains("not a dynamic executable")
        {
            continue;
        }
        // Drop the load address "(0x...)" at the end.
        let line = match line.rfind(" (0x") {
            Some(i) if line.ends_with(')') => line[..i].trim(),
            _ => line,
        };
        if let Some((soname, path)) = line.split_once("=>") {
            let (soname, path) = (soname.trim(), path.trim());
            if path == "not found" {
                return Err(LibsError::NotFound {
                    binary: binary.to_path_buf(),
                    soname: soname.to_string(),
                });
            }
            if path.is_empty() {
                // e.g. "linux-vdso.so.1 =>" on some glibc versions.
                continue;
            }
            out.libs.insert(soname.to_string(), PathBuf::from(path));
        } else if line.starts_with('/') {
            out.loader = Some(PathBuf::from(line));
        } else if line.starts_with("linux-vdso") || line.starts_with("linux-gate") {
            continue;
        } else {
            return Err(LibsError::Line {
                binary: binary.to_path_buf(),
                line: raw.to_string(),
            });
        }
    }
    Ok(out)
}

/// The libraries a set of binaries needs, merged.
#[derive(Debug, Clone, Default)]
pub struct SharedLibs {
    libs: BTreeMap<String, PathBuf>,
    loader: Option<PathBuf>,
}

impl SharedLibs {
    /// Runs `ldd` on each binary (all of them on the build host).
    pub fn of(binaries: &[&Path]) -> Result<Self, LibsError> {
        let mut all = SharedLibs::default();
        for bin in binaries {
            let text = tool::stdout(Command::new("ldd").arg(bin))?;
            all.add(bin, parse_ldd(bin, &text)?)?;
        }
        Ok(all)
    }

    fn add(&mut self, binary: &Path, ldd: LddOutput) -> Result<(), LibsError> {
        for (soname, path) in ldd.libs {
            match self.libs.get(&soname) {
                Some(first) if *first != path => {
                    return Err(LibsError::Clash {
                        binary: binary.to_path_buf(),
                        soname,
                        first: first.clone(),
                        second: path,
                    })
                }
                _ => {
                    self.libs.insert(soname, path);
                }
            }
        }
        if ldd.loader.is_some() {
            self.loader = ldd.loader;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.libs.len() + usize::from(self.loader.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the libraries into `tree` (symlinks resolved, each file named
    /// by its soname) and the loader to [`LOADER`].
    pub fn install(&self, tree: &Tree) -> Result<(), LibsError> {
        for (soname, path) in &self.libs {
            let real = std::fs::canonicalize(path).map_err(|source| LibsError::Io {
                path: path.clone(),
                source,
            })?;
            tree.copy(&format!("{LIB_DIR}/{soname}"), &real, 0o644)?;
        }
        if let Some(loader) = &self.loader {
            let real = std::fs::canonicalize(loader).map_err(|source| LibsError::Io {
                path: loader.clone(),
                source,
            })?;
            tree.copy(LOADER, &real, 0o755)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MKE2FS: &str = "\tlinux-vdso.so.1 (0x00007fbfa294f000)
\tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007fbfa28ac000)
\tlibcom_err.so.2 => /lib/x86_64-linux-gnu/libcom_err.so.2 (0x00007fbfa28a6000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fbfa2656000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fbfa2951000)
";

    #[test]
    fn parses_glibc_ldd() {
        let out = parse_ldd(Path::new("mke2fs"), MKE2FS).unwrap();
        assert_eq!(out.libs.len(), 3);
        assert_eq!(
            out.libs["libc.so.6"],
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            out.loader,
            Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
    }

    #[test]
    fn missing_library_is_an_error() {
        let err = parse_ldd(Path::new("x"), "\tlibfoo.so.1 => not found\n").unwrap_err();
        assert_eq!(err.to_string(), "x: ldd cannot find libfoo.so.1");
    }

    #[test]
    fn static_binary_needs_nothing() {
        let out = parse_ldd(Path::new("x"), "\tstatically linked\n").unwrap();
        assert_eq!(out, LddOutput::default());
        let out = parse_ldd(Path::new("x"), "\tnot a dynamic executable\n").unwrap();
        assert_eq!(out, LddOutput::default());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            parse_ldd(Path::new("x"), "what is this\n"),
            Err(LibsError::Line { .. })
        ));
    }

    #[test]
    fn merging_refuses_two_paths_for_one_soname() {
        let mut all = SharedLibs::default();
        all.add(Path::new("a"), parse_ldd(Path::new("a"), MKE2FS).unwrap())
            .unwrap();
        let other = "\tlibc.so.6 => /opt/libc.so.6 (0x1)\n";
        assert!(matches!(
            all.add(Path::new("b"), parse_ldd(Path::new("b"), other).unwrap()),
            Err(LibsError::Clash { .. })
        ));
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn real_ldd_on_this_test_binary() {
        let me = std::env::current_exe().unwrap();
        let libs = SharedLibs::of(&[&me]).unwrap();
        assert!(libs.libs.contains_key("libc.so.6"));
        assert!(libs.loader.is_some());
    }
}
