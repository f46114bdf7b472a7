//! The vhost-vsock set-up sequences, generic over the back end so that tests can drive them
//! with a recording stand-in: [`prepare`] once per descriptor when the device is created,
//! [`start`] at each activation. The generic vhost part is `vhost_kernel`'s, shared with
//! vhost-net; the guest CID and running are vsock's. The order and the values follow QEMU's
//! `vhost_dev_init`/`vhost_dev_start` and StratoVirt's vhost-vsock.

use address_space::vm_memory::GuestMemoryMmap;

use super::{VhostVsockBackend, VhostVsockError};
use crate::vhost_kernel::{self, SetupError, Vring};

/// What the device does once per descriptor: become its owner and read the features it
/// offers (`vhost_kernel::prepare`), and claim the guest CID so that a CID another VM uses is
/// an error before the guest runs (as QEMU's realize does). Returns the back end's features.
pub(super) fn prepare<B: VhostVsockBackend>(backend: &B, cid: u64) -> Result<u64, VhostVsockError> {
    let features = vhost_kernel::prepare(backend)?;
    set_guest_cid(backend, cid)?;
    Ok(features)
}

/// Hands the rings to the back end and starts it: features, the guest memory table, each ring
/// (`vhost_kernel::start_rings`), the guest CID, running.
pub(super) fn start<B: VhostVsockBackend>(
    backend: &B,
    features: u64,
    mem: &GuestMemoryMmap,
    rings: &[Vring<'_>],
    cid: u64,
) -> Result<(), VhostVsockError> {
    vhost_kernel::start_rings(backend, features, mem, rings)?;
    set_guest_cid(backend, cid)?;
    backend
        .start()
        .map_err(vhost_kernel::step("VHOST_VSOCK_SET_RUNNING"))?;
    Ok(())
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

impl From<SetupError> for VhostVsockError {
    fn from(err: SetupError) -> VhostVsockError {
        match err {
            SetupError::Backend { step, source } => VhostVsockError::Backend { step, source },
            SetupError::Vring {
                step,
                queue,
                source,
            } => VhostVsockError::Vring {
                step,
                queue,
                source,
            },
            SetupError::QueueNotReady { queue } => VhostVsockError::QueueNotReady { queue },
        }
    }
}
