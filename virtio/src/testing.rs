//! A test "driver": lays out split virtqueues in a `GuestMemoryMmap` and drives the virtio-mmio
//! registers the way Linux's virtio_mmio driver does.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::device::to_u16;
use crate::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// Size of the test guest's RAM.
pub(crate) const MEM_SIZE: u64 = 0x10_0000;
/// Descriptor flag: the chain goes on at `next`.
pub(crate) const F_NEXT: u16 = to_u16(VRING_DESC_F_NEXT);
/// Descriptor flag: the device writes this buffer.
pub(crate) const F_WRITE: u16 = to_u16(VRING_DESC_F_WRITE);

/// One page-aligned RAM range at guest-physical 0.
pub(crate) fn memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap())
}

/// A 4-byte register read.
pub(crate) fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// A 4-byte register write.
pub(crate) fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Linux's probe up to FEATURES_OK: reset, ACKNOWLEDGE, DRIVER, read the device features,
/// write back `pick(device_features)`, FEATURES_OK. Returns the status read back.
pub(crate) fn negotiate(t: &mut MmioTransport, pick: impl Fn(u64) -> u64) -> u32 {
    wr(t, 0x70, 0);
    wr(t, 0x70, STATUS_ACKNOWLEDGE);
    wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, 0x14, 1);
    let high = u64::from(rd(t, 0x10));
    wr(t, 0x14, 0);
    let features = (high << 32) | u64::from(rd(t, 0x10));
    let accepted = pick(features);
    wr(t, 0x24, 1);
    wr(t, 0x20, (accepted >> 32) as u32);
    wr(t, 0x24, 0);
    wr(t, 0x20, accepted as u32);
    let status = rd(t, 0x70);
    wr(t, 0x70, status | STATUS_FEATURES_OK);
    rd(t, 0x70)
}

/// Linux's whole probe: negotiation taking every offered feature, queue setup, DRIVER_OK.
pub(crate) fn probe(t: &mut MmioTransport, queues: &[&TestQueue]) -> u32 {
    let status = negotiate(t, |f| f);
    assert_ne!(status & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
    for (index, queue) in queues.iter().enumerate() {
        queue.setup(t, index as u32);
    }
    let status = rd(t, 0x70);
    wr(t, 0x70, status | STATUS_DRIVER_OK);
    rd(t, 0x70)
}

/// A split virtqueue laid out by the test driver.
pub(crate) struct TestQueue {
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
    next_free: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` entries with its descriptor table at `base` and rings right after.
    pub(crate) fn new(size: u16, base: u64) -> TestQueue {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        TestQueue {
            size,
            desc: base,
            avail,
            used,
            next_free: 0,
            avail_idx: 0,
        }
    }

    /// Zeroes the ring headers, as a driver allocating fresh ring memory would.
    pub(crate) fn clear_rings(&self, mem: &GuestMemoryMmap) {
        mem.write_obj(0u32, GuestAddress(self.avail)).unwrap();
        mem.write_obj(0u32, GuestAddress(self.used)).unwrap();
    }

    /// Linux's vm_setup_vq for queue `index`.
    pub(crate) fn setup(&self, t: &mut MmioTransport, index: u32) {
        wr(t, 0x30, index);
        assert_eq!(rd(t, 0x44), 0, "queue already ready");
        assert!(rd(t, 0x34) >= u32::from(self.size), "QueueNumMax too small");
        wr(t, 0x38, u32::from(self.size));
        for (low, addr) in [(0x80, self.desc), (0x90, self.avail), (0xa0, self.used)] {
            wr(t, low, addr as u32);
            wr(t, low + 4, (addr >> 32) as u32);
        }
        wr(t, 0x44, 1);
    }

    /// Writes descriptor `index`.
    pub(crate) fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&bytes, at).unwrap();
    }

    /// Puts `head` in the available ring and publishes it.
    pub(crate) fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Adds a chain of `(addr, len, device_writable)` buffers from the next free descriptors
    /// and publishes it. Returns the head index.
    pub(crate) fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_free;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_free;
            let next = (index + 1) % self.size;
            let mut flags = if writable { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.write_desc(mem, index, addr, len, flags, next);
            self.next_free = next;
        }
        self.publish(mem, head);
        head
    }

    /// The used ring's index.
    pub(crate) fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring element `i`: (head id, bytes written).
    pub(crate) fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id = mem.read_obj(GuestAddress(at)).unwrap();
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}
