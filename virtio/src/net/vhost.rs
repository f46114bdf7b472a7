//! `vhost=on`: what a vhost-net backend would take over, and the check for `/dev/vhost-net`.
//!
//! The backend itself is not implemented: our build machines have no `/dev/vhost-net`, so only
//! the option, the presence check and the feature negotiation (pure logic) exist and are tested.
//! With vhost-net the kernel walks the rings; the device model keeps the config space and the
//! tap keeps the offloads, as in QEMU's `vhost_net_get_features`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::device::feature;

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

/// Why vhost-net cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The device node does not exist.
    #[error("vhost=on needs {path:?}, which does not exist (is the vhost_net module loaded?)")]
    NotPresent {
        /// The node looked for.
        path: PathBuf,
    },
    /// vhost-net is there, but Nimbus has no vhost-net backend yet.
    #[error("vhost=on is not supported yet (use vhost=off)")]
    NotImplemented,
    /// The device node exists but could not be opened.
    #[error("vhost=on: cannot open {path:?}")]
    Open {
        /// The node.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// What `vhost=` asks for, checked: `Ok` for [`VhostMode::Off`]; otherwise the reason it cannot
/// be served ([`VhostError::NotPresent`] here, or [`VhostError::NotImplemented`]).
pub fn check_vhost(mode: VhostMode) -> Result<(), VhostError> {
    match mode {
        VhostMode::Off => Ok(()),
        VhostMode::On { fd: Some(_) } => Err(VhostError::NotImplemented),
        VhostMode::On { fd: None } => {
            open_vhost_net(Path::new(VHOST_NET_PATH))?;
            Err(VhostError::NotImplemented)
        }
    }
}

/// Opens the vhost-net device node at `path` (normally [`VHOST_NET_PATH`]); a clear error when
/// it is absent or refused.
pub fn open_vhost_net(path: &Path) -> Result<File, VhostError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => VhostError::NotPresent {
                path: path.to_owned(),
            },
            _ => VhostError::Open {
                path: path.to_owned(),
                source,
            },
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
    };

    use super::*;

    #[test]
    fn absent_vhost_net_gives_a_clear_error() {
        let path = Path::new("/nonexistent/vhost-net");
        let err = open_vhost_net(path).unwrap_err();
        assert!(matches!(err, VhostError::NotPresent { .. }));
        assert!(err.to_string().contains("/nonexistent/vhost-net"));
        assert!(err.to_string().contains("vhost_net module"));
    }

    #[test]
    fn vhost_off_passes_and_vhost_on_is_refused_clearly() {
        assert!(check_vhost(VhostMode::Off).is_ok());
        let err = check_vhost(VhostMode::On { fd: None }).unwrap_err();
        if Path::new(VHOST_NET_PATH).exists() {
            assert!(matches!(
                err,
                VhostError::NotImplemented | VhostError::Open { .. }
            ));
        } else {
            assert!(matches!(err, VhostError::NotPresent { .. }));
            assert!(err.to_string().contains(VHOST_NET_PATH));
        }
        assert!(matches!(
            check_vhost(VhostMode::On { fd: Some(5) }),
            Err(VhostError::NotImplemented)
        ));
    }

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
        let device = feature(VIRTIO_NET_F_MAC)
            | feature(VIRTIO_NET_F_CSUM)
            | feature(VIRTIO_NET_F_GUEST_TSO4);
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
}
