//! Image references as Docker and podman read them.
//!
//! `alpine` means `docker.io/library/alpine:latest`; `quay.io/x/y@sha256:…`
//! names content by digest; `localhost:5000/app:1` a local registry. The
//! grammar is the one of the distribution project's `reference` package:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]       host: DNS name, IPv4, or [IPv6]
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//!
//! Normalisation follows Docker's: the first component is a registry only
//! if it has a `.` or a `:` or is `localhost` (and has no capitals);
//! otherwise the registry is `docker.io` (`index.docker.io` is the same),
//! where a single-component path gets `library/`. A reference with neither
//! tag nor digest gets the tag `latest`. Only sha256 digests are accepted.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The most a name (registry and path) may hold, as in distribution.
pub const NAME_MAX: usize = 255;

/// Errors from parsing an image reference; each names the input.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference {0:?} is longer than {NAME_MAX} characters")]
    TooLong(String),
    #[error("image reference {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("image reference {0:?}: invalid registry host {1:?}")]
    BadDomain(String, String),
    #[error("image reference {0:?}: invalid repository path component {1:?}")]
    BadPathComponent(String, String),
    #[error("image reference {0:?}: invalid tag {1:?}")]
    BadTag(String, String),
    #[error("image reference {0:?}: invalid digest")]
    BadDigest(String, #[source] DigestError),
    #[error("image reference {0:?}: a 64-digit hex name looks like an image ID, not a repository")]
    HexName(String),
}

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let err_input = || input.to_owned();
        // The digest follows the only '@'.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|e| ReferenceError::BadDigest(err_input(), e))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // The tag follows the last ':' that comes after the last '/' (a
        // colon before it belongs to the registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag(err_input(), tag.to_owned()));
            }
        }
        if name.len() > NAME_MAX {
            return Err(ReferenceError::TooLong(err_input()));
        }
        let (registry, path) = split_domain(name);
        if let Some(registry) = registry {
            if !valid_domain(registry) {
                return Err(ReferenceError::BadDomain(err_input(), registry.to_owned()));
            }
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(err_input()));
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(ReferenceError::BadPathComponent(
                    err_input(),
                    component.to_owned(),
                ));
            }
        }
        let mut registry = match registry {
            None | Some("index.docker.io") => DOCKER_HUB.to_owned(),
            Some(r) => r.to_owned(),
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            if registry.is_empty() {
                registry = DOCKER_HUB.to_owned();
            }
            if path.len() == 64 && path.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ReferenceError::HexName(err_input()));
            }
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(ReferenceError::TooLong(err_input()));
        }
        let tag = match (tag, digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as named (`docker.io`, `quay.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) to talk to: Docker Hub's API lives on
    /// `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The repository path (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest if the
    /// reference has one (it wins over the tag), else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository pinned to `digest` (the tag is kept).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form `docker images` shows: `alpine:3.19`,
    /// `quay.io/x/y:1`.
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(&digest.to_string());
        }
        s
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical full form: `docker.io/library/alpine:latest`,
/// `quay.io/x/y:1@sha256:…`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits off the registry as Docker's `splitDockerDomain` does.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if (first.contains(['.', ':']) || first == "localhost")
                && !first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // [IPv6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => return valid_port(port),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if !valid_port(port) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // One alphanumeric run.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // One separator.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const D: &str = "sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1";

    fn canon(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.19", "docker.io/library/alpine:3.19"),
            ("library/alpine", "docker.io/library/alpine:latest"),
            ("docker.io/alpine", "docker.io/library/alpine:latest"),
            ("index.docker.io/alpine", "docker.io/library/alpine:latest"),
            (
                "docker.io/library/alpine:edge",
                "docker.io/library/alpine:edge",
            ),
            ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2"),
            ("quay.io/coreos/etcd:v3.5.0", "quay.io/coreos/etcd:v3.5.0"),
            ("ghcr.io/a/b/c/d", "ghcr.io/a/b/c/d:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:1", "localhost:5000/app:1"),
            ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app:latest"),
            ("[::1]:5000/app:2", "[::1]:5000/app:2"),
            ("registry:5000/app", "registry:5000/app:latest"),
            (
                "my-registry.example.com/a_b/c__d/e-f--g:v1.0-rc_1",
                "my-registry.example.com/a_b/c__d/e-f--g:v1.0-rc_1",
            ),
            // A first component that is not a host is part of the path.
            ("notahost/app", "docker.io/notahost/app:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input), want, "{input}");
        }
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("alpine@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{D}"));
        assert_eq!(r.manifest_ref(), D);
        let both = Reference::parse(&format!("localhost:5000/a/b:1.0@{D}")).unwrap();
        assert_eq!(both.tag(), Some("1.0"));
        assert_eq!(both.manifest_ref(), D, "the digest wins over the tag");
        assert_eq!(both.to_string(), format!("localhost:5000/a/b:1.0@{D}"));
    }

    #[test]
    fn accessors() {
        let r = Reference::parse("alpine:3").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/alpine");
        assert_eq!(r.name(), "docker.io/library/alpine");
        assert_eq!(r.familiar(), "alpine:3");
        let q = Reference::parse("quay.io/x/y").unwrap();
        assert_eq!(q.api_host(), "quay.io");
        assert_eq!(q.familiar(), "quay.io/x/y:latest");
    }

    #[test]
    fn refuses_invalid_references() {
        let long_path = "a".repeat(256);
        let hex_name = "a".repeat(64);
        let bad = [
            "",
            "Alpine",
            "docker.io/Library/alpine",
            "alpine:",
            ":latest",
            "alpine:-bad",
            "alpine:.bad",
            &format!("alpine:{}", "t".repeat(129)),
            "alpine@sha256:abc",
            "alpine@md5:0123456789abcdef0123456789abcdef",
            &format!("alpine@{}", &D[7..]),
            "a//b",
            "/alpine",
            "alpine/",
            "a/-b",
            "a/b-",
            "a/b..c",
            "a/b___c",
            "a b",
            "-host.com/a",
            "host-.com/a",
            "host..com/a",
            "localhost:/a",
            "localhost:99999999/a",
            "[::1/a",
            "[zz]:5000/a",
            long_path.as_str(),
            hex_name.as_str(),
            "a:b:c",
            "a@b@sha256:x",
        ];
        for input in bad {
            assert!(Reference::parse(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_input() {
        let e = Reference::parse("docker.io/UP/x").unwrap_err();
        assert!(e.to_string().contains("docker.io/UP/x"), "{e}");
        let e = Reference::parse("x:-y").unwrap_err();
        assert!(e.to_string().contains("\"-y\""), "{e}");
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,5}(([._]|__|-{1,3})[a-z0-9]{1,5}){0,2}"
    }

    fn registry() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("localhost".to_owned())),
            "[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z]{2,5}){1,2}".prop_map(Some),
            "[a-z]{1,8}(\\.[a-z]{2,5})?:[0-9]{2,5}".prop_map(Some),
        ]
    }

    proptest! {
        /// Any reference built from the grammar parses, and its canonical
        /// form parses back to the same reference (normalisation is
        /// idempotent).
        #[test]
        fn canonical_form_round_trips(
            registry in registry(),
            path in proptest::collection::vec(component(), 1..4),
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of(any::<[u8; 32]>()),
        ) {
            // Without a registry, a first component with a '.' would be
            // read as a host (as Docker does).
            prop_assume!(registry.is_some() || path.len() == 1 || !path[0].contains('.'));
            let mut s = String::new();
            if let Some(r) = &registry {
                s.push_str(r);
                s.push('/');
            }
            s.push_str(&path.join("/"));
            if let Some(t) = &tag {
                s.push(':');
                s.push_str(t);
            }
            if let Some(d) = digest {
                s.push('@');
                s.push_str(&Digest::from_bytes(d).to_string());
            }
            let r = Reference::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = Reference::parse(&r.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again, &r);
            prop_assert_eq!(again.to_string(), r.to_string());
            let familiar = Reference::parse(&r.familiar()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&familiar, &r);
            prop_assert!(r.repository().ends_with(path.last().unwrap().as_str()));
            if tag.is_none() && digest.is_none() {
                prop_assert_eq!(r.tag(), Some("latest"));
            }
        }

        /// Arbitrary strings never panic the parser, and what it accepts
        /// is stable under re-parsing.
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            if let Ok(r) = Reference::parse(&s) {
                prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
