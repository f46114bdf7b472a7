//! The device model alone, in process, against a floor: frames through the virtio-mmio
//! transport, the split virtqueues and the net device, and beside them a plain loop that moves
//! the same frames through the same backend with nothing in between. Ignored by default; run
//! in release mode (as root for the tap):
//! `cargo test -p virtio --release net::bench -- --ignored --nocapture`
//! (`NIMBUS_BENCH_SECS`, default 1, is the time per case; `NIMBUS_BENCH_ROUNDS`, default 5, the
//! number of rounds it is split into, each on a fresh backend; `NIMBUS_BENCH_NET=socketpair`
//! forces the socketpair backend; the tests are `device_model_tx_frames_per_second` and
//! `device_model_rx_frames_per_second`).
//!
//! Backend. As root with `/dev/net/tun`, a real tap made for each case (`nbench<pid>-<n>`,
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte header, through [`Tap::open`] as `-netdev tap`
//! opens it), IPv6 off so the host sends nothing on it, brought up with `ip link`. It is not
//! persistent, so it goes away when its descriptor closes, and a guard deletes it if it is
//! still there when the case ends (a panic included). The kernel's side of the tap:
//! - tx: frames written to the tap enter the host's stack as received on that interface (the
//!   tap's `rx_packets`, checked against the device's count) and are dropped there (unknown
//!   ethertype, another host's MAC). Nothing reads them back, so nothing but the kernel's own
//!   receive path is in the measured write.
//! - rx: an AF_PACKET socket bound to the tap's interface (protocol 0: it sends, it receives
//!   nothing; PACKET_QDISC_BYPASS, so each `send` puts the frame straight into the tap's queue)
//!   queues a batch of frames, which the tap descriptor then reads, virtio header first.
//!
//! Without root (or with `NIMBUS_BENCH_NET=socketpair`) a datagram socketpair stands in for
//! the tap, its other end playing the kernel's side: it takes the frames off (tx) or queues
//! them (rx). The figures are then not the tap's.
//!
//! tx: the driver keeps the whole 256-entry queue full of one-descriptor chains (virtio header
//! and frame) and notifies once per batch of 128; the device sends each frame to the backend.
//! rx: 256 posted 2 KiB buffers; the kernel's side queues a batch of 128 frames, then the
//! device's [`Net::rx_ready`] moves them into the guest's buffers (reading until the backend
//! says EAGAIN), which the driver posts back.
//! Only the time inside the device (the notify, `rx_ready`) is counted as "device"; the
//! kernel's side (the injection, the socketpair's recv) is left out. "loop" is the rate of the
//! whole loop, both sides on this thread.
//!
//! The floor is what the device cannot beat: the same frames, header included, written to
//! the backend one `write` each from one buffer (tx), or read from it one `read` each into one
//! buffer until EAGAIN (rx), with the same kernel's side, timed the same way (per batch,
//! injection left out). It uses a second descriptor of the same tap queue (a dup), and its
//! batches alternate with the device's in one loop, so both see the same host at the same
//! moment: on this shared 2-core host, back-to-back runs of each drifted by 20-30%, the
//! interleaved ratio by a few per cent. "ratio" is device / floor per-frame cost, the median of
//! the rounds' ratios.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
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
/// Frames per notification / per `rx_ready` call / per timed floor batch.
const BATCH: u16 = 128;
/// `PACKET_QDISC_BYPASS` from linux/if_packet.h (not exported by libc for this target).
const PACKET_QDISC_BYPASS: libc::c_int = 20;

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

/// Sets an int socket option.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from `value`, which lives across the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Room for a few batches of the largest frames in the socketpair (root may exceed wmem_max).
fn big_buffers(sock: &UnixDatagram) {
    let size: libc::c_int = 16 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        set_int_option(sock.as_raw_fd(), libc::SOL_SOCKET, opt, size).unwrap();
    }
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
        // Best effort: refused without CAP_NET_ADMIN.
        let _ = set_int_option(sock.as_raw_fd(), libc::SOL_SOCKET, opt, size);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The bench's tap interface: deleted when dropped if closing its descriptor did not already.
struct TapGuard {
    name: String,
}

