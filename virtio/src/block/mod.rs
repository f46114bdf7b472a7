//! virtio-blk over a raw image file: synchronous I/O on the notifying thread (`aio=off`), or
//! reads, writes and flushes submitted to io_uring and completed when the ring's eventfd fires
//! (`aio=io_uring`, and `aio=native`, which uses the same engine).

mod aligned;
mod disk;
mod request;
mod slot;
mod uring;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

pub use self::disk::{DiskBackend, RawFile};
use self::request::{execute, finish, start, AsyncRequest, Disk, Outcome, Started, MAX_SEGMENTS};
pub use self::request::{ID_BYTES, SECTOR_SIZE};
pub use self::slot::{BlockHandle, NoMedium, SlotError};
use self::uring::{Completion, Uring};
use crate::device::feature;
use crate::device::{
    checked_queues, read_config_bytes, ActivateError, Interrupt, QueueError, Shared, VirtioDevice,
    INT_USED_BUFFER,
};
use crate::DEVICE_TYPE_BLOCK;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

/// The size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Bytes of configuration space (struct virtio_blk_config up to write_zeroes_may_unmap).
const CONFIG_SIZE: usize = 60;
/// Largest DISCARD/WRITE_ZEROES range in sectors (2 GiB).
const MAX_ZEROES_SECTORS: u32 = 1 << 22;

/// How requests reach the host file (`-drive aio=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    /// Synchronous pread/pwrite/fdatasync on the thread that processes the queue.
    #[default]
    Off,
    /// io_uring: several requests in flight, completions on an eventfd.
    IoUring,
    /// Linux native AIO as QEMU names it; served by the io_uring engine.
    Native,
}

/// How to open a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// The raw image file.
    pub path: PathBuf,
    /// Offer VIRTIO_BLK_F_RO and fail writes.
    pub readonly: bool,
    /// GET_ID answer, at most 20 bytes (the drive id when the user gave none).
    pub serial: String,
    /// The I/O engine.
    pub aio: Aio,
    /// Open the image with O_DIRECT (bypassing the host page cache).
    pub direct: bool,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image file could not be opened or sized.
    #[error("cannot open disk image {path:?}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The serial does not fit the 20 bytes of GET_ID.
    #[error("serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// The io_uring could not be set up.
    #[error("cannot set up io_uring for disk image {path:?}")]
    IoUring {
        /// The image path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// An asynchronous request and the device generation (bumped by every reset) it belongs to.
type InFlight = (u64, AsyncRequest);

/// What an activated device holds.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Interrupt,
}

/// A virtio block device. The device state sits behind a mutex it shares with its
/// [`BlockHandle`]s, through which the machine attaches and detaches the medium (hot-plug).
pub type Block = Shared<BlockState>;

/// What a [`Block`] holds: the medium (a backend, or [`NoMedium`] in an empty slot), the
/// configuration space, the queue once activated and the io_uring engine.
pub struct BlockState {
    disk: Box<dyn DiskBackend>,
    /// A backend is attached (false in an empty slot).
    attached: bool,
    /// Requests of the attached backend go through `engine`.
    async_io: bool,
    readonly: bool,
    serial: [u8; ID_BYTES],
    capacity: u64,
    features: u64,
    config: [u8; CONFIG_SIZE],
    active: Option<Active>,
    engine: Option<Uring<InFlight>>,
    /// Bumped by every reset; completions of an older generation are dropped.
    generation: u64,
}

impl Block {
    /// Opens the raw image `options.path`.
    pub fn open(options: &BlockOptions) -> Result<Block, BlockError> {
        let disk = RawFile::open_with(&options.path, options.readonly, options.direct).map_err(
            |source| BlockError::Open {
                path: options.path.clone(),
                source,
            },
        )?;
        let block = Block::with_backend(Box::new(disk), options.readonly, &options.serial)?;
        if options.aio != Aio::Off {
            let engine = Uring::new(QUEUE_SIZE).map_err(|source| BlockError::IoUring {
                path: options.path.clone(),
                source,
            })?;
            let mut state = block.lock();
            state.engine = Some(engine);
            state.async_io = true;
        }
        Ok(block)
    }

    /// Whether requests go through the asynchronous engine.
    pub fn is_async(&self) -> bool {
        let state = self.lock();
        state.async_io && state.engine.is_some()
    }

