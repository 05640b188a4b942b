//! `#cloud-config` user data: the keys Atoll shares with cloud-init, mapped
//! onto [`Config`].
//!
//! | cloud-config | Atoll |
//! |---|---|
//! | `hostname` (or, when it is left out, `fqdn`) | `hostname` |
//! | `ssh_authorized_keys` | `admin.ssh_authorized_keys` (does not enable the admin container) |
//! | `write_files` (`path`, `content`, `encoding`, `permissions`, `owner`) | `files` (paths under /var only) |
//! | `ntp` (`enabled`, `servers`, `pools`) | `ntp` (servers, then pools) |
//! | `ca_certs` / `ca-certs` (`trusted`) | `ca_certs` |
//! | `atoll` (a table in Atoll's schema) | the whole config |
//!
//! The `atoll` table is read first; the keys above are applied on top of
//! it: a cloud-config scalar (`hostname`, `ntp.enabled`) replaces the
//! `atoll` one, lists are appended after the `atoll` ones.
//!
//! `bootcmd`, `runcmd`, `packages`, `package_update`, `package_upgrade`,
//! `apt`, `yum_repos`, `users` and `groups` are refused with the reason;
//! any other key is an error, as an unknown key is in TOML. Booleans of the
//! cloud-config keys read YAML 1.1 spellings as cloud-init does (`yes`,
//! `on`, …); inside `atoll` only `true` and `false` are booleans.

use std::fmt;

use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::{ConfigError, Problem};
use super::files::{decode_base64_lenient, File, FileEncoding};
use super::locate::{locate_yaml, Position};
use super::parse::{gunzip, invalid, one_line, MAX_CONFIG_BYTES};
use super::value::{KeyPath, Parsed, ValidationError};
use super::Config;

const NO_SHELL: &str = "not supported: Atoll has no shell: run it in a container ([[containers]])";
const NO_PACKAGES: &str =
    "not supported: Atoll has no package manager: the OS updates as a whole ([update])";
const NO_USERS: &str =
    "not supported: Atoll has no login users: use ssh_authorized_keys for the admin container ([admin])";

// The `Refused` fields are never read: deserialising one always fails.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudConfig {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    fqdn: Option<String>,
    #[serde(default)]
    ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    write_files: Vec<WriteFile>,
    #[serde(default)]
    ntp: Option<CloudNtp>,
    #[serde(default)]
    ca_certs: Option<CloudCaCerts>,
    #[serde(default, rename = "ca-certs")]
    ca_certs_dashed: Option<CloudCaCerts>,
    #[serde(default)]
    atoll: Option<Config>,
    #[serde(default, deserialize_with = "no_shell")]
    bootcmd: Refused,
    #[serde(default, deserialize_with = "no_shell")]
    runcmd: Refused,
    #[serde(default, deserialize_with = "no_packages")]
    packages: Refused,
    #[serde(default, deserialize_with = "no_packages")]
    package_update: Refused,
    #[serde(default, deserialize_with = "no_packages")]
    package_upgrade: Refused,
    #[serde(default, deserialize_with = "no_packages")]
    apt: Refused,
    #[serde(default, deserialize_with = "no_packages")]
    yum_repos: Refused,
    #[serde(default, deserialize_with = "no_users")]
    users: Refused,
    #[serde(default, deserialize_with = "no_users")]
    groups: Refused,
}

#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteFile {
    #[serde(default)]
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default, deserialize_with = "no_source")]
    source: Refused,
    #[serde(default, deserialize_with = "no_append")]
    append: Refused,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudNtp {
    #[serde(default, deserialize_with = "yaml11_bool")]
    enabled: Option<bool>,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    pools: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudCaCerts {
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default, deserialize_with = "yaml11_bool")]
    remove_defaults: Option<bool>,
}

/// A refused key (never holds anything: its deserialiser always fails).
#[derive(Default)]
struct Refused;