impl TapGuard {
    fn exists(&self) -> bool {
        std::path::Path::new(&format!("/sys/class/net/{}", self.name)).exists()
    }

    /// Frames written into the tap so far (the interface's receive count).
    fn frames_written(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.name);
        std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if self.exists() {
            let _ = Command::new("ip")
                .args(["link", "delete", "dev", &self.name])
                .output();
        }
    }
}

/// An AF_PACKET socket that sends frames out of one interface (into the tap's queue).
struct Injector(OwnedFd);

impl Injector {
    fn bind(ifname: &str) -> Injector {
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        #[allow(unsafe_code)]
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cname = CString::new(ifname).unwrap();
        // SAFETY: if_nametoindex reads the NUL-terminated string, valid for the call.
        #[allow(unsafe_code)]
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(ifindex, 0, "if_nametoindex({ifname})");
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        #[allow(unsafe_code)]
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        // Protocol 0: the socket receives nothing, it only sends.
        addr.sll_protocol = 0;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes from `addr`, which lives across
        // the call.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind to {ifname}: {}", io::Error::last_os_error());
        set_int_option(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1).unwrap();
        Injector(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads at most `frame.len()` bytes from `frame`, valid for the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }
}

/// The kernel's side of the backend.
enum KernelSide {
    /// A real tap: frames written to it are the host's; frames come in through `inject`.
    Tap {
        inject: Injector,
        guard: TapGuard,
        written_before: u64,
    },
    /// The other end of a socketpair, and the frames it took off so far.
    Socket {
        peer: UnixDatagram,
        sink: Vec<u8>,
        taken: u64,
    },
}

impl KernelSide {
    /// Queues `packet` (virtio header first) for the backend descriptor to read.
    fn inject(&mut self, packet: &[u8]) {
        match self {
            // The tap's reader gets a header the kernel writes: send the frame alone.
            KernelSide::Tap { inject, .. } => inject.send(&packet[VNET_HDR_LEN..]),
            KernelSide::Socket { peer, .. } => {
                peer.send(packet).unwrap();
            }
        }
    }

    /// Takes the frames written to the backend away (the tap's kernel needs no help).
    fn drain(&mut self) {
        if let KernelSide::Socket { peer, sink, taken } = self {
            while peer.recv(sink).is_ok() {
                *taken += 1;
            }
        }
    }

    /// Frames the backend took from its writer since it was made.
    fn taken(&mut self) -> u64 {
        self.drain();
        match self {
            KernelSide::Tap {
                guard,
                written_before,
                ..
            } => guard.frames_written() - *written_before,
            KernelSide::Socket { taken, .. } => *taken,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Tap,
    Socketpair,
}

impl BackendKind {
    fn pick() -> BackendKind {
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        let forced = std::env::var("NIMBUS_BENCH_NET").is_ok_and(|v| v == "socketpair");
        if root && !forced && std::path::Path::new(tap::TUN_PATH).exists() {
            BackendKind::Tap
        } else {
            BackendKind::Socketpair
        }
    }

    fn label(self) -> &'static str {
        match self {
            BackendKind::Tap => "tap",
            BackendKind::Socketpair => "socketpair",
        }
    }

    /// A fresh backend: the descriptor the device uses, a second descriptor of the same queue
    /// (the same open file) for the floor, and the kernel's side. The kernel's side must
    /// outlive the descriptors (it deletes the tap if still there).
    fn open(self) -> (Box<dyn TapIo>, Box<dyn TapIo>, KernelSide) {
        match self {
            BackendKind::Tap => {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
                let name = format!("nbench{}-{n}", std::process::id() % 100_000);
                let tap = Tap::open(&name).unwrap();
                let floor = Tap::from_owned_fd(tap.try_clone_file().unwrap().into()).unwrap();
                let guard = TapGuard { name };
                // No router solicitations or other frames of the host's own on the tap.
                let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", guard.name);
                std::fs::write(sysctl, "1").unwrap();
                ip(&["link", "set", "dev", &guard.name, "up"]);
                let inject = Injector::bind(&guard.name);
                let written_before = guard.frames_written();
                let side = KernelSide::Tap {
                    inject,
                    guard,
                    written_before,
                };
                (Box::new(tap), Box::new(floor), side)
            }
            BackendKind::Socketpair => {
                let (ours, peer) = UnixDatagram::pair().unwrap();
                for s in [&ours, &peer] {
                    s.set_nonblocking(true).unwrap();
                    big_buffers(s);
                }
                let side = KernelSide::Socket {
                    peer,
                    sink: vec![0u8; 4096],
                    taken: 0,
                };
                let floor = SocketTap(ours.try_clone().unwrap());
                (Box::new(SocketTap(ours)), Box::new(floor), side)
            }
        }
    }
}

struct Bench {
    t: MmioTransport,
    net: SharedNet,
    mem: Arc<GuestMemoryMmap>,
    rxq: TestQueue,
    txq: TestQueue,
}

/// A running device over `backend` whose driver took what the test guest takes: VERSION_1
/// and MAC (12-byte header, no mergeable buffers, no event index, no offloads).
fn bench(backend: Box<dyn TapIo>) -> Bench {
    let options = NetOptions {
        id: "bench0".into(),
        mac: None,
        mtu: None,
    };
    let net = SharedNet::new(Net::new(&options, backend).unwrap());
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
    }
}

/// A 60-byte or larger 0x88b5 frame to another host's MAC, virtio header first.
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

/// One timed run: frames moved, the time counted (device or floor), the whole loop's time.
struct Rate {
    frames: u64,
    timed: Duration,
    total: Duration,
}

impl Rate {
    fn ns_per_frame(&self) -> f64 {
        self.timed.as_secs_f64() * 1e9 / self.frames as f64
    }

