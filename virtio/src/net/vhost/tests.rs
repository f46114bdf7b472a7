//! The pure feature negotiation, and the device against a recording stand-in for vhost-net
//! and the tap: each request it makes, in order, with its arguments.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::path::Path;

use address_space::vm_memory::{GuestAddress, GuestMemoryBackend};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::device::Shared;
use crate::mmio::{MmioTransport, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK};
use crate::net::{MacAddr, NET_FEATURES};
use crate::testing::{negotiate, probe, rd, wr, TestQueue};
use crate::vhost_kernel::recorder::{Recorder, Request};

#[test]
fn ring_features_the_backend_lacks_are_not_offered() {
    let device = feature(VIRTIO_NET_F_MAC)
        | feature(VIRTIO_NET_F_CSUM)
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_F_VERSION_1);
    let backend = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF);
    assert_eq!(
        vhost_offered_features(device, backend),
        device & !feature(VIRTIO_RING_F_EVENT_IDX)
    );
}

#[test]
fn device_features_outside_the_rings_stay_offered() {
    let device =
        feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(vhost_offered_features(device, 0), device);
}

#[test]
fn backend_gets_only_ring_features() {
    let acked = feature(VIRTIO_NET_F_MAC)
        | feature(VIRTIO_NET_F_CSUM)
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_RING_F_EVENT_IDX)
        | feature(VIRTIO_F_VERSION_1);
    assert_eq!(
        vhost_acked_features(acked, true),
        feature(VIRTIO_NET_F_MRG_RXBUF)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_F_VERSION_1)
    );
    assert_ne!(
        vhost_acked_features(acked, false) & feature(VHOST_NET_F_VIRTIO_NET_HDR),
        0
    );
}

#[test]
fn header_is_12_bytes_for_virtio_1() {
    assert_eq!(vhost_vnet_hdr_len(feature(VIRTIO_F_VERSION_1)), 12);
    assert_eq!(vhost_vnet_hdr_len(feature(VIRTIO_NET_F_MRG_RXBUF)), 12);
    assert_eq!(vhost_vnet_hdr_len(0), 10);
}

#[test]
fn vhost_mode_defaults_to_off() {
    assert_eq!(VhostMode::default(), VhostMode::Off);
}

/// What Linux's vhost-net offers (VHOST_NET_FEATURES): the ring features, MRG_RXBUF,
/// VERSION_1, VHOST_F_LOG_ALL, VHOST_NET_F_VIRTIO_NET_HDR, ANY_LAYOUT, ACCESS_PLATFORM.
const KERNEL_FEATURES: u64 = feature(VIRTIO_F_NOTIFY_ON_EMPTY)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_NET_F_MRG_RXBUF)
    | feature(26) // VHOST_F_LOG_ALL
    | feature(VHOST_NET_F_VIRTIO_NET_HDR)
    | feature(27) // VIRTIO_F_ANY_LAYOUT
    | feature(VIRTIO_F_VERSION_1)
    | feature(33); // VIRTIO_F_ACCESS_PLATFORM
/// A second RAM region, so that the memory table has two entries.
const HIGH_RAM: u64 = 0x100_0000;

/// The tap under vhost-net, recording into the same log as the back end.
struct RecordingTap(Recorder);

impl VhostTap for RecordingTap {
    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), TapError> {
        self.0
            .log("set_vnet_hdr_len", Request::SetVnetHdrLen(len))
            .map_err(|e| TapError::VnetHdrSize {
                name: "rec".into(),
                source: io::Error::other(e.to_string()),
            })
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        self.0
            .log("set_offload", Request::SetOffload(flags))
            .map_err(|e| TapError::Offload {
                name: "rec".into(),
                flags,
                source: io::Error::other(e.to_string()),
            })
    }
}

fn memory() -> Arc<GuestMemoryMmap> {
    let ranges = [
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(HIGH_RAM), 0x1_0000),
    ];
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).unwrap())
}

fn options() -> NetOptions {
    NetOptions {
        id: "net0".into(),
        mac: Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        mtu: None,
    }
}

/// A device over a recorder, behind the virtio-mmio transport, and the driver's two queues.
struct Rig {
    t: MmioTransport,
    device: Shared<VhostNet<Recorder, RecordingTap>>,
    rec: Recorder,
    /// The descriptor the device hands to vhost-net for the tap queue.
    tap_fd: RawFd,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Interrupt,
    queues: [TestQueue; 2],
}

