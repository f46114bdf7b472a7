//! The device model alone, in process: frames through the virtio-mmio transport, the split
//! virtqueues and the net device, with a datagram socketpair standing in for the tap. Ignored by
//! default; run in release mode:
//! `cargo test -p virtio --release net::bench -- --ignored --nocapture`
//! (`NIMBUS_BENCH_SECS`, default 1, is the time per case).
//!
//! tx: the driver keeps the whole 256-entry queue full of one-descriptor chains (virtio header
//! and frame), notifies once per batch; the device sends each frame to the socketpair.
//! rx: 256 posted 2 KiB buffers; the peer end queues a batch of frames, then the device's
//! [`Net::rx_ready`] moves them into the guest's buffers, which the driver posts back.
//! Only the time inside the device (the notify, `rx_ready`) is counted as "device": the
//! peer's send/recv syscalls play the kernel's side of a tap and are left out of it; "loop"
//! is the rate of the whole loop, both sides on this thread.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;

use super::header::VnetHeader;
use super::*;
use crate::device::feature;
use crate::mmio::{MmioTransport, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::testing::{negotiate, rd, wr, TestQueue, F_WRITE};

const MEM: usize = 0x80_0000;
const TX_BUF: u64 = 0x10_0000;
const RX_BUF: u64 = 0x30_0000;
const BUF_LEN: u64 = 2048;
/// Frames per notification / per `rx_ready` call.
const BATCH: u16 = 128;

struct SocketTap(UnixDatagram);

impl TapIo for SocketTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn name(&self) -> &str {
        "socketpair"
    }
}

/// Room for a few batches of the largest frames in the socketpair (root may exceed wmem_max).
fn big_buffers(sock: &UnixDatagram) {
    let size: libc::c_int = 16 << 20;
    for opt in [
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUF,
        libc::SO_RCVBUF,
    ] {
        // SAFETY: setsockopt reads one c_int from `size`, which lives across the call.
        #[allow(unsafe_code)]
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
}

struct Bench {
    t: MmioTransport,
    net: SharedNet,
    mem: Arc<GuestMemoryMmap>,
    rxq: TestQueue,
    txq: TestQueue,
    peer: UnixDatagram,
}

/// A running device whose driver took what the test guest takes: VERSION_1 and MAC (12-byte
/// header, no mergeable buffers, no event index, no offloads).
fn bench() -> Bench {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    for s in [&ours, &peer] {
        s.set_nonblocking(true).unwrap();
        big_buffers(s);
    }
    let options = NetOptions {
        id: "bench0".into(),
        mac: None,
        mtu: None,
    };
    let net = SharedNet::new(Net::new(&options, Box::new(SocketTap(ours))).unwrap());
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(net.clone()), Arc::clone(&mem), interrupt);
    let rxq = TestQueue::new(QUEUE_SIZE, 0x1000);
    let txq = TestQueue::new(QUEUE_SIZE, 0x4000);
    rxq.clear_rings(&mem);
    txq.clear_rings(&mem);
    let status = negotiate(&mut t, |f| {
        f & (feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC))
    });
    assert_ne!(status & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
    rxq.setup(&mut t, 0);
    txq.setup(&mut t, 1);
    wr(&mut t, 0x70, status | STATUS_DRIVER_OK);
    assert_ne!(rd(&mut t, 0x70) & STATUS_DRIVER_OK, 0);
    Bench {
        t,
        net,
        mem,
        rxq,
        txq,
        peer,
    }
}

