//! Fuzzes the virtio-console's receive and transmit paths: guest chains on both queues, host
//! input waiting for the receive queue, and a chardev that takes only some bytes and then
//! blocks until the next round gives it as many again (the port stalls and resumes). Nothing the guest writes may panic or hang.
//!
//! Input: a control byte (bits 0-1: rounds of notifications, 1-4; bits 2-7: how many bytes the
//! chardev takes before it blocks, times 16, 0 meaning unlimited), a 16-bit little-endian length
//! `L` and `L` bytes of host input, then guest RAM from address 0: receive queue (16 entries)
//! descriptors at 0x0, available ring at 0x100, used ring at 0x200; transmit queue at 0x400,
//! 0x500, 0x600; buffers anywhere below 64 KiB. `seeds/console_chains` holds output chains and
//! receive buffers the way Linux's virtio_console driver lays them out.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run console_chains corpus seeds/console_chains`.
#![no_main]

use std::io::{self, ErrorKind, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use libfuzzer_sys::fuzz_target;
use virtio::{Console, Interrupt, MmioTransport, Shared};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 0x1_0000;
const QUEUE_SIZE: u32 = 16;
/// (descriptor table, available ring, used ring) of the receive and transmit queues.
const QUEUES: [(u32, u32, u32); 2] = [(0x0, 0x100, 0x200), (0x400, 0x500, 0x600)];

/// A chardev that takes `room` bytes, then answers WouldBlock until it is given more.
struct Out {
    room: Arc<AtomicUsize>,
}

impl Write for Out {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.room.load(Ordering::Relaxed);
        if room == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = room.min(data.len());
        self.room.store(room - n, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

/// Linux's probe: features, then both queues, then DRIVER_OK.
fn probe(t: &mut MmioTransport) {
    wr(t, 0x70, 0);
    wr(t, 0x70, 1);
    wr(t, 0x70, 3);
    wr(t, 0x14, 0);
    let low = rd(t, 0x10);
    wr(t, 0x14, 1);
    let high = rd(t, 0x10);
    wr(t, 0x24, 1);
    wr(t, 0x20, high);
    wr(t, 0x24, 0);
    wr(t, 0x20, low);
    wr(t, 0x70, 0xb);
    for (index, (desc, avail, used)) in QUEUES.iter().enumerate() {
        wr(t, 0x30, index as u32);
        wr(t, 0x38, QUEUE_SIZE);
        wr(t, 0x80, *desc);
        wr(t, 0x90, *avail);
        wr(t, 0xa0, *used);
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, 0xf);
}

fuzz_target!(|data: &[u8]| {
    let [control, l0, l1, rest @ ..] = data else {
        return;
    };
    let input_len = usize::from(u16::from_le_bytes([*l0, *l1])).min(rest.len());
    let (input, ram) = rest.split_at(input_len);
    let room = match usize::from(control >> 2) * 16 {
        0 => usize::MAX,
        n => n,
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("small RAM"));
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let out = Out {
        room: Arc::new(AtomicUsize::new(room)),
    };
    let room_left = Arc::clone(&out.room);
    let console = Shared::new(Console::new(Box::new(out)));
    let mut t = MmioTransport::new(Box::new(console.clone()), mem.clone(), Interrupt::new(evt));
    probe(&mut t);
    let len = ram.len().min(RAM);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    console.lock().queue_input(input);
    for _ in 0..=(control & 3) {
        wr(&mut t, 0x50, 0);
        wr(&mut t, 0x50, 1);
        let left = room_left.load(Ordering::Relaxed);
        room_left.store(left.saturating_add(room), Ordering::Relaxed);
        console.lock().resume_output();
    }
});
