//! virtio-console (device ID 3) with one console port on port 0 (`-device
//! virtio-serial-device` with `-device virtconsole,chardev=`): Linux's `hvc0`.
//!
//! No MULTIPORT: Linux then drives port 0 as a console on queue 0 (receive) and queue 1
//! (transmit). The device is sans-IO: guest output goes to a `Write` (a chardev), console
//! input arrives through [`Console::queue_input`].
//!
//! Backpressure: when the output answers `WouldBlock`, the chain being sent is kept (used
//! only once all of it left) and the transmit queue is no longer consumed until
//! [`Console::resume_output`] (the chardev has room again). Only this port waits; the guest's
//! `hvc` write waits for its buffer, as with QEMU. Input the guest has no buffers for is held
//! up to [`MAX_PENDING_INPUT`] bytes; the rest is dropped and counted. A chain with bad
//! addresses is used with 0 bytes; a broken ring needs a reset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use crate::device::{
    checked_queues, ActivateError, Interrupt, QueueError, VirtioDevice, INT_USED_BUFFER,
};

/// Virtio device ID of a console.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE as DEVICE_TYPE_CONSOLE;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Console input held while the guest has no receive buffers.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;
/// Most bytes taken from one transmit chain (Linux sends at most a page; the rest of a
/// hostile guest's huge chain is dropped).
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
const RX: u16 = 0;
const TX: u16 = 1;

/// A transmit chain whose bytes the chardev has not all taken yet.
struct Stalled {
    head: u16,
    bytes: Vec<u8>,
    sent: usize,
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: [Queue; 2],
    interrupt: Interrupt,
}

/// Bytes through the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Guest output the chardev took.
    pub output_bytes: u64,
    /// Input written into guest buffers.
    pub input_bytes: u64,
    /// Input dropped because the guest did not take it in time.
    pub input_dropped: u64,
}

/// The console device.
pub struct Console {
    out: Box<dyn Write + Send>,
    pending: VecDeque<u8>,
    stalled: Option<Stalled>,
    active: Option<Active>,
    counters: ConsoleCounters,
}

