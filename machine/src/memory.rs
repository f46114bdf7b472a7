//! Guest memory: the RAM region and its aliases in the memory space, and the listener that keeps
//! KVM's memory slots in step with the flat view.
#![allow(unsafe_code)]

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START, MMIO_SPACE_SIZE};
use address_space::{
    AddressSpace, AddressSpaceError, FlatRange, FlatTarget, Listener, ListenerError, RamOptions,
    Region, SpaceKind,
};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;

/// Builds the memory space with `ram_size` bytes of RAM: one RAM region shown through an alias
/// below the MMIO hole and, for what does not fit there, a second alias from 4 GiB.
pub fn build_memory_space(
    ram_size: u64,
    options: &RamOptions,
    vm: Arc<VmFd>,
) -> Result<Arc<AddressSpace>, AddressSpaceError> {
    let root = Region::container("system", MMIO_SPACE_SIZE);
    let ram = Region::ram_with("ram", ram_size, options)?;
    let low = ram_size.min(MMIO_HOLE_START);
    root.add_subregion(Region::alias("ram-below-4g", &ram, 0, low), 0, 0)?;
    if ram_size > low {
        let high = Region::alias("ram-above-4g", &ram, low, ram_size - low);
        root.add_subregion(high, MMIO_HOLE_END, 0)?;
    }
    let space = AddressSpace::new(SpaceKind::Memory, root)?;
    space.register_listener(Box::new(KvmSlotListener::new(vm)))?;
    Ok(Arc::new(space))
}

/// Gives the heap memory that setup used and freed (command-line parsing, kernel loading,
/// device construction) back to the host, so an idle VMM keeps only what it still holds.
pub fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointer; it only returns free heap pages to the kernel
    // (brk, madvise) and is safe to call at any time from any thread.
    let released = unsafe { libc::malloc_trim(0) };
    log::debug!("malloc_trim: memory released: {}", released != 0);
}

extern "C" {
    /// The first byte of the executable's first segment (GNU ld and lld define it).
    static __executable_start: u8;
    /// The end of `.text` (GNU ld and lld define it).
    static etext: u8;
}

/// Unmaps the binary's read-only pages (headers, `.rodata`, `.text`) from this process after
/// setup: they are clean pages of the executable file, still in the page cache, and those the
/// running VM needs (the event loop, the exit paths) come back with minor faults as they are
/// used. Setup alone touches code spread over the whole binary, and the kernel's fault-around
/// maps 64 KiB runs around each touch, so without this an idle VMM keeps nearly all of
/// `.text` resident (RSS grows with every feature, used or not).
pub fn release_startup_code() {
    const PAGE: usize = 4096;
    // Taking the addresses of the linker-defined symbols reads nothing.
    let (start, end) = (
        std::ptr::addr_of!(__executable_start) as usize,
        std::ptr::addr_of!(etext) as usize,
    );
    let start = start & !(PAGE - 1);
    let len = (end - start + PAGE - 1) & !(PAGE - 1);
    // SAFETY: [start, start + len) is the executable's own read-only mapping (headers,
    // rodata, text: never written, so MADV_DONTNEED discards nothing but page-table entries);
    // every page of it is refaulted from the file when touched again.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    log::debug!("startup code released: {} KiB, rc {rc}", len >> 10);
}

/// Mirrors every RAM range of the flat view into a KVM memory slot.
pub struct KvmSlotListener {
    vm: Arc<VmFd>,
    /// Slot number -> the range it holds (kept so its RAM stays mapped), `None` when free.
    slots: Vec<Option<FlatRange>>,
}

impl KvmSlotListener {
    /// A listener for `vm` with no slots in use.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            slots: Vec::new(),
        }
    }

    fn free_slot(&mut self) -> u32 {
        let index = match self.slots.iter().position(Option::is_none) {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        index as u32
    }

    fn set_slot(&self, region: kvm_userspace_memory_region) -> Result<(), ListenerError> {
        // SAFETY: KVM requires `userspace_addr` to stay mapped while the slot exists and slots
        // not to overlap. The address is a RAM range of the flat view; `self.slots` keeps a
        // clone of that range, whose `Arc<RamBlock>` keeps the mapping alive until
        // `region_removed` has deleted this slot. Slots mirror flat-view ranges, which never
        // overlap. A zero size deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|err| {
            ListenerError::new(format!(
                "KVM_SET_USER_MEMORY_REGION slot {}: {err}",
                region.slot
            ))
        })
    }
}

impl Listener for KvmSlotListener {
    fn region_added(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
        let FlatTarget::Ram { host_addr, .. } = &range.target else {
            return Ok(());
        };
        let slot = self.free_slot();
        self.set_slot(kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: range.base,
            memory_size: range.size,
            userspace_addr: *host_addr,
        })?;
        self.slots[slot as usize] = Some(range.clone());
        log::debug!(
            "KVM slot {slot}: {:#x}+{:#x} ({})",
            range.base,
            range.size,
            range.name
        );
        Ok(())
    }

    fn region_removed(&mut self, range: &FlatRange) -> Result<(), ListenerError> {
        if !matches!(range.target, FlatTarget::Ram { .. }) {
            return Ok(());
        }
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|r| r.base == range.base))
        else {
            return Ok(());
        };
        self.set_slot(kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: range.base,
            memory_size: 0,
            userspace_addr: 0,
        })?;
        self.slots[slot] = None;
        Ok(())
    }
}
