//! Reading the kernel image, telling its format from its content, and loading a raw image.

use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::GuestMemoryMmap;

use crate::layout::{FOUR_GIB, RAW_KERNEL_ADDR};
use crate::{bzimage, elf, guest, BootError, CpuMode, KernelFormat};

/// ELF magic at offset 0.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the bzImage setup header magic.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The bzImage setup header magic, "HdrS".
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// How many leading bytes must be text for a file to count as text.
const TEXT_PROBE_LEN: usize = 512;

/// The guest-physical range kernels may be loaded into.
pub(crate) struct LoadWindow {
    /// First usable byte (1 MiB).
    pub(crate) start: u64,
    /// End (exclusive) of the RAM below the MMIO hole.
    pub(crate) end: u64,
}

impl LoadWindow {
    /// Checks that `[addr, addr + len)` lies inside the window.
    pub(crate) fn check(&self, path: &Path, addr: u64, len: u64) -> Result<(), BootError> {
        match addr.checked_add(len) {
            Some(end) if addr >= self.start && end <= self.end => Ok(()),
            _ => Err(BootError::KernelOutsideRam {
                path: path.to_path_buf(),
                start: addr,
                end: addr.saturating_add(len),
                ram_start: self.start,
                ram_end: self.end,
            }),
        }
    }
}

/// A kernel loaded into guest memory.
#[derive(Debug)]
pub(crate) struct LoadedKernel {
    /// Its format.
    pub(crate) format: KernelFormat,
    /// Its entry point.
    pub(crate) entry: u64,
    /// First byte it occupies.
    pub(crate) start: u64,
    /// End (exclusive) of the memory it occupies or needs while starting.
    pub(crate) end: u64,
    /// The setup header of a bzImage, as the zero page gets it.
    pub(crate) setup: Option<setup_header>,
}

impl LoadedKernel {
    /// The mode vCPU 0 enters it in.
    pub(crate) fn mode(&self) -> CpuMode {
        match self.format {
            KernelFormat::Elf | KernelFormat::Raw => CpuMode::Long64,
            KernelFormat::ElfPvh | KernelFormat::BzImage => CpuMode::Protected32,
        }
    }

    /// The command line length limit the kernel itself sets, if any.
    pub(crate) fn cmdline_limit(&self) -> Option<u32> {
        self.setup.map(|s| s.cmdline_size)
    }

    /// The address the initrd must end below, given the end of low RAM.
    pub(crate) fn initrd_limit(&self, low_ram_end: u64) -> u64 {
        let limit = low_ram_end.min(FOUR_GIB);
        match self.setup {
            Some(s) => limit.min(u64::from(s.initrd_addr_max) + 1),
            None => limit,
        }
    }
}

/// The formats told apart by content.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Elf,
    BzImage,
    Raw,
}

/// Whether the leading bytes are all printable ASCII or whitespace.
fn looks_like_text(image: &[u8]) -> bool {
    image
        .iter()
        .take(TEXT_PROBE_LEN)
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
}

/// Tells the format from the content; refuses empty and text files.
fn classify(path: &Path, image: &[u8]) -> Result<Kind, BootError> {
    let not_a_kernel = |reason| BootError::NotAKernel {
        path: path.to_path_buf(),
        reason,
    };
    if image.is_empty() {
        return Err(not_a_kernel("the file is empty"));
    }
    if image.starts_with(ELF_MAGIC) {
        return Ok(Kind::Elf);
    }
    let magic = image.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + BZIMAGE_MAGIC.len());
    if magic == Some(BZIMAGE_MAGIC) {
        return Ok(Kind::BzImage);
    }
    if looks_like_text(image) {
        return Err(not_a_kernel("it looks like a text file"));
    }
    Ok(Kind::Raw)
}

/// Loads a raw `vmlinux.bin` at [`RAW_KERNEL_ADDR`], entered there in 64-bit mode.
fn load_raw(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    window: &LoadWindow,
) -> Result<LoadedKernel, BootError> {
    let len = image.len() as u64;
    window.check(path, RAW_KERNEL_ADDR, len)?;
    guest::write(mem, RAW_KERNEL_ADDR, image, "raw kernel")?;
    Ok(LoadedKernel {
        format: KernelFormat::Raw,
        entry: RAW_KERNEL_ADDR,
        start: RAW_KERNEL_ADDR,
        end: RAW_KERNEL_ADDR + len,
        setup: None,
    })
}

