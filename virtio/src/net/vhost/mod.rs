//! vhost-net (`-netdev tap,...,vhost=on[,vhostfd=N]`): a virtio-net device whose data path is
//! the host kernel's vhost-net driver, as in QEMU's `vhost_net.c`.
//!
//! The kernel walks both rings and moves frames between them and the tap; the device model
//! keeps the configuration space (MAC, link status, MTU) and the tap keeps the offloads
//! ([`vhost_offered_features`], [`vhost_acked_features`], as QEMU's
//! `vhost_net_get_features`). Nimbus never reads or writes the tap itself, so the machine does
//! not watch it. At each activation the tap gets the header size the guest's features imply
//! ([`vhost_vnet_hdr_len`]) and its offloads, vhost gets the rings (`vhost_kernel`, shared with
//! vhost-vsock), then each queue gets the tap (VHOST_NET_SET_BACKEND); a reset takes the tap
//! back from each queue (VHOST_NET_SET_BACKEND with -1), which stops the data path.
//!
//! Notifications are relayed as for vhost-vsock (`vhost_kernel::Notifiers`). The kernel side is
//! [`KernelNet`] (`/dev/vhost-net`, or an inherited descriptor); the device is generic over
//! [`VhostNetBackend`] and [`VhostTap`] so that tests can record what it asks of both.

mod kernel;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use vhost::net::VhostNet as NetOps;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;

pub use self::kernel::KernelNet;
use super::{config_space, tap_offloads, NetError, NetOptions, Tap, TapError, CONFIG_SIZE};
use super::{DEVICE_TYPE_NET, QUEUE_SIZES, RX_QUEUE, TX_QUEUE};
use crate::device::{
    checked_queues, feature, read_config_bytes, ActivateError, Interrupt, QueueError, VirtioDevice,
};
use crate::vhost_kernel::{self, Notifiers, SetupError, VHOST_RINGS};

/// The vhost-net control device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// vhost-only feature bit (linux/vhost.h, not in virtio-bindings): the vhost backend adds the
/// virtio-net header itself (tap without IFF_VNET_HDR). Never offered to the guest.
pub const VHOST_NET_F_VIRTIO_NET_HDR: u32 = 27;

/// Feature bits whose implementation moves into vhost-net: they describe the rings and the
/// receive buffers, which the kernel handles. Every other bit (MAC, STATUS, offloads, MTU) stays
/// with the device model and the tap.
pub const VHOST_NET_RING_FEATURES: u64 = feature(VIRTIO_F_NOTIFY_ON_EMPTY)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_NET_F_MRG_RXBUF)
    | feature(VIRTIO_F_VERSION_1);

/// `vhost=` and `vhostfd=` of `-netdev tap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VhostMode {
    /// The device model moves frames itself (the default).
    #[default]
    Off,
    /// vhost-net moves frames; `fd` is an inherited `/dev/vhost-net` descriptor, if any.
    On {
        /// `vhostfd=`.
        fd: Option<RawFd>,
    },
}

