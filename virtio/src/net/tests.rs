//! The net device driven end to end: a test driver runs Linux's probe through the virtio-mmio
//! registers and lays out the rx and tx queues; a datagram socketpair stands in for the tap.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use address_space::vm_memory::{Bytes, GuestAddress};
use address_space::IoHandler;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::header::{VnetHeader, GSO_TCPV4, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM};
use super::*;
use crate::device::feature;
use crate::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::testing::{memory, negotiate, rd, wr, TestQueue, F_NEXT, MEM_SIZE};

const SIZE: u16 = 16;
const TX_BUF: u64 = 0x40000;
const RX_BUF: u64 = 0x80000;

/// One end of a datagram socketpair, playing the tap.
struct SocketTap {
    sock: UnixDatagram,
    offloads: Arc<AtomicU32>,
    /// Once set, reads fail as they do on a tap whose interface was deleted.
    lost: Arc<AtomicBool>,
}

impl TapIo for SocketTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        self.sock.send(frame)
    }
    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        self.offloads.store(flags, Ordering::SeqCst);
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn name(&self) -> &str {
        "socketpair"
    }
}

struct Rig {
    t: MmioTransport,
    net: SharedNet,
    mem: Arc<GuestMemoryMmap>,
    rxq: TestQueue,
    txq: TestQueue,
    peer: UnixDatagram,
    offloads: Arc<AtomicU32>,
    lost: Arc<AtomicBool>,
}

fn options() -> NetOptions {
    NetOptions {
        id: "net0".into(),
        mac: None,
        mtu: None,
    }
}

fn device(options: &NetOptions) -> (SharedNet, UnixDatagram, Arc<AtomicU32>, Arc<AtomicBool>) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let offloads = Arc::new(AtomicU32::new(u32::MAX));
    let lost = Arc::new(AtomicBool::new(false));
    let tap = SocketTap {
        sock: ours,
        offloads: Arc::clone(&offloads),
        lost: Arc::clone(&lost),
    };
    let net = SharedNet::new(Net::new(options, Box::new(tap)).unwrap());
    (net, peer, offloads, lost)
}

