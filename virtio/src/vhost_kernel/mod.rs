//! What the kernel's vhost devices (vhost-vsock, vhost-net) share: the descriptor of the
//! vhost device node ([`VhostFd`]), the set-up sequence generic over the `vhost` crate's
//! [`VhostBackend`] (owner and features once per descriptor, [`prepare`]; features, memory
//! table and each ring at every activation, [`start_rings`]), and the call and kick eventfds
//! with their relay ([`Notifiers`]). The order and the values follow QEMU's
//! `vhost_dev_init`/`vhost_dev_start`.
//!
//! Notifications on virtio-mmio: a queue notification (QueueNotify, or its ioeventfd) is
//! relayed to that ring's kick eventfd, which vhost polls. vhost signals used buffers on a
//! call eventfd per ring; those are the device's event sources, and handling one sets
//! INT_USED_BUFFER in InterruptStatus before raising the interrupt: a virtio-mmio guest reads
//! InterruptStatus before it looks at the rings, so the call cannot go straight to the irqfd.

mod fd;
#[cfg(test)]
pub(crate) mod recorder;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use address_space::vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use log::warn;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub(crate) use self::fd::{ioctl_result, InheritError, VhostFd};
use crate::device::{Interrupt, INT_USED_BUFFER};

/// The rings vhost serves for either device: receive (0) and transmit (1).
pub(crate) const VHOST_RINGS: usize = 2;

/// A vhost request that failed, or a ring the driver left unset; each device turns it into
/// its own error, which names the device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// A request about the whole device failed.
    #[error("{step} failed")]
    Backend {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// A request about one ring failed.
    #[error("{step} for queue {queue} failed")]
    Vring {
        step: &'static str,
        queue: usize,
        #[source]
        source: vhost::Error,
    },
    /// The driver set DRIVER_OK without making a ring vhost serves ready.
    #[error("the driver did not set up queue {queue}")]
    QueueNotReady { queue: usize },
}

/// A ring vhost serves, with the eventfd it signals when it used buffers (call) and the one
/// that tells it the driver made buffers available (kick).
pub(crate) struct Vring<'a> {
    pub(crate) queue: &'a Queue,
    pub(crate) call: &'a EventFd,
    pub(crate) kick: &'a EventFd,
}

/// What a device does once per descriptor: become its owner (VHOST_SET_OWNER, which the
/// kernel accepts only once, so not at every activation) and read the features it offers.
pub(crate) fn prepare<B: VhostBackend>(backend: &B) -> Result<u64, SetupError> {
    backend.set_owner().map_err(step("VHOST_SET_OWNER"))?;
    backend.get_features().map_err(step("VHOST_GET_FEATURES"))
}

/// Hands the rings to the back end: features, the guest memory table, then each ring (size,
/// addresses, first available index, call and kick eventfds, in `rings` order from vhost
/// queue 0). Nothing is asked when a ring is not ready.
pub(crate) fn start_rings<B: VhostBackend>(
    backend: &B,
    features: u64,
    mem: &GuestMemoryMmap,
    rings: &[Vring<'_>],
) -> Result<(), SetupError> {
    for (index, ring) in rings.iter().enumerate() {
        if !ring.queue.ready() {
            return Err(SetupError::QueueNotReady { queue: index });
        }
    }
    backend
        .set_features(features)
        .map_err(step("VHOST_SET_FEATURES"))?;
    backend
        .set_mem_table(&memory_regions(mem))
        .map_err(step("VHOST_SET_MEM_TABLE"))?;
    for (index, ring) in rings.iter().enumerate() {
        set_vring(backend, index, ring)?;
    }
    Ok(())
}

fn set_vring<B: VhostBackend>(
    backend: &B,
    index: usize,
    ring: &Vring<'_>,
) -> Result<(), SetupError> {
    let queue = ring.queue;
    let vring_step = |step| vring_step(step, index);
    backend
        .set_vring_num(index, queue.size())
        .map_err(vring_step("VHOST_SET_VRING_NUM"))?;
    let config = VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: queue.desc_table(),
        used_ring_addr: queue.used_ring(),
        avail_ring_addr: queue.avail_ring(),
        log_addr: None,
    };
    backend
        .set_vring_addr(index, &config)
        .map_err(vring_step("VHOST_SET_VRING_ADDR"))?;
    backend
        .set_vring_base(index, queue.next_avail())
        .map_err(vring_step("VHOST_SET_VRING_BASE"))?;
    backend
        .set_vring_call(index, ring.call)
        .map_err(vring_step("VHOST_SET_VRING_CALL"))?;
    backend
        .set_vring_kick(index, ring.kick)
        .map_err(vring_step("VHOST_SET_VRING_KICK"))
}

