//! The host mapping behind a RAM region, and the vm-memory pieces cut out of it.
//!
//! This is the only module of the crate that uses `unsafe`: vm-memory can describe a part of an
//! existing mapping only through a raw pointer. The module keeps the invariant that makes this
//! sound on its own: the owning mapping is never unmapped while a piece exists.

use std::sync::{Arc, Mutex, Weak};

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::MmapRegion;

/// Page size assumed when the host does not tell (it always does on Linux).
const FALLBACK_PAGE_SIZE: u64 = 4096;

/// A piece handed out earlier, remembered so that the owner can outlive it.
struct Piece {
    offset: usize,
    len: usize,
    region: Weak<MmapRegion>,
}

/// An anonymous, private, zero-filled host mapping and the pieces of it given to vm-memory.
pub(crate) struct HostMapping {
    owner: Arc<MmapRegion>,
    pieces: Mutex<Vec<Piece>>,
}

impl HostMapping {
    /// Wraps a freshly made mapping of a whole RAM block.
    pub(crate) fn from_region(owner: MmapRegion) -> Self {
        HostMapping {
            owner: Arc::new(owner),
            pieces: Mutex::new(Vec::new()),
        }
    }

    /// The owning mapping of the whole block.
    pub(crate) fn owner(&self) -> &Arc<MmapRegion> {
        &self.owner
    }

    /// A vm-memory region over `[offset, offset + len)` of this mapping.
    ///
    /// `offset` must be a multiple of the host page size (vm-memory's requirement for
    /// borrowed mappings). The whole mapping is returned as is; other pieces are cached while
    /// somebody still holds them.
    pub(crate) fn piece(
        &self,
        offset: usize,
        len: usize,
    ) -> Result<Arc<MmapRegion>, MmapRegionError> {
        if offset == 0 && len == self.owner.size() {
            return Ok(Arc::clone(&self.owner));
        }
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.owner.size());
        if !fits || len == 0 {
            return Err(MmapRegionError::InvalidOffsetLength);
        }
        let mut pieces = crate::sync::lock(&self.pieces);
        pieces.retain(|piece| piece.region.strong_count() > 0);
        let cached = pieces
            .iter()
            .filter(|piece| piece.offset == offset && piece.len == len)
            .find_map(|piece| piece.region.upgrade());
        if let Some(region) = cached {
            return Ok(region);
        }
        let region = Arc::new(self.borrow_range(offset, len)?);
        pieces.push(Piece {
            offset,
            len,
            region: Arc::downgrade(&region),
        });
        Ok(region)
    }

    /// Builds a non-owning `MmapRegion` over a checked range of the owner.
    fn borrow_range(&self, offset: usize, len: usize) -> Result<MmapRegion, MmapRegionError> {
        let start = self.owner.as_ptr().wrapping_add(offset);
        // SAFETY: `with_raw_mmap_pointer` requires `start..start + len` to lie within a valid
        // mapping present in the process. `piece` checked `offset + len <= owner.size()`, and
        // the owner mapping is present now. It stays present for as long as the returned region
        // lives: `piece` records a `Weak` to every region built here, and `Drop` leaks the owner
        // instead of unmapping it if any of them is still alive. The region does not own the
        // memory, so it never unmaps it itself.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(start) };
        builder
            .with_mmap_prot(self.owner.prot())
            .with_mmap_flags(self.owner.flags())
            .build()
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        let pieces = crate::sync::get_mut(&mut self.pieces);
        // A strong count of zero is final: nobody else holds these `Weak`s to upgrade them.
        let alive = pieces
            .iter()
            .filter(|piece| piece.region.strong_count() > 0)
            .count();
        if alive > 0 {
            log::warn!(
                "{alive} piece(s) of a {:#x}-byte RAM mapping outlive their region; leaking it",
                self.owner.size()
            );
            std::mem::forget(Arc::clone(&self.owner));
        }
    }
}

/// The host page size in bytes.
pub(crate) fn page_size() -> u64 {
    // SAFETY: `sysconf` only reads a configuration value and `_SC_PAGESIZE` is a valid name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|size| size.is_power_of_two())
        .unwrap_or(FALLBACK_PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::VolatileMemory;

    fn page() -> usize {
        usize::try_from(page_size()).expect("page size fits usize")
    }

    #[test]
    fn piece_shares_bytes_with_the_owner() {
        let mapping = HostMapping::from_region(MmapRegion::new(4 * page()).expect("map"));
        let piece = mapping.piece(page(), page()).expect("piece");
        piece.get_slice(3, 1).expect("slice").copy_from(&[0x5a_u8]);
        let mut byte = [0_u8];
        mapping
            .owner()
            .get_slice(page() + 3, 1)
            .expect("slice")
            .copy_to(&mut byte);
        assert_eq!(byte, [0x5a]);
    }

    #[test]
    fn whole_range_piece_is_the_owner_itself() {
        let mapping = HostMapping::from_region(MmapRegion::new(2 * page()).expect("map"));
        let piece = mapping.piece(0, 2 * page()).expect("piece");
        assert!(Arc::ptr_eq(&piece, mapping.owner()));
    }

    #[test]
    fn live_piece_is_reused_for_the_same_range() {
        let mapping = HostMapping::from_region(MmapRegion::new(4 * page()).expect("map"));
        let first = mapping.piece(page(), page()).expect("piece");
        let second = mapping.piece(page(), page()).expect("piece");
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn piece_past_the_end_is_refused() {
        let mapping = HostMapping::from_region(MmapRegion::new(2 * page()).expect("map"));
        assert!(mapping.piece(page(), 2 * page()).is_err());
    }

    #[test]
    fn unaligned_piece_is_refused() {
        let mapping = HostMapping::from_region(MmapRegion::new(2 * page()).expect("map"));
        assert!(mapping.piece(1, page()).is_err());
    }

    #[test]
    fn piece_stays_readable_after_the_mapping_is_dropped() {
        let mapping = HostMapping::from_region(MmapRegion::new(2 * page()).expect("map"));
        let piece = mapping.piece(page(), page()).expect("piece");
        piece.get_slice(0, 1).expect("slice").copy_from(&[7_u8]);
        drop(mapping);
        let mut byte = [0_u8];
        piece.get_slice(0, 1).expect("slice").copy_to(&mut byte);
        assert_eq!(byte, [7]);
    }
}
