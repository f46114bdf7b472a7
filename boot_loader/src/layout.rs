//! Where the boot loader puts things in guest-physical memory, and which guest-physical ranges
//! hold RAM.
//!
//! Everything below 1 MiB is laid out here; the kernel goes at or above [`HIGH_MEMORY_START`]
//! and the initrd at the top of the RAM below the MMIO hole.
//!
//! ```text
//! 0x0000_0500  GDT (6 descriptors: null, null, code 0x10, data 0x18, TSS 0x20 in two slots)
//! 0x0000_0530  IDT (one zero descriptor, limit 7)
//! 0x0000_1000  .. 0x5000 kept free: test guests put their SMP trampoline there
//! 0x0000_6000  PVH hvm_start_info, module list at 0x6040, memory map from 0x6100
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  top of the boot stack (grows down)
//! 0x0000_9000  PML4, PDPT at 0xa000, four page directories at 0xb000..0xf000
//! 0x0002_0000  kernel command line (at most 4 KiB including its NUL)
//! 0x0009_fc00  MP floating pointer and configuration table (EBDA, up to 0xa0000)
//! 0x0010_0000  high memory: bzImage protected-mode kernel, ELF segments
//! 0x0100_0000  raw vmlinux.bin
//! ```

/// The GDT: six 8-byte descriptors.
pub const GDT_ADDR: u64 = 0x500;
/// Number of 8-byte slots in the GDT (the 64-bit TSS descriptor takes two).
pub const GDT_ENTRIES: usize = 6;
/// The IDT: a single zero descriptor, just after the GDT.
pub const IDT_ADDR: u64 = 0x530;
/// Start of the range kept free of boot structures for a guest's SMP trampoline.
pub const TRAMPOLINE_FREE_START: u64 = 0x1000;
/// End (exclusive) of the range kept free for a guest's SMP trampoline.
pub const TRAMPOLINE_FREE_END: u64 = 0x5000;
/// The PVH `hvm_start_info` structure (handed to the kernel in `%ebx`).
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// The PVH module list (one entry: the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// The PVH memory map, up to the zero page.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// The Linux zero page (`struct boot_params`, 4 KiB).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: usize = 0x1000;
/// Initial stack pointer of vCPU 0.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// The page-map level-4 table.
pub const PML4_ADDR: u64 = 0x9000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// The first of four consecutive page directories (one per GiB, 2 MiB pages).
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories, mapping 4 GiB together.
pub const PD_COUNT: u64 = 4;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line, including its terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1000;
/// The MP floating pointer, followed by the MP configuration table.
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// End (exclusive) of the room for the MP table.
pub const MPTABLE_END: u64 = 0xa0000;
/// Start of the reserved area below 1 MiB (EBDA, VGA hole, BIOS); also where RAM ends below it.
pub const EBDA_START: u64 = MPTABLE_ADDR;
/// Start of high memory: kernels are loaded at or above this address.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// Where a raw `vmlinux.bin` is loaded and entered.
pub const RAW_KERNEL_ADDR: u64 = 0x100_0000;
/// Kernel alignment announced in the zero page when no bzImage header provides one.
pub const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The initrd's start is aligned down to this.
pub const INITRD_ALIGN: u64 = 0x1000;
/// 4 GiB: the MMIO hole must end at or below it.
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The least guest RAM the loader accepts.
pub const MIN_RAM_SIZE: u64 = 2 << 20;

/// The guest-physical RAM ranges as `(base, size)`: `[0, min(ram, hole.start))`, and the rest of
/// the RAM from `hole.end` on when it does not fit below the hole.
pub fn guest_ram_ranges(ram_size: u64, mmio_hole: (u64, u64)) -> Vec<(u64, u64)> {
    let (hole_start, hole_end) = mmio_hole;
    let mut ranges = vec![(0, ram_size.min(hole_start))];
    if ram_size > hole_start {
        ranges.push((hole_end, ram_size - hole_start));
    }
    ranges
}

// The structures below 1 MiB must not overlap one another; checked at compile time.
const _: () = {
    assert!(GDT_ADDR + 8 * GDT_ENTRIES as u64 <= IDT_ADDR);
    assert!(IDT_ADDR + 8 <= TRAMPOLINE_FREE_START);
    assert!(TRAMPOLINE_FREE_END <= PVH_START_INFO_ADDR);
    assert!(PVH_MEMMAP_ADDR < ZERO_PAGE_ADDR);
    assert!(ZERO_PAGE_ADDR + ZERO_PAGE_SIZE as u64 <= BOOT_STACK_TOP);
    assert!(BOOT_STACK_TOP < PML4_ADDR);
    assert!(PD_ADDR + PD_COUNT * 0x1000 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= MPTABLE_ADDR);
    assert!(MPTABLE_END <= HIGH_MEMORY_START);
};

/// End (exclusive) of the RAM below the MMIO hole.
pub(crate) fn low_ram_end(ram_size: u64, mmio_hole: (u64, u64)) -> u64 {
    ram_size.min(mmio_hole.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLE: (u64, u64) = (0xc000_0000, FOUR_GIB);

    #[test]
    fn ram_below_the_hole_is_one_range() {
        assert_eq!(guest_ram_ranges(128 << 20, HOLE), vec![(0, 128 << 20)]);
    }

    #[test]
    fn ram_filling_the_low_window_exactly_is_one_range() {
        assert_eq!(guest_ram_ranges(3 << 30, HOLE), vec![(0, 3 << 30)]);
    }

    #[test]
    fn ram_above_the_hole_start_continues_at_the_hole_end() {
        assert_eq!(
            guest_ram_ranges(4 << 30, HOLE),
            vec![(0, 3 << 30), (FOUR_GIB, 1 << 30)]
        );
    }
}
