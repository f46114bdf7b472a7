//! The block device driven end to end: a test driver lays out the queue, runs Linux's probe
//! through the virtio-mmio registers and submits requests; the image file and the used ring
//! tell what happened.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use address_space::vm_memory::{Bytes, GuestAddress};
use address_space::IoHandler;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::request::{S_IOERR, S_OK, S_UNSUPP};
use super::*;
use crate::device::feature;
use crate::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK};
use crate::testing::{memory, probe, rd, wr, TestQueue, F_NEXT, F_WRITE, MEM_SIZE};

const HDR: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const DATA: u64 = 0x10000;
const SECTORS: u64 = 64;

struct Rig {
    t: MmioTransport,
    mem: Arc<GuestMemoryMmap>,
    q: TestQueue,
    image: TempFile,
}

fn image(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    f
}

fn rig_with(block: Block, image: TempFile, mem: Arc<GuestMemoryMmap>) -> Rig {
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(block), Arc::clone(&mem), interrupt);
    let q = TestQueue::new(QUEUE_SIZE, 0x1000);
    let status = probe(&mut t, &[&q]);
    assert_ne!(status & STATUS_DRIVER_OK, 0);
    Rig { t, mem, q, image }
}

fn rig(readonly: bool) -> Rig {
    let image = image(SECTORS);
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly,
        serial: "d0".into(),
        aio: Aio::Off,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    rig_with(Block::open(&options).unwrap(), image, memory())
}

impl Rig {
    fn header(&self, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Publishes a chain, notifies, and returns (status byte, used length).
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let before = self.q.used_idx(&self.mem);
        let head = self.q.add_chain(&self.mem, bufs);
        wr(&mut self.t, 0x50, 0);
        assert_eq!(
            self.q.used_idx(&self.mem),
            before.wrapping_add(1),
            "request not used"
        );
        let (id, len) = self.q.used_elem(&self.mem, before);
        assert_eq!(id, u32::from(head));
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn request(&mut self, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) -> (u8, u32) {
        self.header(ty, sector);
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(data);
        bufs.push((STATUS, 1, true));
        self.submit(&bufs)
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.image
            .as_file()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

#[test]
fn written_sector_reaches_the_file_and_reads_back() {
    let mut r = rig(false);
    let data = pattern(1, 1024);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 3, Some((DATA, 1024, false))),
        (S_OK, 1)
    );
    assert_eq!(r.file_bytes(3 * 512, 1024), data);
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 3, Some((DATA + 0x1000, 1024, true))),
        (S_OK, 1025)
    );
    let mut back = vec![0u8; 1024];
    r.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn read_returns_what_the_image_holds() {
    let mut r = rig(false);
    r.image
        .as_file()
        .write_all_at(b"NIMBUS-MARKER", 10 * 512)
        .unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 10, Some((DATA, 512, true))),
        (S_OK, 513)
    );
    let mut back = [0u8; 13];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(&back, b"NIMBUS-MARKER");
}

#[test]
fn read_and_write_split_over_several_descriptors_work() {
    let mut r = rig(false);
    let data = pattern(9, 1536);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    r.header(VIRTIO_BLK_T_OUT, 5);
    let bufs = [
        (HDR, 16, false),
        (DATA, 100, false),
        (DATA + 100, 1436, false),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&bufs), (S_OK, 1));
    assert_eq!(r.file_bytes(5 * 512, 1536), data);
    r.header(VIRTIO_BLK_T_IN, 5);
    let bufs = [
        (HDR, 16, false),
        (DATA + 0x4000, 512, true),
        (DATA + 0x8000, 1024, true),
    ];
    let bufs = [bufs[0], bufs[1], bufs[2], (STATUS, 1, true)];
    assert_eq!(r.submit(&bufs), (S_OK, 1537));
    let mut back = vec![0u8; 1536];
    r.mem
        .read_slice(&mut back[..512], GuestAddress(DATA + 0x4000))
        .unwrap();
    r.mem
        .read_slice(&mut back[512..], GuestAddress(DATA + 0x8000))
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn get_id_returns_the_serial_padded_with_zeroes() {
    let mut r = rig(false);
    r.mem.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 20, true))),
        (S_OK, 21)
    );
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..2], b"d0");
    assert!(id[2..].iter().all(|&b| b == 0));
}

