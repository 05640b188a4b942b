//! The GRUB environment block: a 1024-byte file of `name=value` lines after
//! the header `# GRUB Environment Block`, padded with `#`. GRUB rewrites it in
//! place (`save_env`), so its size never changes.
//!
//! Values escape `\` and newline with a backslash, as GRUB's `envblk.c` does.

use std::collections::BTreeMap;

/// Size of an environment block; GRUB refuses any other.
pub const SIZE: usize = 1024;
/// First line of every block.
pub const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrubenvError {
    #[error("environment block is {0} bytes, not {SIZE}")]
    Size(usize),
    #[error("environment block does not start with the GRUB header")]
    Header,
    #[error("environment block is not UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("line {line} of the environment block has no '=': {text:?}")]
    Line { line: usize, text: String },
    #[error("variable name {0:?} is empty or holds '=' or a newline")]
    Name(String),
    #[error("variables take {needed} bytes, more than the {SIZE}-byte block holds")]
    Full { needed: usize },
}

/// A parsed environment block. Keys keep a stable (sorted) order so that the
/// same variables always give the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grubenv {
    vars: BTreeMap<String, String>,
}

impl Grubenv {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a block. Anything but a well-formed 1024-byte block is an error,
    /// so that callers can fall back to the last good copy.
    pub fn parse(bytes: &[u8]) -> Result<Self, GrubenvError> {
        if bytes.len() != SIZE {
            return Err(GrubenvError::Size(bytes.len()));
        }
        if !bytes.starts_with(HEADER.as_bytes()) {
            return Err(GrubenvError::Header);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| GrubenvError::Utf8(e.valid_up_to()))?;
        let mut vars = BTreeMap::new();
        let body = &text[HEADER.len()..];
        let mut chars = body.chars().peekable();
        let mut line_no = 1;
        loop {
            // One logical line; an escaped newline continues it.
            let mut raw = String::new();
            let mut ended = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(n) => {
                            raw.push('\\');
                            raw.push(n);
                        }
                        None => raw.push('\\'),
                    },
                    '\n' => {
                        ended = true;
                        break;
                    }
                    c => raw.push(c),
                }
            }
            line_no += 1;
            if raw.is_empty() && !ended {
                break;
            }
            if raw.starts_with('#') || raw.is_empty() {
                if !ended {
                    break;
                }
                continue;
            }
            let Some((name, value)) = raw.split_once('=') else {
                return Err(GrubenvError::Line {
                    line: line_no,
                    text: raw,
                });
            };
            vars.insert(name.to_string(), unescape(value));
            if !ended {
                break;
            }
        }
        Ok(Self { vars })
    }

    /// Serialises to exactly [`SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GrubenvError> {
        let mut out = String::from(HEADER);
        for (k, v) in &self.vars {
            out.push_str(k);
            out.push('=');
            for c in v.chars() {
                if c == '\\' || c == '\n' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\n');
        }
        if out.len() > SIZE {
            return Err(GrubenvError::Full { needed: out.len() });
        }
        let mut bytes = out.into_bytes();
        bytes.resize(SIZE, b'#');
        Ok(bytes)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> Result<(), GrubenvError> {
        if name.is_empty() || name.contains(['=', '\n', '#', '\\']) {
            return Err(GrubenvError::Name(name.to_string()));
        }
        self.vars.insert(name.to_string(), value.into());
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.vars.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut env = Grubenv::new();
        env.set("ORDER", "A B").unwrap();
        env.set("A_OK", "1").unwrap();
        env.set("ODD", "back\\slash\nnewline").unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes.starts_with(HEADER.as_bytes()));
        assert_eq!(Grubenv::parse(&bytes).unwrap(), env);
    }

    #[test]
    fn reads_what_grub_editenv_writes() {
        // Layout produced by `grub-editenv FILE create; grub-editenv FILE set A=1 B=x`.
        let mut block = String::from(HEADER);
        block.push_str("A=1\nB=x\n");
        let mut bytes = block.into_bytes();
        bytes.resize(SIZE, b'#');
        let env = Grubenv::parse(&bytes).unwrap();
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), Some("x"));
    }

    #[test]
    fn damaged_blocks_are_refused() {
        assert_eq!(Grubenv::parse(&[0u8; 10]), Err(GrubenvError::Size(10)));
        assert_eq!(Grubenv::parse(&[0u8; SIZE]), Err(GrubenvError::Header));
        let mut bytes = Grubenv::new().to_bytes().unwrap();
        bytes[HEADER.len()..HEADER.len() + 4].copy_from_slice(b"junk");
        bytes[HEADER.len() + 4] = b'\n';
        assert!(matches!(
            Grubenv::parse(&bytes),
            Err(GrubenvError::Line { .. })
        ));
        let mut bytes = Grubenv::new().to_bytes().unwrap();
        bytes[100] = 0xff;
        assert!(matches!(Grubenv::parse(&bytes), Err(GrubenvError::Utf8(_))));
    }

    #[test]
    fn full_block_is_refused() {
        let mut env = Grubenv::new();
        env.set("X", "y".repeat(SIZE)).unwrap();
        assert!(matches!(env.to_bytes(), Err(GrubenvError::Full { .. })));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut env = Grubenv::new();
        assert!(env.set("", "x").is_err());
        assert!(env.set("A=B", "x").is_err());
        assert!(env.set("A\nB", "x").is_err());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every single-byte change of a valid block.
        let mut env = Grubenv::new();
        env.set("ORDER", "A B").unwrap();
        env.set("A_OK", "1").unwrap();
        let good = env.to_bytes().unwrap();
        for i in 0..80 {
            for b in [0u8, b'\n', b'=', b'\\', b'#', 0xc3, 0xff] {
                let mut bytes = good.clone();
                bytes[i] = b;
                let _ = Grubenv::parse(&bytes);
            }
        }
    }
}
