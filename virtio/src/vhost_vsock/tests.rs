//! The device against a recording stand-in for vhost: each request it makes, in order, with
//! its arguments; and the event queue against the test driver.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::device::Shared;
use crate::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK};
use crate::testing::{probe, rd, wr, TestQueue};
use crate::vhost_kernel::recorder::{Recorder, Request};

const CID: u64 = 3;
/// What Linux's vhost-vsock offers: VHOST_FEATURES, ACCESS_PLATFORM and SEQPACKET.
const KERNEL_FEATURES: u64 = feature(VIRTIO_F_NOTIFY_ON_EMPTY)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(26) // VHOST_F_LOG_ALL
    | feature(27) // VIRTIO_F_ANY_LAYOUT
    | feature(VIRTIO_F_VERSION_1)
    | feature(33) // VIRTIO_F_ACCESS_PLATFORM
    | feature(VIRTIO_VSOCK_F_SEQPACKET);
/// A second RAM region, so that the memory table has two entries.
const HIGH_RAM: u64 = 0x100_0000;
const EVENT_BUF: u64 = 0x8000;

/// Two RAM regions: 1 MiB at 0 (the rings and buffers) and 64 KiB at 16 MiB.
fn memory() -> Arc<GuestMemoryMmap> {
    let ranges = [
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(HIGH_RAM), 0x1_0000),
    ];
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).unwrap())
}

/// A device over a recorder, behind the virtio-mmio transport, and the test driver's queues
/// (rx of 16 entries, tx of 32, event of 8).
struct Rig {
    t: MmioTransport,
    device: Shared<VhostVsock<Recorder>>,
    rec: Recorder,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Interrupt,
    queues: [TestQueue; 3],
}

fn rig_with(features: u64) -> Rig {
    let rec = Recorder::new(features);
    let device = Shared::new(VhostVsock::with_backend(CID, rec.clone()).unwrap());
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let t = MmioTransport::new(
        Box::new(device.clone()),
        Arc::clone(&mem),
        interrupt.clone(),
    );
    let queues = [
        TestQueue::new(16, 0x1000),
        TestQueue::new(32, 0x3000),
        TestQueue::new(8, 0x6000),
    ];
    Rig {
        t,
        device,
        rec,
        mem,
        interrupt,
        queues,
    }
}

fn rig() -> Rig {
    rig_with(KERNEL_FEATURES)
}

impl Rig {
    /// Linux's probe with every queue; returns the status.
    fn probe(&mut self) -> u32 {
        let [rx, tx, event] = &self.queues;
        probe(&mut self.t, &[rx, tx, event])
    }

    /// The calls made since the device was created (its open-time requests dropped).
    fn activation_calls(&self) -> Vec<Request> {
        self.rec.calls()[3..].to_vec()
    }

    fn host_address(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    fn expected_vring(&self, index: usize) -> Vec<Request> {
        let q = &self.queues[index];
        let (call, kick) = {
            let device = self.device.lock();
            (
                device.notifiers.calls[index].as_raw_fd(),
                device.notifiers.kicks[index].as_raw_fd(),
            )
        };
        vec![
            Request::SetVringNum(index, q.size),
            Request::SetVringAddr(
                index,
                (QUEUE_SIZE, q.size, 0),
                (q.desc, q.avail, q.used),
                None,
            ),
            Request::SetVringBase(index, 0),
            Request::SetVringCall(index, call),
            Request::SetVringKick(index, kick),
        ]
    }
}

/// A queue laid out as `tq`, ready, its next available index at `next_avail`.
fn ready_queue(tq: &TestQueue, next_avail: u16) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(tq.size);
    q.set_desc_table_address(Some(tq.desc as u32), Some(0));
    q.set_avail_ring_address(Some(tq.avail as u32), Some(0));
    q.set_used_ring_address(Some(tq.used as u32), Some(0));
    q.set_next_avail(next_avail);
    q.set_ready(true);
    q
}

