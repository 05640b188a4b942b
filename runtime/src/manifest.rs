//! OCI and Docker schema 2 manifests, indexes (manifest lists) and image
//! configs: serde types, media types, strict parsing and platform
//! selection.
//!
//! Docker schema 1 (signed JSON, no content-addressed config) is refused;
//! every registry that matters serves schema 2 or OCI.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_ND_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_ND_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (the index of schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every type this module reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or index read (containerd's limit too).
pub const MANIFEST_MAX: u64 = 4 << 20;
/// The largest image config read.
pub const CONFIG_MAX: u64 = 8 << 20;
/// The most layers an image may have.
pub const LAYERS_MAX: usize = 500;
/// The most entries an index may have.
pub const INDEX_ENTRIES_MAX: usize = 1000;

/// The annotation that names a manifest in an OCI layout's index.json.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors from reading manifests and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is {size} bytes, more than the {max} allowed")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("{what}: invalid JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: Docker schema 1 manifests are not supported (push the image again with a current Docker or use an OCI manifest)")]
    Schema1 { what: String },
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what}: schemaVersion {version}, expected 2")]
    SchemaVersion { what: String, version: u32 },
    #[error("{what}: {count} entries, more than the {max} allowed")]
    TooManyEntries {
        what: String,
        count: usize,
        max: usize,
    },
    #[error("{what}: layer {digest} has media type {media_type:?}, not a container layer")]
    UnsupportedLayer {
        what: String,
        digest: Digest,
        media_type: String,
    },
    #[error("{what}: config {digest} has media type {media_type:?}: not a container image")]
    UnsupportedConfig {
        what: String,
        digest: Digest,
        media_type: String,
    },
    #[error("{what}: {layers} layers but the config lists {diff_ids} diff_ids")]
    LayerCountMismatch {
        what: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("{what}: rootfs type {kind:?}, expected \"layers\"")]
    RootfsType { what: String, kind: String },
    #[error("no image for platform {wanted} in {what} (it has: {available})")]
    NoMatchingPlatform {
        what: String,
        wanted: String,
        available: String,
    },
}

/// A pointer to content: media type, digest and size (OCI descriptor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }

    /// Whether this points to an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }

    /// Whether this points to an image manifest.
    pub fn is_manifest(&self) -> bool {
        self.media_type == OCI_MANIFEST || self.media_type == DOCKER_MANIFEST
    }
}

