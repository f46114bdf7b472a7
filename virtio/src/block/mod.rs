//! virtio-blk over a raw image file: synchronous I/O on the notifying thread (`aio=off`), or
//! reads, writes and flushes submitted to io_uring and completed when the ring's eventfd fires
//! (`aio=io_uring`, and `aio=native`, which uses the same engine).
//!
//! The device offers indirect descriptor tables and event-index suppression (as Linux uses
//! them), `num-queues` request queues (VIRTIO_BLK_F_MQ beyond one), and throttling
//! (`throttle.rs`): a request over budget waits in its ring until a timerfd, one of the device's
//! event sources, fires.

mod aligned;
mod disk;
mod guest_io;
mod request;
mod slot;
mod small;
mod throttle;
mod uring;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use address_space::vm_memory::GuestMemoryMmap;
use log::{debug, warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::timerfd::TimerFd;

pub use self::disk::{DiskBackend, RawFile};
use self::request::{
    execute, finish, start, AsyncRequest, Disk, HostErrors, Outcome, Started, MAX_SEGMENTS,
};
pub use self::request::{ID_BYTES, SECTOR_SIZE};
pub use self::slot::{BlockHandle, NoMedium, SlotError};
use self::throttle::Throttle;
pub use self::throttle::ThrottleLimits;
use self::uring::{Completion, IovecsRef, Uring};
use crate::device::feature;
use crate::device::{
    read_config_bytes, ActivateError, Interrupt, QueueError, Shared, VirtioDevice, INT_USED_BUFFER,
};
use crate::DEVICE_TYPE_BLOCK;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The size of each request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most request queues a device has (`num-queues=`), as StratoVirt allows.
pub const MAX_QUEUES: u16 = 32;
static QUEUE_SIZES: [u16; MAX_QUEUES as usize] = [QUEUE_SIZE; MAX_QUEUES as usize];

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
    /// Request queues, 1 to [`MAX_QUEUES`] (more than one offers VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Requests and bytes per second (`iops=`, `bps=`).
    pub throttle: ThrottleLimits,
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
    /// `num-queues=` outside 1..=MAX_QUEUES.
    #[error("num-queues must be between 1 and {MAX_QUEUES}, not {0}")]
    QueueCount(u16),
    /// The throttling timer could not be created.
    #[error("cannot create the throttling timer")]
    Timer(#[source] io::Error),
}

/// An asynchronous request, the device generation (bumped by every reset) and the queue it
/// belongs to.
type InFlight = (u64, u16, AsyncRequest);

/// What an activated device holds.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// The token buckets of a throttled drive and the timer that ends a wait.
struct Throttling {
    buckets: Throttle,
    timer: TimerFd,
    /// When the timer set and not read yet expires (it is read only then: the read would
    /// block before, and asking the timer costs a syscall the seccomp lists do not have).
    expires: Option<Instant>,
}

/// Why serving a queue stopped before its ring was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The available ring is empty (notifications are enabled again).
    Empty,
    /// The io_uring engine is full: a completion resumes the queue.
    EngineFull,
    /// The throttle refused the next request for this long: the timer resumes the queue.
    Throttled(Duration),
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
    /// Request queues.
    num_queues: u16,
    throttle: Option<Throttling>,
    /// Host I/O errors of the current run of failures, logged once per run.
    host_errors: HostErrors,
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
        block.set_queues(options.num_queues)?;
        block.set_throttle(options.throttle)?;
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
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_RING_F_INDIRECT_DESC)
            | feature(VIRTIO_RING_F_EVENT_IDX);
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
            host_errors: HostErrors::default(),
            active: None,
            engine: None,
            generation: 0,
            num_queues: 1,
            throttle: None,
        }))
    }

    /// Gives the device `n` request queues (before it is handed to a transport).
    fn set_queues(&self, n: u16) -> Result<(), BlockError> {
        if !(1..=MAX_QUEUES).contains(&n) {
            return Err(BlockError::QueueCount(n));
        }
        let mut state = self.lock();
        state.num_queues = n;
        state.config[34..36].copy_from_slice(&n.to_le_bytes());
        if n > 1 {
            state.features |= feature(VIRTIO_BLK_F_MQ);
        } else {
            state.features &= !feature(VIRTIO_BLK_F_MQ);
        }
        Ok(())
    }

    /// Limits the device to `limits` (before it is handed to a transport: the timer is one
    /// of its event sources).
    fn set_throttle(&self, limits: ThrottleLimits) -> Result<(), BlockError> {
        if !limits.is_limited() {
            return Ok(());
        }
        let timer = TimerFd::new()
            .map_err(|e| BlockError::Timer(io::Error::from_raw_os_error(e.errno())))?;
        self.lock().throttle = Some(Throttling {
            buckets: Throttle::new(limits, Instant::now()),
            timer,
            expires: None,
        });
        Ok(())
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

    /// The medium as requests see it, with the queues, the engine and the throttle they run
    /// on, borrowed apart so that they can be used together.
    fn parts(&mut self) -> Parts<'_> {
        let disk = Disk {
            backend: self.disk.as_ref(),
            capacity: self.capacity,
            readonly: self.readonly,
            serial: &self.serial,
            discard: self.has(VIRTIO_BLK_F_DISCARD) && self.disk.supports_discard(),
            write_zeroes: self.has(VIRTIO_BLK_F_WRITE_ZEROES) && !self.readonly,
            host_errors: &self.host_errors,
        };
        Parts {
            disk,
            active: self.active.as_mut(),
            engine: self.engine.as_mut(),
            throttle: self.throttle.as_mut().map(|t| &mut t.buckets),
        }
    }

    /// Index of the throttling timer among [`VirtioDevice::event_fds`] (after the engine's).
    fn timer_event(&self) -> usize {
        usize::from(self.engine.is_some())
    }

    /// Serves every ready queue (through the engine where requests are asynchronous), then
    /// raises the interrupt if a queue asks for it and arms the throttling timer if a request
    /// must wait. `throttled` false serves everything now (quiesce).
    fn serve_queues(&mut self, only: Option<u16>, throttled: bool) -> Result<(), QueueError> {
        let (generation, async_io) = (self.generation, self.async_io);
        let Parts {
            disk,
            active,
            engine,
            mut throttle,
        } = self.parts();
        let Some(active) = active else {
            return Ok(());
        };
        if !throttled {
            throttle = None;
        }
        let mut engine = engine
            .filter(|_| async_io)
            .and_then(|e| disk.backend.async_fd().map(|fd| (e, fd, generation)));
        let mut counts = [0usize; MAX_QUEUES as usize];
        let completed = &mut counts[..active.queues.len()];
        let mut result = Ok(());
        let mut wait = None;
        for q in 0..active.queues.len() {
            if only.is_some_and(|o| usize::from(o) != q) || !active.queues[q].ready() {
                continue;
            }
            let engine = engine.as_mut().map(|(e, fd, g)| (&mut **e, *fd, *g));
            match serve_queue(&disk, active, q, engine, throttle.as_deref_mut(), completed) {
                Ok(Stop::Throttled(w)) => wait = Some(wait.map_or(w, |old: Duration| old.min(w))),
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        notify(active, completed);
        if let Some(wait) = wait {
            self.arm_timer(wait);
        }
        result
    }

    /// Arms the throttling timer to fire after `wait`.
    fn arm_timer(&mut self, wait: Duration) {
        if let Some(t) = &mut self.throttle {
            let wait = wait.max(Duration::from_micros(100));
            match t.timer.reset(wait, None) {
                // Taken after the timer was set: no earlier than its expiry.
                Ok(()) => t.expires = Some(Instant::now() + wait),
                Err(e) => warn!("virtio-blk: cannot arm the throttling timer: {e}"),
            }
        }
    }
}

/// A [`BlockState`] borrowed apart.
struct Parts<'a> {
    disk: Disk<'a>,
    active: Option<&'a mut Active>,
    engine: Option<&'a mut Uring<InFlight>>,
    throttle: Option<&'a mut Throttle>,
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
        &QUEUE_SIZES[..usize::from(self.num_queues)]
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
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let expected = usize::from(self.num_queues);
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        for (index, queue) in queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(mem.as_ref()) {
                return Err(ActivateError::InvalidQueue(index));
            }
        }
        let event_idx = acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        self.active = Some(Active {
            mem,
            queues,
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
        self.serve_until_idle()
    }

    fn reset(&mut self) {
        // Requests still in the engine belong to the old queue: their completions are dropped.
        self.active = None;
        self.generation += 1;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        self.serve_queues(Some(index), true)
    }

    fn event_fds(&self) -> Vec<RawFd> {
        let engine = self.engine.iter().map(|e| e.eventfd().as_raw_fd());
        let timer = self.throttle.iter().map(|t| t.timer.as_raw_fd());
        engine.chain(timer).collect()
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        if self.throttle.is_some() && index == self.timer_event() {
            if let Some(t) = &mut self.throttle {
                // The count only says that it expired.
                if t.expires.is_some_and(|at| Instant::now() >= at) {
                    let _ = t.timer.wait();
                    t.expires = None;
                }
            }
            return self.serve_queues(None, true);
        }
        if index != 0 {
            return Ok(());
        }
        let generation = self.generation;
        let Parts {
            disk,
            active,
            engine,
            ..
        } = self.parts();
        let Some(engine) = engine else {
            return Ok(());
        };
        let done = engine.reap();
        let Some(active) = active else {
            return Ok(());
        };
        let mut counts = [0usize; MAX_QUEUES as usize];
        let completed = &mut counts[..active.queues.len()];
        let result = finish_all(&disk, active, done, generation, completed);
        notify(active, completed);
        result?;
        // Room in the engine again: serve what waited for it.
        self.serve_queues(None, true)
    }
}

