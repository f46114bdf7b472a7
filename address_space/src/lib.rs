//! Guest address spaces: a tree of regions rendered into a flat view, listeners kept in step
//! with it, and dispatch of guest port I/O and MMIO accesses.
//!
//! The crate owns
//! - the [`Region`] tree: RAM (anonymous host memory), device I/O ([`IoHandler`]), containers
//!   and aliases, with priorities between overlapping siblings;
//! - the [`FlatView`] a tree renders into on [`AddressSpace::commit`]: sorted, non-overlapping
//!   [`FlatRange`]s;
//! - the [`Listener`]s told what each commit removed, then what it added;
//! - dispatch of guest accesses ([`AddressSpace::read`], [`AddressSpace::write`]) and the
//!   vm-memory [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap) of the RAM
//!   ([`AddressSpace::memory`]) for the boot loader and virtio queues.
//!
//! It must not know about KVM (the memory-slot listener lives in `machine`) nor about any
//! particular device: devices are opaque [`IoHandler`]s that never learn where they are mapped.
//!
//! vm-memory can only borrow page-aligned parts of a mapping: a RAM range of the view that
//! starts in the middle of a page of its RAM region appears in [`AddressSpace::memory`] only
//! from the next page boundary on. Map RAM at page granularity to avoid this.

#![deny(unsafe_code)]

mod address_space;
#[allow(unsafe_code)]
mod discard;
mod error;
mod flat_view;
mod guest_memory;
#[allow(unsafe_code)]
mod host_mapping;
mod listener;
mod ram;
mod ram_backing;
mod region;
pub mod sync;
#[cfg(test)]
mod test_util;

pub use address_space::{AddressSpace, SpaceKind, IO_SPACE_SIZE};
pub use discard::{DiscardError, DiscardHow, RamDiscard, DISCARD_PAGE};
pub use error::{AddressSpaceError, ListenerError};
pub use flat_view::{FlatRange, FlatTarget, FlatView};
pub use listener::Listener;
pub use ram::RamBlock;
pub use ram_backing::{RamBacking, RamBackingError, RamOptions};
pub use region::{IoHandler, Region, SharedIo};
/// The vm-memory crate this crate's guest memory types come from.
pub use vm_memory;
