//! A container's `user_namespace`: the key, its checks, and the host id
//! ranges the host gives the containers that ask for one.
//!
//! `user_namespace = true` lets the host choose a range of [`AUTO_SIZE`]
//! host ids (the same for uids and gids): range `k` starts at
//! `65536 * (k + 2)` (131072, 196608, …), so no range reaches below
//! 100000 or past `u32::MAX - 1`. `k` comes from a stable hash of the
//! container's name (FNV-1a), probing forward past ranges already taken,
//! the explicit ones first and then the automatic ones in name order. The
//! ranges are a function of the config alone: the same on every start and
//! every boot, and unchanged when containers are added or removed unless
//! two names hash to the same range.
//!
//! `user_namespace = { uid = 200000, gid = 200000, size = 65536 }` names
//! the range itself; it must start at 100000 or above and not overlap
//! another container's.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value::{KeyPath, ValidationError};
use super::workload::Container;

/// Host ids below this are never given to a user namespace.
pub const MIN_HOST_ID: u32 = 100_000;
/// The size of an automatic range: container ids 0 to 65535.
pub const AUTO_SIZE: u32 = 65_536;
/// How many automatic ranges there are (the last one ends at
/// `u32::MAX - 1`: `u32::MAX` is the invalid id).
pub const AUTO_SLOTS: u32 = 65_533;

/// `user_namespace` of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserNamespace {
    /// `false` or left out: the host's user namespace.
    #[default]
    Off,
    /// `true`: a range the host chooses.
    Auto,
    /// `{ uid, gid, size }`.
    Explicit(IdRange),
}

impl UserNamespace {
    pub fn is_off(&self) -> bool {
        *self == UserNamespace::Off
    }
}

/// Host ids for a user namespace: container uid `n` is host uid `uid + n`,
/// container gid `n` host gid `gid + n`, for `n` below `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
}

impl IdRange {
    /// The automatic range number `k`.
    fn slot(k: u32) -> Self {
        let start = AUTO_SIZE * (k + 2);
        IdRange {
            uid: start,
            gid: start,
            size: AUTO_SIZE,
        }
    }

    /// Whether the two share a host uid or a host gid.
    pub fn overlaps(&self, other: &IdRange) -> bool {
        let meet = |a: u32, b: u32| {
            u64::from(a) < u64::from(b) + u64::from(other.size)
                && u64::from(b) < u64::from(a) + u64::from(self.size)
        };
        meet(self.uid, other.uid) || meet(self.gid, other.gid)
    }

    /// Why the range cannot be used, if it cannot.
    fn check(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("`size` must be at least 1".into());
        }
        for (key, start) in [("uid", self.uid), ("gid", self.gid)] {
            if start < MIN_HOST_ID {
                return Err(format!(
                    "`{key}` = {start} is below {MIN_HOST_ID}: host ids below {MIN_HOST_ID} are the host's own"
                ));
            }
            if u64::from(start) + u64::from(self.size) > u64::from(u32::MAX) {
                return Err(format!(
                    "`{key}` + `size` goes past {}, the last valid id",
                    u32::MAX - 1
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uids {}-{}, gids {}-{}",
            self.uid,
            u64::from(self.uid) + u64::from(self.size) - 1,
            self.gid,
            u64::from(self.gid) + u64::from(self.size) - 1
        )
    }
}

impl Serialize for UserNamespace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            UserNamespace::Off => serializer.serialize_bool(false),
            UserNamespace::Auto => serializer.serialize_bool(true),
            UserNamespace::Explicit(r) => {
                let mut m = serializer.serialize_map(Some(3))?;
                m.serialize_entry("uid", &r.uid)?;
                m.serialize_entry("gid", &r.gid)?;
                m.serialize_entry("size", &r.size)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for UserNamespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;

        impl<'de> Visitor<'de> for V {
            type Value = UserNamespace;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table { uid = …, gid = …, size = … }")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    UserNamespace::Auto
                } else {
                    UserNamespace::Off
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IdRange::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(UserNamespace::Explicit)
            }
        }

        deserializer.deserialize_any(V)
    }
}

/// Checks each container's `user_namespace` (`path` is the key of the
/// container list, `containers`) and that explicit ranges do not overlap.
pub(crate) fn validate(
    containers: &[Container],
    path: &KeyPath,
    errors: &mut Vec<ValidationError>,
) {
    let mut taken: Vec<(IdRange, KeyPath)> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let at = path.index(i).key("user_namespace");
        if c.user_namespace.is_off() {
            continue;
        }
        check_compatible(c, &at, errors);
        let UserNamespace::Explicit(r) = c.user_namespace else {
            continue;
        };
        if let Err(e) = r.check() {
            errors.push(ValidationError::new(at, e));
            continue;
        }
        if let Some((_, first)) = taken.iter().find(|(t, _)| t.overlaps(&r)) {
            errors.push(ValidationError::new(
                at,
                format!("{r} overlaps the range of `{first}`"),
            ));
        } else {
            taken.push((r, at));
        }
    }
}

/// The other keys a user namespace cannot go with.
fn check_compatible(c: &Container, at: &KeyPath, errors: &mut Vec<ValidationError>) {
    if c.privileged {
        errors.push(ValidationError::new(
            at.clone(),
            "a privileged container has the host's capabilities and no seccomp filter: it cannot \
             have a user namespace (leave out `privileged` or `user_namespace`)",
        ));
    }
    if c.network == super::workload::NetworkMode::Host {
        errors.push(ValidationError::new(
            at.clone(),
            "a user namespace needs a network namespace of its own (the host's belongs to the \
             host's user namespace, and /sys cannot be mounted in it): use network = \"bridge\" \
             or \"none\"",
        ));
    }
}