fn rig_with(features: u64) -> Rig {
    let rec = Recorder::new(features);
    let queue = File::open("/dev/null").unwrap();
    let tap_fd = queue.as_raw_fd();
    let device =
        VhostNet::with_backend(&options(), rec.clone(), RecordingTap(rec.clone()), queue).unwrap();
    let device = Shared::new(device);
    let mem = memory();
    let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let t = MmioTransport::new(
        Box::new(device.clone()),
        Arc::clone(&mem),
        interrupt.clone(),
    );
    let queues = [TestQueue::new(16, 0x1000), TestQueue::new(32, 0x3000)];
    Rig {
        t,
        device,
        rec,
        tap_fd,
        mem,
        interrupt,
        queues,
    }
}

fn rig() -> Rig {
    rig_with(KERNEL_FEATURES)
}

impl Rig {
    fn probe(&mut self) -> u32 {
        let [rx, tx] = &self.queues;
        probe(&mut self.t, &[rx, tx])
    }

    /// The calls made since the device was created (SET_OWNER and GET_FEATURES dropped).
    fn activation_calls(&self) -> Vec<Request> {
        self.rec.calls()[2..].to_vec()
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

    /// The whole activation sequence when the driver acked `acked`.
    fn expected_activation(&self, acked: u64) -> Vec<Request> {
        let mut expected = vec![
            Request::SetFeatures(vhost_acked_features(acked, true)),
            Request::SetMemTable(vec![
                (0, 0x10_0000, self.host_address(0)),
                (HIGH_RAM, 0x1_0000, self.host_address(HIGH_RAM)),
            ]),
        ];
        expected.extend(self.expected_vring(0));
        expected.extend(self.expected_vring(1));
        expected.extend([
            Request::SetVnetHdrLen(vhost_vnet_hdr_len(acked)),
            Request::SetOffload(tap_offloads(acked)),
            Request::SetBackend(0, Some(self.tap_fd)),
            Request::SetBackend(1, Some(self.tap_fd)),
        ]);
        expected
    }
}

/// Everything the transport offers with KERNEL_FEATURES behind it, VERSION_1 included.
fn all_offered() -> u64 {
    NET_FEATURES | feature(VIRTIO_F_VERSION_1)
}

const QUEUE_SIZE: u16 = super::super::QUEUE_SIZE;

#[test]
fn creating_the_device_takes_ownership_and_reads_features_only() {
    let r = rig();
    assert_eq!(r.rec.calls(), [Request::SetOwner, Request::GetFeatures]);
}

#[test]
fn activation_hands_the_rings_to_vhost_then_the_tap_to_each_queue() {
    let mut r = rig();
    assert_ne!(r.probe() & STATUS_DRIVER_OK, 0);
    let acked = all_offered();
    assert_eq!(r.activation_calls(), r.expected_activation(acked));
    // VERSION_1: 12-byte headers; the guest takes checksum and TSO offloads.
    assert!(r.activation_calls().contains(&Request::SetVnetHdrLen(12)));
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    assert!(r
        .activation_calls()
        .contains(&Request::SetOffload(offloads)));
}

#[test]
fn vhost_gets_only_the_ring_features_the_driver_acked() {
    let mut r = rig();
    negotiate(&mut r.t, |f| f & !feature(VIRTIO_RING_F_EVENT_IDX));
    for (index, q) in r.queues.iter().enumerate() {
        q.setup(&mut r.t, index as u32);
    }
    let status = rd(&mut r.t, 0x70);
    wr(&mut r.t, 0x70, status | STATUS_DRIVER_OK);
    assert_eq!(
        r.activation_calls()[0],
        Request::SetFeatures(feature(VIRTIO_NET_F_MRG_RXBUF) | feature(VIRTIO_F_VERSION_1))
    );
}

#[test]
fn offered_features_are_the_device_s_less_ring_features_vhost_lacks() {
    let r = rig();
    assert_eq!(
        r.device.lock().features(),
        NET_FEATURES & !feature(VIRTIO_F_VERSION_1)
    );
    let r = rig_with(feature(VIRTIO_F_VERSION_1));
    assert_eq!(
        r.device.lock().features(),
        NET_FEATURES & !feature(VIRTIO_RING_F_EVENT_IDX) & !feature(VIRTIO_NET_F_MRG_RXBUF)
    );
}

#[test]
fn config_space_keeps_the_mac_and_link_up() {
    let r = rig();
    let device = r.device.lock();
    assert_eq!(device.device_type(), DEVICE_TYPE_NET);
    assert_eq!(device.queue_max_sizes(), [256, 256]);
    let mut config = [0u8; 8];
    device.read_config(0, &mut config);
    assert_eq!(config, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0]);
    assert_eq!(device.mac(), options().mac.unwrap());
}

#[test]
fn reset_takes_the_tap_back_from_each_queue_and_reactivation_repeats_the_sequence() {
    let mut r = rig();
    r.probe();
    r.rec.clear();
    wr(&mut r.t, 0x70, 0);
    assert_eq!(
        r.rec.calls(),
        [Request::SetBackend(0, None), Request::SetBackend(1, None)]
    );
    r.rec.clear();
    for q in &r.queues {
        q.clear_rings(&r.mem);
    }
    assert_ne!(r.probe() & STATUS_DRIVER_OK, 0);
    // No second SET_OWNER: the same descriptor, the same eventfds.
    assert_eq!(r.rec.calls(), r.expected_activation(all_offered()));
}

