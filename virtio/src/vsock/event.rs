//! The event queue both vsock devices keep in Nimbus (the hybrid one, and vhost-vsock, whose
//! kernel half has no event queue): `struct virtio_vsock_event { le32 id }` buffers.

use std::io::Write;

use address_space::vm_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};

use crate::device::QueueError;

/// `virtio_vsock_event.id` of a transport reset: the guest drops its connections and reads
/// its CID again (after a restore or a migration).
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Bytes of one event.
const EVENT_LEN: u32 = 4;

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// The driver left no event buffer.
    NoBuffer,
    /// The buffer could not hold an event: given back empty.
    Short,
    /// The event is in the used ring.
    Written,
}

/// Puts event `id` into the next buffer the driver made available on the event queue `queue`.
pub(crate) fn post_event(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    id: u32,
    queue_index: u16,
) -> Result<Posted, QueueError> {
    let ring = QueueError::ring(queue_index);
    let chain = queue.iter(mem).map_err(ring)?.next();
    let Some(chain) = chain else {
        return Ok(Posted::NoBuffer);
    };
    let head = chain.head_index();
    let written = match Writer::new(mem, chain) {
        Ok(mut writer) if writer.available_bytes() >= EVENT_LEN as usize => writer
            .write_all(&id.to_le_bytes())
            .map_or(0, |()| EVENT_LEN),
        _ => 0,
    };
    queue.add_used(mem, head, written).map_err(ring)?;
    Ok(if written == EVENT_LEN {
        Posted::Written
    } else {
        Posted::Short
    })
}
