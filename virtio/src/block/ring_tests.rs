//! The ring features Linux uses: indirect descriptor tables (and the hostile ones), event-index
//! suppression, several request queues, and throttling with its timer.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::time::Duration;

use address_space::vm_memory::{Bytes, GuestAddress};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_MQ, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::request::S_OK;
use super::*;
use crate::device::{feature, to_u16};
use crate::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK};
use crate::testing::{memory, probe, rd, wr, TestQueue, F_NEXT, F_WRITE, MEM_SIZE};

const F_INDIRECT: u16 = to_u16(VRING_DESC_F_INDIRECT);
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const TABLE: u64 = 0xa000;
const DATA: u64 = 0x10000;
const SECTORS: u64 = 64;

struct Rig {
    t: MmioTransport,
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<TestQueue>,
    _image: TempFile,
}

/// A device over an image holding a known pattern, with `num_queues` queues and `throttle`.
fn rig(num_queues: u16, throttle: ThrottleLimits) -> Rig {
    let image = TempFile::new().unwrap();
    let bytes: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add((i >> 9) as u8))
        .collect();
    image.as_file().write_all_at(&bytes, 0).unwrap();
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly: false,
        serial: "d0".into(),
        aio: Aio::Off,
        direct: false,
        num_queues,
        throttle,
    };
    let block = Block::open(&options).unwrap();
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(block), Arc::clone(&mem), interrupt);
    let queues: Vec<TestQueue> = (0..u64::from(num_queues))
        .map(|i| TestQueue::new(QUEUE_SIZE, 0x1000 + i * 0x3000))
        .collect();
    let refs: Vec<&TestQueue> = queues.iter().collect();
    let status = probe(&mut t, &refs);
    assert_ne!(status & STATUS_DRIVER_OK, 0);
    Rig {
        t,
        mem,
        queues,
        _image: image,
    }
}

/// What the image holds at `offset`.
fn image_bytes(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add((i >> 9) as u8))
        .collect()
}

impl Rig {
    fn header(&self, at: u64, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    /// Writes descriptor `index` of a table at `table`.
    fn table_desc(&self, table: u64, index: u64, (addr, len, flags, next): (u64, u32, u16, u16)) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        bytes[12..14].copy_from_slice(&flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&bytes, GuestAddress(table + 16 * index))
            .unwrap();
    }

    /// Publishes on queue `q` a head descriptor pointing at an indirect table of `len` bytes
    /// at `table`, and notifies.
    fn submit_indirect(&mut self, q: usize, head: u16, table: u64, len: u32) {
        self.queues[q].write_desc(&self.mem, head, table, len, F_INDIRECT, 0);
        self.queues[q].publish(&self.mem, head);
        wr(&mut self.t, 0x50, q as u32);
    }

    /// A 3-entry indirect table reading `sectors` sectors at `sector` into `data`, status at
    /// `status`.
    fn read_table(&self, table: u64, (hdr, data, status): (u64, u64, u64), sector: u64) {
        self.header(hdr, sector);
        self.table_desc(table, 0, (hdr, 16, F_NEXT, 1));
        self.table_desc(table, 1, (data, 1024, F_WRITE | F_NEXT, 2));
        self.table_desc(table, 2, (status, 1, F_WRITE, 0));
    }
}

#[test]
fn indirect_and_event_idx_are_offered() {
    let mut t = rig(1, ThrottleLimits::default()).t;
    wr(&mut t, 0x14, 0);
    let low = u64::from(rd(&mut t, 0x10));
    for bit in [VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX] {
        assert_ne!(low & feature(bit), 0, "feature bit {bit}");
    }
    assert_eq!(low & feature(VIRTIO_BLK_F_MQ), 0, "one queue: no MQ");
}

#[test]
fn a_read_through_an_indirect_table_is_byte_exact() {
    let mut r = rig(1, ThrottleLimits::default());
    r.read_table(TABLE, (HDR, DATA, STATUS), 5);
    r.submit_indirect(0, 0, TABLE, 48);
    assert_eq!(r.queues[0].used_elem(&r.mem, 0), (0, 1025));
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
    let mut back = vec![0u8; 1024];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, image_bytes(5 * 512, 1024));
}

