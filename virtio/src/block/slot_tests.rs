//! Attaching and detaching media behind a block device driven through its transport.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use address_space::vm_memory::{Bytes, GuestAddress};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::super::request::{S_IOERR, S_OK};
use super::super::RawFile;
use super::*;
use crate::device::{Interrupt, INT_CONFIG_CHANGE};
use crate::mmio::{MmioTransport, STATUS_DRIVER_OK};
use crate::testing::{memory, probe, rd, wr, TestQueue};

const HDR: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const DATA: u64 = 0x10000;
/// Register offsets in the virtio-mmio window.
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const CONFIG_GENERATION: u64 = 0xfc;
const CONFIG: u64 = 0x100;

struct Slot {
    t: MmioTransport,
    handle: BlockHandle,
    mem: Arc<GuestMemoryMmap>,
    q: TestQueue,
}

/// An empty slot probed by the test driver.
fn slot() -> Slot {
    let block = Block::empty("slot1").unwrap();
    let handle = block.handle();
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(block), Arc::clone(&mem), interrupt);
    let q = TestQueue::new(QUEUE_SIZE, 0x1000);
    assert_ne!(probe(&mut t, &[&q]) & STATUS_DRIVER_OK, 0);
    Slot { t, handle, mem, q }
}

fn image(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
    f
}

fn medium(image: &TempFile, readonly: bool) -> Box<dyn DiskBackend> {
    Box::new(RawFile::open(image.as_path(), readonly).unwrap())
}

impl Slot {
    fn config_capacity(&mut self) -> u64 {
        u64::from(rd(&mut self.t, CONFIG)) | (u64::from(rd(&mut self.t, CONFIG + 4)) << 32)
    }

    /// Publishes a request and notifies; returns its head.
    fn post(&mut self, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) -> u16 {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(data);
        bufs.push((STATUS, 1, true));
        let head = self.q.add_chain(&self.mem, &bufs);
        wr(&mut self.t, 0x50, 0);
        head
    }

    /// A synchronous request: its status byte.
    fn request(&mut self, ty: u32, sector: u64, data: Option<(u64, u32, bool)>) -> u8 {
        let before = self.q.used_idx(&self.mem);
        self.post(ty, sector, data);
        assert_eq!(self.q.used_idx(&self.mem), before.wrapping_add(1));
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Whether a configuration change was signalled since the last call (and acknowledges it).
    fn config_changed(&mut self) -> bool {
        let status = rd(&mut self.t, INTERRUPT_STATUS);
        wr(&mut self.t, INTERRUPT_ACK, status);
        status & INT_CONFIG_CHANGE != 0
    }
}

#[test]
fn empty_slot_has_no_sectors_and_fails_io_with_ioerr() {
    let mut s = slot();
    assert!(!s.handle.is_attached());
    assert_eq!(s.config_capacity(), 0);
    assert_eq!(
        s.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))),
        S_IOERR
    );
    assert_eq!(
        s.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))),
        S_IOERR
    );
    assert_eq!(s.request(VIRTIO_BLK_T_FLUSH, 0, None), S_IOERR);
}

#[test]
fn empty_slot_still_answers_get_id() {
    let mut s = slot();
    assert_eq!(
        s.request(VIRTIO_BLK_T_GET_ID, 0, Some((DATA, 20, true))),
        S_OK
    );
    let mut id = [0u8; 5];
    s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"slot1");
}

#[test]
fn attach_sets_the_capacity_and_signals_a_config_change() {
    let mut s = slot();
    let generation = rd(&mut s.t, CONFIG_GENERATION);
    assert!(!s.config_changed());
    let img = image(16);
    s.handle
        .attach(medium(&img, false), false, false)
        .map_err(|_| ())
        .unwrap();
    assert!(s.handle.is_attached());
    assert_eq!(s.handle.capacity(), 16);
    assert_eq!(s.config_capacity(), 16);
    assert!(s.config_changed());
    assert_ne!(rd(&mut s.t, CONFIG_GENERATION), generation);
}

#[test]
fn attached_medium_serves_reads_and_writes() {
    let mut s = slot();
    let img = image(16);
    img.as_file().write_all_at(b"MARK", 512).unwrap();
    s.handle
        .attach(medium(&img, false), false, false)
        .map_err(|_| ())
        .unwrap();
    assert_eq!(s.request(VIRTIO_BLK_T_IN, 1, Some((DATA, 512, true))), S_OK);
    let mut back = [0u8; 4];
    s.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(&back, b"MARK");
    s.mem.write_slice(b"HOTP", GuestAddress(DATA)).unwrap();
    assert_eq!(
        s.request(VIRTIO_BLK_T_OUT, 2, Some((DATA, 512, false))),
        S_OK
    );
    let mut file = [0u8; 4];
    img.as_file().read_exact_at(&mut file, 1024).unwrap();
    assert_eq!(&file, b"HOTP");
}