/// The guest RAM regions as vhost's memory table: guest-physical start, size and where this
/// process maps them (the kernel reads and writes the rings and buffers there).
pub(crate) fn memory_regions(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|region| VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            ..VhostUserMemoryRegionInfo::default()
        })
        .collect()
}

/// The error for a failed back-end `step`, to give to `map_err`.
pub(crate) fn step(step: &'static str) -> impl Fn(vhost::Error) -> SetupError {
    move |source| SetupError::Backend { step, source }
}

/// The error for a failed `step` about ring `queue`, to give to `map_err`.
pub(crate) fn vring_step(step: &'static str, queue: usize) -> impl Fn(vhost::Error) -> SetupError {
    move |source| SetupError::Vring {
        step,
        queue,
        source,
    }
}

/// The call and kick eventfds of the rings vhost serves; fixed for the device's life, so the
/// event loop watches the same calls across resets.
pub(crate) struct Notifiers {
    /// vhost signals used buffers of ring `i` on `calls[i]`.
    pub(crate) calls: [EventFd; VHOST_RINGS],
    /// The device tells vhost about available buffers of ring `i` on `kicks[i]`.
    pub(crate) kicks: [EventFd; VHOST_RINGS],
}

impl Notifiers {
    /// Four new non-blocking eventfds.
    pub(crate) fn new() -> io::Result<Notifiers> {
        let eventfd = || EventFd::new(EFD_NONBLOCK);
        Ok(Notifiers {
            calls: [eventfd()?, eventfd()?],
            kicks: [eventfd()?, eventfd()?],
        })
    }

    /// The rings `queues` (vhost queue 0 first) with their eventfds.
    pub(crate) fn rings<'a>(
        &'a self,
        queues: [&'a Queue; VHOST_RINGS],
    ) -> [Vring<'a>; VHOST_RINGS] {
        let [rx, tx] = queues;
        [
            Vring {
                queue: rx,
                call: &self.calls[0],
                kick: &self.kicks[0],
            },
            Vring {
                queue: tx,
                call: &self.calls[1],
                kick: &self.kicks[1],
            },
        ]
    }

    /// Relays a notification of ring `index` to its kick eventfd (`device` names it in a
    /// warning); rings vhost does not serve are ignored.
    pub(crate) fn kick(&self, index: u16, device: &str) {
        let Some(kick) = self.kicks.get(usize::from(index)) else {
            return;
        };
        if let Err(err) = kick.write(1) {
            warn!("{device}: cannot kick queue {index}: {err}");
        }
    }

    /// The call eventfds, the device's event sources.
    pub(crate) fn event_fds(&self) -> Vec<RawFd> {
        self.calls.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Drains call eventfd `index` and, when the device runs (`interrupt`), sets
    /// INT_USED_BUFFER and raises the interrupt.
    pub(crate) fn relay_call(&self, index: usize, interrupt: Option<&Interrupt>, device: &str) {
        let Some(call) = self.calls.get(index) else {
            return;
        };
        match call.read() {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) => {
                warn!("{device}: cannot read the call eventfd of queue {index}: {err}");
                return;
            }
        }
        if let Some(interrupt) = interrupt {
            if let Err(err) = interrupt.trigger(INT_USED_BUFFER) {
                warn!("{device}: cannot raise interrupt: {err}");
            }
        }
    }
}
