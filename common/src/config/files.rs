//! `[[files]]`: files written under /var when the config is applied (what
//! cloud-config `write_files` maps onto), and the path rule they share with
//! container volumes.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::value::{KeyPath, Parsed, TextValue, ValidationError};

/// `[[files]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct File {
    /// An absolute, normalised path under /var (the rest is read-only).
    pub path: String,
    pub content: String,
    pub encoding: FileEncoding,
    /// Permission bits as an octal string (`"0644"`, `"0600"`, `"1777"`).
    pub mode: Parsed<FileMode>,
    /// `UID[:GID]`, numeric or `root` (Atoll has no other users); left out: root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Default for File {
    fn default() -> Self {
        Self {
            path: String::new(),
            content: String::new(),
            encoding: FileEncoding::Plain,
            mode: Parsed::new("0644"),
            owner: None,
        }
    }
}

impl File {
    /// The bytes to write (`content` decoded), or why they cannot be had.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self.encoding {
            FileEncoding::Plain => Ok(self.content.as_bytes().to_vec()),
            FileEncoding::Base64 => decode_base64_lenient(&self.content),
        }
    }

    /// The owner as numbers (`root` is 0); `(0, 0)` when left out.
    pub fn owner_ids(&self) -> Result<(u32, u32), String> {
        match &self.owner {
            None => Ok((0, 0)),
            Some(o) => parse_owner(o),
        }
    }
}

/// Decodes base64 that may be wrapped over several lines.
pub(crate) fn decode_base64_lenient(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("not base64 ({e})"))
}

fn parse_owner(owner: &str) -> Result<(u32, u32), String> {
    let id = |s: &str| -> Result<u32, String> {
        if s == "root" {
            Ok(0)
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| format!("`{s}` is too large"))
        } else {
            Err(format!(
                "`{s}` is not a number or `root` (Atoll has no other users)"
            ))
        }
    };
    match owner.split_once(':') {
        Some((u, g)) => Ok((id(u)?, id(g)?)),
        None => {
            let u = id(owner)?;
            Ok((u, u))
        }
    }
}

/// How `content` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileEncoding {
    /// The text as is.
    #[default]
    Plain,
    /// Base64 (line breaks allowed), for binary content.
    Base64,
}

/// Permission bits, at most `0o7777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl TextValue for FileMode {
    const EXPECTED: &'static str = "an octal mode string like \"0644\"";
    fn parse_text(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        if digits.is_empty()
            || digits.len() > 5
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err("octal digits 0-7 only".into());
        }
        let mode = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
        if mode > 0o7777 {
            return Err("more than 7777".into());
        }
        Ok(FileMode(mode))
    }
}

/// Checks that `path` is absolute, normalised (no `.`, `..` or empty
/// segment, no trailing `/`) and strictly under /var.
pub fn check_var_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("not an absolute path".into());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err("not normalised (an empty, `.` or `..` segment, or a trailing `/`)".into());
    }
    if segments.len() < 2 || segments[0] != "var" {
        return Err("not under /var (the rest of the file system is read-only)".into());
    }
    Ok(())
}

/// Checks an absolute, normalised path (anywhere), such as a volume's
/// target in a container.
pub fn check_absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("not an absolute path".into());
    }
    if path == "/" {
        return Ok(());
    }
    if path.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("not normalised (an empty, `.` or `..` segment, or a trailing `/`)".into());
    }
    Ok(())
}

pub(crate) fn validate_files(files: &[File], path: &KeyPath, errors: &mut Vec<ValidationError>) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let p = path.index(i);
        if f.path.is_empty() {
            errors.push(ValidationError::new(
                p.key("path"),
                "missing: where is the file written?",
            ));
        } else if let Err(e) = check_var_path(&f.path) {
            errors.push(ValidationError::new(
                p.key("path"),
                format!("`{}` cannot be written: {e}", f.path),
            ));
        } else if seen.contains(&f.path.as_str()) {
            errors.push(ValidationError::new(
                p.key("path"),
                format!("`{}` is written by an earlier entry already", f.path),
            ));
        } else {
            seen.push(&f.path);
        }
        if f.encoding == FileEncoding::Base64 {
            if let Err(e) = decode_base64_lenient(&f.content) {
                errors.push(ValidationError::new(
                    p.key("content"),
                    format!("encoding is base64, but the content is {e}"),
                ));
            }
        }
        f.mode.check(&p.key("mode"), errors);
        if let Some(owner) = &f.owner {
            if let Err(e) = parse_owner(owner) {
                errors.push(ValidationError::new(
                    p.key("owner"),
                    format!("invalid value: string {owner:?}, expected UID[:GID] ({e})"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_paths() {
        for good in ["/var/lib/app/config.json", "/var/x", "/var/lib/a.b/c..d"] {
            assert!(check_var_path(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("var/x", "absolute"),
            ("/var", "under /var"),
            ("/var/", "normalised"),
            ("/etc/passwd", "under /var"),
            ("/variable/x", "under /var"),
            ("/var/../etc/passwd", "normalised"),
            ("/var/./x", "normalised"),
            ("/var//x", "normalised"),
            ("/var/x/", "normalised"),
        ] {
            let e = check_var_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(FileMode::parse_text("0644"), Ok(FileMode(0o644)));
        assert_eq!(FileMode::parse_text("600"), Ok(FileMode(0o600)));
        assert_eq!(FileMode::parse_text("1777"), Ok(FileMode(0o1777)));
        assert_eq!(FileMode::parse_text("0o755"), Ok(FileMode(0o755)));
        for bad in ["", "0648", "rw-r--r--", "17777", "00000644", "-644"] {
            assert!(FileMode::parse_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners_and_bytes() {
        assert_eq!(parse_owner("root"), Ok((0, 0)));
        assert_eq!(parse_owner("root:root"), Ok((0, 0)));
        assert_eq!(parse_owner("1000:100"), Ok((1000, 100)));
        assert_eq!(parse_owner("1000"), Ok((1000, 1000)));
        assert!(parse_owner("www-data").is_err());
        assert!(parse_owner("1000:").is_err());
        let f = File {
            content: "aGVs\nbG8=".into(),
            encoding: FileEncoding::Base64,
            ..File::default()
        };
        assert_eq!(f.bytes().unwrap(), b"hello");
    }
}
