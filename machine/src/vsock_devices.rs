//! The vsock device: hybrid vsock served in process (`virtio-vsock-device,uds-path=`), or the
//! kernel's vhost-vsock (`vhost-vsock-device`).
//!
//! Hybrid vsock opens and closes a socket per connection while the VM runs; those sockets join
//! and leave the VMM thread's loop through the device's descriptor changes
//! (`virtio_devices.rs`). Its sockets are served on the VMM thread only, so it needs KVM's
//! ioeventfds (queue notifications on the loop, never on a vCPU thread, whose seccomp list has
//! no socket calls).

use crate::config::{VsockBackend, VsockConfig};
use crate::slots::Labelled;
use address_space::vm_memory::GuestMemoryMmap;
use std::sync::Arc;
use virtio::{VhostVsock, VhostVsockError, Vsock, VsockError, VsockOptions};

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    /// The in-process device refused its options or could not listen.
    #[error("virtio-vsock-device '{id}' cannot be created")]
    Hybrid {
        /// The device id.
        id: String,
        /// Why.
        #[source]
        source: VsockError,
    },
    /// Hybrid vsock serves its sockets on the VMM thread, which needs ioeventfds.
    #[error("virtio-vsock-device needs KVM ioeventfds, which this host's KVM lacks")]
    NoIoeventfd,
    /// The kernel's vhost-vsock could not be opened or set up (its message names the device
    /// node, the descriptor or the request).
    #[error(transparent)]
    Vhost(VhostVsockError),
}

/// Creates the vsock device of `config`; vhost-vsock maps guest RAM `mem` into the kernel.
pub fn vsock_device(
    config: &VsockConfig,
    ioeventfd: bool,
    mem: Arc<GuestMemoryMmap>,
) -> Result<Labelled, VsockDeviceError> {
    match &config.backend {
        VsockBackend::Hybrid { uds_path } => {
            if !ioeventfd {
                return Err(VsockDeviceError::NoIoeventfd);
            }
            let options = VsockOptions {
                cid: config.cid,
                uds_path: uds_path.clone(),
            };
            let vsock = Vsock::new(&options).map_err(|source| VsockDeviceError::Hybrid {
                id: config.id.clone(),
                source,
            })?;
            let label = format!(
                "virtio-vsock '{}' for guest CID {} on {uds_path:?}",
                config.id, config.cid
            );
            Ok((label, Box::new(vsock)))
        }
        VsockBackend::Vhost { fd } => {
            let vsock = VhostVsock::open(config.cid, *fd, mem).map_err(VsockDeviceError::Vhost)?;
            let from = match fd {
                Some(fd) => format!("inherited descriptor {fd}"),
                None => virtio::VHOST_VSOCK_PATH.to_string(),
            };
            let label = format!(
                "vhost-vsock '{}' for guest CID {} on {from}",
                config.id, config.cid
            );
            Ok((label, Box::new(vsock)))
        }
    }
}
