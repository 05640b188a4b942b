//! From bytes to a validated [`Config`]: gunzip, UTF-8, the format, and the
//! TOML front end (the cloud-config one is [`super::cloud`]).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::error::{ConfigError, Problem};
use super::locate::{locate_toml, position_of, Position};
use super::value::{KeyPath, ValidationError};
use super::{cloud, Config};

/// The largest config accepted, compressed or not (1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The two ways a config can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Atoll's own schema, TOML.
    Toml,
    /// cloud-init user data starting with `#cloud-config`.
    CloudConfig,
}

/// Parses a config from `bytes` (gzip-compressed or not), and validates
/// it. `source` names where the bytes came from in errors (a file name,
/// `fw_cfg opt/dev.atoll/config`, …).
pub fn parse(bytes: &[u8], source: &str) -> Result<Config, ConfigError> {
    let origin = source.to_string();
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin,
            limit: MAX_CONFIG_BYTES,
            decompressed: false,
        });
    }
    let decompressed;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        decompressed = gunzip(bytes, &origin)?;
        decompressed.as_slice()
    } else {
        bytes
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        // The valid prefix is UTF-8, so position_of works on it.
        let valid = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
        let Position { line, column } = position_of(valid, offset);
        ConfigError::NotUtf8 {
            origin: origin.clone(),
            offset,
            line,
            column,
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match detect(text, &origin)? {
        Format::Toml => from_toml(text, &origin),
        Format::CloudConfig => cloud::from_cloud_config(text, &origin),
    }
}

/// Decompresses gzip data, refusing more than [`MAX_CONFIG_BYTES`] out.
pub(crate) fn gunzip(bytes: &[u8], origin: &str) -> Result<Vec<u8>, ConfigError> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| ConfigError::Gzip {
            origin: origin.to_string(),
            source,
        })?;
    if out.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            origin: origin.to_string(),
            limit: MAX_CONFIG_BYTES,
            decompressed: true,
        });
    }
    Ok(out)
}

/// Picks the format from the first line (after white space): `#cloud-config`
/// is cloud-config, the other user-data kinds cloud-init knows are refused,
/// anything else is TOML.
fn detect(text: &str, origin: &str) -> Result<Format, ConfigError> {
    let first = text.trim_start().lines().next().unwrap_or("").trim_end();
    let unsupported = |what, hint| ConfigError::Unsupported {
        origin: origin.to_string(),
        what,
        hint,
    };
    if first == "#cloud-config" {
        return Ok(Format::CloudConfig);
    }
    if first.starts_with("#!") || first.starts_with("#cloud-boothook") {
        return Err(unsupported(
            "script user data",
            "Atoll has no shell: run it in a container ([[containers]]), or give #cloud-config or TOML",
        ));
    }
    if first.starts_with("#include")
        || first.starts_with("#cloud-config-archive")
        || first.starts_with("#cloud-config-jsonp")
        || first.starts_with("#part-handler")
        || first.starts_with("## template")
    {
        return Err(unsupported(
            "this kind of cloud-init user data",
            "give #cloud-config YAML or Atoll TOML",
        ));
    }
    if first.to_ascii_lowercase().starts_with("content-type:") || first.starts_with("MIME-Version:")
    {
        return Err(unsupported(
            "MIME multi-part user data",
            "give one #cloud-config YAML or Atoll TOML document",
        ));
    }
    Ok(Format::Toml)
}

/// Reads and validates a config file (`atollctl config validate FILE`).
pub fn validate_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
    parse(&bytes, &origin)
}

/// One line from a possibly multi-line parser message.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| {
            let path = KeyPath::from_serde(e.path());
            let inner = e.inner();
            let pos = inner
                .span()
                .map(|s| position_of(text, s.start))
                .or_else(|| locate_toml(text, &path));
            ConfigError::Invalid {
                origin: origin.to_string(),
                problems: vec![Problem {
                    line: pos.map(|p| p.line),
                    column: pos.map(|p| p.column),
                    key: (!path.is_root()).then(|| path.to_string()),
                    message: one_line(inner.message()),
                }],
            }
        })?;
    config.fill_defaults();
    config
        .validate()
        .map_err(|errors| invalid(origin, errors, |p| (p.clone(), locate_toml(text, p))))?;
    Ok(config)
}

/// [`ConfigError::Invalid`] for validation errors; `place` gives the path
/// to show for a config path, and its position in the source.
pub(crate) fn invalid(
    origin: &str,
    errors: Vec<ValidationError>,
    place: impl Fn(&KeyPath) -> (KeyPath, Option<Position>),
) -> ConfigError {
    let problems = errors
        .into_iter()
        .map(|e| {
            let (path, pos) = place(&e.path);
            Problem {
                line: pos.map(|p| p.line),
                column: pos.map(|p| p.column),
                key: (!path.is_root()).then(|| path.to_string()),
                message: e.message,
            }
        })
        .collect();
    ConfigError::Invalid {
        origin: origin.to_string(),
        problems,
    }
}
