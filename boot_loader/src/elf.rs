//! ELF64 x86_64 kernels (`vmlinux`), entered in 64-bit mode at `e_entry`, or in 32-bit mode at
//! the Xen PVH entry point when the image carries a `XEN_ELFNOTE_PHYS32_ENTRY` note.
//!
//! Every offset and size in the headers comes from the file and is bounds-checked before use.

use std::path::Path;

use vm_memory::GuestMemoryMmap;

use crate::bytes::{read_u16, read_u32, read_u64, read_u8};
use crate::kernel::{LoadWindow, LoadedKernel};
use crate::{guest, BootError, KernelFormat};

/// `e_ident[EI_CLASS]` and its 64-bit value.
const EI_CLASS: usize = 4;
const ELFCLASS64: u8 = 2;
/// `e_ident[EI_DATA]` and its little-endian value.
const EI_DATA: usize = 5;
const ELFDATA2LSB: u8 = 1;
/// ELF header fields.
const E_MACHINE: usize = 0x12;
const E_ENTRY: usize = 0x18;
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
/// `e_machine` of x86_64.
const EM_X86_64: u16 = 62;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;
/// Program header types.
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// Note header size: namesz, descsz, type.
const NOTE_HEADER_SIZE: usize = 12;
/// Xen's note name and the PVH entry point note type.
const XEN_NOTE_NAME: &[u8] = b"Xen";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The fields of a program header the loader uses.
struct ProgramHeader {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Checks class, byte order and machine.
fn check_ident(path: &Path, image: &[u8]) -> Result<(), BootError> {
    let unsupported = |found: String| BootError::UnsupportedElf {
        path: path.to_path_buf(),
        found,
    };
    let class = read_u8(image, EI_CLASS).unwrap_or(0);
    if class != ELFCLASS64 {
        return Err(unsupported(format!("class {class} (64-bit is class 2)")));
    }
    let data = read_u8(image, EI_DATA).unwrap_or(0);
    if data != ELFDATA2LSB {
        return Err(unsupported(format!(
            "data encoding {data} (little-endian is 1)"
        )));
    }
    let machine = read_u16(image, E_MACHINE).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(unsupported(format!("machine {machine} (x86_64 is 62)")));
    }
    Ok(())
}

/// The program header at `off`, or `None` when it does not lie inside the file.
fn program_header(image: &[u8], off: usize) -> Option<ProgramHeader> {
    let ph = image.get(off..off.checked_add(PHDR_SIZE)?)?;
    Some(ProgramHeader {
        p_type: read_u32(ph, 0)?,
        offset: read_u64(ph, 0x08)?,
        paddr: read_u64(ph, 0x18)?,
        filesz: read_u64(ph, 0x20)?,
        memsz: read_u64(ph, 0x28)?,
    })
}

/// All program headers.
fn program_headers(image: &[u8]) -> Result<Vec<ProgramHeader>, &'static str> {
    let truncated = "the ELF header is truncated";
    let phoff = read_u64(image, E_PHOFF).ok_or(truncated)?;
    let phentsize = usize::from(read_u16(image, E_PHENTSIZE).ok_or(truncated)?);
    let phnum = usize::from(read_u16(image, E_PHNUM).ok_or(truncated)?);
    if phnum == 0 {
        return Err("it has no program headers");
    }
    if phentsize < PHDR_SIZE {
        return Err("its program header entries are smaller than 56 bytes");
    }
    let beyond = "the program header table lies beyond the end of the file";
    let phoff = usize::try_from(phoff).map_err(|_| beyond)?;
    (0..phnum)
        .map(|i| {
            let off = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff));
            off.and_then(|off| program_header(image, off)).ok_or(beyond)
        })
        .collect()
}

/// The file bytes `[offset, offset + len)`, or `None` when they are not all in the file.
fn file_range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    image.get(start..end)
}

/// Copies one PT_LOAD segment to its physical address and zeroes the rest of its memory size.
fn load_segment(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    ph: &ProgramHeader,
    window: &LoadWindow,
) -> Result<(), BootError> {
    let malformed = |reason| BootError::MalformedElf {
        path: path.to_path_buf(),
        reason,
    };
    if ph.filesz > ph.memsz {
        return Err(malformed("a segment's file size exceeds its memory size"));
    }
    let data = file_range(image, ph.offset, ph.filesz)
        .ok_or_else(|| malformed("a segment's data lies beyond the end of the file"))?;
    window.check(path, ph.paddr, ph.memsz)?;
    guest::write(mem, ph.paddr, data, "ELF segment")?;
    guest::zero(
        mem,
        ph.paddr + ph.filesz,
        ph.memsz - ph.filesz,
        "ELF segment",
    )
}