impl BlockState {
    /// Serves every available request, the throttle aside (those whose notification still
    /// waits on the frozen event loop too), and waits for every one in flight, until the
    /// queues are empty and the engine idle.
    fn serve_until_idle(&mut self) -> Result<(), QueueError> {
        loop {
            self.serve_queues(None, false)?;
            let generation = self.generation;
            let Parts {
                disk,
                active,
                engine,
                ..
            } = self.parts();
            let (Some(active), Some(engine)) = (active, engine) else {
                return Ok(());
            };
            if engine.in_flight() == 0 {
                return Ok(());
            }
            let done = match engine.drain() {
                Ok(done) => done,
                Err(e) => {
                    warn!("virtio-blk: cannot wait for the requests in flight: {e}");
                    return Ok(());
                }
            };
            let mut counts = [0usize; MAX_QUEUES as usize];
            let completed = &mut counts[..active.queues.len()];
            let result = finish_all(&disk, active, done, generation, completed);
            notify(active, completed);
            result?;
        }
    }
}

/// Writes the outcome of reaped completions to the guest and puts them in their queue's used
/// ring, counting them per queue in `completed`; completions of an older generation than
/// `generation` are dropped.
fn finish_all(
    disk: &Disk<'_>,
    active: &mut Active,
    done: Vec<Completion<InFlight>>,
    generation: u64,
    completed: &mut [usize],
) -> Result<(), QueueError> {
    for c in done {
        let (submitted_in, queue, mut request) = c.data;
        if submitted_in != generation || usize::from(queue) >= active.queues.len() {
            continue;
        }
        request.buf = c.buf;
        let head = request.head;
        let outcome = finish(disk, active.mem.as_ref(), request, c.result);
        complete(active, usize::from(queue), head, outcome, completed)?;
    }
    Ok(())
}

