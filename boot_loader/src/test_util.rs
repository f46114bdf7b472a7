//! Helpers shared by the unit tests: guest memory, temporary files and synthetic kernels.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{guest_ram_ranges, BootConfig};

/// The MMIO hole every test machine has.
pub(crate) const HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);
/// RAM of the test machine unless a test needs another size.
pub(crate) const RAM: u64 = 64 << 20;

/// Guest memory of `ram_size` bytes laid out around [`HOLE`].
pub(crate) fn guest_memory(ram_size: u64) -> GuestMemoryMmap {
    let ranges: Vec<_> = guest_ram_ranges(ram_size, HOLE)
        .into_iter()
        .map(|(base, size)| (GuestAddress(base), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// `len` bytes of guest memory from `addr`.
pub(crate) fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// The little-endian `u16` at `addr`.
pub(crate) fn read_u16(mem: &GuestMemoryMmap, addr: u64) -> u16 {
    u16::from_le_bytes(read_guest(mem, addr, 2).try_into().unwrap())
}

/// The little-endian `u32` at `addr`.
pub(crate) fn read_u32(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    u32::from_le_bytes(read_guest(mem, addr, 4).try_into().unwrap())
}

/// The little-endian `u64` at `addr`.
pub(crate) fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
    u64::from_le_bytes(read_guest(mem, addr, 8).try_into().unwrap())
}

/// A file in the temporary directory, removed when dropped.
pub(crate) struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Creates a uniquely named file holding `contents`.
    pub(crate) fn new(tag: &str, contents: &[u8]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nimbus-boot-loader-{}-{n}-{tag}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A boot configuration for the test machine.
pub(crate) fn config<'a>(kernel: &'a Path, initrd: Option<&'a Path>) -> BootConfig<'a> {
    BootConfig {
        kernel,
        initrd,
        cmdline: "console=ttyS0 reboot=k",
        ram_size: RAM,
        mmio_hole: HOLE,
        cpus: 2,
        ioapic_addr: 0xfec0_0000,
        lapic_addr: 0xfee0_0000,
    }
}

/// One loadable segment of a synthetic ELF image.
pub(crate) struct ElfSegment {
    /// Physical load address.
    pub(crate) paddr: u64,
    /// File contents.
    pub(crate) data: Vec<u8>,
    /// Size in memory (at least `data.len()`).
    pub(crate) memsz: u64,
}

/// Offset of the program headers in synthetic ELF images.
pub(crate) const ELF_PHOFF: usize = 64;
/// Size of one program header.
pub(crate) const ELF_PHENTSIZE: usize = 56;

/// A 64-bit x86_64 ELF executable with `segments` and, if given, one PT_NOTE segment.
pub(crate) fn elf_image(entry: u64, segments: &[ElfSegment], note: Option<&[u8]>) -> Vec<u8> {
    let phnum = segments.len() + usize::from(note.is_some());
    let mut image = vec![0u8; ELF_PHOFF + phnum * ELF_PHENTSIZE];
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // ELFDATA2LSB
    image[6] = 1; // EV_CURRENT
    image[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    image[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
    image[0x20..0x28].copy_from_slice(&(ELF_PHOFF as u64).to_le_bytes());
    image[0x36..0x38].copy_from_slice(&(ELF_PHENTSIZE as u16).to_le_bytes());
    image[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut headers = Vec::new();
    for seg in segments {
        headers.push((1u32, image.len(), seg.paddr, seg.data.len(), seg.memsz));
        image.extend_from_slice(&seg.data);
    }
    if let Some(note) = note {
        headers.push((4u32, image.len(), 0, note.len(), note.len() as u64));
        image.extend_from_slice(note);
    }
    for (i, (p_type, offset, paddr, filesz, memsz)) in headers.into_iter().enumerate() {
        let ph = ELF_PHOFF + i * ELF_PHENTSIZE;
        image[ph..ph + 4].copy_from_slice(&p_type.to_le_bytes());
        image[ph + 8..ph + 16].copy_from_slice(&(offset as u64).to_le_bytes());
        image[ph + 0x10..ph + 0x18].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 0x18..ph + 0x20].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 0x20..ph + 0x28].copy_from_slice(&(filesz as u64).to_le_bytes());
        image[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
    }
    image
}

/// An ELF note with the given name, type and descriptor, padded to 4 bytes.
pub(crate) fn elf_note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&(name.len() as u32).to_le_bytes());
    note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    note.extend_from_slice(&n_type.to_le_bytes());
    note.extend_from_slice(name);
    note.resize(note.len().next_multiple_of(4), 0);
    note.extend_from_slice(desc);
    note.resize(note.len().next_multiple_of(4), 0);
    note
}

/// A bzImage with the given protocol version, loadflags and setup sectors, followed by `pm` as
/// the protected-mode kernel.
pub(crate) fn bzimage(version: u16, loadflags: u8, setup_sects: u8, pm: &[u8]) -> Vec<u8> {
    let sects = if setup_sects == 0 { 4 } else { setup_sects };
    let mut image = vec![0u8; (usize::from(sects) + 1) * 512];
    image[0x1f1] = setup_sects;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x200] = 0xeb; // jmp short
    image[0x201] = 0x66; // header ends at 0x268
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    image[0x211] = loadflags;
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(pm);
    image
}
