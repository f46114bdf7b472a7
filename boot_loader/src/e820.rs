//! The guest's physical memory map, as both the zero page and PVH describe it.

use crate::layout::{low_ram_end, EBDA_START, HIGH_MEMORY_START};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

impl E820Entry {
    fn ram(addr: u64, end: u64) -> Self {
        Self {
            addr,
            size: end - addr,
            kind: E820_RAM,
        }
    }
}

/// The memory map: RAM `[0, 0x9fc00)`, reserved `[0x9fc00, 0x100000)`, RAM from 1 MiB to the
/// end of RAM or the MMIO hole, and the RAM beyond the hole's start moved above its end.
pub fn e820_map(ram_size: u64, mmio_hole: (u64, u64)) -> Vec<E820Entry> {
    let (hole_start, hole_end) = mmio_hole;
    let low_end = low_ram_end(ram_size, mmio_hole);
    let mut map = vec![
        E820Entry::ram(0, EBDA_START.min(low_end)),
        E820Entry {
            addr: EBDA_START,
            size: HIGH_MEMORY_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    if low_end > HIGH_MEMORY_START {
        map.push(E820Entry::ram(HIGH_MEMORY_START, low_end));
    }
    if ram_size > hole_start {
        map.push(E820Entry::ram(hole_end, hole_end + (ram_size - hole_start)));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);

    fn entry(addr: u64, size: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn small_guest_has_low_ram_reserved_bios_area_and_high_ram() {
        assert_eq!(
            e820_map(128 << 20, HOLE),
            vec![
                entry(0, 0x9fc00, E820_RAM),
                entry(0x9fc00, 0x60400, E820_RESERVED),
                entry(0x10_0000, (128 << 20) - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn guest_of_exactly_three_gib_has_nothing_above_the_hole() {
        assert_eq!(
            e820_map(3 << 30, HOLE),
            vec![
                entry(0, 0x9fc00, E820_RAM),
                entry(0x9fc00, 0x60400, E820_RESERVED),
                entry(0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn guest_of_four_gib_has_one_gib_above_the_hole() {
        assert_eq!(
            e820_map(4 << 30, HOLE),
            vec![
                entry(0, 0x9fc00, E820_RAM),
                entry(0x9fc00, 0x60400, E820_RESERVED),
                entry(0x10_0000, 0xc000_0000 - 0x10_0000, E820_RAM),
                entry(0x1_0000_0000, 1 << 30, E820_RAM),
            ]
        );
    }
}