impl Console {
    /// A console writing guest output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            out,
            pending: VecDeque::new(),
            stalled: None,
            active: None,
            counters: ConsoleCounters::default(),
        }
    }

    /// Bytes through the port so far.
    pub fn counters(&self) -> ConsoleCounters {
        self.counters
    }

    /// Whether output waits for the chardev.
    pub fn output_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Console input for the guest: written into its receive buffers now, or held (up to
    /// [`MAX_PENDING_INPUT`] bytes) until it adds some.
    pub fn queue_input(&mut self, data: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        let take = room.min(data.len());
        self.pending.extend(&data[..take]);
        if take < data.len() {
            self.counters.input_dropped += (data.len() - take) as u64;
            warn!(
                "virtio-console: guest does not read its input; {} bytes dropped",
                data.len() - take
            );
        }
        if let Err(err) = self.fill_receive_buffers() {
            warn!("virtio-console: {err}");
        }
    }

    /// The chardev has room again: send what waited and go on with the transmit queue.
    pub fn resume_output(&mut self) {
        if self.stalled.is_none() {
            return;
        }
        if let Err(err) = self.transmit() {
            warn!("virtio-console: {err}");
        }
    }

    fn notify(active: &mut Active, queue: u16) {
        let q = &mut active.queues[usize::from(queue)];
        if q.needs_notification(active.mem.as_ref()).unwrap_or(true) {
            if let Err(err) = active.interrupt.trigger(INT_USED_BUFFER) {
                warn!("virtio-console: cannot raise interrupt: {err}");
            }
        }
    }

    fn fill_receive_buffers(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let ring = QueueError::ring(RX);
        let mem = Arc::clone(&active.mem);
        let queue = &mut active.queues[usize::from(RX)];
        if !queue.ready() {
            return Ok(());
        }
        let mut used = false;
        let mut result = Ok(());
        while !self.pending.is_empty() {
            let chain = match queue.iter(mem.as_ref()).map_err(ring) {
                Ok(mut iter) => iter.next(),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let written = match Writer::new(mem.as_ref(), chain) {
                Ok(mut writer) => {
                    let n = writer.available_bytes().min(self.pending.len());
                    let bytes: Vec<u8> = self.pending.drain(..n).collect();
                    match writer.write_all(&bytes) {
                        Ok(()) => n,
                        Err(err) => {
                            warn!("virtio-console: cannot write a receive buffer: {err}");
                            writer.bytes_written()
                        }
                    }
                }
                Err(err) => {
                    warn!("virtio-console: unusable receive buffers: {err}");
                    0
                }
            };
            self.counters.input_bytes += written as u64;
            if let Err(err) = queue.add_used(mem.as_ref(), head, written as u32) {
                result = Err(ring(err));
                break;
            }
            used = true;
        }
        if used {
            Self::notify(active, RX);
        }
        result
    }

    /// Sends what waited, then every chain the driver made available, until the chardev is
    /// full.
    fn transmit(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let ring = QueueError::ring(TX);
        let mem = Arc::clone(&active.mem);
        let mut used = false;
        let mut result = Ok(());
        loop {
            if let Some(stalled) = self.stalled.as_mut() {
                if !send(self.out.as_mut(), stalled, &mut self.counters) {
                    break;
                }
                let head = stalled.head;
                self.stalled = None;
                let queue = &mut active.queues[usize::from(TX)];
                if let Err(err) = queue.add_used(mem.as_ref(), head, 0) {
                    result = Err(ring(err));
                    break;
                }
                used = true;
            }
            let queue = &mut active.queues[usize::from(TX)];
            if !queue.ready() {
                break;
            }
            let chain = match queue.iter(mem.as_ref()).map_err(ring) {
                Ok(mut iter) => iter.next(),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let bytes = match Reader::new(mem.as_ref(), chain) {
                Ok(reader) => read_chain(reader),
                Err(err) => {
                    warn!("virtio-console: unusable transmit buffers: {err}");
                    Vec::new()
                }
            };
            self.stalled = Some(Stalled {
                head,
                bytes,
                sent: 0,
            });
        }
        if used {
            Self::notify(active, TX);
        }
        result
    }
}

/// The readable bytes of a transmit chain, at most [`MAX_CHAIN_BYTES`].
fn read_chain(mut reader: Reader<'_>) -> Vec<u8> {
    let n = reader.available_bytes().min(MAX_CHAIN_BYTES);
    let mut bytes = vec![0u8; n];
    match reader.read_exact(&mut bytes) {
        Ok(()) => bytes,
        Err(err) => {
            warn!("virtio-console: cannot read a transmit buffer: {err}");
            Vec::new()
        }
    }
}

/// Writes the rest of `stalled`; true once all of it left (or was dropped on an error).
fn send(out: &mut dyn Write, stalled: &mut Stalled, counters: &mut ConsoleCounters) -> bool {
    while stalled.sent < stalled.bytes.len() {
        match out.write(&stalled.bytes[stalled.sent..]) {
            Ok(0) => return true,
            Ok(n) => {
                stalled.sent += n;
                counters.output_bytes += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("virtio-console: output dropped: {e}");
                return true;
            }
        }
    }
    true
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    /// cols, rows (u16 each), max_nr_ports, emerg_wr (u32 each): 0, 0, 1, 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        crate::device::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        _acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let queues = checked_queues::<2>(queues, mem.as_ref())?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.stalled = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        match index {
            RX => self.fill_receive_buffers(),
            TX => self.transmit(),
            _ => Ok(()),
        }
    }

    /// A chain still waiting for the chardev is used now, its unsent bytes dropped: a
    /// snapshot must not hold a chain the device took and never gave back.
    fn quiesce(&mut self) -> Result<(), QueueError> {
        let (Some(active), Some(stalled)) = (self.active.as_mut(), self.stalled.take()) else {
            return Ok(());
        };
        warn!(
            "virtio-console: {} bytes of output dropped at stop",
            stalled.bytes.len() - stalled.sent
        );
        let mem = Arc::clone(&active.mem);
        active.queues[usize::from(TX)]
            .add_used(mem.as_ref(), stalled.head, 0)
            .map_err(QueueError::ring(TX))?;
        Self::notify(active, TX);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
