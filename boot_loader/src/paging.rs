//! Identity page tables for the 64-bit entry: the first 4 GiB mapped with 2 MiB pages.

use vm_memory::GuestMemoryMmap;

use crate::layout::{PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};
use crate::{guest, BootError};

/// Page-table entry bit: present.
const PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
const WRITABLE: u64 = 1 << 1;
/// Page-directory entry bit: maps a 2 MiB page.
const PAGE_SIZE: u64 = 1 << 7;
/// Entries per table.
const ENTRIES: u64 = 512;
/// Size of a table.
const TABLE_SIZE: u64 = ENTRIES * 8;
/// Size of a large page.
const LARGE_PAGE: u64 = 2 << 20;

/// A page-table page built from its entries.
fn table(entries: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut bytes: Vec<u8> = entries.flat_map(u64::to_le_bytes).collect();
    bytes.resize(TABLE_SIZE as usize, 0);
    bytes
}

/// Writes the PML4, the PDPT and four page directories identity-mapping `[0, 4 GiB)`.
pub(crate) fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let pml4 = table(std::iter::once(PDPT_ADDR | PRESENT | WRITABLE));
    guest::write(mem, PML4_ADDR, &pml4, "PML4")?;
    let pdpt = table((0..PD_COUNT).map(|i| (PD_ADDR + i * TABLE_SIZE) | PRESENT | WRITABLE));
    guest::write(mem, PDPT_ADDR, &pdpt, "PDPT")?;
    for i in 0..PD_COUNT {
        let first_page = i * ENTRIES;
        let pd = table(
            (first_page..first_page + ENTRIES)
                .map(|page| (page * LARGE_PAGE) | PRESENT | WRITABLE | PAGE_SIZE),
        );
        guest::write(mem, PD_ADDR + i * TABLE_SIZE, &pd, "page directory")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, read_u64};

    /// Walks the tables in guest memory like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, vaddr: u64) -> Option<u64> {
        let pml4e = read_u64(mem, PML4_ADDR + (vaddr >> 39 & 0x1ff) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = read_u64(mem, (pml4e & !0xfff) + (vaddr >> 30 & 0x1ff) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read_u64(mem, (pdpte & !0xfff) + (vaddr >> 21 & 0x1ff) * 8);
        assert_eq!(pde & 0x83, 0x83, "2 MiB page, present, writable");
        Some((pde & !0x1f_ffff) | (vaddr & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_are_identity_mapped_with_large_pages() {
        let mem = guest_memory(4 << 20);
        write_identity_map(&mem).unwrap();
        for page in 0..2048u64 {
            let addr = page * LARGE_PAGE + 0x1234;
            assert_eq!(translate(&mem, addr), Some(addr));
        }
        assert_eq!(translate(&mem, 0xffff_ffff), Some(0xffff_ffff));
    }

    #[test]
    fn addresses_above_four_gib_are_not_mapped() {
        let mem = guest_memory(4 << 20);
        write_identity_map(&mem).unwrap();
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
    }
}