/// Submits the hostile table `build` sets up (head 0 points at `TABLE` with `len` bytes) and
/// checks that the request is put in the used ring with nothing written, the device needs a
/// reset, and nothing else is served.
fn assert_hostile_table_refused(name: &str, table: u64, len: u32, build: impl Fn(&Rig)) {
    let mut r = rig(1, ThrottleLimits::default());
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    build(&r);
    r.submit_indirect(0, 0, table, len);
    assert_eq!(r.queues[0].used_idx(&r.mem), 1, "{name}: request not used");
    assert_eq!(r.queues[0].used_elem(&r.mem, 0), (0, 0), "{name}");
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        0xff,
        "{name}: nothing written"
    );
    assert_ne!(
        rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET,
        0,
        "{name}: needs reset"
    );
}

#[test]
fn an_indirect_table_that_loops_is_refused() {
    assert_hostile_table_refused("loop", TABLE, 48, |r| {
        r.header(HDR, 0);
        r.table_desc(TABLE, 0, (HDR, 16, F_NEXT, 1));
        r.table_desc(TABLE, 1, (DATA, 512, F_WRITE | F_NEXT, 2));
        r.table_desc(TABLE, 2, (STATUS, 1, F_WRITE | F_NEXT, 0));
    });
}

#[test]
fn an_indirect_table_naming_an_entry_beyond_it_is_refused() {
    assert_hostile_table_refused("next beyond the table", TABLE, 32, |r| {
        r.header(HDR, 0);
        r.table_desc(TABLE, 0, (HDR, 16, F_NEXT, 1));
        r.table_desc(TABLE, 1, (DATA, 512, F_WRITE | F_NEXT, 2));
        r.table_desc(TABLE, 2, (STATUS, 1, F_WRITE, 0));
    });
}

#[test]
fn a_nested_indirect_table_is_refused() {
    assert_hostile_table_refused("nested", TABLE, 32, |r| {
        r.read_table(TABLE + 0x100, (HDR, DATA, STATUS), 0);
        r.table_desc(TABLE, 0, (TABLE + 0x100, 48, F_INDIRECT, 0));
    });
    assert_hostile_table_refused("nested after a descriptor", TABLE, 32, |r| {
        r.header(HDR, 0);
        r.read_table(TABLE + 0x100, (HDR, DATA, STATUS), 0);
        r.table_desc(TABLE, 0, (HDR, 16, F_NEXT, 1));
        r.table_desc(TABLE, 1, (TABLE + 0x100, 48, F_INDIRECT, 0));
    });
}

#[test]
fn an_indirect_table_outside_ram_is_refused() {
    assert_hostile_table_refused("outside RAM", MEM_SIZE + 0x1000, 48, |_| {});
    assert_hostile_table_refused("past the end of RAM", MEM_SIZE - 16, 48, |r| {
        r.table_desc(MEM_SIZE - 16, 0, (HDR, 16, F_NEXT, 1));
    });
    assert_hostile_table_refused("address overflow", u64::MAX - 8, 48, |_| {});
}

#[test]
fn zero_length_and_ragged_indirect_tables_are_refused() {
    let build = |r: &Rig| r.read_table(TABLE, (HDR, DATA, STATUS), 0);
    assert_hostile_table_refused("zero length", TABLE, 0, build);
    assert_hostile_table_refused("not a multiple of 16", TABLE, 40, build);
}

#[test]
fn event_idx_interrupts_only_when_the_used_event_is_passed_and_publishes_avail_event() {
    let mut r = rig(1, ThrottleLimits::default());
    let q = &r.queues[0];
    // used_event (after the available ring): interrupt once the used index passes 1.
    let used_event = q.avail + 4 + 2 * u64::from(q.size);
    let avail_event = q.used + 4 + 8 * u64::from(q.size);
    r.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    for (i, interrupts) in [(0u16, false), (1, true), (2, false)] {
        let table = TABLE + u64::from(i) * 0x100;
        r.read_table(table, (HDR, DATA, STATUS + u64::from(i)), 0);
        r.submit_indirect(0, i, table, 48);
        assert_eq!(r.queues[0].used_idx(&r.mem), i + 1);
        let raised = r.t.interrupt().eventfd().read().is_ok();
        assert_eq!(raised, interrupts, "request {i}");
        assert_eq!(
            r.mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(),
            i + 1,
            "avail_event follows what was served"
        );
    }
}

