//! The device model alone, in process: stream bytes through the virtio-mmio transport, the split
//! virtqueues and the vsock device to a Unix socket, beside the floor of the same bytes written
//! and read on a plain Unix socket pair. Ignored by default; run in release mode:
//! `cargo test -p virtio --release vsock::bench -- --ignored --nocapture`
//! (`NIMBUS_BENCH_SECS`, default 1, is the time per case).
//!
//! guest->host: the driver puts 64 KiB RW packets (header and payload in two descriptors) on
//! the transmit queue and notifies for each; the device writes them to the connection's
//! socket, whose peer this thread reads.
//! host->guest: the peer writes 64 KiB chunks; the device reads them into 64 KiB receive
//! buffers, which the driver posts back with a CREDIT_UPDATE for what it consumed.
//! "device" counts the time inside the device only (the notifications); "loop" is the rate of
//! the whole loop with the peer's syscalls on this thread; "floor" is a socket pair moving the
//! same chunks with one write and one read each, the least a Unix-socket back end costs.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use address_space::vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{Op, HOST_CID, TYPE_STREAM};
use super::*;
use crate::testing::{probe, wr, TestQueue};
use crate::MmioTransport;

const MEM: usize = 0x200_0000;
const CHUNK: usize = 64 * 1024;
/// Packet slots in guest memory (16 chains of two descriptors fill a 32-entry queue).
const BATCH: u16 = 16;
const QSIZE: u16 = 32;
const BUFS: u64 = 0x10_0000;