    /// A block device over any backend (tests use instrumented ones).
    pub fn with_backend(
        disk: Box<dyn DiskBackend>,
        readonly: bool,
        serial: &str,
    ) -> Result<Block, BlockError> {
        let id = serial_id(serial)?;
        let capacity = disk.size() / SECTOR_SIZE;
        let mut features = feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH);
        if readonly {
            features |= feature(VIRTIO_BLK_F_RO);
        } else {
            features |= feature(VIRTIO_BLK_F_WRITE_ZEROES);
            if disk.supports_discard() {
                features |= feature(VIRTIO_BLK_F_DISCARD);
            }
        }
        Ok(Shared::new(BlockState {
            disk,
            attached: true,
            async_io: false,
            readonly,
            serial: id,
            capacity,
            features,
            config: config_space(capacity),
            active: None,
            engine: None,
            generation: 0,
        }))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.lock().capacity
    }
}

/// The GET_ID answer for `serial`, NUL-padded.
fn serial_id(serial: &str) -> Result<[u8; ID_BYTES], BlockError> {
    if serial.len() > ID_BYTES {
        return Err(BlockError::SerialTooLong(serial.to_owned()));
    }
    let mut id = [0u8; ID_BYTES];
    id[..serial.len()].copy_from_slice(serial.as_bytes());
    Ok(id)
}

impl BlockState {
    fn has(&self, bit: u32) -> bool {
        self.features & feature(bit) != 0
    }

    /// The medium as requests see it, with the queue and the engine they run on, borrowed
    /// apart so that the three can be used together.
    fn parts(&mut self) -> (Disk<'_>, Option<&mut Active>, Option<&mut Uring<InFlight>>) {
        let disk = Disk {
            backend: self.disk.as_ref(),
            capacity: self.capacity,
            readonly: self.readonly,
            serial: &self.serial,
            discard: self.has(VIRTIO_BLK_F_DISCARD) && self.disk.supports_discard(),
            write_zeroes: self.has(VIRTIO_BLK_F_WRITE_ZEROES) && !self.readonly,
        };
        (disk, self.active.as_mut(), self.engine.as_mut())
    }
}

/// struct virtio_blk_config, little-endian.
fn config_space(capacity: u64) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    // seg_max: the queue size less the header and status descriptors.
    c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    c[34..36].copy_from_slice(&1u16.to_le_bytes());
    c[36..40].copy_from_slice(&MAX_ZEROES_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
    // discard_sector_alignment: 4 KiB, the usual file system block.
    c[44..48].copy_from_slice(&8u32.to_le_bytes());
    c[48..52].copy_from_slice(&MAX_ZEROES_SECTORS.to_le_bytes());
    c[52..56].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
    c[56] = 1;
    c
}

impl VirtioDevice for BlockState {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE, not offered.
        debug!(
            "virtio-blk: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        _acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let [queue] = checked_queues(queues, mem.as_ref())?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn shutdown(&mut self) {
        // Dropping the engine waits for the requests still in flight.
        self.engine = None;
        // An empty slot (hot-plug) has nothing to flush.
        if !self.readonly && self.attached {
            if let Err(e) = self.disk.flush() {
                warn!("virtio-blk: cannot flush the image at exit: {e}");
            }
        }
    }

    fn flush(&mut self) {
        if !self.readonly && self.attached {
            if let Err(e) = self.disk.flush() {
                warn!("virtio-blk: cannot flush the image: {e}");
            }
        }
    }

    fn quiesce(&mut self) -> Result<(), QueueError> {
        // Requests whose notification still waits on the frozen event loop start now.
        self.process_queue(0)?;
        let (generation, async_io) = (self.generation, self.async_io);
        let (disk, active, engine) = self.parts();
        let (Some(active), Some(engine)) = (active, engine) else {
            return Ok(());
        };
        let mut completed = 0usize;
        let mut result = Ok(());
        while result.is_ok() && engine.in_flight() > 0 {
            let done = match engine.drain() {
                Ok(done) => done,
                Err(e) => {
                    warn!("virtio-blk: cannot wait for the requests in flight: {e}");
                    break;
                }
            };
            result = finish_all(&disk, active, done, generation, &mut completed);
            // Requests that waited for room in the engine.
            if result.is_ok() && async_io && active.queue.ready() {
                result = drain_async(&disk, active, (engine, generation), &mut completed);
            }
        }
        notify(active, completed);
        result
    }

