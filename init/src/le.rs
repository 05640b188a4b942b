//! Little-endian integers at byte offsets of on-disk headers (ELF,
//! dm-verity, ext4). Each read is checked: `None` when the buffer ends
//! before the integer does, never a panic in PID 1.

/// The `N` bytes at `at`, if `b` holds them.
fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    bytes(b, at).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    bytes(b, at).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    bytes(b, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [u8; 10] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a];

    #[test]
    fn reads_little_endian() {
        assert_eq!(u16_at(&B, 0), Some(0x0201));
        assert_eq!(u32_at(&B, 1), Some(0x0504_0302));
        assert_eq!(u64_at(&B, 2), Some(0x0a09_0807_0605_0403));
    }

    #[test]
    fn reads_up_to_the_last_byte_and_no_further() {
        assert_eq!(u16_at(&B, 8), Some(0x0a09));
        assert_eq!(u16_at(&B, 9), None);
        assert_eq!(u32_at(&B, 6), Some(0x0a09_0807));
        assert_eq!(u32_at(&B, 7), None);
        assert_eq!(u64_at(&B, 2), Some(0x0a09_0807_0605_0403));
        assert_eq!(u64_at(&B, 3), None);
        assert_eq!(u64_at(&[], 0), None);
    }

    #[test]
    fn an_offset_near_the_end_of_memory_is_none() {
        assert_eq!(u16_at(&B, usize::MAX), None);
        assert_eq!(u32_at(&B, usize::MAX - 2), None);
        assert_eq!(u64_at(&B, usize::MAX - 7), None);
    }
}