/// Raises the used-buffer interrupt once if a queue that used buffers (`completed` per queue)
/// asks for it; with EVENT_IDX the driver's used_event says which do.
fn notify(active: &mut Active, completed: &[usize]) {
    let Active {
        mem,
        queues,
        interrupt,
    } = active;
    let mut needed = false;
    for (queue, _) in queues.iter_mut().zip(completed).filter(|(_, n)| **n > 0) {
        // Every queue that used buffers is asked: the question resets its count.
        needed |= queue.needs_notification(mem.as_ref()).unwrap_or(true);
    }
    if needed {
        if let Err(e) = interrupt.trigger(INT_USED_BUFFER) {
            warn!("virtio-blk: cannot raise interrupt: {e}");
        }
    }
}

/// Bytes a request moves: its chain's length less the header and the status byte (what the
/// byte limit counts; a malformed chain costs what it claims).
fn data_bytes(chain: &DescriptorChain<&GuestMemoryMmap>) -> u64 {
    let total: u64 = chain.clone().map(|d| u64::from(d.len())).sum();
    total.saturating_sub(17)
}

/// Serves queue `q` with guest notifications off while it works: every available request
/// while the engine (if any: engine, image fd, generation) has room and the throttle admits
/// it; reads, writes and flushes are submitted, the rest served now. Requests put in the used
/// ring are counted in `completed`. With the ring empty, notifications are enabled again (with
/// EVENT_IDX, avail_event is moved up to what was served). When enabling says more arrived but
/// the next round finds nothing (a guest that laid the used ring's flags over the available
/// index flips that index itself), it stops instead of spinning: found by the mmio_sequence fuzzer.
fn serve_queue(
    disk: &Disk<'_>,
    active: &mut Active,
    q: usize,
    mut engine: Option<(&mut Uring<InFlight>, RawFd, u64)>,
    mut throttle: Option<&mut Throttle>,
    completed: &mut [usize],
) -> Result<Stop, QueueError> {
    let ring = QueueError::ring(q as u16);
    let mut rechecked = false;
    loop {
        active.queues[q]
            .disable_notification(active.mem.as_ref())
            .map_err(ring)?;
        let before = active.queues[q].next_avail();
        let stop = pop_requests(disk, active, q, &mut engine, &mut throttle, completed)?;
        if stop != Stop::Empty {
            return Ok(stop);
        }
        if !active.queues[q]
            .enable_notification(active.mem.as_ref())
            .map_err(ring)?
        {
            return Ok(Stop::Empty);
        }
        // Notifications are on again here, so the guest's next kick still reaches us.
        if rechecked && active.queues[q].next_avail() == before {
            return Ok(Stop::Empty);
        }
        rechecked = true;
    }
}