/// An OS and CPU an image runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Default for Platform {
    /// linux/amd64, what Atoll runs on.
    fn default() -> Self {
        Self::new("linux", "amd64", None)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// Parses `os/arch[/variant]` (`linux/arm64/v8`), normalising the
    /// architecture names uname and Debian use (`x86_64`, `aarch64`,
    /// `armhf`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().filter(|p| !p.is_empty());
        if parts.next().is_some() {
            return None;
        }
        Some(Self::new(os, arch, variant).normalised())
    }

    /// The architecture and variant under their OCI names, with the
    /// default variant dropped (arm64's `v8`, amd64's `v1`).
    pub fn normalised(&self) -> Self {
        let (arch, implied) = match self.architecture.as_str() {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            "i386" | "i686" => ("386", None),
            a => (a, None),
        };
        let variant = self.variant.as_deref().or(implied);
        let variant = match (arch, variant) {
            ("arm64", Some("v8")) | ("amd64", Some("v1")) => None,
            ("arm", None) => Some("v7"),
            (_, v) => v,
        };
        Self {
            architecture: arch.to_owned(),
            os: self.os.clone(),
            variant: variant.map(str::to_owned),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
        }
    }

    /// How well an image for `self` fits a host that wants `wanted`: `None`
    /// if it cannot run there, lower is better. The variant must match,
    /// except that older arm variants run on newer arm CPUs (v6 on v7).
    fn rank_for(&self, wanted: &Platform) -> Option<u32> {
        let have = self.normalised();
        let want = wanted.normalised();
        if have.os != want.os || have.architecture != want.architecture {
            return None;
        }
        if have.variant == want.variant {
            return Some(0);
        }
        if have.architecture == "arm" {
            let level = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
            };
            if let (Some(h), Some(w)) = (level(&have.variant), level(&want.variant)) {
                if h < w {
                    return Some(w - h);
                }
            }
        }
        None
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index of manifests (OCI index or Docker manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(Box<ImageManifest>),
    Index(ImageIndex),
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            OCI_LAYER_TAR | OCI_LAYER_ND_TAR | DOCKER_LAYER_TAR => Some(Self::None),
            OCI_LAYER_GZIP | OCI_LAYER_ND_GZIP | DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP => {
                Some(Self::Gzip)
            }
            OCI_LAYER_ZSTD | OCI_LAYER_ND_ZSTD => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The compression the first bytes of a blob show (the magic numbers
    /// of gzip and zstd; anything else is taken as a plain tar).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

fn check_size(what: &str, size: usize, max: u64) -> Result<(), ManifestError> {
    if size as u64 > max {
        return Err(ManifestError::TooLarge {
            what: what.to_owned(),
            size: size as u64,
            max,
        });
    }
    Ok(())
}

/// Just the fields that tell a manifest's kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses a manifest or index. `content_type` is the HTTP Content-Type
    /// (or a descriptor's media type) when there is one; `what` names the
    /// manifest in errors (a reference or digest).
    pub fn parse(
        content_type: Option<&str>,
        bytes: &[u8],
        what: &str,
    ) -> Result<Self, ManifestError> {
        check_size(what, bytes.len(), MANIFEST_MAX)?;
        let json_err = |source| ManifestError::Json {
            what: what.to_owned(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(json_err)?;
        // The type the server declares wins over the one in the body, as
        // with containerd; generic JSON types say nothing.
        let declared = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
        let media_type = declared.map(str::to_owned).or(probe.media_type.clone());
        let is_index = match media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) => {
                return Err(ManifestError::Schema1 {
                    what: what.to_owned(),
                })
            }
            Some(other) => {
                return Err(ManifestError::UnsupportedMediaType {
                    what: what.to_owned(),
                    media_type: other.to_owned(),
                })
            }
            // OCI allows leaving mediaType out: tell by shape.
            None if probe.manifests.is_some() => true,
            None if probe.config.is_some() => false,
            None if probe.schema_version == Some(1) => {
                return Err(ManifestError::Schema1 {
                    what: what.to_owned(),
                })
            }
            None => {
                return Err(ManifestError::UnsupportedMediaType {
                    what: what.to_owned(),
                    media_type: "(none)".to_owned(),
                })
            }
        };
        let version = probe.schema_version.unwrap_or(0);
        if version != 2 {
            return Err(ManifestError::SchemaVersion {
                what: what.to_owned(),
                version,
            });
        }
        if is_index {
            let index: ImageIndex = serde_json::from_slice(bytes).map_err(json_err)?;
            if index.manifests.len() > INDEX_ENTRIES_MAX {
                return Err(ManifestError::TooManyEntries {
                    what: what.to_owned(),
                    count: index.manifests.len(),
                    max: INDEX_ENTRIES_MAX,
                });
            }
            Ok(Self::Index(index))
        } else {
            let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(json_err)?;
            manifest.validate(what)?;
            Ok(Self::Image(Box::new(manifest)))
        }
    }
}

impl ImageManifest {
    /// Checks that this is a container image whose layers this runtime can
    /// unpack.
    pub fn validate(&self, what: &str) -> Result<(), ManifestError> {
        if self.layers.len() > LAYERS_MAX {
            return Err(ManifestError::TooManyEntries {
                what: what.to_owned(),
                count: self.layers.len(),
                max: LAYERS_MAX,
            });
        }
        if self.config.media_type != OCI_CONFIG && self.config.media_type != DOCKER_CONFIG {
            return Err(ManifestError::UnsupportedConfig {
                what: what.to_owned(),
                digest: self.config.digest,
                media_type: self.config.media_type.clone(),
            });
        }
        for layer in &self.layers {
            if Compression::of_media_type(&layer.media_type).is_none() {
                return Err(ManifestError::UnsupportedLayer {
                    what: what.to_owned(),
                    digest: layer.digest,
                    media_type: layer.media_type.clone(),
                });
            }
        }
        Ok(())
    }

    /// The manifest's own media type (Docker's if it says so, else OCI's).
    pub fn media_type(&self) -> &str {
        match self.media_type.as_deref() {
            Some(DOCKER_MANIFEST) => DOCKER_MANIFEST,
            _ => OCI_MANIFEST,
        }
    }
}

impl ImageIndex {
    /// Picks the manifest for `wanted` (linux/amd64 by default): os and
    /// architecture must match; the variant too, where arm64's `v8` and
    /// amd64's `v1` count as none, and an older arm variant is taken when
    /// the wanted one is missing. Entries without a platform, attestation
    /// manifests and non-manifest entries are skipped.
    pub fn select(&self, wanted: &Platform, what: &str) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .filter(|d| d.is_manifest() || d.is_index())
            .filter_map(|d| Some((d.platform.as_ref()?.rank_for(wanted)?, d)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, d)| d)
            .ok_or_else(|| ManifestError::NoMatchingPlatform {
                what: what.to_owned(),
                wanted: wanted.to_string(),
                available: {
                    let list: Vec<String> = self
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect();
                    if list.is_empty() {
                        "no platforms".to_owned()
                    } else {
                        list.join(", ")
                    }
                },
            })
    }
}

