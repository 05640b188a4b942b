//! Canonical JSON: the bytes that are signed and verified.
//!
//! The rules are OLPC canonical JSON, as TUF and securesystemslib's
//! `encode_canonical` use them: object keys sorted by their bytes, no
//! whitespace, integers only (no floats), and in strings only `"` and `\`
//! escaped; every other character is written as its UTF-8 bytes. Hand
//! written (fifty lines) rather than a dependency: it also refuses floats up
//! front, and the fuzz target covers it with the parser.

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("canonical JSON has no floating point numbers, but {key:?} holds {number}")]
    Float { key: String, number: String },
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, "", &mut out)?;
    Ok(out)
}

fn write(value: &Value, key: &str, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalError::Float {
                    key: key.to_owned(),
                    number: n.to_string(),
                });
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, key, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(v, k, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x\"y\\z\n", "c": -3});
        let s = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            s,
            "{\"a\":\"x\\\"y\\\\z\n\",\"b\":[1,{\"a\":true,\"z\":null}],\"c\":-3}"
        );
    }

    #[test]
    fn refuses_floats() {
        let v = json!({"length": 1.5});
        let e = to_vec(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "canonical JSON has no floating point numbers, but \"length\" holds 1.5"
        );
    }
}