#[test]
fn serial_longer_than_20_bytes_is_refused() {
    let f = image(1);
    let options = BlockOptions {
        path: f.as_path().to_owned(),
        readonly: false,
        serial: "x".repeat(21),
        aio: Aio::Off,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    assert!(matches!(
        Block::open(&options),
        Err(BlockError::SerialTooLong(_))
    ));
}

#[test]
fn missing_image_is_an_open_error() {
    let options = BlockOptions {
        path: "/nonexistent/disk.img".into(),
        readonly: false,
        serial: "".into(),
        aio: Aio::Off,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    assert!(matches!(
        Block::open(&options),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn requests_beyond_capacity_fail_with_ioerr() {
    let mut r = rig(false);
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, SECTORS, Some((DATA, 512, true)))
            .0,
        S_IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, SECTORS - 1, Some((DATA, 1024, true)))
            .0,
        S_IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, u64::MAX, Some((DATA, 512, false)))
            .0,
        S_IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, SECTORS - 1, Some((DATA, 512, true)))
            .0,
        S_OK
    );
}

#[test]
fn data_length_not_a_multiple_of_512_fails_with_ioerr() {
    let mut r = rig(false);
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 511, true))),
        (S_IOERR, 1)
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 513, false))).0,
        S_IOERR
    );
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 0, None).0, S_IOERR);
}

#[test]
fn data_in_the_wrong_direction_fails_with_ioerr() {
    let mut r = rig(false);
    r.image.as_file().write_all_at(&[0x5a; 512], 0).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, false))).0,
        S_IOERR
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, true))).0,
        S_IOERR
    );
    assert_eq!(r.file_bytes(0, 512), vec![0x5a; 512]);
}

#[test]
fn read_only_disk_offers_ro_and_fails_writes() {
    let mut r = rig(true);
    wr(&mut r.t, 0x14, 0);
    let features = rd(&mut r.t, 0x10);
    assert_ne!(features & feature(VIRTIO_BLK_F_RO) as u32, 0);
    assert_eq!(
        features & (feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES)) as u32,
        0
    );
    r.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))).0,
        S_IOERR
    );
    assert_eq!(r.file_bytes(0, 512), vec![0; 512]);
    let segment = segment(0, 1, 0);
    r.mem.write_slice(&segment, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_DISCARD, 0, Some((DATA, 16, false)))
            .0,
        S_UNSUPP
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, 16, false)))
            .0,
        S_UNSUPP
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))).0,
        S_OK
    );
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mut r = rig(false);
    assert_eq!(r.request(99, 0, None), (S_UNSUPP, 1));
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn write_zeroes_zeroes_the_sectors() {
    let mut r = rig(false);
    r.image.as_file().write_all_at(&[0x77; 4096], 0).unwrap();
    r.mem
        .write_slice(&segment(2, 3, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, 16, false))),
        (S_OK, 1)
    );
    assert_eq!(r.file_bytes(0, 1024), vec![0x77; 1024]);
    assert_eq!(r.file_bytes(1024, 1536), vec![0; 1536]);
    assert_eq!(r.file_bytes(2560, 1536), vec![0x77; 1536]);
    r.mem
        .write_slice(&segment(SECTORS, 1, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, 16, false)))
            .0,
        S_IOERR
    );
    r.mem
        .write_slice(&segment(0, 1, 2), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((DATA, 16, false)))
            .0,
        S_UNSUPP
    );
}

#[test]
fn discard_is_offered_only_where_holes_can_be_punched_and_zeroes_the_range() {
    let mut r = rig(false);
    wr(&mut r.t, 0x14, 0);
    let offered = rd(&mut r.t, 0x10) & feature(VIRTIO_BLK_F_DISCARD) as u32 != 0;
    r.image.as_file().write_all_at(&[0x33; 8192], 0).unwrap();
    r.mem
        .write_slice(&segment(0, 8, 0), GuestAddress(DATA))
        .unwrap();
    let (status, _) = r.request(VIRTIO_BLK_T_DISCARD, 0, Some((DATA, 16, false)));
    if offered {
        assert_eq!(status, S_OK);
        assert_eq!(r.file_bytes(0, 4096), vec![0; 4096]);
    } else {
        assert_eq!(status, S_UNSUPP);
    }
    assert_eq!(r.file_bytes(4096, 4096), vec![0x33; 4096]);
}

