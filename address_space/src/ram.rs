//! RAM blocks: the host memory behind RAM regions.

use std::fmt;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion, VolatileMemory};

use crate::error::AddressSpaceError;
use crate::host_mapping::{page_size, HostMapping};
use crate::ram_backing::{self, RamOptions};

/// The anonymous, private, zero-filled host memory of one RAM region.
///
/// Flat views refer to it through an `Arc`, so memory seen by a view (or by a listener that
/// keeps a [`FlatRange`](crate::FlatRange)) stays mapped while that view is alive.
pub struct RamBlock {
    name: String,
    mapping: HostMapping,
}

impl RamBlock {
    /// Maps `size` bytes of host memory, set up as `options` ask, for the RAM region `name`.
    pub(crate) fn new(
        name: &str,
        size: u64,
        options: &RamOptions,
    ) -> Result<Self, AddressSpaceError> {
        let bad_size = || AddressSpaceError::BadRamSize {
            name: name.to_owned(),
            size,
        };
        let len = usize::try_from(size).map_err(|_| bad_size())?;
        if len == 0 {
            return Err(bad_size());
        }
        let mapping =
            ram_backing::map(len, options).map_err(|source| AddressSpaceError::MapRam {
                name: name.to_owned(),
                size,
                source,
            })?;
        let mapping = HostMapping::from_region(mapping);
        Ok(RamBlock {
            name: name.to_owned(),
            mapping,
        })
    }

    /// Name of the RAM region this block belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size of the block in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.owner().size() as u64
    }

    /// Host virtual address of the first byte of the block.
    pub fn host_addr(&self) -> u64 {
        self.mapping.owner().as_ptr() as u64
    }

    /// The file behind a shared mapping (memfd or hugetlbfs), for back ends that map guest RAM.
    pub fn backing_fd(&self) -> Option<std::os::fd::RawFd> {
        ram_backing::backing_fd(self.mapping.owner())
    }

    /// The vm-memory mapping of the whole block.
    pub fn mmap(&self) -> &Arc<MmapRegion> {
        self.mapping.owner()
    }

    /// Copies `data.len()` bytes at `offset` into `data`; false if that is outside the block.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        match self.mapping.owner().get_slice(offset, data.len()) {
            Ok(slice) => slice.copy_to(data) == data.len(),
            Err(_) => false,
        }
    }

    /// Copies `data` to `offset`; false (and nothing written) if that is outside the block.
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        match self.mapping.owner().get_slice(offset, data.len()) {
            Ok(slice) => {
                slice.copy_from(data);
                true
            }
            Err(_) => false,
        }
    }

    /// A vm-memory guest region showing `[offset, offset + size)` of the block at `guest_base`.
    ///
    /// vm-memory can only borrow page-aligned parts of a mapping, so when `offset` is not page
    /// aligned the piece starts at the next page boundary (and the guest base moves with it);
    /// `None` if no whole page boundary falls inside the range.
    pub(crate) fn guest_region(
        &self,
        offset: u64,
        size: u64,
        guest_base: u64,
    ) -> Result<Option<GuestRegionMmap>, AddressSpaceError> {
        let skip = offset.next_multiple_of(page_size()) - offset;
        if skip >= size {
            return Ok(None);
        }
        let piece_error = |source| AddressSpaceError::RamPiece {
            name: self.name.clone(),
            offset,
            size,
            source,
        };
        let start = usize::try_from(offset + skip)
            .map_err(|_| piece_error(vm_memory::mmap::MmapRegionError::InvalidOffsetLength))?;
        let len = usize::try_from(size - skip)
            .map_err(|_| piece_error(vm_memory::mmap::MmapRegionError::InvalidOffsetLength))?;
        let piece = self.mapping.piece(start, len).map_err(piece_error)?;
        Ok(GuestRegionMmap::with_arc(
            piece,
            GuestAddress(guest_base + skip),
        ))
    }
}

impl fmt::Debug for RamBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamBlock")
            .field("name", &self.name)
            .field("size", &self.size())
            .field("host_addr", &format_args!("{:#x}", self.host_addr()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryRegion;

    #[test]
    fn new_block_is_zero_filled() {
        let block = RamBlock::new("ram", 0x2000, &RamOptions::default()).expect("map");
        let mut data = [0xaa_u8; 16];
        assert!(block.read(0x1ff0, &mut data));
        assert_eq!(data, [0; 16]);
    }

    #[test]
    fn written_bytes_read_back() {
        let block = RamBlock::new("ram", 0x1000, &RamOptions::default()).expect("map");
        assert!(block.write(0x10, &[1, 2, 3]));
        let mut data = [0_u8; 3];
        assert!(block.read(0x10, &mut data));
        assert_eq!(data, [1, 2, 3]);
    }

    #[test]
    fn access_past_the_end_is_refused() {
        let block = RamBlock::new("ram", 0x1000, &RamOptions::default()).expect("map");
        let mut data = [0_u8; 2];
        assert!(!block.read(0xfff, &mut data));
        assert!(!block.write(0xfff, &data));
    }

    #[test]
    fn zero_sized_block_is_refused() {
        let error = RamBlock::new("empty", 0, &RamOptions::default()).expect_err("size 0");
        assert!(matches!(error, AddressSpaceError::BadRamSize { .. }));
    }

    #[test]
    fn unaligned_guest_region_starts_at_the_next_page() {
        let page = page_size();
        let block = RamBlock::new("ram", 4 * page, &RamOptions::default()).expect("map");
        let region = block
            .guest_region(page + 0x10, 2 * page, 0x10_0000)
            .expect("piece")
            .expect("some bytes are aligned");
        assert_eq!(region.start_addr(), GuestAddress(0x10_0000 + page - 0x10));
        assert_eq!(region.len(), page + 0x10);
        assert_eq!(region.as_ptr() as u64, block.host_addr() + 2 * page);
    }

    #[test]
    fn guest_region_inside_one_page_is_left_out() {
        let block = RamBlock::new("ram", 2 * page_size(), &RamOptions::default()).expect("map");
        let region = block.guest_region(0x10, 0x100, 0).expect("piece");
        assert!(region.is_none());
    }
}
