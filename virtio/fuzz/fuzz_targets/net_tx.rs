//! Fuzzes virtio-net tx header and chain parsing (and the rx chain walk): the input becomes the
//! guest's RAM (descriptor tables, available rings, headers, frames) behind queues a driver set
//! up the way Linux does, then the tx queue is notified and the tap delivers a few frames.
//! Nothing the guest writes may panic, hang, or touch memory outside RAM.
//!
//! Input: one byte (how many tx notifications, 1-4), one byte selecting features (bit 0
//! MRG_RXBUF, bit 1 EVENT_IDX, bit 2 CSUM + HOST_TSO4/6 + HOST_UFO, bit 3 GUEST_CSUM + guest
//! offloads), then guest RAM from address 0: the tx descriptor table (16 entries) at 0x0, its
//! available ring at 0x100 and used ring at 0x200; the rx descriptor table at 0x300, its
//! available ring at 0x400 and used ring at 0x500; then whatever the descriptors point to.
//! `seeds/net_tx` holds one valid tx frame and one rx buffer.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run net_tx corpus seeds/net_tx`.
#![no_main]

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use libfuzzer_sys::fuzz_target;
use virtio::feature;
use virtio::virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
};
use virtio::virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio::{Interrupt, MmioTransport, Net, NetOptions, SharedNet, TapError, TapIo};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 0x1_0000;
const QUEUE_SIZE: u32 = 16;
/// (descriptor table, available ring, used ring) of rx and tx.
const RINGS: [(u32, u32, u32); 2] = [(0x300, 0x400, 0x500), (0x0, 0x100, 0x200)];

/// A tap that swallows what the guest sends and has `frames` frames of every offload kind to
/// give, then nothing.
struct FuzzTap {
    frames: usize,
}

impl TapIo for FuzzTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.frames == 0 || buf.len() < 1600 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.frames -= 1;
        buf[..1600].fill(0x5a);
        // A header varying by frame: plain, partial checksum, TSO4.
        buf[..12].fill(0);
        match self.frames % 3 {
            1 => buf[0] = 1,
            2 => {
                buf[0] = 1;
                buf[1] = 1;
                buf[4] = 0xa8;
                buf[5] = 5;
            }
            _ => {}
        }
        Ok(1600)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        -1
    }
    fn name(&self) -> &str {
        "fuzz"
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

fn features(select: u8) -> u64 {
    let mut f = feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS);
    if select & 1 != 0 {
        f |= feature(VIRTIO_NET_F_MRG_RXBUF);
    }
    if select & 2 != 0 {
        f |= feature(VIRTIO_RING_F_EVENT_IDX);
    }
    if select & 4 != 0 {
        f |= feature(VIRTIO_NET_F_CSUM)
            | feature(VIRTIO_NET_F_HOST_TSO4)
            | feature(VIRTIO_NET_F_HOST_TSO6);
        f |= feature(VIRTIO_NET_F_HOST_UFO);
    }
    if select & 8 != 0 {
        f |= feature(VIRTIO_NET_F_GUEST_CSUM)
            | feature(VIRTIO_NET_F_GUEST_TSO4)
            | feature(VIRTIO_NET_F_GUEST_TSO6);
        f |= feature(VIRTIO_NET_F_GUEST_UFO);
    }
    f
}

fuzz_target!(|data: &[u8]| {
    let [notifications, select, ram @ ..] = data else {
        return;
    };
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("small RAM"));
    let Ok(evt) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let options = NetOptions {
        id: "fuzz".into(),
        mac: None,
        mtu: None,
    };
    let tap = FuzzTap { frames: 4 };
    let Ok(net) = Net::new(&options, Box::new(tap)) else {
        return;
    };
    let net = SharedNet::new(net);
    let mut t = MmioTransport::new(Box::new(net.clone()), mem.clone(), Interrupt::new(evt));
    wr(&mut t, 0x70, 0);
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x14, 0);
    let low = u64::from(rd(&mut t, 0x10)) & features(*select);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, low as u32);
    wr(&mut t, 0x70, 0xb);
    for (index, (desc, avail, used)) in RINGS.into_iter().enumerate() {
        wr(&mut t, 0x30, index as u32);
        wr(&mut t, 0x38, QUEUE_SIZE);
        wr(&mut t, 0x80, desc);
        wr(&mut t, 0x90, avail);
        wr(&mut t, 0xa0, used);
        wr(&mut t, 0x44, 1);
    }
    wr(&mut t, 0x70, 0xf);
    let len = ram.len().min(RAM);
    mem.write_slice(&ram[..len], GuestAddress(0))
        .expect("inside RAM");
    for _ in 0..=(notifications % 4) {
        wr(&mut t, 0x50, 1);
    }
    for _ in 0..4 {
        let _ = net.lock().rx_ready();
        wr(&mut t, 0x50, 0);
    }
});
