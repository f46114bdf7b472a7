//! Fuzzes the virtio-mmio transport's register file: a driver that writes and reads any
//! register, at any width, in any order, against a virtio-blk device (indirect descriptors and
//! EVENT_IDX offered) whose queue may be set up and notified. Nothing may panic or hang.
//!
//! Input: one byte `n`, then `n` operations of 7 bytes each — a kind byte (bit 0: write, bits
//! 1-2: width 1, 2, 4 or 8 bytes (8 is not a valid width)), a 16-bit little-endian offset
//! (masked to 0x1ff: the registers and the device's config space) and a 32-bit little-endian
//! value — then guest RAM from address 0 (descriptors, rings, headers, buffers; 64 KiB at most).
//! `seeds/mmio_sequence` holds Linux's probe with one queue at 0x0/0x100/0x200 and a request of
//! each kind (direct and through an indirect table) followed by a notify.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run mmio_sequence corpus seeds/mmio_sequence`.
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
const OP_LEN: usize = 7;

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

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let ops_len = (usize::from(n) * OP_LEN).min(rest.len());
    let (ops, ram) = rest.split_at(ops_len);
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("small RAM"));
    let len = ram.len().min(RAM);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let disk = NullDisk(AtomicU32::new(0));
    let block = Block::with_backend(Box::new(disk), false, "fuzz").expect("short serial");
    let mut t = MmioTransport::new(Box::new(block), mem, Interrupt::new(evt));
    for op in ops.chunks_exact(OP_LEN) {
        let write = op[0] & 1 == 1;
        let width = 1usize << ((op[0] >> 1) & 3);
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[3..7]);
        if write {
            t.write(offset, &value[..width]);
        } else {
            t.read(offset, &mut value[..width]);
        }
    }
});
