//! The host config: its schema, and the one parser PID 1, `atollctl config
//! validate`, the container runtime and the update agent all use.
//!
//! A config is TOML in Atoll's schema ([`Config`]; every key is described in
//! `docs/config.md`), or `#cloud-config` YAML user data whose shared keys are
//! mapped onto it (see [`cloud`]). Either may come gzip-compressed.
//!
//! - [`parse`]`(bytes, source)`: gunzip (at most [`MAX_CONFIG_BYTES`] out),
//!   check UTF-8, pick the format by the first line, deserialise, fill in
//!   the defaults that depend on other keys ([`Config::fill_defaults`]), and
//!   [`Config::validate`]. The result is the *effective* config.
//! - [`validate_file`]`(path)`: the same for a file (`atollctl config validate FILE`).
//! - [`builtin_default`]: `configs/default.toml`, compiled in.
//! - [`Config::to_toml`] / [`Config::to_toml_redacted`]: the effective
//!   config as TOML (`config show` uses the redacted one). For a config
//!   returned by [`parse`], `parse(cfg.to_toml())` gives `cfg` back.
//!
//! Errors ([`ConfigError`]) name the source, the line and column, and the key:
//! `user-data:12:7: key `network.interfaces[0].mtu`: invalid value: integer
//! `70000`, expected an MTU from 68 to 65535`, one line per problem. All
//! problems found after deserialisation are reported together; a syntax or
//! type error stops deserialisation and is reported alone.
//!
//! Values with a syntax of their own (addresses, durations, sizes, modes)
//! are [`Parsed<T>`]: the text as written, plus the parsed value, which
//! [`Parsed::get`] returns (always `Some` in a config from [`parse`]).

pub mod admin;
pub mod cloud;
mod error;
pub mod files;
mod locate;
pub mod names;
pub mod network;
mod parse;
pub mod registries;
pub mod system;
pub mod units;
pub mod update;
pub mod userns;
pub mod value;
pub mod workload;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use self::admin::Admin;
pub use self::error::{ConfigError, Problem};
pub use self::files::{File, FileEncoding, FileMode};
pub use self::locate::Position;
pub use self::network::{Interface, IpCidr, MacAddr, Network, Route};
pub use self::parse::{parse, validate_file, Format, MAX_CONFIG_BYTES};
pub use self::registries::{Credential, Registries, REDACTED};
pub use self::system::{Ntp, SysctlValue};
pub use self::units::ByteSize;
pub use self::update::{TimeOfDay, Update, UpdateStrategy, UpdateWindow, UtcOffset, Weekday};
pub use self::userns::{IdRange, UserNamespace};
pub use self::value::{KeyPath, Parsed, Segment, TextValue, ValidationError};
pub use self::workload::{
    Container, Healthcheck, NetworkMode, Pod, PortMapping, Protocol, RestartPolicy, SignatureKey,
    VolumeMount, VolumeSource,
};

/// The built-in default config's text (`configs/default.toml`).
pub const BUILTIN_DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// The source name of the built-in default, as errors and `config show` name it.
pub const BUILTIN_DEFAULT_SOURCE: &str = "built-in default";

/// The host config. Every key is optional; see `docs/config.md`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The host name (RFC 1123); left out: `atoll-` and the first 8 hex
    /// digits of the machine id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra trusted CA certificates, PEM.
    pub ca_certs: Vec<String>,
    pub network: Network,
    pub ntp: Ntp,
    pub registries: Registries,
    /// Kernel parameters set at boot (`net.ipv4.ip_forward = 1`).
    pub sysctl: BTreeMap<String, SysctlValue>,
    pub update: Update,
    pub admin: Admin,
    pub containers: Vec<Container>,
    pub pods: Vec<Pod>,
    pub files: Vec<File>,
}

impl Config {
    /// Writes in the defaults that depend on other keys (an interface's
    /// `dhcp4`, the update `strategy`), so the config shows what is in force.
    pub fn fill_defaults(&mut self) {
        self.network.fill_defaults();
        self.update.fill_defaults();
    }

    /// Checks everything deserialisation does not: values' syntax, ranges,
    /// keys that go together, unique names, references. Returns every
    /// problem found.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let root = KeyPath::root();
        let mut errors = Vec::new();
        if let Some(h) = &self.hostname {
            if let Err(e) = names::check_hostname(h) {
                errors.push(ValidationError::new(
                    root.key("hostname"),
                    format!("invalid value: string {h:?}, expected an RFC 1123 host name ({e})"),
                ));
            }
        }
        system::validate_ca_certs(&self.ca_certs, &root.key("ca_certs"), &mut errors);
        self.network.validate(&root.key("network"), &mut errors);
        self.ntp.validate(&root.key("ntp"), &mut errors);
        self.registries
            .validate(&root.key("registries"), &mut errors);
        system::validate_sysctl(&self.sysctl, &root.key("sysctl"), &mut errors);
        self.update.validate(&root.key("update"), &mut errors);
        self.admin.validate(&root.key("admin"), &mut errors);
        workload::validate_workloads(&self.containers, &self.pods, &root, &mut errors);
        files::validate_files(&self.files, &root.key("files"), &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The config as TOML in Atoll's schema.
    pub fn to_toml(&self) -> String {
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# the config cannot be shown as TOML: {e}\n"))
    }

    /// The config with secrets (registry passwords and tokens) replaced by
    /// [`REDACTED`].
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.registries.redact();
        c
    }

    /// [`Config::to_toml`] of [`Config::redacted`], for `config show`.
    pub fn to_toml_redacted(&self) -> String {
        self.redacted().to_toml()
    }
}

/// The built-in default config (`configs/default.toml`): what a host runs
/// on first boot when no source has a config.
pub fn builtin_default() -> Config {
    parse(BUILTIN_DEFAULT_TOML.as_bytes(), BUILTIN_DEFAULT_SOURCE).unwrap_or_else(|_| {
        // Not reached: a unit test parses the file. Still, never fail here.
        let mut c = Config::default();
        c.fill_defaults();
        c
    })
}
