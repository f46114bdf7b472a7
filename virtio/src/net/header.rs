//! The virtio-net header (struct virtio_net_hdr_v1, virtio 1.2 section 5.1.6) in front of every
//! frame, and the checks that keep a guest's offload requests within what it negotiated.
//!
//! On tx the header comes from the guest: nothing in it is trusted. On rx it comes from the
//! tap and is adjusted to what the driver accepted.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};

use crate::device::{feature, to_u8};

/// Bytes of the header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers (the same size with or without VIRTIO_NET_F_MRG_RXBUF in virtio 1.x).
pub const VNET_HDR_LEN: usize = 12;
/// Bytes of an Ethernet header; a shorter frame is a runt the tap refuses.
pub const ETH_HLEN: usize = 14;
/// Largest frame (without the virtio-net header): 64 KiB of packet plus the Ethernet header.
pub const MAX_FRAME_LEN: usize = 0x1_0000 + ETH_HLEN;
/// Largest header plus frame that crosses the device in either direction.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Header flag: the device must finish the checksum at csum_start + csum_offset.
pub const HDR_F_NEEDS_CSUM: u8 = to_u8(VIRTIO_NET_HDR_F_NEEDS_CSUM);
/// Header flag (rx only): the checksum has been validated.
pub const HDR_F_DATA_VALID: u8 = to_u8(VIRTIO_NET_HDR_F_DATA_VALID);
/// gso_type: not a GSO frame.
pub const GSO_NONE: u8 = to_u8(VIRTIO_NET_HDR_GSO_NONE);
/// gso_type: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = to_u8(VIRTIO_NET_HDR_GSO_TCPV4);
/// gso_type: UDP fragmentation (UFO).
pub const GSO_UDP: u8 = to_u8(VIRTIO_NET_HDR_GSO_UDP);
/// gso_type: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = to_u8(VIRTIO_NET_HDR_GSO_TCPV6);

/// Offset of num_buffers in the header.
pub(crate) const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
    #[error("flags {0:#x} not allowed")]
    Flags(u8),
    #[error("checksum offload requested without it being negotiated")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} outside the {len}-byte frame")]
    CsumOutOfFrame { start: u16, offset: u16, len: usize },
    #[error("gso_type {0:#x} unknown or not negotiated")]
    Gso(u8),
    #[error("GSO frame without NEEDS_CSUM or with gso_size 0")]
    GsoIncomplete,
    #[error("hdr_len {hdr_len} outside the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

/// The fields of a virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VnetHeader {
    pub(crate) flags: u8,
    pub(crate) gso_type: u8,
    pub(crate) hdr_len: u16,
    pub(crate) gso_size: u16,
    pub(crate) csum_start: u16,
    pub(crate) csum_offset: u16,
    pub(crate) num_buffers: u16,
}

impl VnetHeader {
    /// Decodes the little-endian header at the start of `bytes`.
    pub(crate) fn parse(bytes: &[u8; VNET_HDR_LEN]) -> VnetHeader {
        let le16 = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        VnetHeader {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers: le16(NUM_BUFFERS_OFFSET),
        }
    }

    /// Encodes the header, little-endian.
    pub(crate) fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// The feature a gso_type needs, host side (tx) and guest side (rx).
fn gso_features(gso_type: u8) -> Option<(u64, u64)> {
    match gso_type {
        GSO_TCPV4 => Some((
            feature(VIRTIO_NET_F_HOST_TSO4),
            feature(VIRTIO_NET_F_GUEST_TSO4),
        )),
        GSO_TCPV6 => Some((
            feature(VIRTIO_NET_F_HOST_TSO6),
            feature(VIRTIO_NET_F_GUEST_TSO6),
        )),
        GSO_UDP => Some((
            feature(VIRTIO_NET_F_HOST_UFO),
            feature(VIRTIO_NET_F_GUEST_UFO),
        )),
        _ => None,
    }
}

/// Checks a header the driver sent with a `len`-byte frame against the features it accepted,
/// so that nothing the tap would refuse or misread reaches it.
pub(crate) fn check_tx(h: &VnetHeader, len: usize, acked: u64) -> Result<(), HeaderError> {
    if len < ETH_HLEN {
        return Err(HeaderError::Runt(len));
    }
    if h.flags & !HDR_F_NEEDS_CSUM != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    if h.flags & HDR_F_NEEDS_CSUM != 0 {
        if acked & feature(VIRTIO_NET_F_CSUM) == 0 {
            return Err(HeaderError::CsumNotNegotiated);
        }
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > len {
            return Err(HeaderError::CsumOutOfFrame {
                start: h.csum_start,
                offset: h.csum_offset,
                len,
            });
        }
    }
    if h.gso_type != GSO_NONE {
        match gso_features(h.gso_type) {
            Some((host, _)) if acked & host != 0 => {}
            _ => return Err(HeaderError::Gso(h.gso_type)),
        }
        if h.flags & HDR_F_NEEDS_CSUM == 0 || h.gso_size == 0 {
            return Err(HeaderError::GsoIncomplete);
        }
    }
    let hdr_len = usize::from(h.hdr_len);
    if hdr_len > len || (hdr_len != 0 && hdr_len < ETH_HLEN) {
        return Err(HeaderError::HdrLen {
            hdr_len: h.hdr_len,
            len,
        });
    }
    Ok(())
}

/// Adapts a header the tap wrote to what the driver accepted, with `num_buffers` set. Fails if
/// the frame needs an offload the driver did not accept (the tap was told not to send those).
pub(crate) fn fix_rx(
    mut h: VnetHeader,
    acked: u64,
    num_buffers: u16,
) -> Result<VnetHeader, HeaderError> {
    if acked & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        if h.flags & HDR_F_NEEDS_CSUM != 0 {
            return Err(HeaderError::CsumNotNegotiated);
        }
        // Without GUEST_CSUM the device must set flags to zero.
        h.flags = 0;
    }
    h.flags &= HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID;
    if h.gso_type != GSO_NONE {
        match gso_features(h.gso_type) {
            Some((_, guest)) if acked & guest != 0 => {}
            _ => return Err(HeaderError::Gso(h.gso_type)),
        }
    }
    h.num_buffers = num_buffers;
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_bindings::virtio_net::VIRTIO_NET_HDR_GSO_ECN;