fn read_counter(fd: &EventFd) -> Option<u64> {
    match fd.read() {
        Ok(n) => Some(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

#[test]
fn creating_the_device_takes_ownership_reads_features_and_claims_the_cid() {
    let r = rig();
    assert_eq!(
        r.rec.calls(),
        [
            Request::SetOwner,
            Request::GetFeatures,
            Request::SetGuestCid(CID)
        ]
    );
}

#[test]
fn activation_hands_rx_and_tx_to_vhost_in_order_and_starts_it() {
    let mut r = rig();
    assert_ne!(r.probe() & STATUS_DRIVER_OK, 0);
    let mut expected = vec![
        Request::SetFeatures(SUPPORTED_FEATURES),
        Request::SetMemTable(vec![
            (0, 0x10_0000, r.host_address(0)),
            (HIGH_RAM, 0x1_0000, r.host_address(HIGH_RAM)),
        ]),
    ];
    expected.extend(r.expected_vring(0));
    expected.extend(r.expected_vring(1));
    expected.extend([Request::SetGuestCid(CID), Request::Start]);
    assert_eq!(r.activation_calls(), expected);
}

#[test]
fn vhost_gets_only_the_acked_features_it_offered() {
    let mut r = rig();
    crate::testing::negotiate(&mut r.t, |f| f & !feature(VIRTIO_RING_F_EVENT_IDX));
    for (index, q) in r.queues.iter().enumerate() {
        q.setup(&mut r.t, index as u32);
    }
    let status = rd(&mut r.t, 0x70);
    wr(&mut r.t, 0x70, status | STATUS_DRIVER_OK);
    let acked = SUPPORTED_FEATURES & !feature(VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(r.activation_calls()[0], Request::SetFeatures(acked));
}

#[test]
fn vring_base_is_the_queue_s_next_available_index() {
    let r = rig();
    let mut device = r.device.lock();
    let queues = vec![
        ready_queue(&r.queues[0], 7),
        ready_queue(&r.queues[1], 300),
        ready_queue(&r.queues[2], 0),
    ];
    device
        .activate(
            SUPPORTED_FEATURES,
            Arc::clone(&r.mem),
            queues,
            r.interrupt.clone(),
        )
        .unwrap();
    let calls = r.rec.calls();
    assert!(calls.contains(&Request::SetVringBase(0, 7)), "{calls:?}");
    assert!(calls.contains(&Request::SetVringBase(1, 300)), "{calls:?}");
}

#[test]
fn call_and_kick_eventfds_are_four_distinct_descriptors_and_calls_are_the_event_sources() {
    let mut r = rig();
    r.probe();
    let fds: Vec<RawFd> = r
        .activation_calls()
        .iter()
        .filter_map(|c| match c {
            Request::SetVringCall(_, fd) | Request::SetVringKick(_, fd) => Some(*fd),
            _ => None,
        })
        .collect();
    assert_eq!(fds.len(), 4);
    let mut unique = fds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{fds:?}");
    // Order: call 0, kick 0, call 1, kick 1.
    assert_eq!(r.t.device_event_fds(), [fds[0], fds[2]]);
}

#[test]
fn offered_features_are_the_back_end_s_within_what_nimbus_supports() {
    let r = rig();
    assert_eq!(
        r.device.lock().features(),
        SUPPORTED_FEATURES & !feature(VIRTIO_F_VERSION_1)
    );
    let r = rig_with(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_RING_F_EVENT_IDX));
    assert_eq!(r.device.lock().features(), feature(VIRTIO_RING_F_EVENT_IDX));
}

#[test]
fn the_transport_offers_version_1_and_the_supported_bits() {
    let mut r = rig();
    let offered = std::cell::Cell::new(0);
    crate::testing::negotiate(&mut r.t, |f| {
        offered.set(f);
        f
    });
    assert_eq!(offered.get(), SUPPORTED_FEATURES);
}

#[test]
fn device_is_a_vsock_with_three_queues_of_256() {
    let r = rig();
    let device = r.device.lock();
    assert_eq!(device.device_type(), 19);
    assert_eq!(device.queue_max_sizes(), [256, 256, 256]);
    assert_eq!(device.guest_cid(), CID);
}

#[test]
fn config_space_is_the_guest_cid_little_endian_and_read_only() {
    let rec = Recorder::new(KERNEL_FEATURES);
    let mut device = VhostVsock::with_backend(0xfedc_ba98, rec).unwrap();
    let mut cid = [0u8; 8];
    device.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0xfedc_ba98);
    device.write_config(0, &[1, 2, 3, 4]);
    let mut low = [0u8; 4];
    device.read_config(0, &mut low);
    assert_eq!(u32::from_le_bytes(low), 0xfedc_ba98);
    let mut past = [0xffu8; 4];
    device.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn reserved_and_oversized_cids_are_refused_before_vhost_is_asked() {
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let rec = Recorder::new(KERNEL_FEATURES);
        let err = VhostVsock::with_backend(cid, rec.clone()).err().unwrap();
        assert!(matches!(err, VhostVsockError::InvalidCid { cid: c } if c == cid));
        assert!(
            err.to_string().contains(&format!("guest-cid={cid}")),
            "{err}"
        );
        assert!(rec.calls().is_empty());
    }
    assert!(check_guest_cid(3).is_ok());
    assert!(check_guest_cid(u64::from(u32::MAX) - 1).is_ok());
}

#[test]
fn a_cid_another_vm_has_is_a_clear_error() {
    let rec = Recorder::new(KERNEL_FEATURES);
    rec.fail("set_guest_cid", libc::EADDRINUSE);
    let err = VhostVsock::with_backend(CID, rec).err().unwrap();
    assert!(matches!(err, VhostVsockError::CidInUse { cid: CID }));
    assert_eq!(err.to_string(), "guest-cid=3 is already used by another VM");
}

#[test]
fn a_failed_open_time_request_is_named() {
    let rec = Recorder::new(KERNEL_FEATURES);
    rec.fail("set_owner", libc::EBUSY);
    let err = VhostVsock::with_backend(CID, rec).err().unwrap();
    assert_eq!(err.to_string(), "vhost-vsock: VHOST_SET_OWNER failed");
}

#[test]
fn opening_without_dev_vhost_vsock_names_the_device_node_and_the_module() {
    if Path::new(VHOST_VSOCK_PATH).exists() {
        eprintln!("skipped: this host has {VHOST_VSOCK_PATH}");
        return;
    }
    let err = VhostVsock::open(CID, None, memory()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "vhost-vsock-device needs /dev/vhost-vsock, which does not exist \
         (is the vhost_vsock module loaded?)"
    );
}

#[test]
fn opening_checks_the_cid_first() {
    let err = VhostVsock::open(2, None, memory()).err().unwrap();
    assert!(matches!(err, VhostVsockError::InvalidCid { cid: 2 }));
}

#[test]
fn a_failed_vring_request_fails_activation_naming_request_and_queue() {
    let mut r = rig();
    r.rec.fail("set_vring_addr", libc::EFAULT);
    let status = r.probe();
    assert_eq!(status & STATUS_DRIVER_OK, 0);
    assert_ne!(r.t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!r.rec.calls().contains(&Request::Start));

    let queues = r.queues.iter().map(|q| ready_queue(q, 0)).collect();
    r.rec.fail("set_vring_addr", libc::EFAULT);
    let err = r
        .device
        .lock()
        .activate(
            SUPPORTED_FEATURES,
            Arc::clone(&r.mem),
            queues,
            r.interrupt.clone(),
        )
        .err()
        .unwrap();
    let ActivateError::Backend(source) = err else {
        panic!("{err:?}")
    };
    let source = source.downcast::<VhostVsockError>().unwrap();
    assert_eq!(
        source.to_string(),
        "vhost-vsock: VHOST_SET_VRING_ADDR for queue 0 failed"
    );
}

#[test]
fn a_vhost_queue_the_driver_did_not_set_up_fails_activation_before_any_request() {
    let r = rig();
    let queues = vec![
        ready_queue(&r.queues[0], 0),
        Queue::new(QUEUE_SIZE).unwrap(),
        ready_queue(&r.queues[2], 0),
    ];
    let err = r
        .device
        .lock()
        .activate(
            SUPPORTED_FEATURES,
            Arc::clone(&r.mem),
            queues,
            r.interrupt.clone(),
        )
        .err()
        .unwrap();
    let ActivateError::Backend(source) = err else {
        panic!("{err:?}")
    };
    let source = source.downcast::<VhostVsockError>().unwrap();
    assert!(matches!(
        *source,
        VhostVsockError::QueueNotReady { queue: 1 }
    ));
    assert_eq!(r.activation_calls(), []);
}

#[test]
fn an_event_queue_left_unset_does_not_stop_activation() {
    let mut r = rig();
    let [rx, tx, _] = &r.queues;
    let status = probe(&mut r.t, &[rx, tx]);
    assert_ne!(status & STATUS_DRIVER_OK, 0);
    assert!(!r.device.lock().transport_reset().unwrap());
}

#[test]
fn wrong_queue_count_is_refused() {
    let r = rig();
    let err = r
        .device
        .lock()
        .activate(0, Arc::clone(&r.mem), Vec::new(), r.interrupt.clone())
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 3,
            got: 0
        }
    ));
}