fn secs() -> f64 {
    std::env::var("NIMBUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

struct Bench {
    t: MmioTransport,
    dev: crate::Shared<Vsock>,
    mem: Arc<GuestMemoryMmap>,
    rx: TestQueue,
    tx: TestQueue,
    peer: UnixStream,
    /// The connection socket's token in the device.
    tokens: Vec<u32>,
    dir: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn header(op: Op, len: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 2000,
        len,
        kind: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 4 * CHUNK as u32,
        fwd_cnt,
        ..Header::default()
    }
}

/// A device with one guest-initiated connection to a listener this thread holds.
fn bench(name: &str) -> Bench {
    let dir = std::env::temp_dir().join(format!("nbvs-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let options = VsockOptions {
        cid: 3,
        uds_path: uds.clone(),
    };
    let dev = crate::Shared::new(Vsock::new(&options).unwrap());
    let listener = UnixListener::bind(dir.join("v.sock_2000")).unwrap();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(dev.clone()), Arc::clone(&mem), interrupt);
    let (rx, tx, ev) = (
        TestQueue::new(QSIZE, 0x1000),
        TestQueue::new(QSIZE, 0x2000),
        TestQueue::new(QSIZE, 0x3000),
    );
    probe(&mut t, &[&rx, &tx, &ev]);
    let mut b = Bench {
        t,
        dev,
        mem,
        rx,
        tx,
        peer: UnixStream::pair().unwrap().0,
        tokens: Vec::new(),
        dir,
    };
    b.send(header(Op::Request, 0, 0), 0);
    b.peer = listener.accept().unwrap().0;
    b.tokens = b.follow_changes();
    assert_eq!(b.tokens.len(), 1, "one connection socket");
    b
}

impl Bench {
    /// Puts one packet at `slot` (header at the slot, payload after) on the transmit queue.
    fn send(&mut self, hdr: Header, slot: u64) {
        let at = BUFS + slot * (CHUNK as u64 + 0x1000);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        let mut bufs = vec![(at, HEADER_SIZE as u32, false)];
        if hdr.len > 0 {
            bufs.push((at + 0x1000, hdr.len, false));
        }
        self.tx.add_chain(&self.mem, &bufs);
        wr(&mut self.t, 0x50, 1);
    }

    /// Plays the loop for the connection socket (taking the device's descriptor changes).
    fn follow_changes(&mut self) -> Vec<u32> {
        self.t
            .take_device_fd_changes()
            .into_iter()
            .filter_map(|c| match c {
                FdChange::Add { token, .. } => Some(token),
                FdChange::Remove { .. } => None,
            })
            .collect()
    }
}

fn g2h(secs: f64) -> (f64, f64) {
    let mut b = bench("g2h");
    b.peer.set_nonblocking(true).unwrap();
    // The payload is written once: every packet's payload descriptor points at the same data.
    for slot in 0..u64::from(BATCH) {
        let at = BUFS + slot * (CHUNK as u64 + 0x1000) + 0x1000;
        b.mem.write_slice(&[7u8; CHUNK], GuestAddress(at)).unwrap();
    }
    let mut sink = vec![0u8; CHUNK];
    let (mut bytes, mut device) = (0u64, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for slot in 0..u64::from(BATCH) {
            let at = BUFS + slot * (CHUNK as u64 + 0x1000);
            let hdr = header(Op::Rw, CHUNK as u32, 0);
            b.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(at))
                .unwrap();
            b.tx.add_chain(
                &b.mem,
                &[
                    (at, HEADER_SIZE as u32, false),
                    (at + 0x1000, CHUNK as u32, false),
                ],
            );
            let t0 = Instant::now();
            wr(&mut b.t, 0x50, 1);
            device += t0.elapsed();
            // The peer reads what the device wrote: the credit the guest needs comes back.
            while let Ok(n) = b.peer.read(&mut sink) {
                bytes += n as u64;
                if n == 0 {
                    break;
                }
            }
        }
    }
    let total = start.elapsed();
    assert_eq!(
        b.dev.lock().connection_count(),
        1,
        "the connection stayed open"
    );
    let mb = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    (mb(device), mb(total))
}

fn h2g(secs: f64) -> (f64, f64) {
    let mut b = bench("h2g");
    let tokens = b.tokens.clone();
    let chunk = vec![9u8; CHUNK];
    // Receive buffers: 64 KiB + header each, in one descriptor.
    let len = (CHUNK + HEADER_SIZE) as u32;
    let slots: Vec<u64> = (0..u64::from(QSIZE))
        .map(|i| 0x80_0000 + i * u64::from(len + 0x1000))
        .collect();
    let post = |b: &mut Bench, i: usize| {
        b.rx.add_chain(&b.mem, &[(slots[i % slots.len()], len, true)]);
    };
    for i in 0..usize::from(QSIZE) {
        post(&mut b, i);
    }
    let (mut bytes, mut device) = (0u64, Duration::ZERO);
    let mut seen = b.rx.used_idx(&b.mem);
    let mut posted = usize::from(QSIZE);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        b.peer.write_all(&chunk).unwrap();
        let t0 = Instant::now();
        for &token in &tokens {
            let ready = Readiness {
                readable: true,
                ..Readiness::default()
            };
            b.t.device_fd_event(token, ready);
        }
        device += t0.elapsed();
        let used = b.rx.used_idx(&b.mem);
        while seen != used {
            let (_, n) = b.rx.used_elem(&b.mem, seen);
            bytes += u64::from(n.saturating_sub(HEADER_SIZE as u32));
            seen = seen.wrapping_add(1);
            post(&mut b, posted);
            posted += 1;
        }
        // The guest consumed everything: tell the device.
        let t0 = Instant::now();
        b.send(header(Op::CreditUpdate, 0, bytes as u32), 0);
        wr(&mut b.t, 0x50, 0);
        device += t0.elapsed();
    }
    let total = start.elapsed();
    let mb = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    (mb(device), mb(total))
}

/// A Unix socket pair moving the same chunks: one write and one read each.
fn floor(secs: f64) -> f64 {
    let (mut a, mut z) = UnixStream::pair().unwrap();
    let chunk = vec![5u8; CHUNK];
    let mut sink = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        a.write_all(&chunk).unwrap();
        z.read_exact(&mut sink).unwrap();
        bytes += CHUNK as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e6
}

#[test]
#[ignore = "benchmark: cargo test -p virtio --release vsock::bench -- --ignored --nocapture"]
fn vsock_device_model() {
    let secs = secs();
    let floor = floor(secs);
    for (what, (device, total)) in [("guest->host", g2h(secs)), ("host->guest", h2g(secs))] {
        println!(
            "BENCH vsock device-model {what} 64 KiB packets: {device:.0} MB/s device; \
             {total:.0} MB/s loop incl. peer; {floor:.0} MB/s socketpair floor"
        );
    }
}