#[test]
fn reset_or_shutdown_of_a_device_never_started_asks_nothing() {
    let r = rig();
    r.rec.clear();
    r.device.lock().reset();
    r.device.lock().shutdown();
    assert!(r.rec.calls().is_empty());
}

#[test]
fn shutdown_takes_the_tap_back() {
    let mut r = rig();
    r.probe();
    r.rec.clear();
    r.device.lock().shutdown();
    assert_eq!(
        r.rec.calls(),
        [Request::SetBackend(0, None), Request::SetBackend(1, None)]
    );
}

#[test]
fn a_failed_set_backend_fails_activation_naming_it_and_detaches_the_tap() {
    let mut r = rig();
    r.rec.fail("set_backend", libc::EBADFD);
    let status = r.probe();
    assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
    let calls = r.activation_calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [Request::SetBackend(0, None), Request::SetBackend(1, None)]
    );
}

#[test]
fn set_backend_errors_name_the_request_and_the_queue() {
    let err = VhostError::from(crate::vhost_kernel::SetupError::Vring {
        step: "VHOST_NET_SET_BACKEND",
        queue: 1,
        source: vhost::Error::InvalidQueue,
    });
    assert_eq!(
        err.to_string(),
        "vhost-net: VHOST_NET_SET_BACKEND for queue 1 failed"
    );
}

#[test]
fn a_queue_the_driver_left_unset_fails_activation_before_any_request() {
    let mut r = rig();
    negotiate(&mut r.t, |f| f);
    r.queues[0].setup(&mut r.t, 0);
    let status = rd(&mut r.t, 0x70);
    wr(&mut r.t, 0x70, status | STATUS_DRIVER_OK);
    assert_ne!(rd(&mut r.t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(
        r.activation_calls().is_empty(),
        "{:?}",
        r.activation_calls()
    );
}

#[test]
fn a_failed_open_time_request_is_named() {
    let rec = Recorder::new(KERNEL_FEATURES);
    rec.fail("set_owner", libc::EBUSY);
    let queue = File::open("/dev/null").unwrap();
    let tap = RecordingTap(rec.clone());
    let err = VhostNet::with_backend(&options(), rec, tap, queue)
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "vhost-net: VHOST_SET_OWNER failed");
}

#[test]
fn queue_notifications_kick_vhost_and_calls_raise_the_interrupt() {
    let mut r = rig();
    r.probe();
    for index in [RX_QUEUE, TX_QUEUE] {
        wr(&mut r.t, 0x50, u32::from(index));
        let kick = r.rec.kick_fd(usize::from(index));
        assert_eq!(kick.read().unwrap(), 1);
    }
    r.rec.call_fd(1).write(1).unwrap();
    r.device.lock().handle_event(1).unwrap();
    assert_eq!(rd(&mut r.t, 0x60) & 1, 1, "INT_USED_BUFFER");
    assert_eq!(r.interrupt.eventfd().read().unwrap(), 1);
}

#[test]
fn no_tap_io_under_vhost() {
    // The device has no tap descriptor to poll: it is not a `Net`, and its event sources are
    // vhost's two call eventfds only.
    let r = rig();
    assert_eq!(r.t.device_event_fds().len(), 2);
}

#[test]
fn absent_dev_vhost_net_names_the_device_node_and_the_module() {
    let err = KernelNet::open(Path::new("/nonexistent/vhost-net"), memory()).unwrap_err();
    assert!(matches!(err, VhostError::NotPresent { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "vhost=on needs \"/nonexistent/vhost-net\", which does not exist \
         (is the vhost_net module loaded?)"
    );
}

#[test]
fn inherited_descriptor_that_is_not_vhost_net_is_refused_naming_vhostfd_and_left_open() {
    let null = File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    let err = KernelNet::from_inherited_fd(fd, memory()).unwrap_err();
    assert!(matches!(err, VhostError::NotVhostNet { fd: f } if f == fd));
    assert_eq!(
        err.to_string(),
        format!("vhostfd={fd} is not a /dev/vhost-net descriptor")
    );
    // Still open: fstat through the file that owns it works.
    assert!(null.metadata().is_ok(), "fd was closed");
}

#[test]
fn inherited_descriptor_that_is_not_open_is_refused() {
    let err = KernelNet::from_inherited_fd(1 << 20, memory()).unwrap_err();
    assert!(
        matches!(err, VhostError::BadFd { fd: 0x10_0000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("vhostfd=1048576"), "{err}");
}
