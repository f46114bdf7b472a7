//! Prepares guest memory for booting an x86_64 Linux (or PVH) kernel.
//!
//! The boot loader owns everything the guest finds in memory at its first instruction: the
//! kernel (ELF `vmlinux` with or without a Xen PVH note, bzImage, or raw `vmlinux.bin`), the
//! initrd, the command line, the zero page with its E820 map or the PVH start info, the MP
//! table, the GDT and IDT, and identity page tables. It returns plain data — the format, the
//! initial vCPU state, where things went — for the machine to program into vCPU 0.
//!
//! It must not know about KVM, devices or the event loop: it only writes into a
//! `GuestMemoryMmap`, so every byte it produces can be checked by unit tests. rust-vmm's
//! linux-loader copies ELF segments and bzImages into memory and gives the `boot_params` and
//! PVH `hvm_start_info` layouts; format detection, raw images, the E820 map, the MP table, the
//! GDT and the page tables are this crate's own, written as little-endian bytes at documented
//! offsets. There is no unsafe code: linux-loader's layouts are `ByteValued`, so they are
//! read and written as plain bytes. Where things live is in [`layout`].

#![forbid(unsafe_code)]
// Tests may unwrap: a panic is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bytes;
mod bzimage;
mod cmdline;
mod cpu;
mod e820;
mod elf;
mod error;
mod guest;
mod initrd;
mod kernel;
pub mod layout;
mod mptable;
mod paging;
mod pvh;
#[cfg(test)]
mod test_util;
mod zero_page;

use std::path::Path;

use vm_memory::GuestMemoryMmap;

pub use cpu::{
    CpuMode, EntryState, Segment, CODE_SELECTOR, DATA_SELECTOR, EFER_LMA, EFER_LME,
    RFLAGS_RESERVED, TSS_SELECTOR, X86_CR0_ET, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE,
};
pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use error::BootError;
pub use layout::guest_ram_ranges;
pub use mptable::MAX_CPUS;

use kernel::{LoadWindow, LoadedKernel};
use layout::{
    low_ram_end, CMDLINE_ADDR, FOUR_GIB, HIGH_MEMORY_START, MIN_RAM_SIZE, PVH_START_INFO_ADDR,
    ZERO_PAGE_ADDR,
};

/// What to boot and on what machine.
#[derive(Debug, Clone, Copy)]
pub struct BootConfig<'a> {
    /// The kernel image.
    pub kernel: &'a Path,
    /// The initial ramdisk, if any.
    pub initrd: Option<&'a Path>,
    /// The final command line (the machine has already appended its own entries).
    pub cmdline: &'a str,
    /// Total guest RAM in bytes.
    pub ram_size: u64,
    /// `[start, end)` below 4 GiB without RAM; RAM beyond `start` continues at `end`.
    pub mmio_hole: (u64, u64),
    /// Number of vCPUs; their local APIC ids are `0..cpus`.
    pub cpus: u8,
    /// The IOAPIC's MMIO address.
    pub ioapic_addr: u32,
    /// The local APICs' MMIO address.
    pub lapic_addr: u32,
}

/// The kernel image formats, told apart by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF64 `vmlinux`, entered in 64-bit mode at `e_entry` with RSI = zero page.
    Elf,
    /// ELF64 with a Xen PVH entry note, entered in 32-bit mode with RBX = `hvm_start_info`.
    ElfPvh,
    /// Raw `vmlinux.bin`, loaded and entered in 64-bit mode at 16 MiB.
    Raw,
    /// bzImage, entered in 32-bit mode at `code32_start` with RSI = zero page.
    BzImage,
}

/// Where everything went and how vCPU 0 starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The kernel's format.
    pub format: KernelFormat,
    /// vCPU 0's initial state.
    pub entry: EntryState,
    /// First byte of the loaded kernel.
    pub kernel_start: u64,
    /// End (exclusive) of the memory the kernel occupies or needs while starting.
    pub kernel_end: u64,
    /// The initrd's `(addr, size)`.
    pub initrd: Option<(u64, u64)>,
    /// The memory map handed to the guest.
    pub e820: Vec<E820Entry>,
    /// The boot information handed to the kernel: the zero page, or for PVH the
    /// `hvm_start_info`.
    pub boot_params_addr: u64,
}