/// A running device whose driver accepted `pick(offered features)`.
fn rig_with(pick: impl Fn(u64) -> u64) -> Rig {
    let (net, peer, offloads, lost) = device(&options());
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut t = MmioTransport::new(Box::new(net.clone()), Arc::clone(&mem), interrupt);
    let rxq = TestQueue::new(SIZE, 0x1000);
    let txq = TestQueue::new(SIZE, 0x2000);
    let status = negotiate(&mut t, pick);
    assert_ne!(status & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
    rxq.setup(&mut t, 0);
    txq.setup(&mut t, 1);
    wr(&mut t, 0x70, status | STATUS_DRIVER_OK);
    assert_ne!(rd(&mut t, 0x70) & STATUS_DRIVER_OK, 0);
    Rig {
        t,
        net,
        mem,
        rxq,
        txq,
        peer,
        offloads,
        lost,
    }
}

/// Every feature but MRG_RXBUF and EVENT_IDX.
fn rig() -> Rig {
    rig_with(|f| f & !(feature(VIRTIO_NET_F_MRG_RXBUF) | feature(VIRTIO_RING_F_EVENT_IDX)))
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn packet(h: VnetHeader, frame: &[u8]) -> Vec<u8> {
    [&h.to_bytes()[..], frame].concat()
}

impl Rig {
    /// Publishes `bytes` as one tx chain cut into `pieces` and notifies queue 1.
    fn send(&mut self, bytes: &[u8], pieces: usize) -> u16 {
        self.mem.write_slice(bytes, GuestAddress(TX_BUF)).unwrap();
        let step = bytes.len().div_ceil(pieces);
        let bufs: Vec<(u64, u32, bool)> = (0..bytes.len())
            .step_by(step)
            .map(|at| {
                let len = step.min(bytes.len() - at);
                (TX_BUF + at as u64, len as u32, false)
            })
            .collect();
        self.send_chain(&bufs)
    }

    fn send_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.txq.add_chain(&self.mem, bufs);
        wr(&mut self.t, 0x50, 1);
        head
    }

    /// What reached the tap's other end, if anything.
    fn tap_output(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_PACKET_LEN + 100];
        let n = self.peer.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn to_tap(&self, bytes: &[u8]) {
        self.peer.send(bytes).unwrap();
    }

    /// Posts one receive chain of `(address, length)` buffers and notifies queue 0.
    fn post_rx(&mut self, bufs: &[(u64, u32)]) -> u16 {
        let bufs: Vec<(u64, u32, bool)> = bufs.iter().map(|&(a, l)| (a, l, true)).collect();
        let head = self.rxq.add_chain(&self.mem, &bufs);
        wr(&mut self.t, 0x50, 0);
        head
    }

    fn rx_ready(&self) -> RxOutcome {
        self.net.lock().rx_ready()
    }

    fn counters(&self) -> NetCounters {
        self.net.lock().counters()
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Interrupts raised since the last call.
    fn interrupts(&self) -> u64 {
        self.t.interrupt().eventfd().read().unwrap_or(0)
    }

    fn resumed(&self) -> bool {
        self.net.lock().rx_resume_event().read().is_ok()
    }

    /// Sets the driver's used_event (EVENT_IDX) for queue `q`.
    fn set_used_event(&self, q: &TestQueue, value: u16) {
        let at = q.avail + 4 + 2 * u64::from(q.size);
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }
}

fn plain_frame(seed: u8, len: usize) -> Vec<u8> {
    packet(VnetHeader::default(), &pattern(seed, len))
}

#[test]
fn frame_the_guest_sends_reaches_the_tap_with_its_header() {
    let mut r = rig();
    let h = VnetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let bytes = packet(h, &pattern(1, 3000));
    let head = r.send(&bytes, 3);
    assert_eq!(r.tap_output().unwrap(), bytes);
    assert_eq!(r.txq.used_idx(&r.mem), 1);
    assert_eq!(r.txq.used_elem(&r.mem, 0), (u32::from(head), 0));
    let c = r.counters();
    assert_eq!((c.tx_frames, c.tx_bytes), (1, 3000));
}

#[test]
fn oversize_tx_frame_is_dropped_and_counted() {
    let mut r = rig();
    let half = (MAX_PACKET_LEN / 2 + 1) as u32;
    r.send_chain(&[
        (TX_BUF, half, false),
        (TX_BUF + u64::from(half), half, false),
    ]);
    assert_eq!(r.tap_output(), None);
    assert_eq!(r.txq.used_idx(&r.mem), 1);
    assert_eq!(r.counters().tx_dropped_oversize, 1);
    // The queue goes on.
    r.send(&plain_frame(2, 60), 1);
    assert!(r.tap_output().is_some());
}

#[test]
fn tx_frame_with_nonsense_header_is_dropped_and_counted() {
    let mut r = rig();
    let nonsense = [
        VnetHeader {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: 1000,
            csum_offset: 6,
            ..VnetHeader::default()
        },
        VnetHeader {
            gso_type: 0x42,
            ..VnetHeader::default()
        },
        VnetHeader {
            hdr_len: 9000,
            ..VnetHeader::default()
        },
    ];
    for h in nonsense {
        r.send(&packet(h, &pattern(3, 100)), 1);
    }
    r.send(&[0u8; 8], 1);
    assert_eq!(r.tap_output(), None);
    assert_eq!(r.counters().tx_dropped_bad_header, 4);
    assert_eq!(r.txq.used_idx(&r.mem), 4);
    assert_eq!(r.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn tx_chain_with_writable_or_outside_ram_buffer_is_dropped_and_counted() {
    let mut r = rig();
    r.mem
        .write_slice(&plain_frame(4, 60), GuestAddress(TX_BUF))
        .unwrap();
    r.send_chain(&[(TX_BUF, 12, false), (TX_BUF + 12, 60, true)]);
    r.send_chain(&[(TX_BUF, 12, false), (MEM_SIZE - 10, 60, false)]);
    assert_eq!(r.tap_output(), None);
    assert_eq!(r.counters().tx_dropped_bad_chain, 2);
    assert_eq!(r.txq.used_idx(&r.mem), 2);
    assert_eq!(r.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn looping_tx_chain_needs_reset_without_hanging() {
    let mut r = rig();
    r.txq.write_desc(&r.mem, 0, TX_BUF, 100, F_NEXT, 1);
    r.txq.write_desc(&r.mem, 1, TX_BUF, 100, F_NEXT, 0);
    r.txq.publish(&r.mem, 0);
    wr(&mut r.t, 0x50, 1);
    assert_ne!(r.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(r.counters().tx_dropped_bad_chain, 1);
    assert_eq!(r.tap_output(), None);
    assert!(matches!(r.rx_ready(), RxOutcome::NeedsReset));
}

#[test]
fn tap_frame_arrives_in_one_rx_buffer_without_mrg_rxbuf() {
    let mut r = rig();
    r.post_rx(&[(RX_BUF, 2048)]);
    let h = VnetHeader {
        flags: HDR_F_DATA_VALID,
        ..VnetHeader::default()
    };
    let frame = pattern(5, 1000);
    r.to_tap(&packet(h, &frame));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.rxq.used_idx(&r.mem), 1);
    assert_eq!(r.rxq.used_elem(&r.mem, 0), (0, 1012));
    let expected = VnetHeader {
        num_buffers: 1,
        ..h
    };
    assert_eq!(r.guest_bytes(RX_BUF, 12), expected.to_bytes());
    assert_eq!(r.guest_bytes(RX_BUF + 12, 1000), frame);
    assert_eq!(r.interrupts(), 1);
    let c = r.counters();
    assert_eq!((c.rx_frames, c.rx_bytes), (1, 1000));
}

#[test]
fn tap_frame_fills_a_chain_of_several_buffers_without_mrg_rxbuf() {
    let mut r = rig();
    r.post_rx(&[
        (RX_BUF, 10),
        (RX_BUF + 0x1000, 500),
        (RX_BUF + 0x2000, 1000),
    ]);
    let frame = pattern(6, 900);
    r.to_tap(&plain_frame(6, 900));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.rxq.used_elem(&r.mem, 0), (0, 912));
    let mut got = r.guest_bytes(RX_BUF, 10);
    got.extend(r.guest_bytes(RX_BUF + 0x1000, 500));
    got.extend(r.guest_bytes(RX_BUF + 0x2000, 402));
    assert_eq!(&got[12..], &frame[..]);
    assert_eq!(got[10..12], [1, 0]);
}

#[test]
fn tap_frame_spans_several_chains_with_mrg_rxbuf() {
    let mut r = rig_with(|f| f & !feature(VIRTIO_RING_F_EVENT_IDX));
    for i in 0..3 {
        r.post_rx(&[(RX_BUF + i * 0x1000, 1000)]);
    }
    let frame = pattern(7, 2500);
    r.to_tap(&plain_frame(7, 2500));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.rxq.used_idx(&r.mem), 3);
    let lens: Vec<(u32, u32)> = (0..3).map(|i| r.rxq.used_elem(&r.mem, i)).collect();
    assert_eq!(lens, [(0, 1000), (1, 1000), (2, 512)]);
    assert_eq!(r.guest_bytes(RX_BUF + 10, 2), [3, 0], "num_buffers");
    let mut got = r.guest_bytes(RX_BUF + 12, 988);
    got.extend(r.guest_bytes(RX_BUF + 0x1000, 1000));
    got.extend(r.guest_bytes(RX_BUF + 0x2000, 512));
    assert_eq!(got, frame);
}

#[test]
fn no_rx_buffers_stops_reading_and_keeps_the_frame_until_buffers_come() {
    let mut r = rig();
    assert!(r.resumed(), "activation resumes rx");
    r.to_tap(&plain_frame(8, 300));
    r.to_tap(&plain_frame(9, 200));
    assert!(matches!(r.rx_ready(), RxOutcome::NeedBuffers));
    // The second frame is still in the tap: only one frame was read.
    assert_eq!(r.counters(), NetCounters::default());
    assert!(!r.resumed());
    r.post_rx(&[(RX_BUF, 2048)]);
    assert!(r.resumed(), "buffers posted: poll the tap again");
    assert_eq!(r.rxq.used_elem(&r.mem, 0), (0, 312));
    assert_eq!(r.guest_bytes(RX_BUF + 12, 300), pattern(8, 300));
    assert_eq!(r.interrupts(), 1);
    r.post_rx(&[(RX_BUF + 0x1000, 2048)]);
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.guest_bytes(RX_BUF + 0x1000 + 12, 200), pattern(9, 200));
    assert_eq!(r.counters().rx_frames, 2);
}

#[test]
fn mrg_frame_waits_for_enough_buffers_then_is_delivered_whole() {
    let mut r = rig_with(|f| f & !feature(VIRTIO_RING_F_EVENT_IDX));
    assert!(r.resumed(), "activation resumes rx");
    r.post_rx(&[(RX_BUF, 1000)]);
    r.to_tap(&plain_frame(10, 2500));
    assert!(matches!(r.rx_ready(), RxOutcome::NeedBuffers));
    assert_eq!(
        r.rxq.used_idx(&r.mem),
        0,
        "nothing used before the frame is whole"
    );
    r.post_rx(&[(RX_BUF + 0x1000, 1000)]);
    assert!(!r.resumed());
    r.post_rx(&[(RX_BUF + 0x2000, 1000)]);
    assert!(r.resumed());
    assert_eq!(r.rxq.used_idx(&r.mem), 3);
    assert_eq!(r.guest_bytes(RX_BUF + 10, 2), [3, 0]);
    assert_eq!(r.counters().rx_frames, 1);
}

#[test]
fn mrg_frame_no_number_of_buffers_can_hold_is_dropped_and_buffers_returned() {
    let mut r = rig_with(|f| f & !feature(VIRTIO_RING_F_EVENT_IDX));
    for i in 0..u64::from(SIZE) {
        r.post_rx(&[(RX_BUF + i * 0x100, 12)]);
    }
    r.to_tap(&plain_frame(18, 300));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.counters().rx_dropped_too_big, 1);
    assert_eq!(r.rxq.used_idx(&r.mem), SIZE);
    assert!((0..SIZE).all(|i| r.rxq.used_elem(&r.mem, i).1 == 0));
}

#[test]
fn tx_frame_the_tap_refuses_is_dropped_and_counted() {
    let mut r = rig();
    r.peer = UnixDatagram::unbound().unwrap();
    r.send(&plain_frame(19, 60), 1);
    assert_eq!(r.counters().tx_dropped_tap_error, 1);
    assert_eq!(r.txq.used_idx(&r.mem), 1);
}

#[test]
fn tap_frame_too_big_for_the_chain_is_dropped_and_counted() {
    let mut r = rig();
    r.post_rx(&[(RX_BUF, 100)]);
    r.to_tap(&plain_frame(11, 500));
    r.to_tap(&plain_frame(12, 60));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.counters().rx_dropped_too_big, 1);
    // The chain went to the next frame, which fits.
    assert_eq!(r.rxq.used_elem(&r.mem, 0), (0, 72));
    assert_eq!(r.guest_bytes(RX_BUF + 12, 60), pattern(12, 60));
}

#[test]
fn tap_frame_with_offload_the_guest_refused_is_dropped_and_counted() {
    let mut r =
        rig_with(|f| f & !(feature(VIRTIO_NET_F_GUEST_TSO4) | feature(VIRTIO_RING_F_EVENT_IDX)));
    r.post_rx(&[(RX_BUF, 4096)]);
    let h = VnetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        ..VnetHeader::default()
    };
    r.to_tap(&packet(h, &pattern(13, 3000)));
    r.to_tap(&[1, 2, 3]);
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.counters().rx_dropped_bad_header, 2);
    assert_eq!(r.rxq.used_idx(&r.mem), 0);
}