    fn reset(&mut self) {
        // Requests still in the engine belong to the old queue: their completions are dropped.
        self.active = None;
        self.generation += 1;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if index != 0 {
            return Ok(());
        }
        let (generation, async_io) = (self.generation, self.async_io);
        let (disk, active, engine) = self.parts();
        let Some(active) = active.filter(|a| a.queue.ready()) else {
            return Ok(());
        };
        let mut completed = 0usize;
        let result = match engine.filter(|_| async_io) {
            Some(engine) => drain_async(&disk, active, (engine, generation), &mut completed),
            None => drain(&disk, active, &mut completed),
        };
        notify(active, completed);
        result
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.engine
            .iter()
            .map(|e| e.eventfd().as_raw_fd())
            .collect()
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        if index != 0 {
            return Ok(());
        }
        let (generation, async_io) = (self.generation, self.async_io);
        let (disk, active, engine) = self.parts();
        let Some(engine) = engine else {
            return Ok(());
        };
        let done = engine.reap();
        let Some(active) = active else {
            return Ok(());
        };
        let mut completed = 0usize;
        if let Err(e) = finish_all(&disk, active, done, generation, &mut completed) {
            notify(active, completed);
            return Err(e);
        }
        // Room in the engine again: serve what waited for it.
        let result = if active.queue.ready() && async_io {
            drain_async(&disk, active, (engine, generation), &mut completed)
        } else {
            Ok(())
        };
        notify(active, completed);
        result
    }
}

/// Writes the outcome of reaped completions to the guest and puts them in the used ring,
/// counting them in `completed`; completions of an older generation than `generation` are
/// dropped.
fn finish_all(
    disk: &Disk<'_>,
    active: &mut Active,
    done: Vec<Completion<InFlight>>,
    generation: u64,
    completed: &mut usize,
) -> Result<(), QueueError> {
    for c in done {
        let (submitted_in, mut request) = c.data;
        if submitted_in != generation {
            continue;
        }
        request.buf = c.buf;
        let head = request.head;
        let outcome = finish(disk, active.mem.as_ref(), request, c.result);
        complete(active, head, outcome, completed)?;
    }
    Ok(())
}

/// Raises the used-buffer interrupt after `completed` requests, unless the driver suppressed it.
fn notify(active: &mut Active, completed: usize) {
    let Active {
        mem,
        queue,
        interrupt,
    } = active;
    if completed > 0 && queue.needs_notification(mem.as_ref()).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(INT_USED_BUFFER) {
            warn!("virtio-blk: cannot raise interrupt: {e}");
        }
    }
}

/// Starts every available request while the engine has room: reads, writes and flushes are
/// submitted; the rest are served now and counted in `completed`.
fn drain_async(
    disk: &Disk<'_>,
    active: &mut Active,
    (engine, generation): (&mut Uring<InFlight>, u64),
    completed: &mut usize,
) -> Result<(), QueueError> {
    let ring = QueueError::ring(0);
    let Some(fd) = disk.backend.async_fd() else {
        return drain(disk, active, completed);
    };
    while engine.has_room() {
        let mem = active.mem.as_ref();
        let Some(chain) = active.queue.iter(mem).map_err(ring)?.next() else {
            return Ok(());
        };
        let head = chain.head_index();
        let outcome = match start(disk, mem, chain) {
            Started::Done(outcome) => outcome,
            Started::Submit(mut request) => {
                let (kind, offset) = request.kind();
                let buf = request.buf.take();
                match engine.submit(fd, kind, offset, buf, (generation, request)) {
                    Ok(()) => continue,
                    Err((e, (_, request))) => {
                        let errno = e.raw_os_error().unwrap_or(libc::EIO);
                        finish(disk, mem, request, -errno)
                    }
                }
            }
        };
        complete(active, head, outcome, completed)?;
    }
    Ok(())
}

/// Puts a request in the used ring, counting it in `completed`; a malformed chain is put there
/// too (with nothing written) and then reported.
fn complete(
    active: &mut Active,
    head: u16,
    outcome: Outcome,
    completed: &mut usize,
) -> Result<(), QueueError> {
    let used_len = match outcome {
        Outcome::Completed { used_len } => used_len,
        Outcome::NoStatus | Outcome::Malformed => 0,
    };
    active
        .queue
        .add_used(active.mem.as_ref(), head, used_len)
        .map_err(QueueError::ring(0))?;
    *completed += 1;
    if outcome == Outcome::Malformed {
        return Err(QueueError::MalformedChain { queue: 0, head });
    }
    Ok(())
}

/// Serves every available request, counting those put in the used ring. Stops at the first
/// chain that cannot be trusted.
fn drain(disk: &Disk<'_>, active: &mut Active, completed: &mut usize) -> Result<(), QueueError> {
    loop {
        let mem = active.mem.as_ref();
        let Some(chain) = active.queue.iter(mem).map_err(QueueError::ring(0))?.next() else {
            return Ok(());
        };
        let head = chain.head_index();
        let outcome = execute(disk, mem, chain);
        complete(active, head, outcome, completed)?;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;