#[test]
fn chain_without_a_writable_status_byte_completes_without_writing() {
    let mut r = rig(false);
    r.image.as_file().write_all_at(&[0x5a; 512], 0).unwrap();
    r.header(VIRTIO_BLK_T_OUT, 0);
    let (status, len) = r.submit(&[(HDR, 16, false), (DATA, 512, false)]);
    assert_eq!((status, len), (0xff, 0));
    assert_eq!(r.file_bytes(0, 512), vec![0x5a; 512]);
    // A status descriptor outside RAM is no status either.
    let (_, len) = r.submit(&[(HDR, 16, false), (MEM_SIZE, 1, true)]);
    assert_eq!(len, 0);
    // The device goes on serving requests.
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, None), (S_OK, 1));
}

#[test]
fn header_shorter_than_16_bytes_fails_with_ioerr() {
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        r.submit(&[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)])
            .0,
        S_IOERR
    );
}

#[test]
fn buffers_outside_ram_fail_with_ioerr() {
    let mut r = rig(false);
    for addr in [MEM_SIZE - 256, MEM_SIZE, 0xd000_0000, u64::MAX - 100] {
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, 0, Some((addr, 512, true))).0,
            S_IOERR,
            "{addr:#x}"
        );
        assert_eq!(
            r.request(VIRTIO_BLK_T_OUT, 0, Some((addr, 512, false))).0,
            S_IOERR,
            "{addr:#x}"
        );
    }
    r.header(VIRTIO_BLK_T_IN, 0);
    let bufs = [
        (MEM_SIZE - 8, 16, false),
        (DATA, 512, true),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&bufs).0, S_IOERR);
}

#[test]
fn zero_length_descriptor_fails_with_ioerr() {
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    let bufs = [
        (HDR, 16, false),
        (DATA, 0, true),
        (DATA, 512, true),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&bufs).0, S_IOERR);
}

fn assert_needs_reset(r: &mut Rig) {
    assert_ne!(rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_ne!(rd(&mut r.t, 0x60) & crate::INT_CONFIG_CHANGE, 0);
}

#[test]
fn descriptor_loop_marks_the_device_as_needing_reset() {
    let mut r = rig(false);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.write_desc(&r.mem, 0, HDR, 16, F_NEXT, 1);
    r.q.write_desc(&r.mem, 1, DATA, 512, F_WRITE | F_NEXT, 0);
    r.q.publish(&r.mem, 0);
    wr(&mut r.t, 0x50, 0);
    assert_needs_reset(&mut r);
    assert_eq!(r.q.used_elem(&r.mem, 0), (0, 0));
    // Nothing more is served until the driver resets the device.
    r.q.write_desc(&r.mem, 2, HDR, 16, 0, 0);
    r.q.publish(&r.mem, 2);
    wr(&mut r.t, 0x50, 0);
    assert_eq!(r.q.used_idx(&r.mem), 1);
}

#[test]
fn next_index_beyond_the_queue_marks_the_device_as_needing_reset() {
    let mut r = rig(false);
    r.q.write_desc(&r.mem, 0, HDR, 16, F_NEXT, QUEUE_SIZE + 5);
    r.q.publish(&r.mem, 0);
    wr(&mut r.t, 0x50, 0);
    assert_needs_reset(&mut r);
}

#[test]
fn head_index_beyond_the_queue_marks_the_device_as_needing_reset() {
    let mut r = rig(false);
    r.q.publish(&r.mem, QUEUE_SIZE);
    wr(&mut r.t, 0x50, 0);
    assert_needs_reset(&mut r);
    assert_eq!(r.q.used_idx(&r.mem), 0);
}

#[test]
fn avail_index_ahead_by_more_than_the_queue_marks_the_device_as_needing_reset() {
    let mut r = rig(false);
    r.mem
        .write_obj(QUEUE_SIZE + 1, GuestAddress(r.q.avail + 2))
        .unwrap();
    wr(&mut r.t, 0x50, 0);
    assert_needs_reset(&mut r);
}

/// A tiny xorshift generator: deterministic "fuzzing" without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.next() as usize % choices.len()]
    }
}