    fn loop_rate(&self) -> f64 {
        self.frames as f64 / self.total.as_secs_f64()
    }
}

/// Device and floor, interleaved batch by batch on one backend queue.
struct Pair {
    device: Rate,
    floor: Rate,
}

impl Pair {
    fn new() -> Pair {
        let zero = || Rate {
            frames: 0,
            timed: Duration::ZERO,
            total: Duration::ZERO,
        };
        Pair {
            device: zero(),
            floor: zero(),
        }
    }
}

fn tx(kind: BackendKind, len: usize, secs: f64) -> Pair {
    let (backend, mut floor, mut side) = kind.open();
    let mut b = bench(backend);
    let bytes = packet(len);
    for i in 0..QUEUE_SIZE {
        let at = TX_BUF + u64::from(i) * BUF_LEN;
        b.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        b.txq.write_desc(&b.mem, i, at, bytes.len() as u32, 0, 0);
    }
    let (mut next, mut seen) = (0u16, 0u16);
    let mut r = Pair::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // The device: fill the free entries, up to a batch, with descriptors in ring order,
        // and notify once.
        let t = Instant::now();
        let mut added = 0;
        while added < BATCH && next.wrapping_sub(seen) < QUEUE_SIZE {
            b.txq.publish(&b.mem, next % QUEUE_SIZE);
            next = next.wrapping_add(1);
            added += 1;
        }
        let t0 = Instant::now();
        wr(&mut b.t, 0x50, 1);
        r.device.timed += t0.elapsed();
        let used = b.txq.used_idx(&b.mem);
        r.device.frames += u64::from(used.wrapping_sub(seen));
        seen = used;
        side.drain();
        r.device.total += t.elapsed();
        // The floor: the same number of frames written as they are.
        let t = Instant::now();
        let t0 = Instant::now();
        for _ in 0..added {
            floor.write_frame(&bytes).unwrap();
        }
        r.floor.timed += t0.elapsed();
        r.floor.frames += u64::from(added);
        side.drain();
        r.floor.total += t.elapsed();
    }
    let c = b.net.lock().counters();
    assert_eq!(c.tx_frames, r.device.frames, "every frame sent: {c:?}");
    let all = r.device.frames + r.floor.frames;
    assert_eq!(side.taken(), all, "the backend took every frame");
    r
}

