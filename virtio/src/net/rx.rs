//! Receive: one frame read from the tap goes into the guest's receive buffers, one chain per
//! frame or, with VIRTIO_NET_F_MRG_RXBUF, spread over several chains with `num_buffers` set.
//!
//! A frame is used only once all of it is in guest memory: the chains it fills are held until
//! then, so a frame waiting for more buffers keeps its place and its data.

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use log::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::header::{fix_rx, VnetHeader, MAX_PACKET_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use super::walk;

/// Why a frame from the tap was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxDrop {
    /// No chain can ever hold it (without MRG_RXBUF: the chain is too small).
    TooBig,
    /// Its header asks for an offload the guest did not accept, or it is shorter than one.
    BadHeader,
    /// A receive chain had a device-readable descriptor or a buffer outside RAM.
    BadChain,
}

/// What became of the pending frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// In the used ring.
    Delivered,
    /// The guest has not posted enough buffers; the frame stays pending.
    NoBuffers,
    /// The frame was dropped.
    Dropped(RxDrop),
    /// The chain at `head` loops or leaves the descriptor table; the device needs a reset.
    Broken { head: u16 },
}

/// Chains already filled with the start of the pending frame. Its vectors keep their room
/// from one frame to the next ([`Partial::reset`]), so that no frame allocates.
#[derive(Debug, Default)]
struct Partial {
    written: usize,
    /// The first chain's buffers, where num_buffers is written at the end.
    first: Vec<(GuestAddress, usize)>,
    /// (head, bytes written) of every chain filled so far.
    chains: Vec<(u16, u32)>,
}

impl Partial {
    fn reset(&mut self) {
        self.written = 0;
        self.first.clear();
        self.chains.clear();
    }
}

/// The one frame read from the tap and not yet in guest memory.
pub(crate) struct RxFrame {
    buf: Vec<u8>,
    len: usize,
    partial: Partial,
    /// The descriptors of the chain being filled (reused, see [`walk`]).
    descs: Vec<Descriptor>,
}

impl RxFrame {
    pub(crate) fn new() -> RxFrame {
        RxFrame {
            buf: vec![0u8; MAX_PACKET_LEN],
            len: 0,
            partial: Partial::default(),
            descs: Vec::new(),
        }
    }

    /// Whether a frame is waiting.
    pub(crate) fn is_pending(&self) -> bool {
        self.len != 0
    }

    /// Bytes of the waiting frame, without the header.
    pub(crate) fn frame_len(&self) -> usize {
        self.len.saturating_sub(VNET_HDR_LEN)
    }

    /// Drops the waiting frame (chains it filled must have been given back).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.partial.reset();
    }

    /// The buffer to read the next frame into.
    pub(crate) fn buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Takes the `len` bytes just read as the pending frame, its header adapted to `acked`.
    pub(crate) fn load(&mut self, len: usize, acked: u64) -> Result<(), RxDrop> {
        if len < VNET_HDR_LEN || len > self.buf.len() {
            return Err(RxDrop::BadHeader);
        }
        let head: &mut [u8; VNET_HDR_LEN] = (&mut self.buf[..VNET_HDR_LEN])
            .try_into()
            .expect("header-sized slice");
        let header = fix_rx(VnetHeader::parse(head), acked, 1).map_err(|e| {
            debug!("virtio-net: rx frame dropped: {e}");
            RxDrop::BadHeader
        })?;
        *head = header.to_bytes();
        self.len = len;
        self.partial.reset();
        Ok(())
    }
}

/// Puts the pending frame into the guest's receive buffers.
pub(crate) fn deliver(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut RxFrame,
    mergeable: bool,
) -> Result<Delivery, virtio_queue::Error> {
    loop {
        if frame.partial.chains.len() >= usize::from(queue.size()) {
            // The guest cannot post more while we hold every chain: the frame never fits.
            give_back(mem, queue, frame, None)?;
            return Ok(Delivery::Dropped(RxDrop::TooBig));
        }
        let Some(chain) = queue.iter(mem)?.next() else {
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        if !walk(chain, &mut frame.descs) {
            give_back(mem, queue, frame, Some(head))?;
            return Ok(Delivery::Broken { head });
        }
        let descs = &frame.descs;
        let capacity: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
        let remaining = frame.len - frame.partial.written;
        if descs.iter().any(|d| !d.is_write_only()) || (mergeable && capacity < VNET_HDR_LEN as u64)
        {
            debug!("virtio-net: rx chain {head} with a readable or too small buffer");
            give_back(mem, queue, frame, Some(head))?;
            return Ok(Delivery::Dropped(RxDrop::BadChain));
        }
        if !mergeable && capacity < remaining as u64 {
            // Leave the chain for a smaller frame.
            queue.go_to_previous_position();
            frame.clear();
            return Ok(Delivery::Dropped(RxDrop::TooBig));
        }
        let data = &frame.buf[frame.partial.written..frame.len];
        let Some(n) = write_buffers(mem, descs, data) else {
            debug!("virtio-net: rx chain {head} has a buffer outside guest RAM");
            give_back(mem, queue, frame, Some(head))?;
            return Ok(Delivery::Dropped(RxDrop::BadChain));
        };
        let p = &mut frame.partial;
        if p.chains.is_empty() {
            p.first
                .extend(descs.iter().map(|d| (d.addr(), d.len() as usize)));
        }
        // `n` is at most MAX_PACKET_LEN.
        p.chains.push((head, n as u32));
        p.written += n;
        if p.written == frame.len {
            return complete(mem, queue, frame);
        }
    }
}

/// Writes num_buffers into the first chain and uses every chain, in order.
fn complete(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut RxFrame,
) -> Result<Delivery, virtio_queue::Error> {
    let p = &frame.partial;
    // At most the queue size (checked in `deliver`), which is at most 32768.
    let count = u16::try_from(p.chains.len()).unwrap_or(u16::MAX);
    write_at(mem, &p.first, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
    for &(head, len) in &p.chains {
        queue.add_used(mem, head, len)?;
    }
    frame.clear();
    Ok(Delivery::Delivered)
}

/// Gives every held chain (and `extra`) back empty and drops the frame.
fn give_back(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut RxFrame,
    extra: Option<u16>,
) -> Result<(), virtio_queue::Error> {
    let heads: Vec<u16> = frame.partial.chains.iter().map(|&(h, _)| h).collect();
    frame.clear();
    for head in heads.into_iter().chain(extra) {
        queue.add_used(mem, head, 0)?;
    }
    Ok(())
}

/// Copies as much of `data` as fits into `descs`; `None` if a buffer is outside RAM.
fn write_buffers(mem: &GuestMemoryMmap, descs: &[Descriptor], data: &[u8]) -> Option<usize> {
    let mut done = 0usize;
    for d in descs {
        if done == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], d.addr()).ok()?;
        done += n;
    }
    Some(done)
}

/// Writes `bytes` at byte `offset` of the buffers `segments` (already checked to be in RAM).
fn write_at(
    mem: &GuestMemoryMmap,
    segments: &[(GuestAddress, usize)],
    offset: usize,
    bytes: &[u8],
) {
    let mut skip = offset;
    let mut rest = bytes;
    for &(addr, len) in segments {
        if rest.is_empty() {
            return;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(rest.len());
        if let Some(at) = addr.0.checked_add(skip as u64) {
            // Written before, so in RAM; a failure would only leave num_buffers stale.
            let _ = mem.write_slice(&rest[..n], GuestAddress(at));
        }
        rest = &rest[n..];
        skip = 0;
    }
}