#[test]
fn rx_and_tx_notifications_are_relayed_to_their_kick_eventfds() {
    let mut r = rig();
    r.probe();
    let (kick0, kick1) = (r.rec.kick_fd(0), r.rec.kick_fd(1));
    r.t.queue_notify(0);
    assert_eq!(read_counter(&kick0), Some(1));
    assert_eq!(read_counter(&kick1), None);
    wr(&mut r.t, 0x50, 1);
    assert_eq!(read_counter(&kick1), Some(1));
    assert_eq!(read_counter(&kick0), None);
}

#[test]
fn event_queue_notifications_kick_nothing() {
    let mut r = rig();
    r.probe();
    r.t.queue_notify(2);
    assert_eq!(read_counter(&r.rec.kick_fd(0)), None);
    assert_eq!(read_counter(&r.rec.kick_fd(1)), None);
}

#[test]
fn a_call_from_vhost_sets_used_buffer_in_interrupt_status_and_raises_the_line() {
    let mut r = rig();
    r.probe();
    let call1 = r.rec.call_fd(1);
    call1.write(1).unwrap();
    r.t.device_event(1);
    assert_ne!(r.interrupt.status() & INT_USED_BUFFER, 0);
    assert_eq!(read_counter(r.interrupt.eventfd()), Some(1));
    assert_eq!(read_counter(&call1), None, "the call eventfd was drained");
}