#[test]
fn arbitrary_descriptor_tables_never_panic_or_hang() {
    let mut r = rig(false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let addrs = [
        HDR,
        STATUS,
        DATA,
        DATA + 0x7ff0,
        MEM_SIZE - 1,
        MEM_SIZE,
        0xd000_0000,
        u64::MAX,
    ];
    let lens = [0u32, 1, 8, 16, 17, 512, 1024, 4096, 0x10_0000, u32::MAX];
    let types = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        7,
        u32::MAX,
    ];
    for round in 0..3000 {
        r.header(rng.pick(&types), rng.next() % (2 * SECTORS));
        r.mem
            .write_slice(
                &segment(rng.next() % 80, rng.next() as u32 % 16, 0),
                GuestAddress(DATA),
            )
            .unwrap();
        for index in 0..8 {
            let flags = (rng.next() % 8) as u16;
            let next = rng.pick(&[
                index + 1,
                index + 1,
                0,
                index,
                QUEUE_SIZE - 1,
                QUEUE_SIZE,
                u16::MAX,
            ]);
            r.q.write_desc(
                &r.mem,
                index,
                rng.pick(&addrs),
                rng.pick(&lens),
                flags,
                next,
            );
        }
        match rng.next() % 16 {
            0 => r
                .mem
                .write_obj(rng.next() as u16, GuestAddress(r.q.avail + 2))
                .unwrap(),
            1 => r.q.publish(&r.mem, rng.next() as u16),
            _ => r.q.publish(&r.mem, (rng.next() % 8) as u16),
        }
        wr(&mut r.t, 0x50, 0);
        if rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET != 0 || round % 500 == 499 {
            r.q = TestQueue::new(QUEUE_SIZE, 0x1000);
            r.q.clear_rings(&r.mem);
            let status = probe(&mut r.t, &[&r.q]);
            assert_eq!(status & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        }
    }
    // The device still serves a well-formed request.
    r.q = TestQueue::new(QUEUE_SIZE, 0x1000);
    r.q.clear_rings(&r.mem);
    probe(&mut r.t, &[&r.q]);
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, None), (S_OK, 1));
}

#[test]
fn completion_raises_the_used_buffer_interrupt() {
    let mut r = rig(false);
    r.request(VIRTIO_BLK_T_FLUSH, 0, None);
    assert_eq!(rd(&mut r.t, 0x60), crate::INT_USED_BUFFER);
    assert!(r.t.interrupt().eventfd().read().unwrap() >= 1);
}

#[test]
fn notification_with_nothing_available_raises_no_interrupt() {
    let mut r = rig(false);
    wr(&mut r.t, 0x50, 0);
    assert_eq!(rd(&mut r.t, 0x60), 0);
    assert!(r.t.interrupt().eventfd().read().is_err());
}

#[test]
fn config_space_reports_capacity_seg_max_and_block_size() {
    let mut r = rig(false);
    let mut c = [0u8; CONFIG_SIZE];
    r.t.read(0x100, &mut c);
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    let mut capacity_byte = [0u8; 1];
    r.t.read(0x100, &mut capacity_byte);
    assert_eq!(capacity_byte, [SECTORS as u8]);
}

#[test]
fn capacity_ignores_a_trailing_partial_sector() {
    let f = image(0);
    f.as_file().set_len(3 * 512 + 200).unwrap();
    let options = BlockOptions {
        path: f.as_path().to_owned(),
        readonly: true,
        serial: "".into(),
        aio: Aio::Off,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    assert_eq!(Block::open(&options).unwrap().capacity(), 3);
}

/// What the guest could see when a flush ran: the status byte and the used index.
type Seen = Arc<Mutex<Vec<(u8, u16)>>>;

/// A backend whose operations fail, or record what the guest could see when they ran.
struct ProbeDisk {
    fail: bool,
    mem: Arc<GuestMemoryMmap>,
    used_ring: u64,
    seen_at_flush: Seen,
}

impl DiskBackend for ProbeDisk {
    fn size(&self) -> u64 {
        SECTORS * SECTOR_SIZE
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        let used_idx = self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap();
        self.seen_at_flush.lock().unwrap().push((status, used_idx));
        if self.fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Ok(())
    }
}

fn probe_rig(fail: bool) -> (Rig, Seen) {
    let mem = memory();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let disk = ProbeDisk {
        fail,
        mem: Arc::clone(&mem),
        used_ring: TestQueue::new(QUEUE_SIZE, 0x1000).used,
        seen_at_flush: Arc::clone(&seen),
    };
    let block = Block::with_backend(Box::new(disk), false, "probe").unwrap();
    (rig_with(block, image(0), mem), seen)
}

#[test]
fn flush_completes_only_after_the_backend_synced() {
    let (mut r, seen) = probe_rig(false);
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, None), (S_OK, 1));
    // When the sync ran, neither the status byte nor the used ring had been written.
    assert_eq!(seen.lock().unwrap().as_slice(), &[(0xff, 0)]);
}

