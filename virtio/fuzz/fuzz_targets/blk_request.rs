//! Fuzzes virtio-blk request parsing: the input becomes the guest's RAM (descriptor table,
//! available ring, headers, buffers) behind a queue a driver set up the way Linux does, and the
//! device is notified. Nothing the guest writes may panic, hang, or touch memory outside RAM.
//!
//! Input: one byte (how many notifications, 1-4), then guest RAM from address 0: the
//! descriptor table (16 entries) at 0x0, the available ring at 0x100, the used ring at 0x200,
//! and whatever headers and buffers the descriptors point to. `seeds/blk_request` holds one
//! valid request of each type.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run blk_request corpus seeds/blk_request`.
#![no_main]

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use libfuzzer_sys::fuzz_target;
use virtio::block::DiskBackend;
use virtio::{Block, Interrupt, MmioTransport};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 0x1_0000;
const DESC: u32 = 0x0;
const AVAIL: u32 = 0x100;
const USED: u32 = 0x200;
const QUEUE_SIZE: u32 = 16;

/// A 32-sector disk that remembers nothing and fails every eighth operation.
struct NullDisk(AtomicU32);

impl NullDisk {
    fn result(&self) -> io::Result<()> {
        if self.0.fetch_add(1, Ordering::Relaxed) % 8 == 7 {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

impl DiskBackend for NullDisk {
    fn size(&self) -> u64 {
        32 * 512
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0x5a);
        self.result()
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        self.result()
    }
    fn flush(&self) -> io::Result<()> {
        self.result()
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.result()
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        self.result()
    }
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&notifications, ram)) = data.split_first() else {
        return;
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("small RAM"));
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let disk = NullDisk(AtomicU32::new(0));
    let block = Block::with_backend(Box::new(disk), false, "fuzz").expect("short serial");
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), Interrupt::new(evt));
    wr(&mut t, 0x70, 0);
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x14, 0);
    let low = rd(&mut t, 0x10);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, low);
    wr(&mut t, 0x70, 0xb);
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, QUEUE_SIZE);
    wr(&mut t, 0x80, DESC);
    wr(&mut t, 0x90, AVAIL);
    wr(&mut t, 0xa0, USED);
    wr(&mut t, 0x44, 1);
    wr(&mut t, 0x70, 0xf);
    let len = ram.len().min(RAM);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    for _ in 0..=(notifications % 4) {
        wr(&mut t, 0x50, 0);
    }
});
