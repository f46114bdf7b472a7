//! Fuzzes the vsock device with a hostile guest: the input becomes the guest's RAM behind the
//! transmit queue (descriptor table, available ring, packets), the receive queue has valid
//! buffers for the device's answers, and the device is notified. Nothing the guest writes may
//! panic, hang, or touch memory outside RAM; connections it opens to `<uds-path>_<port>` fail
//! (nothing listens there) and come back as RSTs.
//!
//! Input: one byte (how many notifications, 1-4), then guest RAM from address 0: the transmit
//! descriptor table (16 entries) at 0x0, its available ring at 0x100, its used ring at 0x200,
//! and whatever packets the descriptors point to (below 0x8000). `seeds/vsock_tx` holds a
//! REQUEST, an RW and a SHUTDOWN.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run vsock_tx corpus seeds/vsock_tx`.
#![no_main]

use std::sync::{Arc, OnceLock};

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use libfuzzer_sys::fuzz_target;
use virtio::vsock::{Vsock, VsockOptions};
use virtio::{Interrupt, MmioTransport, Shared, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 0x1_0000;
/// Guest bytes from the input go below this; the receive queue lives above.
const FUZZED: usize = 0x8000;
const RX_DESC: u64 = 0x8000;
const RX_AVAIL: u64 = 0x8100;
const RX_USED: u64 = 0x8200;
const RX_BUFS: u64 = 0x9000;
const QUEUE_SIZE: u32 = 16;

fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// One device for the whole run (it binds a socket); each input resets it.
fn device() -> Shared<Vsock> {
    static DEVICE: OnceLock<Shared<Vsock>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let path =
                std::env::temp_dir().join(format!("nimbus-fuzz-{}.vsock", std::process::id()));
            let options = VsockOptions {
                cid: 3,
                uds_path: path,
            };
            Shared::new(Vsock::new(&options).expect("socket"))
        })
        .clone()
}

fn setup_queue(t: &mut MmioTransport, index: u32, desc: u64, avail: u64, used: u64) {
    wr(t, 0x30, index);
    wr(t, 0x38, QUEUE_SIZE);
    wr(t, 0x80, desc as u32);
    wr(t, 0x90, avail as u32);
    wr(t, 0xa0, used as u32);
    wr(t, 0x44, 1);
}

/// Sixteen 256-byte receive buffers, all available.
fn post_rx(mem: &GuestMemoryMmap) {
    for i in 0..QUEUE_SIZE as u64 {
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&(RX_BUFS + i * 256).to_le_bytes());
        desc[8..12].copy_from_slice(&256u32.to_le_bytes());
        desc[12..14].copy_from_slice(&2u16.to_le_bytes());
        mem.write_slice(&desc, GuestAddress(RX_DESC + 16 * i))
            .expect("in RAM");
        mem.write_obj(i as u16, GuestAddress(RX_AVAIL + 4 + 2 * i))
            .expect("in RAM");
    }
    mem.write_obj(QUEUE_SIZE as u16, GuestAddress(RX_AVAIL + 2))
        .expect("in RAM");
}

fuzz_target!(|data: &[u8]| {
    let Some((&notifications, ram)) = data.split_first() else {
        return;
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("small RAM"));
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let vsock = device();
    let mut t = MmioTransport::new(Box::new(vsock.clone()), mem.clone(), Interrupt::new(evt));
    wr(&mut t, 0x70, 0);
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 0);
    wr(&mut t, 0x70, 0xb);
    setup_queue(&mut t, 0, RX_DESC, RX_AVAIL, RX_USED);
    setup_queue(&mut t, 1, 0x0, 0x100, 0x200);
    wr(&mut t, 0x70, 0xf);
    post_rx(&mem);
    let len = ram.len().min(FUZZED);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    for _ in 0..=(notifications % 4) {
        wr(&mut t, 0x50, 1);
    }
    wr(&mut t, 0x50, 0);
    // The next input starts from a fresh device: every connection closed.
    wr(&mut t, 0x70, 0);
    drop(vsock.lock().take_fd_changes());
});