#[test]
fn shutdown_flushes_a_writable_image() {
    let (mut r, seen) = probe_rig(false);
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))),
        (S_OK, 1)
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing flushed before the VM ends"
    );
    r.t.shutdown();
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the image was flushed at shutdown"
    );
}

#[test]
fn host_io_errors_reach_the_guest_as_ioerr() {
    let (mut r, _) = probe_rig(true);
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))),
        (S_IOERR, 1)
    );
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))),
        (S_IOERR, 1)
    );
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, None), (S_IOERR, 1));
    assert_eq!(rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
}

// The asynchronous (io_uring) path.

fn async_rig(sectors: u64) -> Rig {
    let image = image(sectors);
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly: false,
        serial: "d0".into(),
        aio: Aio::IoUring,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    let block = Block::open(&options).unwrap();
    assert!(block.is_async());
    rig_with(block, image, memory())
}

impl Rig {
    /// Publishes a chain and notifies, without waiting for its completion.
    fn post(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.q.add_chain(&self.mem, bufs);
        wr(&mut self.t, 0x50, 0);
        head
    }

    /// Handles completion events until the used index reaches `want` (5 s at most).
    fn pump_until(&mut self, want: u16) {
        let fd = self.t.device_event_fds()[0];
        for _ in 0..5000 {
            if self.q.used_idx(&self.mem) == want {
                return;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd that lives across the call.
            #[allow(unsafe_code)]
            unsafe {
                libc::poll(&mut pfd, 1, 1)
            };
            self.t.device_event(0);
        }
        panic!("used index never reached {want}");
    }

    fn request_async(&mut self, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) -> (u8, u32) {
        self.header(ty, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(data);
        bufs.push((STATUS, 1, true));
        let before = self.q.used_idx(&self.mem);
        let head = self.post(&bufs);
        self.pump_until(before.wrapping_add(1));
        let (id, len) = self.q.used_elem(&self.mem, before);
        assert_eq!(id, u32::from(head));
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }
}

#[test]
fn async_write_reaches_the_file_and_reads_back() {
    let mut r = async_rig(SECTORS);
    let data = pattern(5, 1024);
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request_async(VIRTIO_BLK_T_OUT, 3, Some((DATA, 1024, false))),
        (S_OK, 1)
    );
    assert_eq!(r.file_bytes(3 * 512, 1024), data);
    r.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request_async(VIRTIO_BLK_T_IN, 3, Some((DATA, 1024, true))),
        (S_OK, 1025)
    );
    let mut back = vec![0u8; 1024];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn async_requests_with_bad_ranges_or_types_still_complete() {
    let mut r = async_rig(SECTORS);
    assert_eq!(
        r.request_async(VIRTIO_BLK_T_IN, SECTORS, Some((DATA, 512, true))),
        (S_IOERR, 1)
    );
    assert_eq!(r.request_async(99, 0, None), (S_UNSUPP, 1));
    assert_eq!(
        r.request_async(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 20, true))),
        (S_OK, 21)
    );
}

#[test]
fn async_read_of_a_file_shrunk_under_the_device_fails_with_ioerr() {
    let mut r = async_rig(SECTORS);
    r.image.as_file().set_len(0).unwrap();
    assert_eq!(
        r.request_async(VIRTIO_BLK_T_IN, 1, Some((DATA, 512, true))),
        (S_IOERR, 1)
    );
}

#[test]
fn async_flush_is_used_only_after_its_fsync_completion_was_reaped() {
    let mut r = async_rig(SECTORS);
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    r.post(&[(HDR, 16, false), (STATUS, 1, true)]);
    // Submitted, maybe even finished by the kernel, but not reaped: the guest sees nothing.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(r.q.used_idx(&r.mem), 0);
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    r.pump_until(1);
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
}