    use super::*;

    /// gso_type bit: TCP with ECN (needs HOST_ECN/GUEST_ECN, not offered).
    const GSO_ECN: u8 = to_u8(VIRTIO_NET_HDR_GSO_ECN);

    const ALL: u64 = feature(VIRTIO_NET_F_CSUM)
        | feature(VIRTIO_NET_F_HOST_TSO4)
        | feature(VIRTIO_NET_F_HOST_TSO6)
        | feature(VIRTIO_NET_F_HOST_UFO)
        | feature(VIRTIO_NET_F_GUEST_CSUM)
        | feature(VIRTIO_NET_F_GUEST_TSO4)
        | feature(VIRTIO_NET_F_GUEST_TSO6)
        | feature(VIRTIO_NET_F_GUEST_UFO);

    fn tso4() -> VnetHeader {
        VnetHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn header_bytes_round_trip() {
        let h = tso4();
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0]);
        assert_eq!(VnetHeader::parse(&b), h);
    }

    #[test]
    fn plain_header_is_accepted_without_offloads() {
        assert_eq!(check_tx(&VnetHeader::default(), 60, 0), Ok(()));
    }

    #[test]
    fn valid_tso4_header_is_accepted_when_negotiated() {
        assert_eq!(check_tx(&tso4(), 3000, ALL), Ok(()));
    }

    #[test]
    fn gso_without_the_host_feature_is_refused() {
        let acked = ALL & !feature(VIRTIO_NET_F_HOST_TSO4);
        assert_eq!(check_tx(&tso4(), 3000, acked), Err(HeaderError::Gso(1)));
    }

    #[test]
    fn unknown_gso_type_and_ecn_are_refused() {
        for gso_type in [2, 5, 6, GSO_TCPV4 | GSO_ECN, 0xff] {
            let h = VnetHeader { gso_type, ..tso4() };
            assert_eq!(check_tx(&h, 3000, ALL), Err(HeaderError::Gso(gso_type)));
        }
    }

    #[test]
    fn gso_without_needs_csum_or_mss_is_refused() {
        let no_csum = VnetHeader { flags: 0, ..tso4() };
        assert_eq!(
            check_tx(&no_csum, 3000, ALL),
            Err(HeaderError::GsoIncomplete)
        );
        let no_mss = VnetHeader {
            gso_size: 0,
            ..tso4()
        };
        assert_eq!(
            check_tx(&no_mss, 3000, ALL),
            Err(HeaderError::GsoIncomplete)
        );
    }

    #[test]
    fn checksum_past_the_frame_is_refused() {
        let h = VnetHeader {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: 50,
            csum_offset: 9,
            ..VnetHeader::default()
        };
        assert_eq!(check_tx(&h, 61, ALL), Ok(()));
        assert!(matches!(
            check_tx(&h, 60, ALL),
            Err(HeaderError::CsumOutOfFrame { .. })
        ));
        let huge = VnetHeader {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..h
        };
        assert!(check_tx(&huge, MAX_FRAME_LEN, ALL).is_err());
    }

    #[test]
    fn needs_csum_without_csum_feature_is_refused() {
        let h = VnetHeader {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHeader::default()
        };
        assert_eq!(check_tx(&h, 60, 0), Err(HeaderError::CsumNotNegotiated));
    }

    #[test]
    fn rx_only_or_unknown_flags_are_refused_on_tx() {
        for flags in [HDR_F_DATA_VALID, 4, 0x80] {
            let h = VnetHeader {
                flags,
                ..VnetHeader::default()
            };
            assert_eq!(check_tx(&h, 60, ALL), Err(HeaderError::Flags(flags)));
        }
    }

    #[test]
    fn hdr_len_outside_the_frame_or_inside_ethernet_is_refused() {
        for (hdr_len, len) in [(61, 60), (13, 60), (u16::MAX, 100)] {
            let h = VnetHeader {
                hdr_len,
                ..VnetHeader::default()
            };
            assert!(matches!(
                check_tx(&h, len, ALL),
                Err(HeaderError::HdrLen { .. })
            ));
        }
    }

    #[test]
    fn runt_frame_is_refused() {
        assert_eq!(
            check_tx(&VnetHeader::default(), 13, ALL),
            Err(HeaderError::Runt(13))
        );
    }

    #[test]
    fn rx_header_loses_flags_without_guest_csum() {
        let h = VnetHeader {
            flags: HDR_F_DATA_VALID,
            ..VnetHeader::default()
        };
        let fixed = fix_rx(h, 0, 1).unwrap();
        assert_eq!((fixed.flags, fixed.num_buffers), (0, 1));
    }

    #[test]
    fn rx_gso_frame_needs_the_guest_feature() {
        let h = tso4();
        assert_eq!(fix_rx(h, ALL, 3).unwrap().num_buffers, 3);
        assert_eq!(
            fix_rx(h, ALL & !feature(VIRTIO_NET_F_GUEST_TSO4), 1),
            Err(HeaderError::Gso(GSO_TCPV4))
        );
        assert_eq!(fix_rx(h, 0, 1), Err(HeaderError::CsumNotNegotiated));
    }
}
