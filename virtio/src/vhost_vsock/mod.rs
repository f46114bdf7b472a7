//! vhost-vsock (`-device vhost-vsock-device,guest-cid=N[,vhostfd=N]`): a virtio-vsock device
//! (ID 19) whose data path is the host kernel's vhost-vsock driver, as in QEMU and StratoVirt.
//!
//! Queues: receive (0) and transmit (1) belong to vhost, which walks them in the kernel; the
//! event queue (2) stays here and carries VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
//! ([`VhostVsock::transport_reset`]). Configuration space is the guest CID (a little-endian
//! u64, read-only). The features offered are the back end's (VHOST_GET_FEATURES) within those
//! Nimbus supports ([`SUPPORTED_FEATURES`]).
//!
//! Notifications on virtio-mmio: a queue notification of rx or tx (QueueNotify, or its
//! ioeventfd through [`VirtioDevice::process_queue`]) is relayed to that ring's kick eventfd;
//! vhost's call eventfds are the device's event sources ([`VirtioDevice::event_fds`]) and
//! raise the interrupt through InterruptStatus. That relay, the descriptor handling and the
//! generic vhost requests are `vhost_kernel`'s, shared with vhost-net.
//!
//! The kernel side is [`KernelVsock`] (`/dev/vhost-vsock`, or an inherited descriptor); the
//! device is generic over [`VhostVsockBackend`] so that tests can record what it asks of vhost.

mod kernel;
mod setup;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use vhost::vsock::VhostVsock as VsockOps;
use vhost::VhostBackend;
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};

pub use self::kernel::KernelVsock;
use crate::device::{
    checked_queues, feature, read_config_bytes, ActivateError, Interrupt, QueueError, VirtioDevice,
    INT_USED_BUFFER,
};
use crate::vhost_kernel::Notifiers;
use crate::vsock::event::{post_event, Posted};

pub use crate::vsock::DEVICE_TYPE_VSOCK;
/// The vhost-vsock control device.
pub const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";
/// The receive queue (vhost's).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (vhost's).
pub const TX_QUEUE: u16 = 1;
/// The event queue (the device model's).
pub const EVENT_QUEUE: u16 = 2;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Feature bit (linux/virtio_vsock.h, not in virtio-bindings): SOCK_SEQPACKET sockets. Only
/// the back end implements it; offered when it does, as QEMU's default `seqpacket=auto`.
pub const VIRTIO_VSOCK_F_SEQPACKET: u32 = 1;
/// The event id of `struct virtio_vsock_event` that tells the driver its connections are gone
/// and the guest CID must be read again (linux/virtio_vsock.h).
pub use crate::vsock::event::EVENT_TRANSPORT_RESET as VIRTIO_VSOCK_EVENT_TRANSPORT_RESET;

/// The features Nimbus can offer with a vhost-vsock back end: the ring features vhost
/// implements (as QEMU's virtio devices offer them), VERSION_1, and SEQPACKET. VHOST_F_LOG_ALL
/// (no migration), ACCESS_PLATFORM (no IOMMU), packed rings and ANY_LAYOUT (legacy only) stay out.
pub const SUPPORTED_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_RING_F_EVENT_IDX)
    | feature(VIRTIO_RING_F_INDIRECT_DESC)
    | feature(VIRTIO_F_NOTIFY_ON_EMPTY)
    | feature(VIRTIO_VSOCK_F_SEQPACKET);

/// Why a vhost-vsock device could not be created or started. Each names the option, the file
/// or the vhost step.
#[derive(Debug, thiserror::Error)]
pub enum VhostVsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host) and U32_MAX means "any".
    #[error("guest-cid={cid} is reserved or out of range (use 3 to 4294967294)")]
    InvalidCid {
        /// The CID asked for.
        cid: u64,
    },
    /// The device node does not exist.
    #[error(
        "vhost-vsock-device needs {}, which does not exist (is the vhost_vsock module loaded?)",
        path.display()
    )]
    NotPresent {
        /// The node looked for.
        path: PathBuf,
    },
    /// The device node exists but could not be opened.
    #[error("vhost-vsock-device: cannot open {}", path.display())]
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
    /// `vhostfd=` is open but is not `/dev/vhost-vsock`.
    #[error("vhostfd={fd} is not a {VHOST_VSOCK_PATH} descriptor")]
    NotVhostVsock {
        /// The descriptor.
        fd: RawFd,
    },
    /// Another vhost-vsock instance (another VM on this host) has the CID.
    #[error("guest-cid={cid} is already used by another VM")]
    CidInUse {
        /// The CID asked for.
        cid: u64,
    },
    /// A vhost request failed.
    #[error("vhost-vsock: {step} failed")]
    Backend {
        /// The request (the ioctl's name).
        step: &'static str,
        /// What vhost said.
        #[source]
        source: vhost::Error,
    },
    /// A vhost request about one ring failed.
    #[error("vhost-vsock: {step} for queue {queue} failed")]
    Vring {
        /// The request (the ioctl's name).
        step: &'static str,
        /// The queue.
        queue: usize,
        /// What vhost said.
        #[source]
        source: vhost::Error,
    },
    /// The driver set DRIVER_OK without making a queue vhost serves ready.
    #[error("the driver did not set up vhost-vsock queue {queue}")]
    QueueNotReady {
        /// The queue.
        queue: usize,
    },
    /// The call or kick eventfds could not be created.
    #[error("cannot create the vhost-vsock notification eventfds")]
    EventFd(#[source] io::Error),
}