/// Fails at the value's position with `reason`.
struct Refuse(&'static str);

impl<'de> Visitor<'de> for Refuse {
    type Value = Refused;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_none<E: de::Error>(self) -> Result<Refused, E> {
        Err(E::custom(self.0))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Refused, A::Error> {
        Err(de::Error::custom(self.0))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Refused, A::Error> {
        Err(de::Error::custom(self.0))
    }
}

fn no_shell<'de, D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
    d.deserialize_any(Refuse(NO_SHELL))
}
fn no_packages<'de, D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
    d.deserialize_any(Refuse(NO_PACKAGES))
}
fn no_users<'de, D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
    d.deserialize_any(Refuse(NO_USERS))
}
fn no_source<'de, D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
    d.deserialize_any(Refuse(
        "not supported: Atoll fetches no file content from URLs: put it in `content`",
    ))
}
fn no_append<'de, D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
    d.deserialize_any(Refuse(
        "not supported: files are written whole each time the config is applied",
    ))
}

/// A boolean as cloud-init (PyYAML, YAML 1.1) reads one: `true`, `yes`,
/// `on`, `y` and their opposites, any case.
fn yaml11_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (true/false, yes/no, on/off)")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Option<bool>, E> {
            Ok(Some(v))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<bool>, E> {
            match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "on" => Ok(Some(true)),
                "false" | "no" | "n" | "off" => Ok(Some(false)),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// Where each part of the mapped config came from in the YAML, for errors.
#[derive(Default)]
struct Origins {
    /// (path in the Config, path in the YAML); the longest match wins, and
    /// anything else came from the `atoll` table.
    map: Vec<(KeyPath, KeyPath)>,
}

impl Origins {
    fn add(&mut self, config: KeyPath, yaml: KeyPath) {
        self.map.push((config, yaml));
    }

    fn yaml_path(&self, path: &KeyPath) -> KeyPath {
        self.map
            .iter()
            .filter(|(c, _)| path.starts_with(c))
            .max_by_key(|(c, _)| c.segments().len())
            .map(|(c, y)| path.replace_prefix(c, y))
            .unwrap_or_else(|| path.replace_prefix(&KeyPath::root(), &KeyPath::root().key("atoll")))
    }
}

/// Deepest nesting of YAML flow collections (`[`, `{`) accepted.
pub const MAX_FLOW_DEPTH: usize = 256;

/// Refuses YAML whose flow collections may nest deeper than
/// [`MAX_FLOW_DEPTH`], before libyaml sees it: its scanner does work in
/// proportion to the flow depth for every token, so 1 MiB of `[` would
/// keep PID 1 busy for minutes.
///
/// The depth found is never below the real one: every `[` and `{` counts
/// (also in quotes, comments and block scalars), and a `]` or `}` counts
/// only outside anything that might be a quoted scalar or a comment (any
/// quote character starts one; a comment ends at the line's end, a quote at
/// its closing quote, or at the line's end when nothing is open). So a
/// false alarm needs hundreds of unbalanced brackets inside strings.
fn check_flow_depth(text: &str) -> Result<(), Position> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Normal,
        Comment,
        Quote { double: bool, in_comment: bool },
    }
    let mut state = State::Normal;
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 0);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
            state = match state {
                State::Quote { .. } if depth > 0 => state,
                _ => State::Normal,
            };
            continue;
        }
        if c == '[' || c == '{' {
            depth += 1;
            if depth > MAX_FLOW_DEPTH {
                return Err(Position { line, column });
            }
            continue;
        }
        state = match (state, c) {
            (State::Normal, ']' | '}') => {
                depth = depth.saturating_sub(1);
                state
            }
            (State::Normal, '#') => State::Comment,
            (State::Normal | State::Comment, '"' | '\'') => State::Quote {
                double: c == '"',
                in_comment: state == State::Comment,
            },
            (State::Quote { double: true, .. }, '\\') => {
                // The escaped character cannot end the quote.
                if chars.next() == Some('\n') {
                    line += 1;
                    column = 0;
                } else {
                    column += 1;
                }
                state
            }
            (State::Quote { double, in_comment }, '"' | '\'') if double == (c == '"') => {
                if in_comment {
                    State::Comment
                } else {
                    State::Normal
                }
            }
            _ => state,
        };
    }
    Ok(())
}