#[test]
fn many_async_reads_in_flight_all_complete_with_their_own_data() {
    let mut r = async_rig(SECTORS);
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
    r.image.as_file().write_all_at(&bytes, 0).unwrap();
    let n = 32u64;
    for i in 0..n {
        let hdr = HDR + i * 16;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&(i % SECTORS).to_le_bytes());
        r.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        r.q.add_chain(
            &r.mem,
            &[
                (hdr, 16, false),
                (DATA + i * 512, 512, true),
                (STATUS + i, 1, true),
            ],
        );
    }
    wr(&mut r.t, 0x50, 0);
    r.pump_until(n as u16);
    for i in 0..n {
        let mut back = vec![0u8; 512];
        r.mem
            .read_slice(&mut back, GuestAddress(DATA + i * 512))
            .unwrap();
        assert!(
            back.iter().all(|&b| b == (i % SECTORS) as u8),
            "request {i}"
        );
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(),
            S_OK
        );
    }
}

#[test]
fn async_device_reset_with_requests_in_flight_works_after_reactivation() {
    let mut r = async_rig(SECTORS);
    r.header(VIRTIO_BLK_T_IN, 0);
    r.post(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    // Reset (stale completions are dropped) and probe again with a fresh queue.
    wr(&mut r.t, 0x70, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    r.t.device_event(0);
    r.q = TestQueue::new(QUEUE_SIZE, 0x1000);
    r.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(0x1000))
        .unwrap();
    assert_ne!(probe(&mut r.t, &[&r.q]) & STATUS_DRIVER_OK, 0);
    assert_eq!(r.request_async(VIRTIO_BLK_T_FLUSH, 0, None), (S_OK, 1));
    assert_eq!(r.q.used_idx(&r.mem), 1);
}

#[test]
fn quiesce_finishes_the_requests_in_flight_and_those_not_yet_notified() {
    let mut r = async_rig(SECTORS);
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
    r.image.as_file().write_all_at(&bytes, 0).unwrap();
    let n = 8u64;
    for i in 0..n {
        let hdr = HDR + i * 16;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&i.to_le_bytes());
        r.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        r.q.add_chain(
            &r.mem,
            &[
                (hdr, 16, false),
                (DATA + i * 512, 512, true),
                (STATUS + i, 1, true),
            ],
        );
        // The first half is notified (submitted, never reaped); the second half's
        // notification is still on the frozen event loop.
        if i == n / 2 - 1 {
            wr(&mut r.t, 0x50, 0);
        }
    }
    let _ = r.t.interrupt().eventfd().read();
    r.t.quiesce();
    assert_eq!(
        r.q.used_idx(&r.mem),
        n as u16,
        "every request is in the used ring after quiesce, with no event handled"
    );
    for i in 0..n {
        let mut back = vec![0u8; 512];
        r.mem
            .read_slice(&mut back, GuestAddress(DATA + i * 512))
            .unwrap();
        assert!(back.iter().all(|&b| b == i as u8), "request {i}");
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(),
            S_OK
        );
    }
    assert_eq!(
        r.t.interrupt().eventfd().read().unwrap(),
        1,
        "the guest is told"
    );
    assert_eq!(rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
}

/// Found by the mmio_sequence fuzzer: the used ring's flags lie over the available ring's index,
/// so turning notifications off and on flips that index between "one more" and "none". One
/// notify must serve the request and return, not spin.
#[test]
fn used_flags_over_the_available_index_do_not_spin_the_queue() {
    let image = image(SECTORS);
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly: false,
        serial: "d0".into(),
        aio: Aio::Off,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(
        Box::new(Block::open(&options).unwrap()),
        Arc::clone(&mem),
        interrupt,
    );
    let (desc, avail, used) = (0x1000u64, 0x2ffeu64, 0x3000u64);
    for (i, (addr, len, flags, next)) in [
        (HDR, 16u32, F_NEXT, 1u16),
        (DATA, 512, F_WRITE | F_NEXT, 2),
        (STATUS, 1, F_WRITE, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(desc + 16 * i as u64))
            .unwrap();
    }
    mem.write_slice(&[0u8; 16], GuestAddress(HDR)).unwrap();
    // Available ring: flags 0, idx 1 (the used ring's flags), ring[0] = 0 (the used index).
    mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(avail))
        .unwrap();
    for (reg, value) in [
        (0x70, 0),
        (0x70, 1),
        (0x70, 3),
        (0x24, 1),
        (0x20, 1),
        (0x24, 0),
        (0x20, 0),
        (0x70, 0xb),
        (0x30, 0),
        (0x38, u32::from(QUEUE_SIZE)),
        (0x80, desc as u32),
        (0x90, avail as u32),
        (0xa0, used as u32),
        (0x44, 1),
        (0x70, 0xf),
    ] {
        wr(&mut t, reg, value);
    }
    wr(&mut t, 0x50, 0);
    wr(&mut t, 0x50, 0);
    let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(used_idx, 1, "the one request is served once");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
}

