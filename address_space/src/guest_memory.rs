//! The vm-memory view of the RAM in a flat view, for the boot loader and virtio queues.

use vm_memory::GuestMemoryMmap;

use crate::error::AddressSpaceError;
use crate::flat_view::{FlatTarget, FlatView};

/// A `GuestMemoryMmap` with one region per RAM range of `view`, at the range's base address.
///
/// vm-memory can only borrow page-aligned parts of a host mapping, so a range that starts in
/// the middle of a page of its RAM block appears from the next page boundary on (and not at all
/// if it ends before that). The bytes left out are still reachable through the address space's
/// `read` and `write`.
pub(crate) fn build(view: &FlatView) -> Result<GuestMemoryMmap, AddressSpaceError> {
    let mut regions = Vec::new();
    for range in view.ranges() {
        let FlatTarget::Ram { region, offset, .. } = &range.target else {
            continue;
        };
        match region.guest_region(*offset, range.size, range.base)? {
            Some(piece) => regions.push(piece),
            None => log::warn!(
                "RAM range {:?} at {:#x} is not page aligned; left out of guest memory",
                range.name,
                range.base
            ),
        }
    }
    if regions.is_empty() {
        return Ok(GuestMemoryMmap::new());
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|source| AddressSpaceError::BuildGuestMemory { source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_mapping::page_size;
    use crate::region::Region;
    use crate::test_util::{device, ram};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    fn starts_and_lengths(memory: &GuestMemoryMmap) -> Vec<(u64, u64)> {
        memory
            .iter()
            .map(|region| (region.start_addr().0, region.len()))
            .collect()
    }

    #[test]
    fn io_ranges_are_not_guest_memory() {
        let root = Region::container("root", 0x10000);
        root.add_subregion(device("io", 0x100), 0, 0).expect("add");
        let memory = build(&FlatView::render(&root)).expect("build");
        assert_eq!(memory.num_regions(), 0);
    }

    #[test]
    fn ram_split_by_io_becomes_two_regions_over_the_same_bytes() {
        let page = page_size();
        let root = Region::container("root", 0x100000);
        let mem = ram("ram", 4 * page);
        root.add_subregion(mem.clone(), 0x10000, 0).expect("add");
        root.add_subregion(device("hole", page), 0x10000 + page, 1)
            .expect("add");
        let memory = build(&FlatView::render(&root)).expect("build");
        let expected = [(0x10000, page), (0x10000 + 2 * page, 2 * page)];
        assert_eq!(starts_and_lengths(&memory), expected);
        let at = GuestAddress(0x10000 + 3 * page);
        memory.write_obj(0xabcd_u16, at).expect("write");
        let mut back = [0_u8; 2];
        let block = mem.ram_block().expect("ram");
        assert!(block.read(3 * page, &mut back));
        assert_eq!(u16::from_le_bytes(back), 0xabcd);
    }

    #[test]
    fn unaligned_ram_piece_starts_at_the_next_page() {
        let page = page_size();
        let root = Region::container("root", 0x100000);
        root.add_subregion(ram("ram", 2 * page), 0, 0).expect("add");
        root.add_subregion(device("dev", 0x10), 0, 1).expect("add");
        let memory = build(&FlatView::render(&root)).expect("build");
        assert_eq!(starts_and_lengths(&memory), [(page, page)]);
    }
}