/// Reads `#cloud-config` user data (already UTF-8, BOM removed).
pub(crate) fn from_cloud_config(text: &str, origin: &str) -> Result<Config, ConfigError> {
    if let Err(pos) = check_flow_depth(text) {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems: vec![Problem {
                line: Some(pos.line),
                column: Some(pos.column),
                key: None,
                message: format!(
                    "flow collections ([ ] and {{ }}) nested more than {MAX_FLOW_DEPTH} deep"
                ),
            }],
        });
    }
    let parsed: Option<CloudConfig> = serde_path_to_error::deserialize(
        serde_norway::Deserializer::from_str(text),
    )
    .map_err(|e| {
        let path = KeyPath::from_serde(e.path());
        let inner = e.inner();
        let pos = inner
            .location()
            .map(|l| Position {
                line: l.line(),
                column: l.column(),
            })
            .or_else(|| locate_yaml(text, &path));
        ConfigError::Invalid {
            origin: origin.to_string(),
            problems: vec![Problem {
                line: pos.map(|p| p.line),
                column: pos.map(|p| p.column),
                key: (!path.is_root()).then(|| path.to_string()),
                message: yaml_message(inner),
            }],
        }
    })?;
    let Some(cloud) = parsed else {
        // Nothing but the `#cloud-config` line: the defaults.
        let mut config = Config::default();
        config.fill_defaults();
        return Ok(config);
    };
    let (mut config, origins, errors) = map(cloud);
    let locate = |p: &KeyPath| {
        let yaml = origins.yaml_path(p);
        let pos = locate_yaml(text, &yaml);
        (yaml, pos)
    };
    if !errors.is_empty() {
        // Mapping errors are already in YAML paths.
        return Err(invalid(origin, errors, |p| {
            (p.clone(), locate_yaml(text, p))
        }));
    }
    config.fill_defaults();
    config
        .validate()
        .map_err(|errors| invalid(origin, errors, locate))?;
    Ok(config)
}

/// The YAML error's message without the position and path serde_norway
/// adds (they are shown in their own places).
fn yaml_message(err: &serde_norway::Error) -> String {
    let mut msg = err.to_string();
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = msg.find(&suffix) {
            msg.replace_range(i..i + suffix.len(), "");
        }
    }
    if let Some((head, tail)) = msg.split_once(": ") {
        let is_path = !head.is_empty()
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]\"".contains(c));
        if is_path && !tail.is_empty() {
            msg = tail.to_string();
        }
    }
    one_line(&msg)
}

/// Maps the cloud-config onto a Config; errors found on the way (an
/// encoding that does not decode) use YAML paths.
fn map(cloud: CloudConfig) -> (Config, Origins, Vec<ValidationError>) {
    let root = KeyPath::root();
    let mut origins = Origins::default();
    let mut errors = Vec::new();
    let mut config = cloud.atoll.unwrap_or_default();

    if let Some(h) = cloud.hostname {
        config.hostname = Some(h);
        origins.add(root.key("hostname"), root.key("hostname"));
    } else if let Some(f) = cloud.fqdn {
        config.hostname = Some(f);
        origins.add(root.key("hostname"), root.key("fqdn"));
    }

    let keys = &mut config.admin.ssh_authorized_keys;
    for (i, key) in cloud.ssh_authorized_keys.into_iter().enumerate() {
        origins.add(
            root.key("admin")
                .key("ssh_authorized_keys")
                .index(keys.len()),
            root.key("ssh_authorized_keys").index(i),
        );
        keys.push(key);
    }

    for (i, wf) in cloud.write_files.into_iter().enumerate() {
        let yaml = root.key("write_files").index(i);
        let at = root.key("files").index(config.files.len());
        origins.add(at.clone(), yaml.clone());
        origins.add(at.key("mode"), yaml.key("permissions"));
        let (content, encoding) = match decode_write_file(&wf.content, wf.encoding.as_deref()) {
            Ok(x) => x,
            Err((key, message)) => {
                errors.push(ValidationError::new(yaml.key(key), message));
                (String::new(), FileEncoding::Plain)
            }
        };
        config.files.push(File {
            path: wf.path,
            content,
            encoding,
            mode: Parsed::new(wf.permissions.unwrap_or_else(|| "0644".into())),
            owner: wf.owner,
        });
    }

    if let Some(ntp) = cloud.ntp {
        if let Some(enabled) = ntp.enabled {
            config.ntp.enabled = enabled;
            origins.add(
                root.key("ntp").key("enabled"),
                root.key("ntp").key("enabled"),
            );
        }
        for (list, name) in [(ntp.servers, "servers"), (ntp.pools, "pools")] {
            for (i, s) in list.into_iter().enumerate() {
                origins.add(
                    root.key("ntp")
                        .key("servers")
                        .index(config.ntp.servers.len()),
                    root.key("ntp").key(name).index(i),
                );
                config.ntp.servers.push(s);
            }
        }
    }

    for (certs, name) in [
        (cloud.ca_certs, "ca_certs"),
        (cloud.ca_certs_dashed, "ca-certs"),
    ] {
        let Some(certs) = certs else { continue };
        if certs.remove_defaults == Some(true) {
            errors.push(ValidationError::new(
                root.key(name).key("remove_defaults"),
                "not supported: Atoll always trusts its built-in CA bundle; ca_certs add to it",
            ));
        }
        for (i, pem) in certs.trusted.into_iter().enumerate() {
            origins.add(
                root.key("ca_certs").index(config.ca_certs.len()),
                root.key(name).key("trusted").index(i),
            );
            config.ca_certs.push(pem);
        }
    }
    (config, origins, errors)
}

