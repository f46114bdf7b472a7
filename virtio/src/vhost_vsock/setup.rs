//! The vhost set-up sequences, generic over the back end so that tests can drive them with a
//! recording stand-in: [`prepare`] once per descriptor when the device is created, [`start`] at
//! each activation. The order and the values follow QEMU's `vhost_dev_init`/`vhost_dev_start`
//! and StratoVirt's vhost-vsock.

use address_space::vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{VhostVsockBackend, VhostVsockError};

/// A ring vhost serves, with the eventfd it signals when it used buffers (call) and the one
/// that tells it the driver made buffers available (kick).
pub(super) struct Vring<'a> {
    pub(super) queue: &'a Queue,
    pub(super) call: &'a EventFd,
    pub(super) kick: &'a EventFd,
}

/// What the device does once per descriptor: become its owner (VHOST_SET_OWNER, which the
/// kernel accepts only once, so not at every activation), read the features it offers, and
/// claim the guest CID so that a CID another VM uses is an error before the guest runs (as
/// QEMU's realize does). Returns the back end's features.
pub(super) fn prepare<B: VhostVsockBackend>(backend: &B, cid: u64) -> Result<u64, VhostVsockError> {
    backend.set_owner().map_err(step("VHOST_SET_OWNER"))?;
    let features = backend.get_features().map_err(step("VHOST_GET_FEATURES"))?;
    set_guest_cid(backend, cid)?;
    Ok(features)
}

/// Hands the rings to the back end and starts it: features, the guest memory table, each ring
/// (size, addresses, first available index, call and kick eventfds, in `rings` order from
/// vhost queue 0), the guest CID, running.
pub(super) fn start<B: VhostVsockBackend>(
    backend: &B,
    features: u64,
    mem: &GuestMemoryMmap,
    rings: &[Vring<'_>],
    cid: u64,
) -> Result<(), VhostVsockError> {
    for (index, ring) in rings.iter().enumerate() {
        if !ring.queue.ready() {
            return Err(VhostVsockError::QueueNotReady { queue: index });
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
    set_guest_cid(backend, cid)?;
    backend.start().map_err(step("VHOST_VSOCK_SET_RUNNING"))
}

fn set_vring<B: VhostVsockBackend>(
    backend: &B,
    index: usize,
    ring: &Vring<'_>,
) -> Result<(), VhostVsockError> {
    let queue = ring.queue;
    let vring_step = |step| {
        move |source| VhostVsockError::Vring {
            step,
            queue: index,
            source,
        }
    };
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

/// VHOST_VSOCK_SET_GUEST_CID; EADDRINUSE (another vhost-vsock instance has the CID) gets its
/// own error.
fn set_guest_cid<B: VhostVsockBackend>(backend: &B, cid: u64) -> Result<(), VhostVsockError> {
    backend.set_guest_cid(cid).map_err(|source| match &source {
        vhost::Error::IoctlError(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            VhostVsockError::CidInUse { cid }
        }
        _ => VhostVsockError::Backend {
            step: "VHOST_VSOCK_SET_GUEST_CID",
            source,
        },
    })
}

/// The guest RAM regions as vhost's memory table: guest-physical start, size and where this
/// process maps them (the kernel reads and writes the rings and buffers there).
pub(super) fn memory_regions(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
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
fn step(step: &'static str) -> impl Fn(vhost::Error) -> VhostVsockError {
    move |source| VhostVsockError::Backend { step, source }
}
