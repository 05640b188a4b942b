//! Identifiers derived from the build's inputs instead of drawn at random
//! (GPT GUIDs, file system UUIDs, the FAT volume id, the dm-verity salt), so
//! that the same inputs give the same image bytes. Each is a sha256 over a
//! purpose string and the input digest, so no two of them coincide.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// sha256 of `purpose` and `input`, separated so that they cannot run together.
pub fn derive(purpose: &str, input: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"atoll image-build v1\0");
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(input);
    h.finalize().into()
}

/// A UUID (RFC 9562 version 8, "custom") derived from `purpose` and `input`.
pub fn uuid(purpose: &str, input: &[u8]) -> Uuid {
    let d = derive(purpose, input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// A 32-bit FAT volume id derived from `input`.
pub fn fat_volume_id(input: &[u8]) -> u32 {
    let d = derive("fat volume id", input);
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Lower-case hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = uuid("disk", b"x");
        assert_eq!(a, uuid("disk", b"x"));
        assert_ne!(a, uuid("esp", b"x"));
        assert_ne!(a, uuid("disk", b"y"));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(fat_volume_id(b"x"), fat_volume_id(b"x"));
        assert_ne!(derive("ab", b"c"), derive("a", b"bc"));
    }
}
