//! `[registries]`: pull-through mirrors and credentials for image registries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::names::{check_registry_host, check_url};
use super::value::{KeyPath, ValidationError};

/// What `config show` writes in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// `[registries]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registries {
    /// Registry host (`docker.io`) → mirror URLs, tried in order before the
    /// registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    pub credentials: Vec<Credential>,
    /// Registries (`host[:port]`) spoken to over plain HTTP, as Docker's
    /// `insecure-registries`; loopback ones always are. Credentials are
    /// never sent to them.
    pub insecure: Vec<String>,
}

/// `[[registries.credentials]]`: `{ registry, username, password }` or
/// `{ registry, token }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Credential {
    /// `host[:port]`, as images name it (`docker.io`, `registry.local:5000`).
    pub registry: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A bearer token (instead of username and password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Registries {
    /// Replaces passwords and tokens with [`REDACTED`].
    pub(crate) fn redact(&mut self) {
        for c in &mut self.credentials {
            for secret in [&mut c.password, &mut c.token].into_iter().flatten() {
                *secret = REDACTED.to_string();
            }
        }
    }

    pub(crate) fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        for (host, urls) in &self.mirrors {
            let p = path.key("mirrors").key(host);
            if let Err(e) = check_registry_host(host) {
                errors.push(ValidationError::new(
                    p.clone(),
                    format!("invalid registry host {host:?}: {e}"),
                ));
            }
            if urls.is_empty() {
                errors.push(ValidationError::new(p.clone(), "no mirror URL"));
            }
            for (i, url) in urls.iter().enumerate() {
                if let Err(e) = check_url(url) {
                    errors.push(ValidationError::new(
                        p.index(i),
                        format!("invalid value: string {url:?}, expected a mirror URL ({e})"),
                    ));
                }
            }
        }
        for (i, host) in self.insecure.iter().enumerate() {
            if let Err(e) = check_registry_host(host) {
                errors.push(ValidationError::new(
                    path.key("insecure").index(i),
                    format!("invalid registry host {host:?}: {e}"),
                ));
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let p = path.key("credentials").index(i);
            if c.registry.is_empty() {
                errors.push(ValidationError::new(
                    p.key("registry"),
                    "missing: which registry are these credentials for?",
                ));
            } else if let Err(e) = check_registry_host(&c.registry) {
                errors.push(ValidationError::new(
                    p.key("registry"),
                    format!(
                        "invalid value: string {:?}, expected host[:port] ({e})",
                        c.registry
                    ),
                ));
            } else if seen.contains(&c.registry.as_str()) {
                errors.push(ValidationError::new(
                    p.key("registry"),
                    format!("`{}` has credentials already", c.registry),
                ));
            } else {
                seen.push(&c.registry);
            }
            let has_login = c.username.is_some() || c.password.is_some();
            let problem = match (has_login, &c.token) {
                (true, Some(_)) => Some("give `username` and `password`, or `token`, not both"),
                (true, None) => match (&c.username, &c.password) {
                    (Some(u), Some(_)) if !u.is_empty() => None,
                    _ => Some("`username` (non-empty) and `password` go together"),
                },
                (false, Some(t)) if t.is_empty() => Some("the token is empty"),
                (false, Some(_)) => None,
                (false, None) => Some("missing: `username` and `password`, or `token`"),
            };
            if let Some(problem) = problem {
                errors.push(ValidationError::new(p, problem));
            }
        }
    }
}
