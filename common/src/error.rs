//! Error text for people: an error and its causes on one line.
//!
//! Library errors say only what failed at their own level and leave the
//! cause to `source()` (STYLE.md, "a message never repeats its source"), so
//! whoever reports an error prints the whole chain with [`error_chain`].

/// The error and each of its sources, joined by ": ", as in
/// `cannot mount DATA: /dev/vda4: EINVAL: Invalid argument`.
///
/// The same text as anyhow's `{:#}` for an `anyhow::Error`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use thiserror::Error;

    use super::*;

    #[derive(Debug, Error)]
    enum Outer {
        #[error("cannot set up dm-verity on {device}")]
        Verity {
            device: String,
            #[source]
            source: Inner,
        },
        #[error("the repository's metadata was refused")]
        Metadata(#[source] Box<dyn std::error::Error + Send + Sync>),
    }

    #[derive(Debug, Error)]
    #[error("device-mapper {op} on {name:?} failed")]
    struct Inner {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    }

    #[test]
    fn an_error_without_sources_is_its_message() {
        let e = io::Error::new(io::ErrorKind::NotFound, "no DATA partition");
        assert_eq!(error_chain(&e), "no DATA partition");
    }

    #[test]
    fn error_chain_joins_sources() {
        let e = Outer::Verity {
            device: "/dev/vda3".into(),
            source: Inner {
                op: "table load",
                name: "atoll-root".into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "EINVAL: Invalid argument"),
            },
        };
        assert_eq!(
            error_chain(&e),
            "cannot set up dm-verity on /dev/vda3: device-mapper table load on \"atoll-root\" \
             failed: EINVAL: Invalid argument"
        );
    }

    #[test]
    fn error_chain_follows_boxed_sources() {
        let e = Outer::Metadata("no targets.json is trusted yet".into());
        assert_eq!(
            error_chain(&e),
            "the repository's metadata was refused: no targets.json is trusted yet"
        );
    }
}
