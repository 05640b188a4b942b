//! What goes wrong reading a config, and how it is shown:
//! `SOURCE:LINE:COL: key `PATH`: MESSAGE`, one problem a line.

use std::fmt;
use std::io;

/// One problem with a config, where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; `None` when the position is not known (e.g. a key that
    /// is missing from the top level).
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The key path (`network.interfaces[0].mtu`), when the problem is about a key.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    /// This problem as one line, prefixed with `source` (the name of the
    /// config's source, e.g. a file name).
    pub fn render(&self, source: &str) -> String {
        let mut s = source.to_string();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
            if let Some(col) = self.column {
                s.push_str(&format!(":{col}"));
            }
        }
        s.push_str(": ");
        if let Some(key) = &self.key {
            s.push_str(&format!("key `{key}`: "));
        }
        // One problem, one line.
        s.push_str(&self.message.replace('\n', " "));
        s
    }
}

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read the file")]
    Read {
        origin: String,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: gzip data that does not decompress")]
    Gzip {
        origin: String,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: the config is larger than {limit} bytes{}", if *.decompressed { " once decompressed" } else { "" })]
    TooLarge {
        origin: String,
        limit: usize,
        decompressed: bool,
    },
    #[error("{origin}:{line}:{column}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        origin: String,
        offset: usize,
        line: usize,
        column: usize,
    },
    #[error("{origin}:1: {what} is not supported: {hint}")]
    Unsupported {
        origin: String,
        what: &'static str,
        hint: &'static str,
    },
    /// The text was read but has problems (syntax, types, values); every
    /// problem found is listed.
    #[error("{}", render_all(origin, problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn render_all(origin: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.render(origin))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Each problem as its own line (for `config show`'s error list).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { origin, problems } => {
                problems.iter().map(|p| p.render(origin)).collect()
            }
            other => vec![crate::error::error_chain(other)],
        }
    }

    /// The problems, when the text was read (empty for other errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without a source name: `LINE:COL: key `PATH`: MESSAGE`.
        if let Some(line) = self.line {
            write!(f, "{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.message.replace('\n', " "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render() {
        let p = Problem {
            line: Some(3),
            column: Some(7),
            key: Some("network.interfaces[0].mtu".into()),
            message: "invalid value: integer `70000`, expected an MTU from 68 to 65535".into(),
        };
        assert_eq!(
            p.render("user-data"),
            "user-data:3:7: key `network.interfaces[0].mtu`: invalid value: integer `70000`, expected an MTU from 68 to 65535"
        );
        assert_eq!(
            p.to_string(),
            "3:7: key `network.interfaces[0].mtu`: invalid value: integer `70000`, expected an MTU from 68 to 65535"
        );
        let q = Problem {
            line: None,
            column: None,
            key: None,
            message: "two\nlines".into(),
        };
        assert_eq!(q.render("x"), "x: two lines");
        assert_eq!(q.to_string(), "two lines");
        let e = ConfigError::Invalid {
            origin: "f.toml".into(),
            problems: vec![p, q],
        };
        assert_eq!(e.to_string().lines().count(), 2);
        assert_eq!(e.lines().len(), 2);
    }

    #[test]
    fn lines_include_the_cause() {
        let e = ConfigError::Read {
            origin: "/nope".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            e.lines(),
            vec!["/nope: cannot read the file: No such file".to_string()]
        );
    }
}