#[test]
fn two_queues_serve_their_own_requests_byte_exact() {
    let mut r = rig(2, ThrottleLimits::default());
    assert_eq!(rd(&mut r.t, 0x100 + 34) & 0xffff, 2, "config num_queues");
    wr(&mut r.t, 0x14, 0);
    assert_ne!(
        u64::from(rd(&mut r.t, 0x10)) & feature(VIRTIO_BLK_F_MQ),
        0,
        "MQ offered"
    );
    for (q, sector) in [(1usize, 9u64), (0, 3)] {
        let base = 0x100 * q as u64;
        let data = DATA + 0x1000 * q as u64;
        r.read_table(TABLE + base, (HDR + base, data, STATUS + base), sector);
        r.submit_indirect(q, 0, TABLE + base, 48);
        assert_eq!(r.queues[q].used_elem(&r.mem, 0), (0, 1025), "queue {q}");
        let mut back = vec![0u8; 1024];
        r.mem.read_slice(&mut back, GuestAddress(data)).unwrap();
        assert_eq!(back, image_bytes(sector * 512, 1024), "queue {q}");
    }
    assert_eq!(r.queues[0].used_idx(&r.mem), 1);
    assert_eq!(r.queues[1].used_idx(&r.mem), 1);
}

#[test]
fn num_queues_out_of_range_is_refused() {
    for n in [0, MAX_QUEUES + 1] {
        let image = TempFile::new().unwrap();
        let options = BlockOptions {
            path: image.as_path().to_owned(),
            readonly: false,
            serial: "d0".into(),
            aio: Aio::Off,
            direct: false,
            num_queues: n,
            throttle: ThrottleLimits::default(),
        };
        assert!(matches!(
            Block::open(&options),
            Err(BlockError::QueueCount(_))
        ));
    }
}

#[test]
fn throttled_requests_wait_in_the_ring_for_the_timer() {
    let mut r = rig(
        1,
        ThrottleLimits {
            iops: Some(2),
            bps: None,
        },
    );
    let fds = r.t.device_event_fds();
    assert_eq!(fds.len(), 1, "the throttling timer is an event source");
    for i in 0..3u16 {
        let table = TABLE + u64::from(i) * 0x100;
        r.read_table(table, (HDR, DATA, STATUS + u64::from(i)), 0);
        r.submit_indirect(0, i, table, 48);
    }
    assert_eq!(r.queues[0].used_idx(&r.mem), 2, "a second's budget: 2");
    // The timer fires after about half a second (one token at 2/s); before, nothing moves.
    r.t.device_event(0);
    std::thread::sleep(Duration::from_millis(200));
    wr(&mut r.t, 0x50, 0);
    assert_eq!(r.queues[0].used_idx(&r.mem), 2, "still throttled");
    std::thread::sleep(Duration::from_millis(400));
    r.t.device_event(0);
    assert_eq!(r.queues[0].used_idx(&r.mem), 3, "served after the timer");
    assert_eq!(rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn both_queues_go_on_after_a_transport_save_and_restore() {
    let mut r = rig(2, ThrottleLimits::default());
    for q in 0..2usize {
        let base = 0x100 * q as u64;
        r.read_table(TABLE + base, (HDR + base, DATA, STATUS + base), 1);
        r.submit_indirect(q, 0, TABLE + base, 48);
    }
    let state = r.t.save_state();
    assert_eq!(state.queues.len(), 2);
    // A new process: the same device over the same guest memory, registers restored.
    let image = TempFile::new().unwrap();
    image.as_file().set_len(SECTORS * SECTOR_SIZE).unwrap();
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly: false,
        serial: "d0".into(),
        aio: Aio::Off,
        direct: false,
        num_queues: 2,
        throttle: ThrottleLimits::default(),
    };
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let block = Block::open(&options).unwrap();
    let mut t = MmioTransport::new(Box::new(block), Arc::clone(&r.mem), interrupt);
    t.restore_state(&state).unwrap();
    r.t = t;
    for q in 0..2usize {
        let base = 0x100 * q as u64;
        r.read_table(TABLE + base, (HDR + base, DATA, STATUS + base), 2);
        r.submit_indirect(q, 1, TABLE + base, 48);
        assert_eq!(r.queues[q].used_idx(&r.mem), 2, "queue {q} after restore");
        assert_eq!(r.queues[q].used_elem(&r.mem, 1), (1, 1025), "queue {q}");
    }
    // A one-queue device cannot take the two-queue state.
    let one = Block::open(&BlockOptions {
        num_queues: 1,
        ..options
    })
    .unwrap();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(one), Arc::clone(&r.mem), interrupt);
    assert!(t.restore_state(&state).is_err());
}
