//! `[admin]`: the admin container, and the SSH keys that may log in to it.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::value::{KeyPath, ValidationError};

/// `[admin]`. Off by default: Atoll has no login of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    pub enabled: bool,
    /// The admin container's image (required when enabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OpenSSH public keys allowed to log in to the admin container.
    pub ssh_authorized_keys: Vec<String>,
}

/// The OpenSSH public key types accepted.
pub const SSH_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Checks one line of `authorized_keys` form: `TYPE BASE64 [COMMENT]`, with
/// a known type whose base64 blob names the same type.
pub fn check_ssh_key(line: &str) -> Result<(), String> {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
        return Err(
            "expected `TYPE BASE64 [COMMENT]`, like `ssh-ed25519 AAAAC3… me@laptop`".into(),
        );
    };
    if line.contains(['\n', '\r']) {
        return Err("one key per entry (no newline)".into());
    }
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type `{kind}` (one of {}; authorized_keys options are not supported)",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the key is not base64 ({e})"))?;
    // The blob starts with the key type as an SSH string (u32 length, bytes).
    let inner = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4usize.checked_add(n)?));
    if inner != Some(kind.as_bytes()) {
        return Err(format!("the key data is not a `{kind}` key"));
    }
    Ok(())
}

impl Admin {
    pub(crate) fn validate(&self, path: &KeyPath, errors: &mut Vec<ValidationError>) {
        match &self.image {
            None if self.enabled => errors.push(ValidationError::new(
                path.key("image"),
                "missing: the admin container is enabled, so it needs an image",
            )),
            Some(image) => {
                if let Err(e) = super::workload::check_image(image) {
                    errors.push(ValidationError::new(path.key("image"), e));
                }
            }
            None => {}
        }
        for (i, key) in self.ssh_authorized_keys.iter().enumerate() {
            if let Err(e) = check_ssh_key(key) {
                errors.push(ValidationError::new(
                    path.key("ssh_authorized_keys").index(i),
                    format!("invalid SSH public key: {e}"),
                ));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICpNdg4Yz0+ya8CwIHASs9gG9A4q2Oh+wPCFOuqoQOFO test@atoll";
    pub(crate) const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOPNbDLbaX7kCLP0vCN3Hg0O2pbNihkCM1aziPdCJ3OKNTInN0S9+4GG6liL/E5OTeRAUuL18cRKzdXMF4TqFe0= ec";

    #[test]
    fn ssh_keys() {
        assert!(check_ssh_key(ED25519).is_ok());
        assert!(check_ssh_key(ECDSA).is_ok());
        assert!(check_ssh_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICpNdg4Yz0+ya8CwIHASs9gG9A4q2Oh+wPCFOuqoQOFO"
        )
        .is_ok());
        assert!(check_ssh_key("").is_err());
        assert!(check_ssh_key("ssh-ed25519").is_err());
        assert!(check_ssh_key("ssh-dss AAAA")
            .unwrap_err()
            .contains("unknown key type"));
        assert!(check_ssh_key("ssh-ed25519 !!!!")
            .unwrap_err()
            .contains("not base64"));
        // An ECDSA blob labelled ed25519.
        let wrong = ECDSA.replace("ecdsa-sha2-nistp256 ", "ssh-ed25519 ");
        assert!(check_ssh_key(&wrong)
            .unwrap_err()
            .contains("not a `ssh-ed25519` key"));
        assert!(check_ssh_key("no-pty ssh-ed25519 AAAA").is_err());
    }
}