/// A `write_files` entry's content as Atoll keeps it; on error, the key
/// at fault (`encoding` or `content`) and why.
fn decode_write_file(
    content: &str,
    encoding: Option<&str>,
) -> Result<(String, FileEncoding), (&'static str, String)> {
    match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("text/plain" | "plain" | "text") => {
            Ok((content.to_string(), FileEncoding::Plain))
        }
        Some("b64" | "base64") => Ok((content.to_string(), FileEncoding::Base64)),
        Some("gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64") => {
            let gz = decode_base64_lenient(content).map_err(|e| {
                (
                    "content",
                    format!("encoding is gz+b64, but the content is {e}"),
                )
            })?;
            let raw = gunzip(&gz, "").map_err(|e| {
                let why = match e {
                    ConfigError::Gzip { source, .. } => format!("does not decompress ({source})"),
                    _ => format!("decompresses to more than {MAX_CONFIG_BYTES} bytes"),
                };
                (
                    "content",
                    format!("encoding is gz+b64, but the content {why}"),
                )
            })?;
            Ok((
                base64::engine::general_purpose::STANDARD.encode(raw),
                FileEncoding::Base64,
            ))
        }
        Some("gz" | "gzip") => Err((
            "encoding",
            "raw gzip cannot be carried in YAML text: base64-encode it and use gz+b64".into(),
        )),
        Some(other) => Err((
            "encoding",
            format!("unknown encoding `{other}` (text/plain, b64, base64 or gz+b64)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_depth() {
        let deep = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert!(check_flow_depth(&deep(MAX_FLOW_DEPTH)).is_ok());
        assert_eq!(
            check_flow_depth(&deep(MAX_FLOW_DEPTH + 1)),
            Err(Position {
                line: 1,
                column: 4 + MAX_FLOW_DEPTH
            })
        );
        // Closes inside quotes or comments do not count...
        let fake = format!("a: {}\n", "[ \"]\", ".repeat(300));
        assert!(check_flow_depth(&fake).is_err());
        let fake = format!("a: {}\n", "[ # ]\n".repeat(300));
        assert!(check_flow_depth(&fake).is_err());
        let fake = format!("a: {}\n", "[ 'it''s ]', ".repeat(300));
        assert!(check_flow_depth(&fake).is_err());
        let fake = format!("a: {}\n", "[ \"\\\" ]\", ".repeat(300));
        assert!(check_flow_depth(&fake).is_err());
        // ... real ones do, many times over.
        let flat = format!("a: [{}]\n", "[1, {b: 2}], ".repeat(10_000));
        assert!(check_flow_depth(&flat).is_ok());
        let text = "# don't [\nb: \"x]\"\nc: 'it''s'\n";
        assert!(check_flow_depth(text).is_ok());
    }
}
