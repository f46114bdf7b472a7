//! When a disk's back end is gone for good (it closed its socket and no `reconnect=` was
//! asked), Nimbus answers the guest's requests itself, each with VIRTIO_BLK_S_IOERR: a guest
//! sees I/O errors instead of requests that never end.
//!
//! - The requests the back end took and never answered: with an inflight region
//!   (INFLIGHT_SHMFD), exactly the heads it marked; without one, the chains between the used
//!   index and the available index, which is exact for a back end that answers in order (as
//!   qemu-storage-daemon does for one request at a time) and the best that can be known
//!   otherwise.
//! - Requests it never took, and every later one, are answered as they come.
//!
//! Only guest RAM is written, through checked accesses: a hostile chain (a loop, a table
//! outside RAM) ends the walk and still gets its head returned.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};

use super::setup::InflightQueue;

/// Most descriptors walked in one chain, indirect ones included.
const MAX_CHAIN: usize = 4096;

/// Answers with IOERR every request of `queue` the dead back end left, and those the guest
/// posted since: see the module doc. Returns how many were answered.
pub fn fail_abandoned(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    inflight: Option<InflightQueue>,
) -> usize {
    let (Ok(used), Ok(avail)) = (
        queue.used_idx(mem, Ordering::Acquire),
        queue.avail_idx(mem, Ordering::Acquire),
    ) else {
        return 0;
    };
    let (heads, taken) = match inflight {
        Some(region) => {
            let mut heads = region.heads;
            // The last answer reached the used ring but its flag was not cleared yet.
            if region.used_idx != used.0 {
                heads.retain(|&h| h != region.last_batch_head);
            }
            let taken = used + Wrapping(heads.len() as u16);
            (heads, taken)
        }
        None => {
            let heads = (0..(avail - used).0)
                .filter_map(|i| avail_entry(mem, queue, used + Wrapping(i)))
                .collect();
            (heads, avail)
        }
    };
    queue.set_next_used(used.0);
    let mut answered = 0;
    let size = queue.size();
    for head in heads.into_iter().filter(|&h| h < size) {
        answered += usize::from(fail_request(mem, queue, head));
    }
    queue.set_next_avail(taken.0);
    answered + fail_new(mem, queue)
}

/// Answers with IOERR the requests posted since the last call (at most a queue's worth).
pub fn fail_new(mem: &GuestMemoryMmap, queue: &mut Queue) -> usize {
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
        return 0;
    };
    let mut next = Wrapping(queue.next_avail());
    let mut answered = 0;
    while next != avail && answered < usize::from(queue.size()) {
        if let Some(head) = avail_entry(mem, queue, next) {
            answered += usize::from(fail_request(mem, queue, head));
        }
        next += Wrapping(1);
    }
    queue.set_next_avail(next.0);
    answered
}

/// The head at position `position` of the available ring.
fn avail_entry(mem: &GuestMemoryMmap, queue: &Queue, position: Wrapping<u16>) -> Option<u16> {
    let slot = u64::from(position.0 % queue.size());
    let addr = queue.avail_ring().checked_add(4 + 2 * slot)?;
    mem.read_obj::<u16>(GuestAddress(addr)).ok()
}

/// Writes IOERR into the status byte of `head`'s request and returns the chain to the guest.
fn fail_request(mem: &GuestMemoryMmap, queue: &mut Queue, head: u16) -> bool {
    if let Some(status) = status_byte(mem, queue, head) {
        let _ = mem.write_obj(VIRTIO_BLK_S_IOERR as u8, status);
    }
    queue.add_used(mem, head, 1).is_ok()
}

/// One descriptor as the guest wrote it.
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemoryMmap, table: u64, index: u16) -> Option<Desc> {
    let at = table.checked_add(16 * u64::from(index))?;
    let raw = mem.read_obj::<[u8; 16]>(GuestAddress(at)).ok()?;
    let bytes = |r: std::ops::Range<usize>| raw.get(r).unwrap_or(&[]).to_vec();
    Some(Desc {
        addr: u64::from_le_bytes(bytes(0..8).try_into().ok()?),
        len: u32::from_le_bytes(bytes(8..12).try_into().ok()?),
        flags: u16::from_le_bytes(bytes(12..14).try_into().ok()?),
        next: u16::from_le_bytes(bytes(14..16).try_into().ok()?),
    })
}

