//! The device model alone, in process: 4 KiB random reads through the virtio-mmio transport
//! and the virtqueue, `depth` requests in flight, on the image `NIMBUS_BENCH_IMAGE`. Ignored by
//! default; `benches/blk.sh` runs it in release mode next to fio on the same file:
//! `NIMBUS_BENCH_IMAGE=img cargo test -p virtio --release -- --ignored --nocapture device_model`
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::mmio::MmioTransport;
use crate::testing::{probe, wr, TestQueue, F_NEXT, F_WRITE};

const BLOCK: u64 = 4096;
const HDR: u64 = 0x8_0000;
const STATUS: u64 = 0x9_0000;
const DATA: u64 = 0x10_0000;
const MEM: usize = 0x80_0000;

struct Bench {
    t: MmioTransport,
    mem: Arc<GuestMemoryMmap>,
    q: TestQueue,
    blocks: u64,
    rng: u64,
}

impl Bench {
    /// Lays out request `slot` (descriptors 3*slot..3*slot+2) at a random block; publishes it.
    fn post(&mut self, slot: u16) {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let sector = (self.rng >> 33) % self.blocks * (BLOCK / SECTOR_SIZE);
        let s = u64::from(slot);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HDR + s * 16))
            .unwrap();
        let d = slot * 3;
        let q = &self.q;
        q.write_desc(&self.mem, d, HDR + s * 16, 16, F_NEXT, d + 1);
        q.write_desc(
            &self.mem,
            d + 1,
            DATA + s * BLOCK,
            BLOCK as u32,
            F_NEXT | F_WRITE,
            d + 2,
        );
        q.write_desc(&self.mem, d + 2, STATUS + s, 1, F_WRITE, 0);
        self.q.publish(&self.mem, d);
    }
}

/// Requests per second over `secs` seconds.
fn run(path: &std::path::Path, aio: Aio, direct: bool, depth: u16, secs: u64) -> f64 {
    let options = BlockOptions {
        path: path.to_owned(),
        readonly: true,
        serial: "bench".into(),
        aio,
        direct,
        num_queues: 1,
        throttle: ThrottleLimits::default(),
    };
    let block = Block::open(&options).unwrap();
    let blocks = block.capacity() * SECTOR_SIZE / BLOCK;
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(block), Arc::clone(&mem), interrupt);
    let q = TestQueue::new(QUEUE_SIZE, 0x1000);
    probe(&mut t, &[&q]);
    let fd = t.device_event_fds().first().copied();
    let mut b = Bench {
        t,
        mem,
        q,
        blocks,
        rng: 1,
    };
    for slot in 0..depth {
        b.post(slot);
    }
    wr(&mut b.t, 0x50, 0);
    let (mut seen, mut done) = (0u16, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    // The clock is read every 64 rounds, not per request: the bench's own overhead.
    let mut rounds = 0u32;
    while !rounds.is_multiple_of(64) || Instant::now() < end {
        rounds = rounds.wrapping_add(1);
        if let Some(fd) = fd {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd that lives across the call.
            #[allow(unsafe_code)]
            unsafe {
                libc::poll(&mut pfd, 1, 100)
            };
            b.t.device_event(0);
        }
        let used = b.q.used_idx(&b.mem);
        while seen != used {
            let (id, _) = b.q.used_elem(&b.mem, seen);
            seen = seen.wrapping_add(1);
            done += 1;
            b.post((id / 3) as u16);
        }
        wr(&mut b.t, 0x50, 0);
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a benchmark: run by benches/blk.sh"]
fn device_model_random_4k_reads() {
    let Some(path) = std::env::var_os("NIMBUS_BENCH_IMAGE") else {
        eprintln!("SKIPPED: NIMBUS_BENCH_IMAGE is not set");
        return;
    };
    let path = std::path::PathBuf::from(path);
    let secs = std::env::var("NIMBUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let cases = [
        ("aio=off", Aio::Off, false, 1),
        ("aio=io_uring", Aio::IoUring, false, 32),
        ("aio=io_uring,direct=on", Aio::IoUring, true, 32),
    ];
    // `NIMBUS_BENCH_CASES=aio=off` (a case name) runs only that one, for perf.
    let only = std::env::var("NIMBUS_BENCH_CASES").unwrap_or_default();
    for (name, aio, direct, depth) in cases {
        if !only.is_empty() && name != only {
            continue;
        }
        let iops = run(&path, aio, direct, depth, secs);
        println!("BENCH device-model {name} iodepth={depth}: {iops:.0} req/s");
    }
}
