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
use virtio::{Vsock, VsockError, VsockOptions};

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockDeviceError {
    /// The in-process device refused its options or could not listen.
    #[error(transparent)]
    Hybrid(VsockError),
    /// Hybrid vsock serves its sockets on the VMM thread, which needs ioeventfds.
    #[error("virtio-vsock-device needs KVM ioeventfds, which this host's KVM lacks")]
    NoIoeventfd,
    /// The kernel's vhost-vsock is not there.
    #[error(
        "vhost-vsock-device needs /dev/vhost-vsock, which does not exist (is the vhost_vsock \
         module loaded?); virtio-vsock-device,uds-path=<path> needs no kernel module"
    )]
    NoVhostVsock,
    /// vhost-vsock is there, but Nimbus cannot drive it yet.
    #[error("vhost-vsock-device is not supported yet; use virtio-vsock-device,uds-path=<path>")]
    VhostNotImplemented,
}

/// Creates the vsock device of `config`.
pub fn vsock_device(config: &VsockConfig, ioeventfd: bool) -> Result<Labelled, VsockDeviceError> {
    match &config.backend {
        VsockBackend::Hybrid { uds_path } => {
            if !ioeventfd {
                return Err(VsockDeviceError::NoIoeventfd);
            }
            let options = VsockOptions {
                cid: config.cid,
                uds_path: uds_path.clone(),
            };
            let vsock = Vsock::new(&options).map_err(VsockDeviceError::Hybrid)?;
            let label = format!(
                "virtio-vsock '{}' for guest CID {} on {uds_path:?}",
                config.id, config.cid
            );
            Ok((label, Box::new(vsock)))
        }
        VsockBackend::Vhost { fd: Some(_) } => Err(VsockDeviceError::VhostNotImplemented),
        VsockBackend::Vhost { fd: None } => {
            if std::path::Path::new("/dev/vhost-vsock").exists() {
                Err(VsockDeviceError::VhostNotImplemented)
            } else {
                Err(VsockDeviceError::NoVhostVsock)
            }
        }
    }
}