#[test]
fn readable_rx_buffer_is_given_back_empty_and_counted() {
    let mut r = rig();
    let head = r.rxq.add_chain(&r.mem, &[(RX_BUF, 2048, false)]);
    r.to_tap(&plain_frame(14, 100));
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!(r.rxq.used_elem(&r.mem, 0), (u32::from(head), 0));
    assert_eq!(r.counters().rx_dropped_bad_chain, 1);
}

#[test]
fn looping_rx_chain_needs_reset() {
    let mut r = rig();
    r.rxq.write_desc(&r.mem, 0, RX_BUF, 100, F_NEXT | 2, 0);
    r.rxq.publish(&r.mem, 0);
    r.to_tap(&plain_frame(15, 100));
    assert!(matches!(r.rx_ready(), RxOutcome::NeedsReset));
    wr(&mut r.t, 0x50, 1);
    assert_ne!(r.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
}

#[test]
fn event_idx_suppresses_tx_interrupts_until_used_event() {
    let mut r = rig_with(|f| f);
    r.interrupts();
    r.set_used_event(&r.txq, 2);
    for seed in 0..3 {
        r.send(&plain_frame(seed, 60), 1);
        let expected = u64::from(seed == 2);
        assert_eq!(r.interrupts(), expected, "after frame {seed}");
    }
    assert_eq!(r.counters().tx_frames, 3);
}

#[test]
fn without_event_idx_every_tx_frame_interrupts() {
    let mut r = rig();
    for seed in 0..3 {
        r.send(&plain_frame(seed, 60), 1);
        assert_eq!(r.interrupts(), 1);
    }
}

#[test]
fn event_idx_suppresses_rx_interrupts_until_used_event() {
    let mut r = rig_with(|f| f & !feature(VIRTIO_NET_F_MRG_RXBUF));
    r.set_used_event(&r.rxq, 1);
    for i in 0..3 {
        r.post_rx(&[(RX_BUF + i * 0x1000, 2048)]);
    }
    r.to_tap(&plain_frame(1, 60));
    r.rx_ready();
    assert_eq!(r.interrupts(), 0, "used_event 1 not reached");
    r.to_tap(&plain_frame(2, 60));
    r.rx_ready();
    assert_eq!(r.interrupts(), 1);
}

#[test]
fn guest_offloads_reach_the_tap() {
    let r = rig();
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    assert_eq!(r.offloads.load(Ordering::SeqCst), all);
    let r = rig_with(|f| f & !feature(VIRTIO_NET_F_GUEST_CSUM));
    assert_eq!(r.offloads.load(Ordering::SeqCst), 0);
}

#[test]
fn reset_drops_the_pending_frame_counted_and_stops_rx() {
    let mut r = rig();
    r.to_tap(&plain_frame(16, 100));
    assert!(matches!(r.rx_ready(), RxOutcome::NeedBuffers));
    wr(&mut r.t, 0x70, 0);
    assert_eq!(r.counters().rx_dropped_reset, 1);
    assert!(matches!(r.rx_ready(), RxOutcome::NeedBuffers));
}

#[test]
fn rx_before_activation_needs_buffers() {
    let (net, peer, _, _) = device(&options());
    peer.send(&plain_frame(17, 60)).unwrap();
    assert!(matches!(net.lock().rx_ready(), RxOutcome::NeedBuffers));
}

#[test]
fn config_space_holds_mac_link_up_pairs_and_mtu() {
    let mut opts = options();
    opts.mac = Some("52:54:00:aa:bb:cc".parse().unwrap());
    opts.mtu = Some(1500);
    let (net, _peer, _, _) = device(&opts);
    let mem = memory();
    let mut t = MmioTransport::new(
        Box::new(net.clone()),
        mem,
        Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
    );
    let mut config = [0xffu8; 16];
    t.read(0x100, &mut config);
    assert_eq!(
        config,
        [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 1, 0, 1, 0, 0xdc, 0x05, 0, 0, 0, 0]
    );
    assert_eq!(rd(&mut t, 0x08), DEVICE_TYPE_NET);
    let features = net.lock().features();
    assert_eq!(features, NET_FEATURES | feature(VIRTIO_NET_F_MTU));
    assert_eq!(
        features & feature(VIRTIO_F_VERSION_1),
        0,
        "the transport adds it"
    );
    // Writes are ignored.
    t.write(0x100, &[0; 6]);
    assert_eq!(net.lock().mac().to_string(), "52:54:00:aa:bb:cc");
}

#[test]
fn mtu_out_of_range_is_refused() {
    let mut opts = options();
    opts.mtu = Some(67);
    let (ours, _peer) = UnixDatagram::pair().unwrap();
    let tap = SocketTap {
        sock: ours,
        offloads: Arc::default(),
        lost: Arc::default(),
    };
    let err = Net::new(&opts, Box::new(tap)).err().unwrap();
    assert!(err.to_string().contains("MTU 67"));
}

#[test]
fn without_mtu_the_feature_is_not_offered() {
    let (net, _peer, _, _) = device(&options());
    assert_eq!(net.lock().features() & feature(VIRTIO_NET_F_MTU), 0);
}

/// A tap whose interface was deleted fails its reads: the first failure is reported (the
/// machine logs it once), the link goes down with a configuration-change interrupt, and the
/// device stops reading the tap, even when the guest posts more buffers.
#[test]
fn tap_that_fails_a_read_is_reported_once_and_takes_the_link_down() {
    let mut r = rig();
    r.post_rx(&[(RX_BUF, 2048)]);
    assert!(matches!(r.rx_ready(), RxOutcome::KeepPolling));
    assert_eq!((rd(&mut r.t, 0x104) >> 16) & 1, 1, "link up at first");
    let isr = rd(&mut r.t, 0x60);
    wr(&mut r.t, 0x64, isr);
    r.lost.store(true, Ordering::SeqCst);
    assert!(matches!(r.rx_ready(), RxOutcome::TapFailed(_)));
    assert_eq!((rd(&mut r.t, 0x104) >> 16) & 1, 0, "link down");
    assert_ne!(rd(&mut r.t, 0x60) & 2, 0, "configuration-change interrupt");
    assert!(matches!(r.rx_ready(), RxOutcome::TapLost));
    r.post_rx(&[(RX_BUF + 0x1000, 2048)]);
    assert!(matches!(r.rx_ready(), RxOutcome::TapLost));
}

/// A send that finds the tap gone (the guest posted no receive buffers, so nothing read it)
/// takes the link down as a failed read does; receive then leaves the tap alone silently.
#[test]
fn tap_found_gone_by_a_send_takes_the_link_down_and_is_not_read_again() {
    let mut r = rig();
    let isr = rd(&mut r.t, 0x60);
    wr(&mut r.t, 0x64, isr);
    r.lost.store(true, Ordering::SeqCst);
    r.send(&packet(VnetHeader::default(), &pattern(1, 60)), 1);
    assert_eq!(r.counters().tx_dropped_tap_error, 1);
    assert_eq!((rd(&mut r.t, 0x104) >> 16) & 1, 0, "link down");
    assert_ne!(rd(&mut r.t, 0x60) & 2, 0, "configuration-change interrupt");
    r.post_rx(&[(RX_BUF, 2048)]);
    assert!(matches!(r.rx_ready(), RxOutcome::TapLost));
}