/// The PVH entry point in a block of notes, if there is one.
fn pvh_entry_in_notes(notes: &[u8]) -> Result<Option<u64>, &'static str> {
    let overrun = "an ELF note runs past the end of its segment";
    let mut pos = 0usize;
    while pos + NOTE_HEADER_SIZE <= notes.len() {
        let field = |n: usize| {
            read_u32(notes, pos + 4 * n)
                .map(|v| v as usize)
                .ok_or(overrun)
        };
        let (namesz, descsz, n_type) = (field(0)?, field(1)?, field(2)?);
        let name_start = pos + NOTE_HEADER_SIZE;
        let desc_start = name_start
            .checked_add(align4(namesz).ok_or(overrun)?)
            .ok_or(overrun)?;
        let desc_end = desc_start.checked_add(descsz).ok_or(overrun)?;
        let name = notes.get(name_start..name_start + namesz).ok_or(overrun)?;
        let desc = notes.get(desc_start..desc_end).ok_or(overrun)?;
        if n_type == XEN_ELFNOTE_PHYS32_ENTRY as usize && trim_nul(name) == XEN_NOTE_NAME {
            return match desc.len() {
                4 => Ok(read_u32(desc, 0).map(u64::from)),
                8 => Ok(read_u64(desc, 0)),
                _ => Err("the Xen PVH entry note is neither 4 nor 8 bytes long"),
            };
        }
        pos = desc_start
            .checked_add(align4(descsz).ok_or(overrun)?)
            .ok_or(overrun)?;
    }
    Ok(None)
}

/// `n` rounded up to a multiple of 4.
fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// `name` without trailing NULs.
fn trim_nul(name: &[u8]) -> &[u8] {
    let len = name.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    &name[..len]
}