// Guest buffers are read and written in place; one across two RAM ranges bounces.

/// RAM in two adjacent ranges split at `0x20000`, so a buffer can straddle them.
fn split_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x20000),
            (GuestAddress(0x20000), (MEM_SIZE - 0x20000) as usize),
        ])
        .unwrap(),
    )
}

fn split_rig(aio: Aio) -> Rig {
    let image = image(SECTORS);
    let options = BlockOptions {
        path: image.as_path().to_owned(),
        readonly: false,
        serial: "d0".into(),
        aio,
        direct: false,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    rig_with(Block::open(&options).unwrap(), image, split_memory())
}

/// Writes 3 KiB from three guest buffers (the middle one across the two RAM ranges), reads it
/// back into three other buffers, and compares the image and guest memory byte for byte.
fn scattered_buffers_round_trip(aio: Aio) {
    let mut r = split_rig(aio);
    let asynchronous = aio != Aio::Off;
    let data: Vec<u8> = (0..3072u32).map(|i| (i * 7 % 253) as u8).collect();
    let out = [(0x18000u64, 512u32), (0x1fe00, 2048), (0x30000, 512)];
    let mut at = 0;
    for &(addr, len) in &out {
        r.mem
            .write_slice(&data[at..at + len as usize], GuestAddress(addr))
            .unwrap();
        at += len as usize;
    }
    let send = |r: &mut Rig, ty: u32, bufs: &[(u64, u32, bool)]| {
        r.header(ty, 4);
        let mut chain = vec![(HDR, 16, false)];
        chain.extend_from_slice(bufs);
        chain.push((STATUS, 1, true));
        if asynchronous {
            r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let before = r.q.used_idx(&r.mem);
            r.post(&chain);
            r.pump_until(before.wrapping_add(1));
            let (_, len) = r.q.used_elem(&r.mem, before);
            (r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), len)
        } else {
            r.submit(&chain)
        }
    };
    let bufs: Vec<_> = out.iter().map(|&(a, l)| (a, l, false)).collect();
    assert_eq!(send(&mut r, VIRTIO_BLK_T_OUT, &bufs), (S_OK, 1));
    assert_eq!(r.file_bytes(4 * SECTOR_SIZE, 3072), data);
    let back = [(0x40000u64, 1024u32), (0x1fc00, 1536), (0x50000, 512)];
    let bufs: Vec<_> = back.iter().map(|&(a, l)| (a, l, true)).collect();
    assert_eq!(send(&mut r, VIRTIO_BLK_T_IN, &bufs), (S_OK, 3073));
    let mut got = Vec::new();
    for &(addr, len) in &back {
        let mut part = vec![0u8; len as usize];
        r.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
        got.extend(part);
    }
    assert_eq!(got, data);
}

#[test]
fn scattered_buffers_round_trip_synchronously() {
    scattered_buffers_round_trip(Aio::Off);
}

#[test]
fn scattered_buffers_round_trip_over_io_uring() {
    scattered_buffers_round_trip(Aio::IoUring);
}

#[test]
fn one_buffer_round_trips_in_place_over_both_engines() {
    for aio in [Aio::Off, Aio::IoUring] {
        let mut r = split_rig(aio);
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 241) as u8).collect();
        r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        let (status, _) = if aio == Aio::Off {
            r.request(VIRTIO_BLK_T_OUT, 8, Some((DATA, 4096, false)))
        } else {
            r.request_async(VIRTIO_BLK_T_OUT, 8, Some((DATA, 4096, false)))
        };
        assert_eq!(status, S_OK);
        assert_eq!(r.file_bytes(8 * SECTOR_SIZE, 4096), data);
        let into = 0x60000;
        let (status, len) = if aio == Aio::Off {
            r.request(VIRTIO_BLK_T_IN, 8, Some((into, 4096, true)))
        } else {
            r.request_async(VIRTIO_BLK_T_IN, 8, Some((into, 4096, true)))
        };
        assert_eq!((status, len), (S_OK, 4097));
        let mut got = vec![0u8; 4096];
        r.mem.read_slice(&mut got, GuestAddress(into)).unwrap();
        assert_eq!(got, data);
    }
}
