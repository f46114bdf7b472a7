//! Replaceable media: the machine keeps a [`BlockHandle`] on each block device and swaps the
//! disk behind it (QMP `device_add` / `device_del` on virtio-mmio, which has no hot-plug
//! signalling). An empty device has [`NoMedium`]: capacity 0, every I/O request fails with
//! VIRTIO_BLK_S_IOERR. Attaching or detaching rewrites the capacity in configuration space
//! and raises a configuration-change interrupt, so the guest's driver re-reads it.

use std::io;
use std::sync::MutexGuard;

use log::{info, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO};

use super::uring::Uring;
use super::{
    finish_all, notify, Block, BlockError, BlockState, DiskBackend, QUEUE_SIZE, SECTOR_SIZE,
};
use crate::device::feature;

/// The medium of an empty slot: no sectors, and every operation fails with ENOMEDIUM.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMedium;

fn no_medium() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOMEDIUM)
}

impl DiskBackend for NoMedium {
    fn size(&self) -> u64 {
        0
    }

    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(no_medium())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(no_medium())
    }

    fn flush(&self) -> io::Result<()> {
        Err(no_medium())
    }

    fn supports_discard(&self) -> bool {
        false
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(no_medium())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(no_medium())
    }
}

/// Why a medium could not be attached or detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// `attach` on a device that already has a medium.
    #[error("the block device already has a medium")]
    Busy,
    /// `detach` on an empty device.
    #[error("the block device has no medium")]
    Empty,
}

impl Block {
    /// An empty slot: a block device without medium until [`BlockHandle::attach`]. It offers
    /// the features of a writable disk with DISCARD and WRITE_ZEROES (what a request may do
    /// then depends on the medium attached), and sets up an io_uring engine so that a medium
    /// with asynchronous I/O can be attached later; if the host has no io_uring, such media
    /// are served synchronously.
    pub fn empty(serial: &str) -> Result<Block, BlockError> {
        let block = Block::with_backend(Box::new(NoMedium), false, serial)?;
        {
            let mut state = block.lock();
            state.attached = false;
            state.features |= feature(VIRTIO_BLK_F_DISCARD);
            match Uring::new(QUEUE_SIZE) {
                Ok(engine) => state.engine = Some(engine),
                Err(e) => warn!("virtio-blk slot {serial:?}: no io_uring ({e}); media will be served synchronously"),
            }
        }
        Ok(block)
    }

    /// A handle on this device for attaching and detaching its medium.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle(self.clone())
    }
}

/// The machine's side of a block device: swaps the medium behind it.
#[derive(Clone)]
pub struct BlockHandle(Block);

impl BlockHandle {
    fn lock(&self) -> MutexGuard<'_, BlockState> {
        self.0.lock()
    }

    /// Whether a medium is attached.
    pub fn is_attached(&self) -> bool {
        self.lock().attached
    }

    /// Capacity in 512-byte sectors (0 without medium).
    pub fn capacity(&self) -> u64 {
        self.lock().capacity
    }

    /// Whether requests would go through the io_uring engine.
    pub fn is_async(&self) -> bool {
        let state = self.lock();
        state.async_io && state.engine.is_some()
    }

    /// Puts `disk` behind the device, `readonly` or not, with `async_io` through the io_uring
    /// engine (synchronously if the device has none). The capacity changes and the driver gets
    /// a configuration-change interrupt. A busy device gives `disk` back.
    pub fn attach(
        &self,
        disk: Box<dyn DiskBackend>,
        readonly: bool,
        async_io: bool,
    ) -> Result<(), Box<dyn DiskBackend>> {
        let mut state = self.lock();
        if state.attached {
            return Err(disk);
        }
        let capacity = disk.size() / SECTOR_SIZE;
        state.disk = disk;
        state.attached = true;
        state.readonly = readonly || state.has(VIRTIO_BLK_F_RO);
        state.async_io = async_io && state.engine.is_some();
        if async_io && !state.async_io {
            info!(
                "virtio-blk: no io_uring engine on this device; serving the medium synchronously"
            );
        }
        state.set_capacity(capacity);
        Ok(())
    }

    /// Takes the medium away once the requests in flight on it completed (the io_uring engine
    /// is drained; synchronous requests are never in flight outside the device's lock) and,
    /// unless it is read-only, flushed.
    /// Requests still waiting in the queue then fail with IOERR; the capacity becomes 0 and the
    /// driver gets a configuration-change interrupt.
    pub fn detach(&self) -> Result<Box<dyn DiskBackend>, SlotError> {
        let mut state = self.lock();
        if !state.attached {
            return Err(SlotError::Empty);
        }
        state.drain_engine();
        if !state.readonly {
            // What the guest wrote is durable before the medium leaves (QEMU flushes too).
            if let Err(e) = state.disk.flush() {
                warn!("virtio-blk: cannot flush the medium being detached: {e}");
            }
        }
        let disk = std::mem::replace(&mut state.disk, Box::new(NoMedium));
        state.attached = false;
        state.async_io = false;
        state.readonly = state.has(VIRTIO_BLK_F_RO);
        state.set_capacity(0);
        if let Err(e) = state.serve_queues(None, true) {
            warn!("virtio-blk: after detaching the medium: {e}");
        }
        Ok(disk)
    }
}

impl BlockState {
    /// Writes the capacity to configuration space and tells an active driver.
    fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
        self.config[0..8].copy_from_slice(&capacity.to_le_bytes());
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_config_change() {
                warn!("virtio-blk: cannot raise the configuration-change interrupt: {e}");
            }
        }
    }

    /// Waits for every request in the io_uring engine and completes them to the guest.
    fn drain_engine(&mut self) {
        let generation = self.generation;
        let super::Parts {
            disk,
            active,
            engine,
            ..
        } = self.parts();
        let Some(engine) = engine.filter(|e| e.in_flight() > 0) else {
            return;
        };
        let done = match engine.drain() {
            Ok(done) => done,
            Err(e) => {
                warn!("virtio-blk: cannot wait for requests in flight: {e}");
                return;
            }
        };
        let Some(active) = active else {
            return;
        };
        let mut completed = vec![0usize; active.queues.len()];
        if let Err(e) = finish_all(&disk, active, done, generation, &mut completed) {
            warn!("virtio-blk: completing drained requests: {e}");
        }
        notify(active, &completed);
    }
}

#[cfg(test)]
#[path = "slot_tests.rs"]
mod tests;