#[test]
fn a_call_while_stopped_is_drained_without_an_interrupt() {
    let r = rig();
    let fds = r.device.lock().event_fds();
    assert_eq!(fds.len(), 2);
    r.device.lock().notifiers.calls[0].write(1).unwrap();
    r.device.lock().handle_event(0).unwrap();
    assert_eq!(r.interrupt.status(), 0);
    assert_eq!(read_counter(&r.device.lock().notifiers.calls[0]), None);
}

#[test]
fn reset_stops_vhost_and_the_device_starts_again_with_the_same_eventfds_and_no_new_owner() {
    let mut r = rig();
    r.probe();
    let first = r.activation_calls();
    wr(&mut r.t, 0x70, 0);
    assert_eq!(r.rec.calls().last(), Some(&Request::Stop));
    r.rec.clear();
    for q in &r.queues {
        q.clear_rings(&r.mem);
    }
    assert_ne!(r.probe() & STATUS_DRIVER_OK, 0);
    assert_eq!(r.rec.calls(), first);
}

#[test]
fn reset_of_a_device_never_started_asks_nothing_of_vhost() {
    let mut r = rig();
    wr(&mut r.t, 0x70, 0);
    assert_eq!(r.activation_calls(), []);
}

#[test]
fn shutdown_stops_vhost() {
    let mut r = rig();
    r.probe();
    r.t.shutdown();
    assert_eq!(r.rec.calls().last(), Some(&Request::Stop));
    assert!(!r.device.lock().transport_reset().unwrap());
}

#[test]
fn transport_reset_puts_the_event_in_the_next_event_buffer_and_interrupts() {
    let mut r = rig();
    r.probe();
    r.mem
        .write_slice(&[0xff; 8], GuestAddress(EVENT_BUF))
        .unwrap();
    let head = r.queues[2].add_chain(&r.mem, &[(EVENT_BUF, 8, true)]);
    assert!(r.device.lock().transport_reset().unwrap());
    assert_eq!(r.queues[2].used_idx(&r.mem), 1);
    assert_eq!(r.queues[2].used_elem(&r.mem, 0), (u32::from(head), 4));
    let mut event = [0u8; 8];
    r.mem
        .read_slice(&mut event, GuestAddress(EVENT_BUF))
        .unwrap();
    assert_eq!(event, [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert_ne!(r.interrupt.status() & INT_USED_BUFFER, 0);
}

#[test]
fn transport_reset_without_an_event_buffer_is_reported_lost() {
    let mut r = rig();
    r.probe();
    assert!(!r.device.lock().transport_reset().unwrap());
    assert_eq!(r.queues[2].used_idx(&r.mem), 0);
    assert_eq!(r.interrupt.status(), 0);
}

#[test]
fn a_too_short_event_buffer_is_given_back_empty() {
    let mut r = rig();
    r.probe();
    r.queues[2].add_chain(&r.mem, &[(EVENT_BUF, 2, true)]);
    assert!(!r.device.lock().transport_reset().unwrap());
    assert_eq!(r.queues[2].used_elem(&r.mem, 0).1, 0);
}

#[test]
fn transport_reset_before_activation_sends_nothing() {
    let r = rig();
    assert!(!r.device.lock().transport_reset().unwrap());
}
