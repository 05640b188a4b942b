//! Provisioning: which config is in force this boot (docs/config.md).
//!
//! [`sources`] finds user data (fw_cfg, a CIDATA volume, the cloud's
//! metadata service; first found wins), [`decide`] picks the config in
//! force from it, the last good config kept on /var ([`store`]) and the
//! built-in default, and [`apply`] carries it out. The rule: a config that
//! fails to parse or validate is reported (console, log, `config show`)
//! with its source, line and key, and the host boots with the last good
//! config instead, or with the built-in default when there is none. A boot
//! with no source at all keeps the last good config.

pub mod apply;
pub mod http;
pub mod sources;
pub mod store;

use atoll_common::api::ConfigReport;

use self::sources::Found;
use self::store::LastGood;

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub struct Decision<C> {
    pub config: C,
    pub report: ConfigReport,
    /// User data to keep as the last good config once it applied cleanly.
    pub keep: Option<Found>,
}

/// Picks the config in force. `found` is what the sources gave this boot
/// (`None`: no source had one), `tried` the sources' summaries, `parse`
/// parses and validates user data (naming the source in its errors).
pub fn decide<C, E: std::fmt::Display>(
    found: Option<Found>,
    tried: Vec<String>,
    last_good: Option<LastGood>,
    builtin: impl FnOnce() -> C,
    parse: impl Fn(&[u8], &str) -> Result<C, E>,
) -> Decision<C> {
    let mut report = ConfigReport {
        tried,
        ..Default::default()
    };
    let mut problem = None;
    if let Some(f) = found {
        match parse(&f.data, &f.source) {
            Ok(config) => {
                report.source = f.source.clone();
                report.state = "applied".into();
                return Decision {
                    config,
                    report,
                    keep: Some(f),
                };
            }
            Err(e) => {
                report
                    .errors
                    .extend(e.to_string().lines().map(str::to_string));
                problem = Some(format!("the config from {} has errors", f.source));
            }
        }
    }
    if let Some(lg) = last_good {
        let name = format!("last good config (from {})", lg.meta.source);
        match parse(&lg.data, &name) {
            Ok(config) => {
                report.source = format!(
                    "{name}, saved {}",
                    crate::clock::format_unix(lg.meta.saved_at)
                );
                report.state = match &problem {
                    Some(p) => format!("fallback: {p}"),
                    None => "applied (no config source this boot)".into(),
                };
                return Decision {
                    config,
                    report,
                    keep: None,
                };
            }
            Err(e) => {
                // E.g. an update made the schema stricter.
                report
                    .errors
                    .extend(e.to_string().lines().map(str::to_string));
                problem.get_or_insert_with(|| format!("the {name} no longer parses"));
            }
        }
    }
    report.source = "built-in default".into();
    report.state = match &problem {
        Some(p) => format!("fallback: {p}"),
        None => "applied (no config source and no saved config)".into(),
    };
    Decision {
        config: builtin(),
        report,
        keep: None,
    }
}

#[cfg(test)]
mod tests {
    use super::store::LastGoodMeta;
    use super::*;

    fn parse(data: &[u8], source: &str) -> Result<String, String> {
        let s = String::from_utf8_lossy(data).into_owned();
        if s.starts_with("bad") {
            Err(format!(
                "{source}:1:1: key `x`: bad\n{source}:2:1: key `y`: worse"
            ))
        } else {
            Ok(s)
        }
    }

    fn found(data: &str) -> Option<Found> {
        Some(Found {
            source: "fw_cfg opt/dev.atoll/config".into(),
            data: data.as_bytes().to_vec(),
        })
    }

    fn last_good(data: &str) -> Option<LastGood> {
        Some(LastGood {
            meta: LastGoodMeta {
                source: "CIDATA /dev/vdb user-data".into(),
                saved_at: 0,
                sha256: String::new(),
            },
            data: data.as_bytes().to_vec(),
        })
    }

    #[test]
    fn a_good_config_is_applied_and_kept() {
        let d = decide(
            found("good"),
            vec![],
            last_good("old"),
            || "default".into(),
            parse,
        );
        assert_eq!(d.config, "good");
        assert_eq!(d.report.state, "applied");
        assert_eq!(d.report.source, "fw_cfg opt/dev.atoll/config");
        assert!(d.keep.is_some());
    }

    #[test]
    fn a_bad_config_falls_back_to_the_last_good_one() {
        let d = decide(
            found("bad"),
            vec![],
            last_good("old"),
            || "default".into(),
            parse,
        );
        assert_eq!(d.config, "old");
        assert!(d.report.source.starts_with("last good config (from CIDATA"));
        assert_eq!(
            d.report.state,
            "fallback: the config from fw_cfg opt/dev.atoll/config has errors"
        );
        assert_eq!(d.report.errors.len(), 2);
        assert!(d.report.errors[0].starts_with("fw_cfg opt/dev.atoll/config:1:1: key `x`"));
        assert!(d.keep.is_none());
    }

    #[test]
    fn a_bad_config_on_first_boot_falls_back_to_the_default() {
        let d = decide(found("bad"), vec![], None, || "default".into(), parse);
        assert_eq!(d.config, "default");
        assert_eq!(d.report.source, "built-in default");
        assert!(d.report.state.starts_with("fallback:"));
    }

    #[test]
    fn no_source_keeps_the_last_good_config() {
        let d = decide(None, vec![], last_good("old"), || "default".into(), parse);
        assert_eq!(d.config, "old");
        assert_eq!(d.report.state, "applied (no config source this boot)");
        let d = decide(None, vec![], None, || "default".into(), parse);
        assert_eq!(d.config, "default");
        assert!(d.report.errors.is_empty());
    }

    #[test]
    fn a_stale_last_good_config_gives_the_default() {
        let d = decide(None, vec![], last_good("bad"), || "default".into(), parse);
        assert_eq!(d.config, "default");
        assert!(
            d.report.state.contains("no longer parses"),
            "{}",
            d.report.state
        );
        assert_eq!(d.report.errors.len(), 2);
    }
}
