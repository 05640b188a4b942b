//! Finding where a key path sits in the source text, for problems found
//! after deserialisation (a bad address, a duplicate name).
//!
//! The source is deserialised again with a probe that walks down the path
//! and fails on purpose at the deepest value it reaches: the TOML and YAML
//! deserialisers attach that value's position to the error, which is the
//! position wanted. One more parse per problem is cheap next to the errors
//! it explains, and it finds positions the same way for both formats.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::value::{KeyPath, Segment};

/// A position in the source text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    /// In characters.
    pub column: usize,
}

/// The position of byte `offset` in `text` (clamped to the text).
pub fn position_of(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// The message the probe fails with (followed by how many segments of the
/// path it went down); any other error is a real one.
const FOUND: &str = "\u{0}atoll-probe-found:";

/// Walks down a path, failing with [`FOUND`] at the deepest value reached.
struct Probe<'a> {
    rest: &'a [Segment],
    depth: usize,
}

impl<'a> Probe<'a> {
    fn found<E: de::Error>(&self) -> E {
        E::custom(format_args!("{FOUND}{}", self.depth))
    }

    fn next(&self, rest: &'a [Segment]) -> Self {
        Probe {
            rest,
            depth: self.depth + 1,
        }
    }
}

/// How deep the probe that failed with `message` went, if it was the probe.
fn found_depth(message: &str) -> Option<usize> {
    let after = &message[message.find(FOUND)? + FOUND.len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(want), rest)) = self.rest.split_first() else {
            return Err(self.found());
        };
        while let Some(key) = map.next_key::<KeyName>()? {
            if key.0.as_deref() == Some(want.as_str()) {
                return map.next_value_seed(self.next(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(self.found())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(want), rest)) = self.rest.split_first() else {
            return Err(self.found());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(self.found());
            }
        }
        match seq.next_element_seed(self.next(rest))? {
            Some(()) => Ok(()),
            None => Err(self.found()),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(self.found())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
}

/// A map key as text (YAML keys may be numbers or booleans).
struct KeyName(Option<String>);

impl<'de> de::Deserialize<'de> for KeyName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'v> Visitor<'v> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyName, E> {
                Ok(KeyName(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyName, E> {
                Ok(KeyName(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyName, E> {
                Ok(KeyName(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyName, E> {
                Ok(KeyName(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_map<A: MapAccess<'v>>(self, mut m: A) -> Result<KeyName, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KeyName(None))
            }
            fn visit_seq<A: SeqAccess<'v>>(self, mut s: A) -> Result<KeyName, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyName(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn probe(path: &KeyPath) -> Probe<'_> {
    Probe {
        rest: path.segments(),
        depth: 0,
    }
}

/// Where `path` (or the deepest part of it that exists, other than the
/// whole document) is in TOML `text`.
pub(crate) fn locate_toml(text: &str, path: &KeyPath) -> Option<Position> {
    let err = probe(path)
        .deserialize(toml::Deserializer::new(text))
        .err()?;
    match found_depth(err.message()) {
        Some(depth) if depth > 0 || path.is_root() => {}
        _ => return None,
    }
    let span = err.span()?;
    Some(position_of(text, span.start))
}

/// Where `path` (or the deepest part of it that exists, other than the
/// whole document) is in YAML `text`.
pub(crate) fn locate_yaml(text: &str, path: &KeyPath) -> Option<Position> {
    let err = probe(path)
        .deserialize(serde_norway::Deserializer::from_str(text))
        .err()?;
    match found_depth(&err.to_string()) {
        Some(depth) if depth > 0 || path.is_root() => {}
        _ => return None,
    }
    let loc = err.location()?;
    Some(Position {
        line: loc.line(),
        column: loc.column(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &[&str]) -> KeyPath {
        let mut p = KeyPath::root();
        for seg in s {
            p = match seg.parse::<usize>() {
                Ok(i) => p.index(i),
                Err(_) => p.key(seg),
            };
        }
        p
    }

    const TOML: &str = "hostname = \"x\"\n\n[network]\ndhcp_default = true\n\n[[network.interfaces]]\nname = \"a\"\n\n[[network.interfaces]]\nname = \"b\"\nmtu = 5\n\n[sysctl]\n\"net.ipv4.ip_forward\" = 1\n\n[admin]\nenabled = true\n";

    #[test]
    fn positions() {
        assert_eq!(position_of("ab\ncd", 0), Position { line: 1, column: 1 });
        assert_eq!(position_of("ab\ncd", 4), Position { line: 2, column: 2 });
        assert_eq!(position_of("é\nx", 1), Position { line: 1, column: 1 });
        assert_eq!(position_of("ab", 99), Position { line: 1, column: 3 });
    }

    #[test]
    fn toml_paths() {
        let at = |p: &[&str]| locate_toml(TOML, &path(p)).map(|p| (p.line, p.column));
        assert_eq!(at(&["network", "interfaces", "1", "mtu"]), Some((11, 7)));
        assert_eq!(at(&["sysctl", "net.ipv4.ip_forward"]), Some((14, 25)));
        assert_eq!(at(&["hostname"]), Some((1, 12)));
        // Not there, and no table to point at.
        assert_eq!(at(&["ntp", "servers"]), None);
        // Missing keys: the table that should hold them.
        assert_eq!(at(&["admin", "image"]).map(|p| p.0), Some(16));
        assert_eq!(
            at(&["network", "interfaces", "1", "dns"]).map(|p| p.0),
            Some(9)
        );
        // A syntax error is not a position.
        assert_eq!(locate_toml("[x", &path(&["x"])), None);
    }

    #[test]
    fn toml_inline_tables() {
        let text = "network = { interfaces = [ { name = \"a\" },\n { name = \"b\", mtu = 3 } ] }\n";
        let p = locate_toml(text, &path(&["network", "interfaces", "1", "mtu"])).unwrap();
        assert_eq!((p.line, p.column), (2, 22));
    }

    #[test]
    fn yaml_paths() {
        let text = "network:\n  interfaces:\n    - name: a\n    - name: b\n      mtu: 3\nadmin:\n  enabled: true\n";
        let at = |p: &[&str]| locate_yaml(text, &path(p)).map(|p| (p.line, p.column));
        assert_eq!(at(&["network", "interfaces", "1", "mtu"]), Some((5, 12)));
        assert_eq!(at(&["network", "interfaces", "1"]), Some((4, 7)));
        assert_eq!(at(&["admin", "image"]).map(|p| p.0), Some(7));
    }
}
