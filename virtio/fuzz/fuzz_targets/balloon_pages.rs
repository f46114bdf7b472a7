//! Fuzzes the virtio-balloon's queues: guest chains of page numbers on the inflate, deflate and
//! free page reporting queues, and whatever the guest puts on the statistics queue, with a
//! target set by the host. Nothing the guest writes may panic or hang, and no range outside RAM
//! may ever reach the discard (the stand-in below panics if one does).
//!
//! Input: a control byte (bit 0: offer free page reporting; bits 1-2: rounds of notifications,
//! 1-4), a 32-bit little-endian balloon target in pages, then guest RAM from address 0: queue
//! `q` (16 entries) has its descriptors at `0x1000 * (q + 1)`, available ring 0x200 and used ring
//! 0x400 after them; page-number buffers anywhere below 64 KiB. RAM for the balloon is
//! 0x10000..0x40000 (the first 64 KiB holds the rings and counts as "not RAM").
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run balloon_pages corpus seeds/balloon_pages`.
#![no_main]

use std::sync::Arc;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use libfuzzer_sys::fuzz_target;
use virtio::{Balloon, BalloonOptions, Discard, Interrupt, MmioTransport, Shared};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: u64 = 0x4_0000;
const RAM_START: u64 = 0x1_0000;
const PAGE: u64 = 4096;
const QUEUE_SIZE: u32 = 16;

/// Guest RAM as the balloon sees it; a discard of anything else is a bug.
struct CheckedRam;

impl Discard for CheckedRam {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        gpa >= RAM_START
            && gpa.is_multiple_of(PAGE)
            && len.is_multiple_of(PAGE)
            && len > 0
            && gpa.checked_add(len).is_some_and(|end| end <= MEM_SIZE)
    }

    fn discard(&self, gpa: u64, len: u64) -> Result<(), String> {
        assert!(self.is_ram(gpa, len), "discard outside RAM: {gpa:#x}+{len:#x}");
        Ok(())
    }

    fn ram_end(&self) -> u64 {
        MEM_SIZE
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

/// Linux's probe: every offered feature, then `queues` queues, then DRIVER_OK.
fn probe(t: &mut MmioTransport, queues: u32) {
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
    for q in 0..queues {
        let desc = 0x1000 * (q + 1);
        wr(t, 0x30, q);
        wr(t, 0x38, QUEUE_SIZE);
        wr(t, 0x80, desc);
        wr(t, 0x90, desc + 0x200);
        wr(t, 0xa0, desc + 0x400);
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, 0xf);
}

fuzz_target!(|data: &[u8]| {
    let [control, t0, t1, t2, t3, ram @ ..] = data else {
        return;
    };
    let options = BalloonOptions {
        id: Some("balloon0".to_owned()),
        deflate_on_oom: false,
        free_page_reporting: control & 1 != 0,
    };
    let Ok(balloon) = Balloon::new(options, MEM_SIZE, Arc::new(CheckedRam)) else {
        return;
    };
    let balloon = Shared::new(balloon);
    let queues = if control & 1 != 0 { 4 } else { 3 };
    let mem = Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("small RAM"),
    );
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let mut t = MmioTransport::new(Box::new(balloon.clone()), mem.clone(), Interrupt::new(evt));
    let target = u64::from(u32::from_le_bytes([*t0, *t1, *t2, *t3]));
    balloon.lock().set_target(target.saturating_mul(PAGE));
    probe(&mut t, queues);
    let len = ram.len().min(RAM_START as usize);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    for _ in 0..=((control >> 1) & 3) {
        for q in 0..queues {
            wr(&mut t, 0x50, q);
        }
        // The driver writes `actual` back into the configuration space.
        let num_pages = rd(&mut t, 0x100);
        wr(&mut t, 0x104, num_pages);
        let _ = balloon.lock().take_change();
    }
});
