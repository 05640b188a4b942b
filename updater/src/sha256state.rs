//! A SHA-256 whose state can be saved and restored, so that a download
//! interrupted after N bytes resumes hashing at N without those bytes (the
//! `sha2` hasher state cannot be serialised). Built on `sha2::compress256`,
//! the same block function `Sha256` uses; the padding is FIPS 180-4 5.1.1.

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

/// The initial hash value (FIPS 180-4 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256State {
    h: [u32; 8],
    /// Bytes hashed so far.
    length: u64,
    /// The bytes of the last, incomplete block (fewer than 64).
    partial: Vec<u8>,
}

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State {
            h: H0,
            length: 0,
            partial: Vec::new(),
        }
    }
}

impl Sha256State {
    pub fn new() -> Sha256State {
        Sha256State::default()
    }

    /// Bytes hashed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if !self.partial.is_empty() {
            let take = (64 - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < 64 {
                return;
            }
            let block = GenericArray::clone_from_slice(&self.partial);
            sha2::compress256(&mut self.h, &[block]);
            self.partial.clear();
        }
        let whole = data.len() / 64 * 64;
        let blocks: Vec<_> = data[..whole]
            .chunks_exact(64)
            .map(GenericArray::clone_from_slice)
            .collect();
        sha2::compress256(&mut self.h, &blocks);
        self.partial.extend_from_slice(&data[whole..]);
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.partial);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        let blocks: Vec<_> = tail
            .chunks_exact(64)
            .map(GenericArray::clone_from_slice)
            .collect();
        sha2::compress256(&mut self.h, &blocks);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.h) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// Saved form: `{"h": "<64 hex>", "length": N, "partial": "<hex>"}`.
#[derive(Serialize, Deserialize)]
struct Saved {
    h: String,
    length: u64,
    partial: String,
}

impl Serialize for Sha256State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h: Vec<u8> = self.h.iter().flat_map(|w| w.to_be_bytes()).collect();
        Saved {
            h: hex::encode(h),
            length: self.length,
            partial: hex::encode(&self.partial),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sha256State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let saved = Saved::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&saved.h, &mut bytes).map_err(D::Error::custom)?;
        let partial = hex::decode(&saved.partial).map_err(D::Error::custom)?;
        if partial.len() >= 64 || saved.length % 64 != partial.len() as u64 {
            return Err(D::Error::custom(
                "partial block does not match the length hashed",
            ));
        }
        let mut h = [0u32; 8];
        for (word, chunk) in h.iter_mut().zip(bytes.chunks_exact(4)) {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            *word = u32::from_be_bytes(b);
        }
        Ok(Sha256State {
            h,
            length: saved.length,
            partial,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(Sha256State::new().finalize()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut s = Sha256State::new();
        s.update(b"abc");
        assert_eq!(
            hex::encode(s.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn matches_sha2_across_save_and_restore(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cut in 0usize..700,
            step in 1usize..130,
        ) {
            let cut = cut.min(data.len());
            let mut s = Sha256State::new();
            for chunk in data[..cut].chunks(step) {
                s.update(chunk);
            }
            let saved = serde_json::to_string(&s).unwrap();
            let mut r: Sha256State = serde_json::from_str(&saved).unwrap();
            prop_assert_eq!(&r, &s);
            r.update(&data[cut..]);
            prop_assert_eq!(r.length(), data.len() as u64);
            let expected: [u8; 32] = Sha256::digest(&data).into();
            prop_assert_eq!(r.finalize(), expected);
        }
    }

    #[test]
    fn refuses_inconsistent_saved_state() {
        let bad = r#"{"h":"00","length":3,"partial":"616263"}"#;
        assert!(serde_json::from_str::<Sha256State>(bad).is_err());
        let h = "00".repeat(32);
        let bad = format!(r#"{{"h":"{h}","length":4,"partial":"616263"}}"#);
        assert!(serde_json::from_str::<Sha256State>(&bad).is_err());
    }
}