/// A 60-byte or larger 0x88b5 frame, virtio header first.
fn packet(len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[0..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    frame[6..12].copy_from_slice(&[0x02, 0x4e, 0x42, 0x00, 0x00, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in frame[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    [&VnetHeader::default().to_bytes()[..], &frame].concat()
}

struct Rate {
    frames: u64,
    device: Duration,
    total: Duration,
}

impl Rate {
    fn line(&self, what: &str, len: usize) {
        let device = self.frames as f64 / self.device.as_secs_f64();
        let total = self.frames as f64 / self.total.as_secs_f64();
        println!(
            "BENCH net device-model {what} {len}-byte frames: {device:.0} frames/s \
             ({:.0} ns/frame, {:.1} MB/s) device; {total:.0} frames/s loop incl. peer",
            1e9 / device,
            device * len as f64 / 1e6,
        );
    }
}

fn tx(len: usize, secs: f64) -> Rate {
    let mut b = bench();
    let bytes = packet(len);
    for i in 0..QUEUE_SIZE {
        let at = TX_BUF + u64::from(i) * BUF_LEN;
        b.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        b.txq.write_desc(&b.mem, i, at, bytes.len() as u32, 0, 0);
    }
    let mut sink = vec![0u8; 4096];
    let (mut next, mut seen, mut frames) = (0u16, 0u16, 0u64);
    let mut device = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // Fill the free entries, up to a batch, with descriptors in ring order.
        let mut added = 0;
        while added < BATCH && next.wrapping_sub(seen) < QUEUE_SIZE {
            b.txq.publish(&b.mem, next % QUEUE_SIZE);
            next = next.wrapping_add(1);
            added += 1;
        }
        let t0 = Instant::now();
        wr(&mut b.t, 0x50, 1);
        device += t0.elapsed();
        let used = b.txq.used_idx(&b.mem);
        frames += u64::from(used.wrapping_sub(seen));
        seen = used;
        // The kernel's side of the tap: take the frames off the socket.
        while b.peer.recv(&mut sink).is_ok() {}
    }
    let total = start.elapsed();
    let c = b.net.lock().counters();
    assert_eq!(c.tx_frames, frames, "every frame sent, none dropped: {c:?}");
    Rate {
        frames,
        device,
        total,
    }
}

fn rx(len: usize, secs: f64) -> Rate {
    let mut b = bench();
    let bytes = packet(len);
    let post = |b: &mut Bench, id: u16| {
        let at = RX_BUF + u64::from(id) * BUF_LEN;
        b.rxq.write_desc(&b.mem, id, at, BUF_LEN as u32, F_WRITE, 0);
        b.rxq.publish(&b.mem, id);
    };
    for id in 0..QUEUE_SIZE {
        post(&mut b, id);
    }
    wr(&mut b.t, 0x50, 0);
    let (mut seen, mut frames) = (0u16, 0u64);
    let mut device = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // The kernel's side of the tap: a batch of frames waits in the socket.
        for _ in 0..BATCH {
            b.peer.send(&bytes).unwrap();
        }
        let t0 = Instant::now();
        let outcome = b.net.lock().rx_ready();
        device += t0.elapsed();
        assert!(
            matches!(outcome, RxOutcome::KeepPolling),
            "the device kept up: {outcome:?}"
        );
        let used = b.rxq.used_idx(&b.mem);
        while seen != used {
            let (id, written) = b.rxq.used_elem(&b.mem, seen);
            debug_assert_eq!(written as usize, bytes.len());
            seen = seen.wrapping_add(1);
            frames += 1;
            post(&mut b, id as u16);
        }
        let t0 = Instant::now();
        wr(&mut b.t, 0x50, 0);
        device += t0.elapsed();
    }
    let total = start.elapsed();
    let c = b.net.lock().counters();
    assert_eq!(c.rx_frames, frames, "every frame delivered: {c:?}");
    Rate {
        frames,
        device,
        total,
    }
}

#[test]
#[ignore = "a benchmark: cargo test -p virtio --release net::bench -- --ignored --nocapture"]
fn device_model_frames_per_second() {
    let secs = std::env::var("NIMBUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    for len in [60, 1500] {
        tx(len, secs).line("tx (guest->tap)", len);
        rx(len, secs).line("rx (tap->guest)", len);
    }
}
