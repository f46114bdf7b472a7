//! The Xen PVH boot ABI: `struct hvm_start_info` (version 1), its module list and memory map.
//!
//! Layout from `xen/include/public/arch-x86/hvm/start_info.h`; all fields little-endian.

use vm_memory::GuestMemoryMmap;

use crate::bytes::{put_u32, put_u64};
use crate::layout::{
    CMDLINE_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR,
};
use crate::{guest, BootError, E820Entry};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub(crate) const START_MAGIC: u32 = 0x336e_c578;
/// The structure version that has the memory map fields.
const START_INFO_VERSION: u32 = 1;
/// Size of `hvm_start_info` version 1.
pub(crate) const START_INFO_SIZE: usize = 56;
/// Size of one `hvm_modlist_entry`.
const MODLIST_ENTRY_SIZE: usize = 32;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: usize = 24;

/// Offsets in `hvm_start_info`.
mod off {
    pub(super) const MAGIC: usize = 0;
    pub(super) const VERSION: usize = 4;
    pub(super) const FLAGS: usize = 8;
    pub(super) const NR_MODULES: usize = 12;
    pub(super) const MODLIST_PADDR: usize = 16;
    pub(super) const CMDLINE_PADDR: usize = 24;
    pub(super) const RSDP_PADDR: usize = 32;
    pub(super) const MEMMAP_PADDR: usize = 40;
    pub(super) const MEMMAP_ENTRIES: usize = 48;
}

/// The most memory map entries that fit between the memory map and the zero page.
const MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_ADDR - PVH_MEMMAP_ADDR) as usize) / MEMMAP_ENTRY_SIZE;

/// The `hvm_start_info` bytes for a memory map of `memmap_entries` entries.
pub(crate) fn start_info(has_initrd: bool, memmap_entries: usize) -> [u8; START_INFO_SIZE] {
    let mut info = [0u8; START_INFO_SIZE];
    put_u32(&mut info, off::MAGIC, START_MAGIC);
    put_u32(&mut info, off::VERSION, START_INFO_VERSION);
    put_u32(&mut info, off::FLAGS, 0);
    put_u32(&mut info, off::NR_MODULES, u32::from(has_initrd));
    put_u64(
        &mut info,
        off::MODLIST_PADDR,
        if has_initrd { PVH_MODLIST_ADDR } else { 0 },
    );
    put_u64(&mut info, off::CMDLINE_PADDR, CMDLINE_ADDR);
    put_u64(&mut info, off::RSDP_PADDR, 0);
    put_u64(&mut info, off::MEMMAP_PADDR, PVH_MEMMAP_ADDR);
    // Bounded by MEMMAP_MAX_ENTRIES, far below u32::MAX.
    put_u32(&mut info, off::MEMMAP_ENTRIES, memmap_entries as u32);
    info
}

/// One `hvm_modlist_entry` for the initrd (no module command line).
fn module_entry(addr: u64, size: u64) -> [u8; MODLIST_ENTRY_SIZE] {
    let mut entry = [0u8; MODLIST_ENTRY_SIZE];
    put_u64(&mut entry, 0, addr);
    put_u64(&mut entry, 8, size);
    entry
}

/// The `hvm_memmap_table_entry` array.
fn memmap(e820: &[E820Entry]) -> Vec<u8> {
    let mut bytes = vec![0u8; e820.len() * MEMMAP_ENTRY_SIZE];
    for (i, entry) in e820.iter().enumerate() {
        let off = i * MEMMAP_ENTRY_SIZE;
        put_u64(&mut bytes, off, entry.addr);
        put_u64(&mut bytes, off + 8, entry.size);
        put_u32(&mut bytes, off + 16, entry.kind);
    }
    bytes
}

/// Writes `hvm_start_info`, the module list (if there is an initrd) and the memory map.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> Result<(), BootError> {
    let e820 = &e820[..e820.len().min(MEMMAP_MAX_ENTRIES)];
    if let Some((addr, size)) = initrd {
        guest::write(
            mem,
            PVH_MODLIST_ADDR,
            &module_entry(addr, size),
            "PVH module list",
        )?;
    }
    guest::write(mem, PVH_MEMMAP_ADDR, &memmap(e820), "PVH memory map")?;
    let info = start_info(initrd.is_some(), e820.len());
    guest::write(mem, PVH_START_INFO_ADDR, &info, "PVH start info")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820_map;
    use crate::test_util::{guest_memory, read_u32, read_u64, HOLE, RAM};

    #[test]
    fn start_info_has_magic_version_cmdline_and_memmap() {
        let mem = guest_memory(RAM);
        write(&mem, None, &e820_map(RAM, HOLE)).unwrap();
        let base = PVH_START_INFO_ADDR;
        assert_eq!(read_u32(&mem, base), 0x336e_c578);
        assert_eq!(read_u32(&mem, base + 4), 1);
        assert_eq!(read_u32(&mem, base + 8), 0);
        assert_eq!(read_u32(&mem, base + 12), 0);
        assert_eq!(read_u64(&mem, base + 16), 0);
        assert_eq!(read_u64(&mem, base + 24), 0x20000);
        assert_eq!(read_u64(&mem, base + 32), 0);
        assert_eq!(read_u64(&mem, base + 40), 0x6100);
        assert_eq!(read_u32(&mem, base + 48), 3);
    }

    #[test]
    fn memmap_entries_are_addr_size_type_and_reserved() {
        let mem = guest_memory(RAM);
        write(&mem, None, &e820_map(RAM, HOLE)).unwrap();
        let entry = |i: u64| {
            let at = PVH_MEMMAP_ADDR + i * 24;
            (
                read_u64(&mem, at),
                read_u64(&mem, at + 8),
                read_u32(&mem, at + 16),
                read_u32(&mem, at + 20),
            )
        };
        assert_eq!(entry(0), (0, 0x9fc00, 1, 0));
        assert_eq!(entry(1), (0x9fc00, 0x60400, 2, 0));
        assert_eq!(entry(2), (0x10_0000, RAM - 0x10_0000, 1, 0));
    }

    #[test]
    fn initrd_becomes_the_one_module() {
        let mem = guest_memory(RAM);
        write(&mem, Some((0x300_0000, 0x1234)), &e820_map(RAM, HOLE)).unwrap();
        assert_eq!(read_u32(&mem, PVH_START_INFO_ADDR + 12), 1);
        assert_eq!(read_u64(&mem, PVH_START_INFO_ADDR + 16), 0x6040);
        assert_eq!(read_u64(&mem, PVH_MODLIST_ADDR), 0x300_0000);
        assert_eq!(read_u64(&mem, PVH_MODLIST_ADDR + 8), 0x1234);
        assert_eq!(read_u64(&mem, PVH_MODLIST_ADDR + 16), 0);
        assert_eq!(read_u64(&mem, PVH_MODLIST_ADDR + 24), 0);
    }
}