/// What the device needs from a vhost-vsock back end: the `vhost` crate's generic requests
/// ([`VhostBackend`]) and its vsock ones (CID, start, stop). [`KernelVsock`] is the real one.
pub trait VhostVsockBackend: VhostBackend + VsockOps + Send {}

impl<T: VhostBackend + VsockOps + Send> VhostVsockBackend for T {}

/// Checks `cid` as the kernel will (and as QEMU does before opening anything).
pub fn check_guest_cid(cid: u64) -> Result<(), VhostVsockError> {
    if !crate::vsock::GUEST_CIDS.contains(&cid) {
        return Err(VhostVsockError::InvalidCid { cid });
    }
    Ok(())
}

/// State while the driver has the device running.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    event_queue: Queue,
    interrupt: Interrupt,
}

/// A vhost-vsock device over back end `B` (the kernel's, [`KernelVsock`], outside tests).
pub struct VhostVsock<B = KernelVsock> {
    backend: B,
    cid: u64,
    backend_features: u64,
    /// The call and kick eventfds of rx and tx; fixed for the device's life.
    notifiers: Notifiers,
    active: Option<Active>,
}

impl VhostVsock<KernelVsock> {
    /// Opens the kernel's vhost-vsock for a guest with CID `cid`: `/dev/vhost-vsock`, or the
    /// inherited descriptor `vhostfd` used as it is (checked to be `/dev/vhost-vsock`, never
    /// closed). Then as [`VhostVsock::with_backend`]. `mem` must be the guest memory the
    /// device's transport is given: vhost translates ring addresses through it.
    pub fn open(
        cid: u64,
        vhostfd: Option<RawFd>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<VhostVsock, VhostVsockError> {
        check_guest_cid(cid)?;
        let backend = match vhostfd {
            Some(fd) => KernelVsock::from_inherited_fd(fd, mem)?,
            None => KernelVsock::open(Path::new(VHOST_VSOCK_PATH), mem)?,
        };
        VhostVsock::with_backend(cid, backend)
    }
}

impl<B: VhostVsockBackend> VhostVsock<B> {
    /// A device over an opened back end: becomes its owner, reads its features and claims
    /// `cid` (an error names a CID another VM has), and creates the call and kick eventfds.
    pub fn with_backend(cid: u64, backend: B) -> Result<VhostVsock<B>, VhostVsockError> {
        check_guest_cid(cid)?;
        let backend_features = setup::prepare(&backend, cid)?;
        Ok(VhostVsock {
            backend,
            cid,
            backend_features,
            notifiers: Notifiers::new().map_err(VhostVsockError::EventFd)?,
            active: None,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.cid
    }

    /// The back end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (the guest drops its
    /// connections and reads the CID again; QEMU sends it after a migration) and interrupts.
    /// `Ok(false)` when it could not be sent: the device is not running, or the driver left no
    /// event buffer (the event is lost, as in QEMU) or a buffer too short (given back empty).
    pub fn transport_reset(&mut self) -> Result<bool, QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        if !active.event_queue.ready() {
            return Ok(false);
        }
        let mem = Arc::clone(&active.mem);
        let id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET;
        let posted = post_event(&mut active.event_queue, mem.as_ref(), id, EVENT_QUEUE)?;
        match posted {
            Posted::NoBuffer => {
                warn!("vhost-vsock: no event buffer; transport reset event lost");
                return Ok(false);
            }
            Posted::Short => warn!("vhost-vsock: event buffer too short"),
            Posted::Written => {}
        }
        let ring = QueueError::ring(EVENT_QUEUE);
        if active
            .event_queue
            .needs_notification(mem.as_ref())
            .map_err(ring)?
        {
            if let Err(err) = active.interrupt.trigger(INT_USED_BUFFER) {
                warn!("vhost-vsock: cannot raise interrupt: {err}");
            }
        }
        Ok(posted == Posted::Written)
    }

    /// Stops vhost if the device runs; it no longer touches guest memory afterwards.
    fn stop(&mut self) {
        if self.active.take().is_some() {
            if let Err(err) = self.backend.stop() {
                warn!("vhost-vsock: cannot stop the back end: {err}");
            }
        }
    }
}

impl<B: VhostVsockBackend> VirtioDevice for VhostVsock<B> {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.backend_features & SUPPORTED_FEATURES & !feature(VIRTIO_F_VERSION_1)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        self.stop();
        let [rx, tx, mut event] = checked_queues(queues, mem.as_ref())?;
        let rings = self.notifiers.rings([&rx, &tx]);
        let features = acked_features & self.backend_features;
        setup::start(&self.backend, features, mem.as_ref(), &rings, self.cid)
            .map_err(|err| ActivateError::Backend(Box::new(err)))?;
        event.set_event_idx(acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0);
        self.active = Some(Active {
            mem,
            event_queue: event,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if self.active.is_none() {
            return Ok(());
        }
        // The event queue's buffers wait for an event: nothing to kick.
        if matches!(index, RX_QUEUE | TX_QUEUE) {
            self.notifiers.kick(index, "vhost-vsock");
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
        let interrupt = self.active.as_ref().map(|active| &active.interrupt);
        self.notifiers.relay_call(index, interrupt, "vhost-vsock");
        Ok(())
    }
}