/// An image config (OCI and Docker share the fields that matter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<serde_json::Value>,
}

/// The defaults a container of the image runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// The uncompressed layer digests, bottom first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses an image config and checks it against its manifest's layer
    /// count.
    pub fn parse(bytes: &[u8], layers: usize, what: &str) -> Result<Self, ManifestError> {
        check_size(what, bytes.len(), CONFIG_MAX)?;
        let config: Self = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: what.to_owned(),
            source,
        })?;
        if config.rootfs.kind != "layers" {
            return Err(ManifestError::RootfsType {
                what: what.to_owned(),
                kind: config.rootfs.kind,
            });
        }
        if config.rootfs.diff_ids.len() != layers {
            return Err(ManifestError::LayerCountMismatch {
                what: what.to_owned(),
                layers,
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    /// Shaped like Docker Hub's alpine manifest list.
    fn docker_list() -> String {
        format!(
            r#"{{
   "manifests": [
      {{"digest": "{}", "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "platform": {{"architecture": "amd64", "os": "linux"}}, "size": 528}},
      {{"digest": "{}", "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "platform": {{"architecture": "arm", "os": "linux", "variant": "v6"}}, "size": 528}},
      {{"digest": "{}", "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "platform": {{"architecture": "arm", "os": "linux", "variant": "v7"}}, "size": 528}},
      {{"digest": "{}", "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}, "size": 528}},
      {{"digest": "{}", "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "platform": {{"architecture": "s390x", "os": "linux"}}, "size": 528}}
   ],
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "schemaVersion": 2
}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5)
        )
    }

    /// Shaped like a buildx OCI index with attestation manifests.
    fn oci_index() -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{}", "size": 1013,
      "platform": {{"architecture": "arm64", "os": "linux"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{}", "size": 1013,
      "platform": {{"architecture": "amd64", "os": "linux", "variant": "v3"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{}", "size": 1013,
      "platform": {{"architecture": "amd64", "os": "linux"}}}},
    {{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "{}", "size": 566,
      "annotations": {{"vnd.docker.reference.digest": "{}", "vnd.docker.reference.type": "attestation-manifest"}},
      "platform": {{"architecture": "unknown", "os": "unknown"}}}}
  ]
}}"#,
            d(10),
            d(11),
            d(12),
            d(13),
            d(12)
        )
    }

    fn docker_manifest() -> String {
        format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1472, "digest": "{}"}},
   "layers": [
      {{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3408729, "digest": "{}"}}
   ]
}}"#,
            d(20),
            d(21)
        )
    }

    fn oci_manifest(layer_type: &str) -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "{}", "size": 7023}},
  "layers": [
    {{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "{}", "size": 32654}},
    {{"mediaType": "{layer_type}", "digest": "{}", "size": 16724,
      "annotations": {{"org.opencontainers.image.title": "layer2"}}}}
  ],
  "annotations": {{"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}
}}"#,
            d(30),
            d(31),
            d(32)
        )
    }

    #[test]
    fn docker_manifest_list_selects_platforms() {
        let m = Manifest::parse(
            Some(DOCKER_MANIFEST_LIST),
            docker_list().as_bytes(),
            "alpine",
        )
        .unwrap();
        let Manifest::Index(index) = m else {
            panic!("not an index")
        };
        let pick = |p: &str| {
            index
                .select(&Platform::parse(p).unwrap(), "alpine")
                .map(|d| d.digest.to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), d(1));
        assert_eq!(
            index
                .select(&Platform::default(), "x")
                .unwrap()
                .digest
                .to_string(),
            d(1)
        );
        assert_eq!(pick("linux/x86_64").unwrap(), d(1));
        assert_eq!(pick("linux/arm64").unwrap(), d(4), "v8 is arm64's default");
        assert_eq!(pick("linux/aarch64").unwrap(), d(4));
        assert_eq!(pick("linux/arm/v7").unwrap(), d(3));
        assert_eq!(pick("linux/arm").unwrap(), d(3), "arm means v7");
        assert_eq!(pick("linux/arm/v6").unwrap(), d(2));
        assert_eq!(
            pick("linux/arm/v8").unwrap(),
            d(3),
            "the newest older arm variant"
        );
        let e = pick("linux/riscv64").unwrap_err().to_string();
        assert!(
            e.contains("linux/riscv64") && e.contains("linux/arm/v6") && e.contains("alpine"),
            "{e}"
        );
        assert!(pick("windows/amd64").is_err());
    }

    #[test]
    fn oci_index_skips_attestations_and_higher_variants() {
        let m = Manifest::parse(None, oci_index().as_bytes(), "x").unwrap();
        let Manifest::Index(index) = m else {
            panic!("not an index")
        };
        assert_eq!(
            index
                .select(&Platform::default(), "x")
                .unwrap()
                .digest
                .to_string(),
            d(12)
        );
        let v3 = Platform::new("linux", "amd64", Some("v3"));
        assert_eq!(index.select(&v3, "x").unwrap().digest.to_string(), d(11));
        assert!(index
            .select(&Platform::new("unknown", "unknown", None), "x")
            .is_ok_and(|d| d.is_manifest()));
    }

    #[test]
    fn image_manifests() {
        let m = Manifest::parse(Some(DOCKER_MANIFEST), docker_manifest().as_bytes(), "x").unwrap();
        let Manifest::Image(m) = m else {
            panic!("not an image")
        };
        assert_eq!(m.media_type(), DOCKER_MANIFEST);
        assert_eq!(m.layers[0].size, 3408729);
        assert_eq!(
            Compression::of_media_type(&m.layers[0].media_type),
            Some(Compression::Gzip)
        );

        // OCI without mediaType, told by shape; zstd layers.
        let Manifest::Image(m) =
            Manifest::parse(None, oci_manifest(OCI_LAYER_ZSTD).as_bytes(), "x").unwrap()
        else {
            panic!("not an image")
        };
        assert_eq!(m.media_type(), OCI_MANIFEST);
        assert_eq!(
            Compression::of_media_type(&m.layers[1].media_type),
            Some(Compression::Zstd)
        );
        assert_eq!(
            m.layers[1].annotations["org.opencontainers.image.title"],
            "layer2"
        );
        // A Content-Type with parameters.
        assert!(Manifest::parse(
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            oci_manifest(OCI_LAYER_TAR).as_bytes(),
            "x"
        )
        .is_ok());
        // Round trip keeps the fields.
        let back: ImageManifest =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, *m);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let helm = oci_manifest("application/vnd.cncf.helm.chart.content.v1.tar+gzip");
        let e = Manifest::parse(None, helm.as_bytes(), "chart").unwrap_err();
        assert!(matches!(e, ManifestError::UnsupportedLayer { .. }), "{e}");
        assert!(e.to_string().contains(&d(32)), "{e}");

        let helm_config =
            docker_manifest().replace(DOCKER_CONFIG, "application/vnd.cncf.helm.config.v1+json");
        assert!(matches!(
            Manifest::parse(None, helm_config.as_bytes(), "x").unwrap_err(),
            ManifestError::UnsupportedConfig { .. }
        ));

        let schema1 = r#"{"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}"#;
        assert!(matches!(
            Manifest::parse(None, schema1.as_bytes(), "x").unwrap_err(),
            ManifestError::Schema1 { .. }
        ));
        assert!(matches!(
            Manifest::parse(Some(DOCKER_SCHEMA1_SIGNED), schema1.as_bytes(), "x").unwrap_err(),
            ManifestError::Schema1 { .. }
        ));
        let v3 = docker_manifest().replace("\"schemaVersion\": 2", "\"schemaVersion\": 3");
        assert!(matches!(
            Manifest::parse(None, v3.as_bytes(), "x").unwrap_err(),
            ManifestError::SchemaVersion { .. }
        ));
        assert!(Manifest::parse(Some("text/html"), docker_manifest().as_bytes(), "x").is_err());
        assert!(Manifest::parse(None, b"{}", "x").is_err());
        assert!(Manifest::parse(None, b"not json", "x").is_err());
        let negative = docker_manifest().replace("3408729", "-1");
        assert!(Manifest::parse(None, negative.as_bytes(), "x").is_err());
        let bad_digest = docker_manifest().replace(&d(21)[7..], "zz");
        assert!(Manifest::parse(None, bad_digest.as_bytes(), "x").is_err());

        let huge = vec![b' '; MANIFEST_MAX as usize + 1];
        assert!(matches!(
            Manifest::parse(None, &huge, "x").unwrap_err(),
            ManifestError::TooLarge { .. }
        ));
    }

    #[test]
    fn image_config() {
        let json = format!(
            r#"{{"architecture":"amd64","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd":["/bin/sh"],"WorkingDir":"/","User":"1000:1000","ExposedPorts":{{"80/tcp":{{}}}},"Labels":{{"a":"b"}},"StopSignal":"SIGQUIT"}},
            "created":"2024-01-26T23:44:51.984130264Z","history":[{{"created_by":"/bin/sh -c #(nop) ADD file:… in / "}}],
            "os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d(40)
        );
        let c = ImageConfig::parse(json.as_bytes(), 1, "cfg").unwrap();
        let cc = c.config.as_ref().unwrap();
        assert_eq!(cc.cmd.as_deref(), Some(&["/bin/sh".to_owned()][..]));
        assert_eq!(cc.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.rootfs.diff_ids[0].to_string(), d(40));
        assert!(matches!(
            ImageConfig::parse(json.as_bytes(), 2, "cfg").unwrap_err(),
            ManifestError::LayerCountMismatch { .. }
        ));
        let bad = json.replace("\"layers\"", "\"other\"");
        assert!(matches!(
            ImageConfig::parse(bad.as_bytes(), 1, "cfg").unwrap_err(),
            ManifestError::RootfsType { .. }
        ));
    }

    #[test]
    fn compression_sniffing() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
    }

    proptest! {
        /// The parser never panics on any bytes, nor on any JSON value.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::parse(None, &bytes, "x");
        }

        /// A valid manifest with mangled fields is refused or accepted,
        /// never a panic; what is accepted re-serialises and parses back
        /// equal.
        #[test]
        fn mangled_manifests(cut in 0usize..600, byte in any::<u8>()) {
            let mut m = docker_manifest().into_bytes();
            let i = cut % m.len();
            m[i] = byte;
            if let Ok(Manifest::Image(parsed)) = Manifest::parse(None, &m, "x") {
                let again = serde_json::to_vec(&parsed).unwrap();
                prop_assert_eq!(Manifest::parse(None, &again, "x").unwrap(), Manifest::Image(parsed));
            }
        }
    }
}
