//! ELF64 x86_64 kernels (`vmlinux`), entered in 64-bit mode at `e_entry`, or in 32-bit mode at
//! the Xen PVH entry point when the image carries a `XEN_ELFNOTE_PHYS32_ENTRY` note.
//!
//! linux-loader's `Elf` copies the segments and finds the PVH note. Before it runs, this module
//! checks what it does not: the class and machine, and that every loadable segment's data lies
//! in the file and its memory in the load window. Afterwards it zeroes each segment's memory
//! beyond its file size, which linux-loader leaves as it was.

use std::io::Cursor;
use std::path::Path;

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, PT_LOAD,
};
use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, GuestMemoryMmap};

use crate::bytes::read_obj;
use crate::kernel::{LoadWindow, LoadedKernel};
use crate::{guest, BootError, KernelFormat};

/// Size of an ELF64 program header, the only entry size linux-loader reads.
const PHDR_SIZE: usize = std::mem::size_of::<Elf64_Phdr>();

/// Checks class, byte order and machine.
fn check_ident(path: &Path, ehdr: &Elf64_Ehdr) -> Result<(), BootError> {
    let unsupported = |found: String| BootError::UnsupportedElf {
        path: path.to_path_buf(),
        found,
    };
    let class = ehdr.e_ident[EI_CLASS];
    if class != ELFCLASS64 {
        return Err(unsupported(format!("class {class} (64-bit is class 2)")));
    }
    let data = ehdr.e_ident[EI_DATA];
    if data != ELFDATA2LSB {
        return Err(unsupported(format!(
            "data encoding {data} (little-endian is 1)"
        )));
    }
    let machine = ehdr.e_machine;
    if machine != EM_X86_64 {
        return Err(unsupported(format!("machine {machine} (x86_64 is 62)")));
    }
    Ok(())
}

/// The PT_LOAD program headers.
fn load_headers(image: &[u8], ehdr: &Elf64_Ehdr) -> Result<Vec<Elf64_Phdr>, &'static str> {
    if usize::from(ehdr.e_phentsize) != PHDR_SIZE {
        return Err("its program header entries are not 56 bytes long");
    }
    let beyond = "the program header table lies beyond the end of the file";
    let phoff = usize::try_from(ehdr.e_phoff).map_err(|_| beyond)?;
    let headers = (0..usize::from(ehdr.e_phnum))
        .map(|i| {
            let off = i.checked_mul(PHDR_SIZE).and_then(|o| o.checked_add(phoff));
            off.and_then(|off| read_obj::<Elf64_Phdr>(image, off))
                .ok_or(beyond)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(headers
        .into_iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .collect())
}

/// Whether the file bytes `[offset, offset + len)` all lie inside the image.
fn in_file(image: &[u8], offset: u64, len: u64) -> bool {
    offset
        .checked_add(len)
        .is_some_and(|end| end <= image.len() as u64)
}

/// Checks that a PT_LOAD segment's data is in the file and its memory in `window`.
fn check_segment(
    path: &Path,
    image: &[u8],
    ph: &Elf64_Phdr,
    window: &LoadWindow,
) -> Result<(), BootError> {
    let malformed = |reason| BootError::MalformedElf {
        path: path.to_path_buf(),
        reason,
    };
    if ph.p_filesz > ph.p_memsz {
        return Err(malformed("a segment's file size exceeds its memory size"));
    }
    if !in_file(image, ph.p_offset, ph.p_filesz) {
        return Err(malformed(
            "a segment's data lies beyond the end of the file",
        ));
    }
    window.check(path, ph.p_paddr, ph.p_memsz)
}

/// The range the segments cover; `None` when there are none.
fn span(headers: &[Elf64_Phdr]) -> Option<(u64, u64)> {
    // `check_segment` checked that no end overflows.
    let start = headers.iter().map(|ph| ph.p_paddr).min()?;
    let end = headers.iter().map(|ph| ph.p_paddr + ph.p_memsz).max()?;
    Some((start, end))
}

/// Zeroes each segment's memory beyond its file size.
fn zero_bss(mem: &GuestMemoryMmap, headers: &[Elf64_Phdr]) -> Result<(), BootError> {
    headers.iter().try_for_each(|ph| {
        let len = ph.p_memsz - ph.p_filesz;
        guest::zero(mem, ph.p_paddr + ph.p_filesz, len, "ELF segment")
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
    let ehdr: Elf64_Ehdr =
        read_obj(image, 0).ok_or_else(|| malformed("the ELF header is truncated"))?;
    check_ident(path, &ehdr)?;
    let headers = load_headers(image, &ehdr).map_err(malformed)?;
    for ph in &headers {
        check_segment(path, image, ph, window)?;
    }
    let (start, end) = span(&headers).ok_or_else(|| malformed("it has no loadable segment"))?;
    let loaded = Elf::load(mem, None, &mut Cursor::new(image), None).map_err(|source| {
        BootError::LoadKernel {
            path: path.to_path_buf(),
            source,
        }
    })?;
    zero_bss(mem, &headers)?;
    let (format, entry) = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (KernelFormat::ElfPvh, addr.raw_value()),
        _ => (KernelFormat::Elf, ehdr.e_entry),
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
    fn pvh_note_whose_descriptor_runs_past_the_file_is_refused() {
        let mem = guest_memory(RAM);
        let mut note = elf_note(b"Xen\0", 18, &[]);
        note[4..8].copy_from_slice(&4u32.to_le_bytes());
        let image = elf_image(
            0x100_0000,
            &[segment(0x100_0000, &[0x90; 64], 64)],
            Some(&note),
        );
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::LoadKernel { .. })
        ));
    }

    #[test]
    fn pvh_note_too_short_for_a_32_bit_entry_is_refused() {
        let mem = guest_memory(RAM);
        let note = elf_note(b"Xen\0", 18, &[0x10, 0x00]);
        let image = elf_image(
            0x100_0000,
            &[segment(0x100_0000, &[0x90; 64], 64)],
            Some(&note),
        );
        assert!(matches!(
            load_image(&mem, &image),
            Err(BootError::LoadKernel { .. })
        ));
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
