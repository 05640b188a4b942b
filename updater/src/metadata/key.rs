//! ed25519 public keys as TUF writes them, their key ids, and signatures.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::canonical;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "key {keyid}: key type {keytype:?} and scheme {scheme:?} are not supported (only ed25519)"
    )]
    Unsupported {
        keyid: String,
        keytype: String,
        scheme: String,
    },
    #[error("key {keyid}: the public key is not 32 bytes of hex")]
    Encoding { keyid: String },
    #[error("key {keyid}: not a valid ed25519 public key")]
    Point { keyid: String },
    #[error("key {keyid}: its id should be {computed} (sha256 of its canonical JSON)")]
    Id { keyid: String, computed: String },
}

/// A public key entry of root.json:
/// `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"<hex>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    /// The 32-byte ed25519 public key, lower-case hex.
    pub public: String,
}

impl PublicKey {
    pub fn ed25519(key: &VerifyingKey) -> PublicKey {
        PublicKey {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(key.as_bytes()),
            },
        }
    }

    /// The key id: hex sha256 of the key's canonical JSON.
    pub fn keyid(&self) -> String {
        let value = serde_json::json!({
            "keytype": self.keytype,
            "scheme": self.scheme,
            "keyval": { "public": self.keyval.public },
        });
        // Only strings: canonical JSON cannot fail here.
        let bytes = canonical::to_vec(&value).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }

    /// The ed25519 key, checked against the id root.json lists it under.
    pub fn verifying_key(&self, keyid: &str) -> Result<VerifyingKey, KeyError> {
        if self.keytype != "ed25519" || self.scheme != "ed25519" {
            return Err(KeyError::Unsupported {
                keyid: keyid.to_owned(),
                keytype: self.keytype.clone(),
                scheme: self.scheme.clone(),
            });
        }
        let computed = self.keyid();
        if computed != keyid {
            return Err(KeyError::Id {
                keyid: keyid.to_owned(),
                computed,
            });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&self.keyval.public, &mut bytes).map_err(|_| KeyError::Encoding {
            keyid: keyid.to_owned(),
        })?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Point {
            keyid: keyid.to_owned(),
        })
    }
}

/// The key id of a signing key's public half.
pub fn keyid_of(key: &SigningKey) -> String {
    PublicKey::ed25519(&key.verifying_key()).keyid()
}

/// A signature entry: `{"keyid": "<hex>", "sig": "<hex>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    pub keyid: String,
    pub sig: String,
}

impl KeySignature {
    pub fn sign(key: &SigningKey, message: &[u8]) -> KeySignature {
        KeySignature {
            keyid: keyid_of(key),
            sig: hex::encode(key.sign(message).to_bytes()),
        }
    }

    /// Whether this is a valid signature of `message` by `key` (strict
    /// verification: no malleable or small-order signatures).
    pub fn verifies(&self, key: &VerifyingKey, message: &[u8]) -> bool {
        let mut bytes = [0u8; 64];
        if hex::decode_to_slice(&self.sig, &mut bytes).is_err() {
            return false;
        }
        key.verify_strict(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyid_is_sha256_of_canonical_json() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = PublicKey::ed25519(&key.verifying_key());
        let canonical = format!(
            "{{\"keytype\":\"ed25519\",\"keyval\":{{\"public\":\"{}\"}},\"scheme\":\"ed25519\"}}",
            public.keyval.public
        );
        assert_eq!(public.keyid(), hex::encode(Sha256::digest(canonical)));
        assert_eq!(keyid_of(&key), public.keyid());
        assert!(public.verifying_key(&public.keyid()).is_ok());
        assert!(matches!(
            public.verifying_key("00"),
            Err(KeyError::Id { .. })
        ));
    }

    #[test]
    fn signs_and_verifies() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let sig = KeySignature::sign(&key, b"message");
        assert!(sig.verifies(&key.verifying_key(), b"message"));
        assert!(!sig.verifies(&key.verifying_key(), b"messagE"));
        let other = SigningKey::from_bytes(&[2; 32]);
        assert!(!sig.verifies(&other.verifying_key(), b"message"));
        let garbled = KeySignature {
            sig: "zz".into(),
            ..sig
        };
        assert!(!garbled.verifies(&key.verifying_key(), b"message"));
    }
}