fn rx(kind: BackendKind, len: usize, secs: f64) -> Pair {
    let (backend, mut floor, mut side) = kind.open();
    let mut b = bench(backend);
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
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    let mut seen = 0u16;
    let mut r = Pair::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        // The device: a batch of frames waits in the backend; `rx_ready` moves them into the
        // guest's buffers, the driver posts them back and notifies.
        let t = Instant::now();
        for _ in 0..BATCH {
            side.inject(&bytes);
        }
        let t0 = Instant::now();
        let outcome = b.net.lock().rx_ready();
        r.device.timed += t0.elapsed();
        assert!(
            matches!(outcome, RxOutcome::KeepPolling),
            "the device kept up: {outcome:?}"
        );
        let used = b.rxq.used_idx(&b.mem);
        while seen != used {
            let (id, written) = b.rxq.used_elem(&b.mem, seen);
            assert_eq!(written as usize, bytes.len(), "only the bench's frames");
            seen = seen.wrapping_add(1);
            r.device.frames += 1;
            post(&mut b, id as u16);
        }
        let t0 = Instant::now();
        wr(&mut b.t, 0x50, 0);
        r.device.timed += t0.elapsed();
        r.device.total += t.elapsed();
        // The floor: as many frames, read as they are until the backend says EAGAIN.
        let t = Instant::now();
        for _ in 0..BATCH {
            side.inject(&bytes);
        }
        let t0 = Instant::now();
        loop {
            match floor.read_frame(&mut buf) {
                Ok(n) => {
                    assert_eq!(n, bytes.len(), "only the bench's frames");
                    r.floor.frames += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        r.floor.timed += t0.elapsed();
        r.floor.total += t.elapsed();
        assert_eq!(r.device.frames, r.floor.frames, "every frame came through");
    }
    let c = b.net.lock().counters();
    assert_eq!(c.rx_frames, r.device.frames, "every frame delivered: {c:?}");
    r
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

type Case = fn(BackendKind, usize, f64) -> Pair;

/// Runs `case` for `rounds` rounds of `secs / rounds` each and prints the device's, the
/// floor's and their ratio's lines.
fn compare(kind: BackendKind, what: &str, len: usize, case: Case) {
    let secs = std::env::var("NIMBUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = std::env::var("NIMBUS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let per_round = secs / rounds as f64;
    let (mut dev, mut flo, mut ratios, mut loops) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let Pair { device, floor } = case(kind, len, per_round);
        ratios.push(device.ns_per_frame() / floor.ns_per_frame());
        dev.push(device.ns_per_frame());
        flo.push(floor.ns_per_frame());
        loops.push(device.loop_rate());
    }
    let backend = kind.label();
    let line = |side: &str, ns: &[f64], tail: String| {
        let m = median(ns.to_vec());
        let (lo, hi) = range(ns);
        println!(
            "BENCH net {side} {what} {len}-byte frames: {:.0} frames/s ({m:.0} ns/frame, \
             {:.1} MB/s) {tail}; backend {backend}, {rounds} rounds {lo:.0}-{hi:.0} ns/frame",
            1e9 / m,
            1e3 / m * len as f64,
        );
    };
    line(
        "device-model",
        &dev,
        format!("device; {:.0} frames/s loop incl. peer", median(loops)),
    );
    line("floor", &flo, "plain loop".into());
    let (lo, hi) = range(&ratios);
    println!(
        "BENCH net ratio {what} {len}-byte frames: {:.2}x device/floor per-frame cost; \
         backend {backend}, {rounds} rounds {lo:.2}-{hi:.2}",
        median(ratios.clone())
    );
}

fn run(what: &str, case: Case) {
    let kind = BackendKind::pick();
    if kind == BackendKind::Socketpair {
        println!(
            "net bench: no tap (needs root and {}), a socketpair stands in",
            tap::TUN_PATH
        );
    }
    for len in [60, 1500] {
        compare(kind, what, len, case);
    }
}

#[test]
#[ignore = "a benchmark: cargo test -p virtio --release net::bench -- --ignored --nocapture"]
fn device_model_tx_frames_per_second() {
    run("tx (guest->tap)", tx);
}

#[test]
#[ignore = "a benchmark: cargo test -p virtio --release net::bench -- --ignored --nocapture"]
fn device_model_rx_frames_per_second() {
    run("rx (tap->guest)", rx);
}