/// What a pod's container is told when it sets `user_namespace`.
pub(crate) const IN_POD: &str =
    "a pod's containers share the pod's network, IPC and UTS namespaces, which belong to the \
     host's user namespace: user namespaces are for containers outside pods";

/// The host id range of every container in `containers` that asks for a
/// user namespace, by name (see the module docs for how automatic ranges
/// are chosen). Containers with an invalid range are left out.
pub fn ranges(containers: &[Container]) -> BTreeMap<String, IdRange> {
    let mut out = BTreeMap::new();
    let mut taken: Vec<IdRange> = Vec::new();
    for c in containers {
        if let UserNamespace::Explicit(r) = c.user_namespace {
            if r.check().is_ok() && !taken.iter().any(|t| t.overlaps(&r)) {
                taken.push(r);
                out.insert(c.name.clone(), r);
            }
        }
    }
    let mut auto: Vec<&str> = containers
        .iter()
        .filter(|c| c.user_namespace == UserNamespace::Auto)
        .map(|c| c.name.as_str())
        .collect();
    auto.sort_unstable();
    auto.dedup();
    for name in auto {
        let start = fnv1a(name.as_bytes()) % u64::from(AUTO_SLOTS);
        let found = (0..u64::from(AUTO_SLOTS))
            .map(|i| IdRange::slot(((start + i) % u64::from(AUTO_SLOTS)) as u32))
            .find(|r| !taken.iter().any(|t| t.overlaps(r)));
        if let Some(r) = found {
            taken.push(r);
            out.insert(name.to_string(), r);
        }
    }
    out
}

/// 64-bit FNV-1a: small, and stable across Rust versions and builds
/// (std's hashers are not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, u: UserNamespace) -> Container {
        Container {
            name: name.into(),
            image: "x".into(),
            user_namespace: u,
            ..Container::default()
        }
    }

    #[test]
    fn automatic_ranges_are_stable_and_apart() {
        let list = vec![
            c("web", UserNamespace::Auto),
            c("db", UserNamespace::Auto),
            c("plain", UserNamespace::Off),
        ];
        let r = ranges(&list);
        assert_eq!(r.len(), 2);
        let (web, db) = (r["web"], r["db"]);
        assert!(!web.overlaps(&db));
        for x in [web, db] {
            assert_eq!(x.size, AUTO_SIZE);
            assert_eq!(x.uid, x.gid);
            assert_eq!(x.uid % AUTO_SIZE, 0);
            assert!(x.uid >= 2 * AUTO_SIZE);
            assert!(u64::from(x.uid) + u64::from(x.size) <= u64::from(u32::MAX));
        }
        // The same whatever else the config holds, and in whichever order.
        let alone = ranges(&[c("web", UserNamespace::Auto)]);
        assert_eq!(alone["web"], web);
        let reversed: Vec<Container> = list.iter().rev().cloned().collect();
        assert_eq!(ranges(&reversed), r);
        // A pinned value: a change of hash or layout would move every
        // container's files to other ids, so it must be deliberate.
        assert_eq!(
            IdRange::slot((fnv1a(b"web") % u64::from(AUTO_SLOTS)) as u32),
            web
        );
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn automatic_ranges_step_around_taken_ones() {
        let web = ranges(&[c("web", UserNamespace::Auto)])["web"];
        // An explicit range right where `web` would go pushes it on.
        let list = vec![
            c("web", UserNamespace::Auto),
            c("pinned", UserNamespace::Explicit(web)),
        ];
        let r = ranges(&list);
        assert_eq!(r["pinned"], web);
        assert!(!r["web"].overlaps(&web));
        // Every slot is handed out once when many ask.
        let many: Vec<Container> = (0..500)
            .map(|i| c(&format!("c{i}"), UserNamespace::Auto))
            .collect();
        let r = ranges(&many);
        assert_eq!(r.len(), 500);
        let mut starts: Vec<u32> = r.values().map(|x| x.uid).collect();
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 500);
    }

    #[test]
    fn range_checks() {
        let ok = IdRange {
            uid: 200_000,
            gid: 300_000,
            size: 65_536,
        };
        assert!(ok.check().is_ok());
        let low = IdRange { uid: 99_999, ..ok };
        assert!(low.check().unwrap_err().contains("below 100000"));
        let empty = IdRange { size: 0, ..ok };
        assert!(empty.check().unwrap_err().contains("at least 1"));
        let high = IdRange {
            gid: u32::MAX - 10,
            ..ok
        };
        assert!(high.check().unwrap_err().contains("`gid` + `size`"));
        let edge = IdRange {
            uid: u32::MAX - 1,
            gid: u32::MAX - 1,
            size: 1,
        };
        assert!(edge.check().is_ok());
        let next = IdRange {
            uid: 265_535,
            gid: 1_000_000,
            size: 10,
        };
        assert!(ok.overlaps(&next));
        let apart = IdRange {
            uid: 265_536,
            gid: 1_000_000,
            size: 10,
        };
        assert!(!ok.overlaps(&apart));
        assert_eq!(ok.to_string(), "uids 200000-265535, gids 300000-365535");
    }
}
