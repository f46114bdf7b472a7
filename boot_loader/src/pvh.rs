//! The Xen PVH boot ABI: `struct hvm_start_info` (version 1), its module list and memory map,
//! in linux-loader's layouts of `xen/include/public/arch-x86/hvm/start_info.h`.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, GuestMemoryMmap};

use crate::layout::{
    CMDLINE_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR,
};
use crate::{guest, BootError, E820Entry};

/// The structure version that has the memory map fields.
const START_INFO_VERSION: u32 = 1;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: usize = std::mem::size_of::<hvm_memmap_table_entry>();

/// The most memory map entries that fit between the memory map and the zero page.
const MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_ADDR - PVH_MEMMAP_ADDR) as usize) / MEMMAP_ENTRY_SIZE;

// The start info and the module list must not run into what follows them.
const _: () = {
    assert!(PVH_START_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64 <= PVH_MODLIST_ADDR);
    assert!(PVH_MODLIST_ADDR + std::mem::size_of::<hvm_modlist_entry>() as u64 <= PVH_MEMMAP_ADDR);
};

/// The `hvm_start_info` for a memory map of `memmap_entries` entries.
fn start_info(has_initrd: bool, memmap_entries: usize) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        nr_modules: u32::from(has_initrd),
        modlist_paddr: if has_initrd { PVH_MODLIST_ADDR } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        // Bounded by MEMMAP_MAX_ENTRIES, far below u32::MAX.
        memmap_entries: memmap_entries as u32,
        ..Default::default()
    }
}

/// The `hvm_memmap_table_entry` array, as bytes.
fn memmap(e820: &[E820Entry]) -> Vec<u8> {
    e820.iter()
        .flat_map(|entry| {
            let entry = hvm_memmap_table_entry {
                addr: entry.addr,
                size: entry.size,
                type_: entry.kind,
                reserved: 0,
            };
            entry.as_slice().to_vec()
        })
        .collect()
}

/// Writes `hvm_start_info`, the module list (if there is an initrd) and the memory map.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> Result<(), BootError> {
    let e820 = &e820[..e820.len().min(MEMMAP_MAX_ENTRIES)];
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        guest::write(mem, PVH_MODLIST_ADDR, module.as_slice(), "PVH module list")?;
    }
    guest::write(mem, PVH_MEMMAP_ADDR, &memmap(e820), "PVH memory map")?;
    let info = start_info(initrd.is_some(), e820.len());
    guest::write(mem, PVH_START_INFO_ADDR, info.as_slice(), "PVH start info")
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