/// The PVH entry point from the PT_NOTE segments, if any carries one.
fn find_pvh_entry(image: &[u8], headers: &[ProgramHeader]) -> Result<Option<u64>, &'static str> {
    for ph in headers.iter().filter(|ph| ph.p_type == PT_NOTE) {
        let notes = file_range(image, ph.offset, ph.filesz)
            .ok_or("a note segment lies beyond the end of the file")?;
        if let Some(entry) = pvh_entry_in_notes(notes)? {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Loads every PT_LOAD segment; returns the range they cover.
fn load_segments(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    headers: &[ProgramHeader],
    window: &LoadWindow,
) -> Result<(u64, u64), BootError> {
    let mut range: Option<(u64, u64)> = None;
    for ph in headers.iter().filter(|ph| ph.p_type == PT_LOAD) {
        load_segment(mem, path, image, ph, window)?;
        // `load_segment` checked that the end does not overflow.
        let (start, end) = (ph.paddr, ph.paddr + ph.memsz);
        range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    range.ok_or_else(|| BootError::MalformedElf {
        path: path.to_path_buf(),
        reason: "it has no loadable segment",
    })
}

/// Loads an ELF kernel into `window`.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    window: &LoadWindow,
) -> Result<LoadedKernel, BootError> {
    let malformed = |reason| BootError::MalformedElf {
        path: path.to_path_buf(),
        reason,
    };
    check_ident(path, image)?;
    let headers = program_headers(image).map_err(malformed)?;
    let pvh_entry = find_pvh_entry(image, &headers).map_err(malformed)?;
    let (start, end) = load_segments(mem, path, image, &headers, window)?;
    let e_entry = read_u64(image, E_ENTRY).unwrap_or(0);
    let (format, entry) = match pvh_entry {
        Some(entry) => (KernelFormat::ElfPvh, entry),
        None => (KernelFormat::Elf, e_entry),
    };
    if !(start..end).contains(&entry) {
        return Err(BootError::EntryOutsideKernel {
            path: path.to_path_buf(),
            entry,
            start,
            end,
        });
    }
    Ok(LoadedKernel {
        format,
        entry,
        start,
        end,
        setup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HIGH_MEMORY_START;
    use crate::test_util::{
        elf_image, elf_note, guest_memory, read_guest, ElfSegment, TempFile, ELF_PHOFF, RAM,
    };

    const WINDOW: LoadWindow = LoadWindow {
        start: HIGH_MEMORY_START,
        end: RAM,
    };

    fn segment(paddr: u64, data: &[u8], memsz: u64) -> ElfSegment {
        ElfSegment {
            paddr,
            data: data.to_vec(),
            memsz,
        }
    }

    fn load_image(mem: &GuestMemoryMmap, image: &[u8]) -> Result<LoadedKernel, BootError> {
        load(mem, Path::new("vmlinux"), image, &WINDOW)
    }

    #[test]
    fn segments_are_loaded_at_their_physical_address_with_bss_zeroed() {
        let mem = guest_memory(RAM);
        guest::write(&mem, 0x100_0000, &[0xee; 0x2000], "dirt").unwrap();
        let image = elf_image(
            0x100_0000,
            &[
                segment(0x100_0000, &[1, 2, 3, 4], 0x1000),
                segment(0x120_0000, &[9; 16], 16),
            ],
            None,
        );
        let kernel = load_image(&mem, &image).unwrap();
        assert_eq!(read_guest(&mem, 0x100_0000, 4), [1, 2, 3, 4]);
        assert!(read_guest(&mem, 0x100_0004, 0x1000 - 4)
            .iter()
            .all(|b| *b == 0));
        assert_eq!(
            read_guest(&mem, 0x100_1000, 1),
            [0xee],
            "memsz ends the segment"
        );
        assert_eq!(read_guest(&mem, 0x120_0000, 16), [9; 16]);
        assert_eq!(kernel.format, KernelFormat::Elf);
        assert_eq!(
            (kernel.entry, kernel.start, kernel.end),
            (0x100_0000, 0x100_0000, 0x120_0010)
        );
    }

    #[test]
    fn elf_without_pvh_note_is_entered_in_long_mode() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x100_0040, &[segment(0x100_0000, &[0x90; 128], 128)], None);
        let kernel = load_image(&mem, &image).unwrap();
        assert_eq!(kernel.mode(), crate::CpuMode::Long64);
        assert_eq!(kernel.entry, 0x100_0040);
    }

    #[test]
    fn pvh_note_with_32_bit_entry_selects_pvh() {
        let mem = guest_memory(RAM);
        let note = elf_note(b"Xen\0", 18, &0x100_0020u32.to_le_bytes());
        let image = elf_image(
            0x100_0000,
            &[segment(0x100_0000, &[0x90; 64], 64)],
            Some(&note),
        );
        let kernel = load_image(&mem, &image).unwrap();
        assert_eq!(kernel.format, KernelFormat::ElfPvh);
        assert_eq!(kernel.entry, 0x100_0020);
        assert_eq!(kernel.mode(), crate::CpuMode::Protected32);
    }

    #[test]
    fn pvh_note_after_other_notes_with_64_bit_entry_is_found() {
        let mem = guest_memory(RAM);
        let mut notes = elf_note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(elf_note(b"Xen\0", 5, b"xen-3.0\0"));
        notes.extend(elf_note(b"Xen\0", 18, &0x100_0010u64.to_le_bytes()));
        let image = elf_image(
            0x100_0000,
            &[segment(0x100_0000, &[0x90; 64], 64)],
            Some(&notes),
        );
        assert_eq!(load_image(&mem, &image).unwrap().entry, 0x100_0010);
    }

    #[test]
    fn note_with_oversized_descriptor_is_refused() {
        let mut note = elf_note(b"Xen\0", 18, &[0; 4]);
        note[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(pvh_entry_in_notes(&note).is_err());
    }

    #[test]
    fn thirty_two_bit_elf_is_refused_naming_its_class() {
        let mem = guest_memory(RAM);
        let mut image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        image[4] = 1;
        let err = load_image(&mem, &image).err().unwrap();
        assert!(matches!(err, BootError::UnsupportedElf { .. }));
        assert!(err.to_string().contains("class 1"), "{err}");
    }

    #[test]
    fn non_x86_64_elf_is_refused_naming_its_machine() {
        let mem = guest_memory(RAM);
        let mut image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        image[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        let err = load_image(&mem, &image).err().unwrap();
        assert!(err.to_string().contains("machine 183"), "{err}");
    }

    #[test]
    fn program_headers_beyond_the_file_are_refused() {
        let mem = guest_memory(RAM);
        let mut image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        image[0x20..0x28].copy_from_slice(&0xffff_ffff_ffff_ff00u64.to_le_bytes());
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::MalformedElf { .. })
        ));
        let near_end = image.len() as u64 - 8;
        image[0x20..0x28].copy_from_slice(&near_end.to_le_bytes());
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::MalformedElf { .. })
        ));
    }

    #[test]
    fn segment_beyond_ram_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(RAM - 16, &[segment(RAM - 16, &[0x90; 64], 64)], None);
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    #[test]
    fn segment_below_one_mib_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x7000, &[segment(0x7000, &[0x90; 64], 64)], None);
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    #[test]
    fn segment_whose_end_overflows_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x100_0000, &[segment(u64::MAX - 8, &[0x90; 64], 64)], None);
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    #[test]
    fn huge_file_size_is_refused() {
        let mem = guest_memory(RAM);
        let mut image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        let filesz = ELF_PHOFF + 0x20;
        image[filesz..filesz + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        image[filesz + 8..filesz + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::MalformedElf { .. })
        ));
    }

    #[test]
    fn file_size_above_memory_size_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 32)], None);
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::MalformedElf { .. })
        ));
    }

    #[test]
    fn entry_outside_the_loaded_segments_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x200_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::EntryOutsideKernel { .. })
        ));
    }

    #[test]
    fn truncated_header_is_refused() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        assert!(load_image(&mem, &image[..0x30]).is_err());
    }

    #[test]
    fn elf_file_is_detected_by_the_kernel_loader() {
        let mem = guest_memory(RAM);
        let image = elf_image(0x100_0000, &[segment(0x100_0000, &[0x90; 64], 64)], None);
        let file = TempFile::new("vmlinux", &image);
        let kernel = crate::kernel::load(&mem, file.path(), &WINDOW).unwrap();
        assert_eq!(kernel.format, KernelFormat::Elf);
    }
}