/// Reads the kernel at `path` and loads it into `window` according to its format.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    window: &LoadWindow,
) -> Result<LoadedKernel, BootError> {
    let image = std::fs::read(path).map_err(|source| BootError::ReadKernel {
        path: path.to_path_buf(),
        source,
    })?;
    match classify(path, &image)? {
        Kind::Elf => elf::load(mem, path, &image, window),
        Kind::BzImage => bzimage::load(mem, path, &image, window),
        Kind::Raw => load_raw(mem, path, &image, window),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HIGH_MEMORY_START;
    use crate::test_util::{guest_memory, read_guest, TempFile, RAM};

    const WINDOW: LoadWindow = LoadWindow {
        start: HIGH_MEMORY_START,
        end: RAM,
    };

    fn load_bytes(tag: &str, contents: &[u8]) -> Result<LoadedKernel, BootError> {
        let mem = guest_memory(RAM);
        let file = TempFile::new(tag, contents);
        load(&mem, file.path(), &WINDOW)
    }

    #[test]
    fn raw_image_is_loaded_and_entered_at_16_mib() {
        let mem = guest_memory(RAM);
        let image: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8 | 0x80).collect();
        let file = TempFile::new("raw", &image);
        let kernel = load(&mem, file.path(), &WINDOW).unwrap();
        assert_eq!(kernel.format, KernelFormat::Raw);
        assert_eq!(
            (kernel.entry, kernel.start, kernel.end),
            (0x100_0000, 0x100_0000, 0x100_0000 + 3000)
        );
        assert_eq!(kernel.mode(), CpuMode::Long64);
        assert_eq!(read_guest(&mem, 0x100_0000, 3000), image);
    }

    #[test]
    fn raw_image_too_big_for_ram_is_refused() {
        let mem = guest_memory(RAM);
        let small = LoadWindow {
            start: HIGH_MEMORY_START,
            end: 0x100_0000 + 16,
        };
        let file = TempFile::new("raw-big", &[0x90; 17]);
        let err = load(&mem, file.path(), &small).unwrap_err();
        assert!(matches!(err, BootError::KernelOutsideRam { .. }));
    }

    #[test]
    fn empty_file_is_not_a_kernel() {
        let err = load_bytes("empty", &[]).err().unwrap();
        assert!(matches!(
            err,
            BootError::NotAKernel {
                reason: "the file is empty",
                ..
            }
        ));
        assert!(err.to_string().contains("-empty"), "{err}");
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let text = "#!/bin/sh\necho this is not a kernel\n".repeat(40);
        let err = load_bytes("script", text.as_bytes()).err().unwrap();
        assert!(matches!(err, BootError::NotAKernel { .. }));
        assert!(err.to_string().contains("-script"), "{err}");
    }

    #[test]
    fn binary_after_the_text_probe_still_counts_as_text() {
        let mut contents = vec![b'a'; 512];
        contents.push(0);
        assert!(load_bytes("text-then-nul", &contents).is_err());
    }

    #[test]
    fn unreadable_kernel_is_a_read_error_naming_the_file() {
        let mem = guest_memory(RAM);
        let path = std::env::temp_dir().join("nimbus-boot-loader-no-such-kernel");
        let err = load(&mem, &path, &WINDOW).err().unwrap();
        assert!(matches!(err, BootError::ReadKernel { .. }));
        assert!(err.to_string().contains("no-such-kernel"));
    }

    #[test]
    fn formats_are_told_apart_by_content() {
        let path = Path::new("k");
        assert_eq!(classify(path, b"\x7fELF\x02\x01").unwrap(), Kind::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(classify(path, &bz).unwrap(), Kind::BzImage);
        assert_eq!(
            classify(path, &[0x48, 0x31, 0xc0, 0x00]).unwrap(),
            Kind::Raw
        );
    }

    #[test]
    fn initrd_limit_honours_the_bzimage_maximum() {
        let mut kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0,
            start: 0,
            end: 0,
            setup: None,
        };
        assert_eq!(kernel.initrd_limit(RAM), RAM);
        kernel.setup = Some(setup_header {
            initrd_addr_max: 0x1ff_ffff,
            cmdline_size: 255,
            ..Default::default()
        });
        assert_eq!(kernel.initrd_limit(RAM), 0x200_0000);
        assert_eq!(kernel.cmdline_limit(), Some(255));
    }
}