/// The last byte of the chain's last descriptor (virtio-blk's status), if it is the
/// device's to write.
fn status_byte(mem: &GuestMemoryMmap, queue: &Queue, head: u16) -> Option<GuestAddress> {
    let (mut table, mut table_len) = (queue.desc_table(), u32::from(queue.size()));
    let (mut index, mut indirect, mut last) = (head, false, None);
    for _ in 0..MAX_CHAIN {
        if u32::from(index) >= table_len {
            break;
        }
        let desc = read_desc(mem, table, index)?;
        if desc.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            if indirect {
                break;
            }
            (table, table_len, index, indirect) = (desc.addr, desc.len / 16, 0, true);
            continue;
        }
        let more = desc.flags & VRING_DESC_F_NEXT as u16 != 0;
        index = desc.next;
        last = Some(desc);
        if !more {
            break;
        }
    }
    let last = last?;
    if last.flags & VRING_DESC_F_WRITE as u16 == 0 || last.len == 0 {
        return None;
    }
    let at = last.addr.checked_add(u64::from(last.len) - 1)?;
    Some(GuestAddress(at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const STATUS: u64 = 0x8000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn queue(mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(8).unwrap();
        q.set_size(8);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_obj(raw, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    /// A two-descriptor request at `head`: header, then the status byte at STATUS + head.
    fn request(mem: &GuestMemoryMmap, head: u16) {
        desc(
            mem,
            DESC,
            head,
            0x9000,
            16,
            VRING_DESC_F_NEXT as u16,
            head + 1,
        );
        let status = STATUS + u64::from(head);
        desc(mem, DESC, head + 1, status, 1, VRING_DESC_F_WRITE as u16, 0);
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    }

    fn post(mem: &GuestMemoryMmap, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64))
                .unwrap();
        }
        mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn status(mem: &GuestMemoryMmap, head: u16) -> u8 {
        mem.read_obj(GuestAddress(STATUS + u64::from(head)))
            .unwrap()
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    #[test]
    fn requests_left_by_an_in_order_back_end_get_io_errors() {
        let mem = memory();
        let mut q = queue(&mem);
        for head in [0, 2, 4] {
            request(&mem, head);
        }
        post(&mem, &[0, 2, 4]);
        assert_eq!(fail_abandoned(&mem, &mut q, None), 3);
        assert_eq!(used_idx(&mem), 3);
        for head in [0, 2, 4] {
            assert_eq!(status(&mem, head), VIRTIO_BLK_S_IOERR as u8);
        }
        request(&mem, 6);
        post(&mem, &[0, 2, 4, 6]);
        assert_eq!(fail_new(&mem, &mut q), 1, "a later request");
        assert_eq!(status(&mem, 6), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(used_idx(&mem), 4);
    }

    #[test]
    fn the_inflight_region_names_exactly_the_heads_left() {
        let mem = memory();
        let mut q = queue(&mem);
        for head in [0, 2, 4] {
            request(&mem, head);
        }
        post(&mem, &[0, 2, 4]);
        // The back end answered 2 (used index 1), took 0, and never took 4.
        mem.write_obj(1u16, GuestAddress(USED + 2)).unwrap();
        let region = InflightQueue {
            last_batch_head: 2,
            used_idx: 1,
            heads: vec![0],
        };
        assert_eq!(fail_abandoned(&mem, &mut q, Some(region)), 2);
        assert_eq!(status(&mem, 0), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(status(&mem, 2), 0xff, "answered by the back end");
        assert_eq!(status(&mem, 4), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(used_idx(&mem), 3);
    }

    #[test]
    fn a_completion_the_region_had_not_yet_cleared_is_not_answered_twice() {
        let mem = memory();
        let mut q = queue(&mem);
        request(&mem, 0);
        post(&mem, &[0]);
        mem.write_obj(1u16, GuestAddress(USED + 2)).unwrap();
        let region = InflightQueue {
            last_batch_head: 0,
            used_idx: 0,
            heads: vec![0],
        };
        assert_eq!(fail_abandoned(&mem, &mut q, Some(region)), 0);
        assert_eq!(used_idx(&mem), 1);
    }

    #[test]
    fn hostile_chains_end_the_walk_and_are_still_returned() {
        let mem = memory();
        let mut q = queue(&mem);
        // 0: a loop; 1: an indirect table outside RAM; 2: an indirect table naming itself.
        desc(&mem, DESC, 0, 0x9000, 16, VRING_DESC_F_NEXT as u16, 0);
        desc(
            &mem,
            DESC,
            1,
            u64::MAX - 8,
            64,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        desc(&mem, DESC, 2, 0xa000, 16, VRING_DESC_F_INDIRECT as u16, 0);
        desc(&mem, 0xa000, 0, 0xa000, 16, VRING_DESC_F_INDIRECT as u16, 0);
        post(&mem, &[0, 1, 2, 7]);
        assert_eq!(fail_abandoned(&mem, &mut q, None), 4);
        assert_eq!(used_idx(&mem), 4);
    }
}
