//! The GNU build id of an ELF file (`NT_GNU_BUILD_ID` in a `PT_NOTE`
//! segment): what stage 1 compares to tell whether its own binary and the
//! slot's `init` are the same build. Reads only the header, the program
//! headers and the notes (a few hundred bytes at the start of the file).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::le::{u16_at, u32_at, u64_at};

const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;
/// Program headers read at most (a linker writes about a dozen).
const MAX_PHDRS: u16 = 64;
/// Bytes of notes read at most per segment.
const MAX_NOTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading the file")]
    Io(#[from] std::io::Error),
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("no GNU build id note")]
    NoBuildId,
}

/// The build id's bytes.
pub fn build_id(file: &File) -> Result<Vec<u8>, ElfError> {
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)?;
    // ELFCLASS64, ELFDATA2LSB.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let phoff = u64_at(&header, 0x20).ok_or(ElfError::NotElf64)?;
    let phentsize = u16_at(&header, 0x36).ok_or(ElfError::NotElf64)?;
    let phnum = u16_at(&header, 0x38).ok_or(ElfError::NotElf64)?;
    if phentsize < 56 || phnum > MAX_PHDRS {
        return Err(ElfError::NotElf64);
    }
    let mut phdrs = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    file.read_exact_at(&mut phdrs, phoff)?;
    for ph in phdrs.chunks_exact(usize::from(phentsize)) {
        if u32_at(ph, 0) != Some(PT_NOTE) {
            continue;
        }
        let (Some(offset), Some(size)) = (u64_at(ph, 8), u64_at(ph, 32)) else {
            continue;
        };
        let mut notes = vec![0u8; usize::try_from(size.min(MAX_NOTES)).unwrap_or(0)];
        file.read_exact_at(&mut notes, offset)?;
        if let Some(id) = find_build_id(&notes) {
            return Ok(id.to_vec());
        }
    }
    Err(ElfError::NoBuildId)
}

/// The build id in a run of ELF notes (4-byte aligned name and descriptor).
fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    let align = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(u32_at(notes, 0)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, 4)?).ok()?;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(align(namesz)?)?;
        let desc_end = name_end.checked_add(align(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn finds_the_build_id_after_other_notes() {
        let mut notes = note(b"GNU\0", 5, &[1, 2, 3, 4, 5, 6, 7, 8]); // a property note
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(find_build_id(&notes), Some(&[0xab; 20][..]));
        assert_eq!(find_build_id(&notes[..notes.len() - 4]), None, "cut short");
        assert_eq!(find_build_id(&note(b"Go\0\0", 3, &[1])), None);
        assert_eq!(find_build_id(&[0xff; 40]), None, "sizes past the end");
    }

    #[test]
    fn reads_this_test_binarys_build_id() {
        // Debian's toolchain links with --build-id; the test binary has one.
        let f = File::open("/proc/self/exe").unwrap();
        let id = build_id(&f).unwrap();
        assert!(id.len() >= 8, "{id:?}");
        assert_eq!(
            build_id(&File::open("/proc/self/exe").unwrap()).unwrap(),
            id
        );
    }

    #[test]
    fn refuses_what_is_not_elf() {
        let dir = std::env::temp_dir().join(format!("atoll-elf-{}", std::process::id()));
        std::fs::write(
            &dir,
            b"#!/bin/sh\necho not elf, but long enough to fill a header ......\n",
        )
        .unwrap();
        let r = build_id(&File::open(&dir).unwrap());
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(r, Err(ElfError::NotElf64)), "{r:?}");
    }
}
