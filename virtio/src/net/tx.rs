//! Transmit: one descriptor chain from the guest becomes one frame written to the tap.
//!
//! The chain is copied out of guest memory before its header is checked, so the guest cannot
//! change the header between the check and the write. A chain whose structure cannot be trusted
//! (a loop, longer than the queue, a descriptor table outside RAM) is [`TxResult::Malformed`];
//! any other mistake drops the frame with a reason.

use address_space::vm_memory::{Bytes, GuestMemoryMmap};
use log::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;

use super::header::{check_tx, VnetHeader, MAX_PACKET_LEN, VNET_HDR_LEN};
use super::tap::TapIo;
use super::walk;

/// Why a frame the guest sent was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxDrop {
    /// Header and frame exceed [`MAX_PACKET_LEN`].
    Oversize,
    /// The header asks for something not negotiated or points outside the frame.
    BadHeader,
    /// A device-writable descriptor, or a buffer outside guest RAM.
    BadChain,
    /// The tap refused the write (link down, queue full, ...).
    Tap,
    /// The tap is gone: its interface was deleted (EBADFD), every later write fails too.
    TapGone,
}

/// How one chain ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TxResult {
    /// The frame (this many bytes, without the header) went to the tap.
    Sent(usize),
    /// The frame was dropped.
    Dropped(TxDrop),
    /// The chain loops, is longer than the queue or leaves the descriptor table.
    Malformed,
}

/// What [`transmit`] reuses from one frame to the next, so that no frame allocates: the copy
/// of the frame (always [`MAX_PACKET_LEN`] long, so it is never cleared or filled either) and
/// the chain's descriptors.
pub(crate) struct TxScratch {
    bytes: Vec<u8>,
    descs: Vec<Descriptor>,
}

impl TxScratch {
    pub(crate) fn new() -> TxScratch {
        TxScratch {
            bytes: vec![0u8; MAX_PACKET_LEN],
            descs: Vec::new(),
        }
    }
}

/// Sends the frame in `chain` to `tap`.
pub(crate) fn transmit(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    acked: u64,
    tap: &mut dyn TapIo,
    scratch: &mut TxScratch,
) -> TxResult {
    let TxScratch { bytes, descs } = scratch;
    if !walk(chain, descs) {
        return TxResult::Malformed;
    }
    if descs.iter().any(|d| d.is_write_only()) {
        debug!("virtio-net: tx chain with a device-writable descriptor dropped");
        return TxResult::Dropped(TxDrop::BadChain);
    }
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total > MAX_PACKET_LEN as u64 {
        debug!("virtio-net: tx frame of {total} bytes dropped (oversize)");
        return TxResult::Dropped(TxDrop::Oversize);
    }
    if total < VNET_HDR_LEN as u64 {
        return TxResult::Dropped(TxDrop::BadHeader);
    }
    // `total` fits in usize: it is at most MAX_PACKET_LEN, the length of `bytes`.
    let packet = &mut bytes[..total as usize];
    let mut at = 0usize;
    for d in descs.iter() {
        let len = d.len() as usize;
        if mem.read_slice(&mut packet[at..at + len], d.addr()).is_err() {
            debug!("virtio-net: tx buffer outside guest RAM dropped");
            return TxResult::Dropped(TxDrop::BadChain);
        }
        at += len;
    }
    let packet = &packet[..];
    let (head, frame) = packet.split_at(VNET_HDR_LEN);
    let header = VnetHeader::parse(head.try_into().expect("split at the header length"));
    if let Err(e) = check_tx(&header, frame.len(), acked) {
        debug!("virtio-net: tx frame dropped: {e}");
        return TxResult::Dropped(TxDrop::BadHeader);
    }
    match tap.write_frame(packet) {
        Ok(_) => TxResult::Sent(packet.len() - VNET_HDR_LEN),
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => TxResult::Dropped(TxDrop::TapGone),
        Err(e) => {
            debug!("virtio-net: tap {} refused a frame: {e}", tap.name());
            TxResult::Dropped(TxDrop::Tap)
        }
    }
}