#[test]
fn read_only_medium_fails_writes_in_a_writable_slot() {
    let mut s = slot();
    let img = image(16);
    s.handle
        .attach(medium(&img, true), true, false)
        .map_err(|_| ())
        .unwrap();
    assert_eq!(
        s.request(VIRTIO_BLK_T_OUT, 0, Some((DATA, 512, false))),
        S_IOERR
    );
    assert_eq!(s.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))), S_OK);
}

#[test]
fn attach_to_a_busy_slot_gives_the_medium_back() {
    let s = slot();
    let (a, b) = (image(16), image(32));
    s.handle
        .attach(medium(&a, false), false, false)
        .map_err(|_| ())
        .unwrap();
    let back = s
        .handle
        .attach(medium(&b, false), false, false)
        .err()
        .unwrap();
    assert_eq!(back.size(), 32 * SECTOR_SIZE);
    assert_eq!(s.handle.capacity(), 16);
}

#[test]
fn detach_empties_the_slot_and_signals_a_config_change() {
    let mut s = slot();
    let img = image(16);
    s.handle
        .attach(medium(&img, false), false, false)
        .map_err(|_| ())
        .unwrap();
    assert!(s.config_changed());
    let disk = s.handle.detach().unwrap();
    assert_eq!(disk.size(), 16 * SECTOR_SIZE);
    assert!(!s.handle.is_attached());
    assert_eq!(s.config_capacity(), 0);
    assert!(s.config_changed());
    assert_eq!(
        s.request(VIRTIO_BLK_T_IN, 0, Some((DATA, 512, true))),
        S_IOERR
    );
}

#[test]
fn detach_of_an_empty_slot_is_refused() {
    let s = slot();
    assert_eq!(s.handle.detach().err(), Some(SlotError::Empty));
}

#[test]
fn detached_medium_can_be_attached_again() {
    let mut s = slot();
    let img = image(8);
    s.handle
        .attach(medium(&img, false), false, false)
        .map_err(|_| ())
        .unwrap();
    let disk = s.handle.detach().unwrap();
    s.handle.attach(disk, false, false).map_err(|_| ()).unwrap();
    assert_eq!(s.config_capacity(), 8);
    assert_eq!(s.request(VIRTIO_BLK_T_IN, 7, Some((DATA, 512, true))), S_OK);
}

#[test]
fn detach_completes_asynchronous_requests_in_flight_first() {
    let mut s = slot();
    let img = image(64);
    img.as_file().write_all_at(b"ASYNC", 8 * 512).unwrap();
    s.handle
        .attach(medium(&img, false), false, true)
        .map_err(|_| ())
        .unwrap();
    assert!(s.handle.is_async());
    let before = s.q.used_idx(&s.mem);
    let head = s.post(VIRTIO_BLK_T_IN, 8, Some((DATA, 4096, true)));
    // Completions are only reaped from the engine's eventfd, which nobody polls here: the
    // request is in flight until detach drains it.
    s.handle.detach().unwrap();
    assert_eq!(s.q.used_idx(&s.mem), before.wrapping_add(1));
    assert_eq!(s.q.used_elem(&s.mem, before), (u32::from(head), 4097));
    assert_eq!(s.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
    let mut back = [0u8; 5];
    s.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(&back, b"ASYNC");
}

/// A medium that counts flushes.
struct Counting(Arc<std::sync::atomic::AtomicUsize>);

impl DiskBackend for Counting {
    fn size(&self) -> u64 {
        8 * SECTOR_SIZE
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

#[test]
fn detach_flushes_a_writable_medium_but_not_a_read_only_one() {
    let s = slot();
    let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = || flushes.load(std::sync::atomic::Ordering::SeqCst);
    let medium = Box::new(Counting(Arc::clone(&flushes)));
    s.handle
        .attach(medium, false, false)
        .map_err(|_| ())
        .unwrap();
    let medium = s.handle.detach().unwrap();
    assert_eq!(count(), 1);
    s.handle
        .attach(medium, true, false)
        .map_err(|_| ())
        .unwrap();
    s.handle.detach().unwrap();
    assert_eq!(count(), 1);
}