/// Why vhost-net cannot be used, or could not be started. Each names the device node, the
/// descriptor, or the vhost request.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The device node does not exist.
    #[error("vhost=on needs {path:?}, which does not exist (is the vhost_net module loaded?)")]
    NotPresent {
        /// The node looked for.
        path: PathBuf,
    },
    /// The device node exists but could not be opened.
    #[error("vhost=on: cannot open {path:?}")]
    Open {
        /// The node.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `vhostfd=` is not an open descriptor.
    #[error("vhostfd={fd} is not an open descriptor")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// `vhostfd=` is open but is not `/dev/vhost-net`.
    #[error("vhostfd={fd} is not a {VHOST_NET_PATH} descriptor")]
    NotVhostNet {
        /// The descriptor.
        fd: RawFd,
    },
    /// The tap queue could not be duplicated for vhost-net.
    #[error("vhost=on: cannot duplicate the tap descriptor for vhost-net")]
    TapFd(#[source] io::Error),
    /// The tap refused the header size vhost-net needs.
    #[error("vhost-net: cannot configure the tap")]
    Tap(#[source] TapError),
    /// A vhost request failed.
    #[error("vhost-net: {step} failed")]
    Backend {
        /// The request (the ioctl's name).
        step: &'static str,
        /// What vhost said.
        #[source]
        source: vhost::Error,
    },
    /// A vhost request about one ring failed.
    #[error("vhost-net: {step} for queue {queue} failed")]
    Vring {
        /// The request (the ioctl's name).
        step: &'static str,
        /// The queue.
        queue: usize,
        /// What vhost said.
        #[source]
        source: vhost::Error,
    },
    /// The driver set DRIVER_OK without making both queues ready.
    #[error("the driver did not set up vhost-net queue {queue}")]
    QueueNotReady {
        /// The queue.
        queue: usize,
    },
    /// The call or kick eventfds could not be created.
    #[error("cannot create the vhost-net notification eventfds")]
    EventFd(#[source] io::Error),
    /// The device model refused its options.
    #[error(transparent)]
    Device(NetError),
}

impl From<SetupError> for VhostError {
    fn from(err: SetupError) -> VhostError {
        match err {
            SetupError::Backend { step, source } => VhostError::Backend { step, source },
            SetupError::Vring {
                step,
                queue,
                source,
            } => VhostError::Vring {
                step,
                queue,
                source,
            },
            SetupError::QueueNotReady { queue } => VhostError::QueueNotReady { queue },
        }
    }
}

/// What the device needs from a vhost-net back end: the `vhost` crate's generic requests
/// ([`VhostBackend`]) and its net one (VHOST_NET_SET_BACKEND). [`KernelNet`] is the real one.
pub trait VhostNetBackend: VhostBackend + NetOps + Send {}

impl<T: VhostBackend + NetOps + Send> VhostNetBackend for T {}

/// What the device asks of the tap under vhost-net: the header size and the offloads. [`Tap`]
/// is the real one.
pub trait VhostTap: Send {
    /// TUNSETVNETHDRSZ.
    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), TapError>;
    /// TUNSETOFFLOAD (`TUN_F_*`).
    fn set_offload(&mut self, flags: u32) -> Result<(), TapError>;
}

impl VhostTap for Tap {
    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), TapError> {
        Tap::set_vnet_hdr_len(self, len)
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        super::TapIo::set_offload(self, flags)
    }
}

/// A virtio-net device over vhost-net back end `B` (the kernel's, [`KernelNet`], outside
/// tests) and tap `T`.
pub struct VhostNet<B = KernelNet, T = Tap> {
    backend: B,
    tap: T,
    /// The tap queue as vhost-net gets it (VHOST_NET_SET_BACKEND).
    queue: File,
    features: u64,
    config: [u8; CONFIG_SIZE],
    /// The call and kick eventfds of rx and tx; fixed for the device's life.
    notifiers: Notifiers,
    /// The interrupt while the driver has the device running.
    active: Option<Interrupt>,
}

impl VhostNet<KernelNet, Tap> {
    /// A device over the kernel's vhost-net (opened with [`KernelNet::open_for`]) and `tap`,
    /// which vhost-net gets a second descriptor of; then as [`VhostNet::with_backend`].
    pub fn from_kernel(
        options: &NetOptions,
        backend: KernelNet,
        tap: Tap,
    ) -> Result<VhostNet, VhostError> {
        let queue = tap.try_clone_file().map_err(VhostError::TapFd)?;
        VhostNet::with_backend(options, backend, tap, queue)
    }
}

impl<B: VhostNetBackend, T: VhostTap> VhostNet<B, T> {
    /// A device over an opened back end and `tap` (`queue` is the tap queue handed to vhost):
    /// becomes the back end's owner, reads its features, and creates the eventfds.
    pub fn with_backend(
        options: &NetOptions,
        backend: B,
        tap: T,
        queue: File,
    ) -> Result<VhostNet<B, T>, VhostError> {
        let (device_features, config) = config_space(options).map_err(VhostError::Device)?;
        let backend_features = vhost_kernel::prepare(&backend)?;
        Ok(VhostNet {
            backend,
            tap,
            queue,
            features: vhost_offered_features(device_features, backend_features),
            config,
            notifiers: Notifiers::new().map_err(VhostError::EventFd)?,
            active: None,
        })
    }

    /// The back end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The MAC address in config space.
    pub fn mac(&self) -> super::MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[0..6]);
        super::MacAddr(mac)
    }

    /// Configures the tap for `acked`, hands the rings to vhost and the tap to each queue.
    fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        rx: &Queue,
        tx: &Queue,
    ) -> Result<(), VhostError> {
        let rings = self.notifiers.rings([rx, tx]);
        vhost_kernel::start_rings(
            &self.backend,
            vhost_acked_features(acked, true),
            mem,
            &rings,
        )?;
        self.tap
            .set_vnet_hdr_len(vhost_vnet_hdr_len(acked))
            .map_err(VhostError::Tap)?;
        if let Err(err) = self.tap.set_offload(tap_offloads(acked)) {
            warn!("vhost-net: {err}; the guest gets no receive offloads");
            let _ = self.tap.set_offload(0);
        }
        for queue in 0..VHOST_RINGS {
            if let Err(source) = self.backend.set_backend(queue, Some(&self.queue)) {
                // An earlier queue may have the tap already.
                self.detach_tap();
                return Err(VhostError::Vring {
                    step: "VHOST_NET_SET_BACKEND",
                    queue,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Takes the tap back from each queue: vhost stops moving frames and touching guest memory.
    fn detach_tap(&self) {
        for queue in 0..VHOST_RINGS {
            if let Err(err) = self.backend.set_backend(queue, None) {
                warn!("vhost-net: cannot stop queue {queue}: {err}");
            }
        }
    }

    /// Stops vhost if the device runs.
    fn stop(&mut self) {
        if self.active.take().is_some() {
            self.detach_tap();
        }
    }
}

impl<B: VhostNetBackend, T: VhostTap> VirtioDevice for VhostNet<B, T> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features & !feature(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "vhost-net: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        self.stop();
        let [rx, tx] = checked_queues(queues, mem.as_ref())?;
        self.start(acked_features, mem.as_ref(), &rx, &tx)
            .map_err(|err| ActivateError::Backend(Box::new(err)))?;
        self.active = Some(interrupt);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if self.active.is_some() && matches!(index, RX_QUEUE | TX_QUEUE) {
            self.notifiers.kick(index, "vhost-net");
        }
        Ok(())
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.notifiers.event_fds()
    }

    fn shutdown(&mut self) {
        self.stop();
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        self.notifiers
            .relay_call(index, self.active.as_ref(), "vhost-net");
        Ok(())
    }
}

/// The features to offer the guest when vhost-net serves the rings: the device's own, less the
/// ring features the vhost backend (`backend`, from VHOST_GET_FEATURES) does not implement.
pub fn vhost_offered_features(device: u64, backend: u64) -> u64 {
    device & !(VHOST_NET_RING_FEATURES & !backend)
}

/// The features to give the vhost backend (VHOST_SET_FEATURES) once the guest accepted `acked`:
/// the ring features only, plus VHOST_NET_F_VIRTIO_NET_HDR when the tap cannot add the header.
pub fn vhost_acked_features(acked: u64, tap_has_vnet_hdr: bool) -> u64 {
    let mut features = acked & VHOST_NET_RING_FEATURES;
    if !tap_has_vnet_hdr {
        features |= feature(VHOST_NET_F_VIRTIO_NET_HDR);
    }
    features
}

/// The header size the tap must use (TUNSETVNETHDRSZ) under vhost-net: 12 bytes with
/// VERSION_1 or MRG_RXBUF, the legacy 10 otherwise.
pub fn vhost_vnet_hdr_len(acked: u64) -> usize {
    if acked & (feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        12
    } else {
        10
    }
}
