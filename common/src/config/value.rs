//! Values the config writes as text (addresses, durations, sizes, …), key
//! paths, and the validation problems found in a [`super::Config`].
//!
//! A [`Parsed<T>`] keeps the text as written next to what it parsed to. A
//! text that does not parse does not stop deserialisation: the value keeps
//! the reason, and [`super::Config::validate`] reports it together with every
//! other problem, so one run shows them all.

use std::fmt;
use std::marker::PhantomData;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A kind of value the config writes as text.
pub trait TextValue: Sized {
    /// What a good value looks like, for error messages ("an IPv4 address").
    const EXPECTED: &'static str;
    /// Whether an integer in the source is taken as the text of its decimal
    /// digits (sizes: `memory = 1048576`). Off where it would mislead (file
    /// modes: TOML's `0o644` is the integer 420).
    const FROM_INTEGER: bool = false;
    /// Parses the text, or says what is wrong with it.
    fn parse_text(text: &str) -> Result<Self, String>;
}

/// A value written as text, with what it parsed to.
///
/// Equality and serialisation use the text, so `to_toml` writes back exactly
/// what was read. In a config returned by [`super::parse`] every value
/// parsed: [`Parsed::get`] is `Some`.
#[derive(Clone)]
pub struct Parsed<T> {
    text: String,
    value: Result<T, String>,
}

impl<T: TextValue> Parsed<T> {
    /// Parses `text` (a failure is kept, for [`super::Config::validate`]).
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let value = T::parse_text(&text);
        Self { text, value }
    }
}

impl<T> Parsed<T> {
    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed value, or `None` when the text did not parse.
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref().ok()
    }

    /// Why the text did not parse, if it did not.
    pub fn error(&self) -> Option<&str> {
        self.value.as_ref().err().map(String::as_str)
    }
}

impl<T: TextValue> Parsed<T> {
    /// Adds a problem to `errors` when the text did not parse.
    pub(crate) fn check(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        if let Err(reason) = &self.value {
            errors.push(ValidationError::new(
                path.clone(),
                format!(
                    "invalid value: string {:?}, expected {} ({reason})",
                    self.text,
                    T::EXPECTED
                ),
            ));
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Ok(v) => write!(f, "{:?} ({v:?})", self.text),
            Err(e) => write!(f, "{:?} (invalid: {e})", self.text),
        }
    }
}

impl<T> fmt::Display for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<T> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for Parsed<T> {}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, T: TextValue> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);

        impl<T: TextValue> de::Visitor<'_> for TextVisitor<T> {
            type Value = Parsed<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string: {}", T::EXPECTED)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Parsed::new(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if T::FROM_INTEGER {
                    Ok(Parsed::new(v.to_string()))
                } else {
                    Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if T::FROM_INTEGER {
                    Ok(Parsed::new(v.to_string()))
                } else {
                    Err(E::invalid_type(de::Unexpected::Signed(v), &self))
                }
            }
        }

        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// A list index (from 0).
    Index(usize),
}

/// Where a value sits in the config: `network.interfaces[0].mtu`.
///
/// Keys that are not bare TOML keys are quoted: `sysctl."net.ipv4.ip_forward"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The empty path (the whole config).
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path with a key added.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_string()));
        p
    }

    /// This path with a list index added.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// The steps, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether `prefix` is this path or leads to it.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// `new_prefix` followed by what follows `old_prefix` in this path (which
    /// must start with it).
    pub(crate) fn replace_prefix(&self, old_prefix: &KeyPath, new_prefix: &KeyPath) -> KeyPath {
        let mut segs = new_prefix.0.clone();
        segs.extend(self.0.iter().skip(old_prefix.0.len()).cloned());
        KeyPath(segs)
    }

    /// The path serde_path_to_error recorded for a deserialisation error.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut segs = Vec::new();
        for seg in path.iter() {
            match seg {
                S::Seq { index } => segs.push(Segment::Index(*index)),
                S::Map { key } => segs.push(Segment::Key(key.clone())),
                S::Enum { variant } => segs.push(Segment::Key(variant.clone())),
                S::Unknown => {}
            }
        }
        KeyPath(segs)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem [`super::Config::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The key the problem is about (for a missing key, the key that should be there).
    pub path: KeyPath,
    pub message: String,
}

impl ValidationError {
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Even(u32);

    impl TextValue for Even {
        const EXPECTED: &'static str = "an even number";
        fn parse_text(text: &str) -> Result<Self, String> {
            let n: u32 = text.parse().map_err(|_| "not a number".to_string())?;
            if n.is_multiple_of(2) {
                Ok(Even(n))
            } else {
                Err("odd".into())
            }
        }
    }

    #[test]
    fn parsed_keeps_text_and_value() {
        let p: Parsed<Even> = Parsed::new("4");
        assert_eq!(p.get(), Some(&Even(4)));
        assert_eq!(p.text(), "4");
        let bad: Parsed<Even> = Parsed::new("5");
        assert_eq!(bad.get(), None);
        assert_eq!(bad.error(), Some("odd"));
        let mut errors = Vec::new();
        bad.check(&KeyPath::root().key("n"), &mut errors);
        assert_eq!(
            errors[0].to_string(),
            "key `n`: invalid value: string \"5\", expected an even number (odd)"
        );
    }

    #[test]
    fn key_path_display_quotes_keys_that_are_not_bare() {
        let p = KeyPath::root()
            .key("network")
            .key("interfaces")
            .index(0)
            .key("mtu");
        assert_eq!(p.to_string(), "network.interfaces[0].mtu");
        let s = KeyPath::root().key("sysctl").key("net.ipv4.ip_forward");
        assert_eq!(s.to_string(), "sysctl.\"net.ipv4.ip_forward\"");
        assert_eq!(KeyPath::root().index(2).to_string(), "[2]");
    }

    #[test]
    fn replace_prefix() {
        let p = KeyPath::root().key("files").index(3).key("mode");
        let q = p.replace_prefix(
            &KeyPath::root().key("files").index(3),
            &KeyPath::root().key("write_files").index(1),
        );
        assert_eq!(q.to_string(), "write_files[1].mode");
    }
}