/// The loop of [`serve_queue`], until the ring is empty, the engine full or the throttle says
/// wait.
fn pop_requests(
    disk: &Disk<'_>,
    active: &mut Active,
    q: usize,
    engine: &mut Option<(&mut Uring<InFlight>, RawFd, u64)>,
    throttle: &mut Option<&mut Throttle>,
    completed: &mut [usize],
) -> Result<Stop, QueueError> {
    let ring = QueueError::ring(q as u16);
    loop {
        if engine.as_ref().is_some_and(|(e, _, _)| !e.has_room()) {
            return Ok(Stop::EngineFull);
        }
        let mem = active.mem.as_ref();
        let mut avail = active.queues[q].iter(mem).map_err(ring)?;
        let Some(chain) = avail.next() else {
            return Ok(Stop::Empty);
        };
        if let Some(throttle) = throttle.as_deref_mut() {
            let bytes = if throttle.counts_bytes() {
                data_bytes(&chain)
            } else {
                0
            };
            if let Err(wait) = throttle.admit(bytes, Instant::now()) {
                // Left in the ring until the timer fires.
                avail.go_to_previous_position();
                return Ok(Stop::Throttled(wait));
            }
        }
        let head = chain.head_index();
        let outcome = match engine.as_mut() {
            None => execute(disk, mem, chain),
            Some((engine, fd, generation)) => match start(disk, mem, chain) {
                Started::Done(outcome) => outcome,
                Started::Submit(mut request) => {
                    let (kind, offset) = request.kind();
                    let buf = request.buf.take();
                    let iov = request
                        .iov
                        .as_ref()
                        .and_then(|v| IovecsRef::of(v.as_slice()));
                    let data = (*generation, q as u16, request);
                    let submitted = match iov {
                        Some(iov) => engine.submit_iovecs(*fd, kind, offset, iov, data),
                        None => engine.submit(*fd, kind, offset, buf, data),
                    };
                    match submitted {
                        Ok(()) => continue,
                        Err((e, (_, _, request))) => {
                            let errno = e.raw_os_error().unwrap_or(libc::EIO);
                            finish(disk, mem, request, -errno)
                        }
                    }
                }
            },
        };
        complete(active, q, head, outcome, completed)?;
    }
}

/// Puts a request in queue `q`'s used ring, counting it in `completed`; a malformed chain is
/// put there too (with nothing written) and then reported.
fn complete(
    active: &mut Active,
    q: usize,
    head: u16,
    outcome: Outcome,
    completed: &mut [usize],
) -> Result<(), QueueError> {
    let used_len = match outcome {
        Outcome::Completed { used_len } => used_len,
        Outcome::NoStatus | Outcome::Malformed => 0,
    };
    active.queues[q]
        .add_used(active.mem.as_ref(), head, used_len)
        .map_err(QueueError::ring(q as u16))?;
    completed[q] += 1;
    if outcome == Outcome::Malformed {
        return Err(QueueError::MalformedChain {
            queue: q as u16,
            head,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod ring_tests;

#[cfg(test)]
mod bench;