/// Refuses configurations the loader cannot lay out.
fn validate(cfg: &BootConfig) -> Result<(), BootError> {
    mptable::check_cpus(cfg.cpus)?;
    let (start, end) = cfg.mmio_hole;
    if start < MIN_RAM_SIZE || start > end || end > FOUR_GIB {
        return Err(BootError::InvalidMmioHole {
            start,
            end,
            min: MIN_RAM_SIZE,
        });
    }
    if cfg.ram_size < MIN_RAM_SIZE {
        return Err(BootError::RamTooSmall {
            ram_size: cfg.ram_size,
            min: MIN_RAM_SIZE,
        });
    }
    Ok(())
}

/// Loads the initrd, if any, between the kernel and its limit.
fn load_initrd(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    kernel: &LoadedKernel,
    low_end: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    cfg.initrd
        .map(|path| initrd::load(mem, path, kernel.end, kernel.initrd_limit(low_end)))
        .transpose()
}

/// Writes the zero page or the PVH start info; returns its address.
fn write_boot_params(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> Result<u64, BootError> {
    if kernel.format == KernelFormat::ElfPvh {
        pvh::write(mem, initrd, e820)?;
        return Ok(PVH_START_INFO_ADDR);
    }
    let zp = zero_page::ZeroPage {
        setup_header: kernel.setup.as_ref(),
        cmdline_len: cfg.cmdline.len(),
        initrd,
        e820,
    };
    zero_page::write(mem, &zp)?;
    Ok(ZERO_PAGE_ADDR)
}

/// The initial vCPU state for `kernel` with its boot information at `boot_params_addr`.
fn entry_state(kernel: &LoadedKernel, boot_params_addr: u64) -> EntryState {
    let (rsi, rbx) = match kernel.format {
        KernelFormat::ElfPvh => (0, boot_params_addr),
        _ => (boot_params_addr, 0),
    };
    cpu::entry_state(kernel.mode(), kernel.entry, rsi, rbx)
}

/// Loads the kernel, initrd and command line and writes every boot structure into `mem`.
///
/// `mem` must hold the RAM of [`guest_ram_ranges`]`(cfg.ram_size, cfg.mmio_hole)`.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<BootInfo, BootError> {
    validate(cfg)?;
    let low_end = low_ram_end(cfg.ram_size, cfg.mmio_hole);
    let window = LoadWindow {
        start: HIGH_MEMORY_START,
        end: low_end,
    };
    let kernel = kernel::load(mem, cfg.kernel, &window)?;
    cmdline::write(mem, cfg.cmdline, cmdline::max_len(kernel.cmdline_limit()))?;
    let initrd = load_initrd(mem, cfg, &kernel, low_end)?;
    let e820 = e820_map(cfg.ram_size, cfg.mmio_hole);
    let boot_params_addr = write_boot_params(mem, cfg, &kernel, initrd, &e820)?;
    let entry = entry_state(&kernel, boot_params_addr);
    cpu::write_gdt_idt(mem, &entry)?;
    paging::write_identity_map(mem)?;
    mptable::write(mem, cfg.cpus, cfg.ioapic_addr, cfg.lapic_addr)?;
    log::info!(
        "loaded {:?} kernel {:?} at [{:#x}, {:#x}), entry {:#x}, command line at {CMDLINE_ADDR:#x}",
        kernel.format,
        cfg.kernel,
        kernel.start,
        kernel.end,
        kernel.entry
    );
    Ok(BootInfo {
        format: kernel.format,
        entry,
        kernel_start: kernel.start,
        kernel_end: kernel.end,
        initrd,
        e820,
        boot_params_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{
        bzimage, config, elf_image, elf_note, guest_memory, read_guest, read_u16, read_u32,
        ElfSegment, TempFile, RAM,
    };

    fn vmlinux(note: Option<&[u8]>) -> Vec<u8> {
        let seg = ElfSegment {
            paddr: 0x100_0000,
            data: vec![0x90; 256],
            memsz: 0x10_0000,
        };
        elf_image(0x100_0000, &[seg], note)
    }

    #[test]
    fn elf_kernel_starts_in_long_mode_with_the_zero_page_in_rsi() {
        let mem = guest_memory(RAM);
        let kernel = TempFile::new("e2e-vmlinux", &vmlinux(None));
        let info = load(&mem, &config(kernel.path(), None)).unwrap();
        assert_eq!(info.format, KernelFormat::Elf);
        assert_eq!(info.entry.mode, CpuMode::Long64);
        assert_eq!(
            (info.entry.rip, info.entry.rsi, info.entry.rbx),
            (0x100_0000, 0x7000, 0)
        );
        assert_eq!(
            (info.kernel_start, info.kernel_end),
            (0x100_0000, 0x110_0000)
        );
        assert_eq!(info.boot_params_addr, 0x7000);
        assert_eq!(read_guest(&mem, 0x7202, 4), b"HdrS");
        assert_eq!(read_u32(&mem, 0x7228), 0x20000);
        assert_eq!(read_guest(&mem, 0x7000 + 0x1e8, 1), [3]);
        assert_eq!(read_guest(&mem, 0x20000, 23), b"console=ttyS0 reboot=k\0");
        assert_eq!(read_guest(&mem, 0x9fc00, 4), b"_MP_");
        assert_eq!(info.e820, e820_map(RAM, crate::test_util::HOLE));
    }

    #[test]
    fn pvh_kernel_starts_in_protected_mode_with_start_info_in_rbx() {
        let mem = guest_memory(RAM);
        let note = elf_note(b"Xen\0", 18, &0x100_0010u32.to_le_bytes());
        let kernel = TempFile::new("e2e-pvh", &vmlinux(Some(&note)));
        let initrd = TempFile::new("e2e-pvh-initrd", &[7; 100]);
        let info = load(&mem, &config(kernel.path(), Some(initrd.path()))).unwrap();
        assert_eq!(info.format, KernelFormat::ElfPvh);
        assert_eq!(info.entry.mode, CpuMode::Protected32);
        assert_eq!(
            (info.entry.rip, info.entry.rbx, info.entry.rsi),
            (0x100_0010, 0x6000, 0)
        );
        assert_eq!(
            (info.entry.cr0, info.entry.cr4, info.entry.efer),
            (0x11, 0, 0)
        );
        assert_eq!(info.boot_params_addr, 0x6000);
        assert_eq!(read_u32(&mem, 0x6000), 0x336e_c578);
        assert_eq!(read_u32(&mem, 0x600c), 1);
        assert_eq!(info.initrd, Some((RAM - 0x1000, 100)));
    }

    #[test]
    fn bzimage_starts_in_protected_mode_with_its_header_in_the_zero_page() {
        let mem = guest_memory(RAM);
        let kernel = TempFile::new("e2e-bzimage", &bzimage(0x020f, 0x01, 4, &[0xf4; 512]));
        let info = load(&mem, &config(kernel.path(), None)).unwrap();
        assert_eq!(info.format, KernelFormat::BzImage);
        assert_eq!(info.entry.mode, CpuMode::Protected32);
        assert_eq!(
            (info.entry.rip, info.entry.rsi, info.entry.rbx),
            (0x10_0000, 0x7000, 0)
        );
        assert_eq!(info.entry.code.selector, 0x10);
        assert_eq!(info.entry.data.selector, 0x18);
        assert_eq!(read_u16(&mem, 0x7206), 0x020f);
        assert_eq!(read_guest(&mem, 0x7210, 2), [0xff, 0x81]);
        assert_eq!(read_u32(&mem, 0x7238), 2048);
        assert_eq!(read_u32(&mem, 0x7228), 0x20000);
    }

    #[test]
    fn bzimage_refuses_a_command_line_longer_than_its_cmdline_size() {
        let mem = guest_memory(RAM);
        let mut image = bzimage(0x020f, 0x01, 4, &[0xf4; 512]);
        image[0x238..0x23c].copy_from_slice(&8u32.to_le_bytes());
        let kernel = TempFile::new("e2e-bzimage-short-cmdline", &image);
        let err = load(&mem, &config(kernel.path(), None)).unwrap_err();
        assert!(matches!(err, BootError::CmdlineTooLong { len: 22, max: 8 }));
    }

    #[test]
    fn bzimage_initrd_ends_below_initrd_addr_max() {
        let mem = guest_memory(RAM);
        let mut image = bzimage(0x020f, 0x01, 4, &[0xf4; 512]);
        image[0x22c..0x230].copy_from_slice(&0x1ff_ffffu32.to_le_bytes());
        let kernel = TempFile::new("e2e-bzimage-initrd-max", &image);
        let initrd = TempFile::new("e2e-bzimage-initrd", &[1; 0x1800]);
        let info = load(&mem, &config(kernel.path(), Some(initrd.path()))).unwrap();
        assert_eq!(info.initrd, Some((0x200_0000 - 0x2000, 0x1800)));
    }

    #[test]
    fn raw_kernel_initrd_is_announced_in_the_zero_page() {
        let mem = guest_memory(RAM);
        let kernel = TempFile::new("e2e-raw", &[0x90, 0x00, 0xff, 0x31]);
        let initrd = TempFile::new("e2e-raw-initrd", &[5; 0x3000]);
        let info = load(&mem, &config(kernel.path(), Some(initrd.path()))).unwrap();
        assert_eq!(info.format, KernelFormat::Raw);
        assert_eq!(info.entry.rip, 0x100_0000);
        let (addr, size) = info.initrd.unwrap();
        assert_eq!((addr, size), (RAM - 0x3000, 0x3000));
        assert_eq!(u64::from(read_u32(&mem, 0x7218)), addr);
        assert_eq!(u64::from(read_u32(&mem, 0x721c)), size);
        assert_eq!(read_guest(&mem, addr, 4), [5; 4]);
    }

    #[test]
    fn initrd_that_does_not_fit_above_the_kernel_is_refused() {
        let mem = guest_memory(RAM);
        let kernel = TempFile::new("e2e-fit-vmlinux", &vmlinux(None));
        let initrd = TempFile::new("e2e-fit-initrd", &vec![1; (RAM - 0x110_0000) as usize + 1]);
        let err = load(&mem, &config(kernel.path(), Some(initrd.path()))).unwrap_err();
        assert!(matches!(
            err,
            BootError::InitrdTooLarge {
                floor: 0x110_0000,
                limit: RAM,
                ..
            }
        ));
    }

    #[test]
    fn too_many_cpus_are_refused_before_anything_is_read() {
        let mem = guest_memory(RAM);
        let missing = Path::new("/nonexistent/kernel");
        let cfg = BootConfig {
            cpus: MAX_CPUS + 1,
            ..config(missing, None)
        };
        assert!(matches!(
            load(&mem, &cfg),
            Err(BootError::MpTableTooLarge { .. })
        ));
    }

    #[test]
    fn mmio_hole_above_four_gib_is_refused() {
        let mem = guest_memory(RAM);
        let cfg = BootConfig {
            mmio_hole: (0xc000_0000, 0x2_0000_0000),
            ..config(Path::new("k"), None)
        };
        assert!(matches!(
            load(&mem, &cfg),
            Err(BootError::InvalidMmioHole { .. })
        ));
    }

    #[test]
    fn error_names_the_kernel_file() {
        let mem = guest_memory(RAM);
        let kernel = TempFile::new("e2e-notes.txt", b"just some notes\n");
        let err = load(&mem, &config(kernel.path(), None)).unwrap_err();
        assert!(err.to_string().contains("e2e-notes.txt"), "{err}");
    }
}
