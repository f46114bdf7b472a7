//! What a virtio device gives its transport, and the interrupt it raises.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use address_space::vm_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bits: the device used a buffer in at least one queue (`INT_USED_BUFFER`);
/// its configuration changed (`INT_CONFIG_CHANGE`).
pub use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_INT_CONFIG as INT_CONFIG_CHANGE, VIRTIO_MMIO_INT_VRING as INT_USED_BUFFER,
};

/// The mask of feature bit `bit`: virtio-bindings numbers feature bits, the transport and the
/// devices handle 64-bit masks.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// A virtio-bindings value (a `u32`) stored in a one-byte field; evaluated in a constant, a value
/// that does not fit fails the build.
pub(crate) const fn to_u8(value: u32) -> u8 {
    assert!(value <= u8::MAX as u32);
    value as u8
}

/// A virtio-bindings value (a `u32`) stored in a two-byte field; evaluated in a constant, a value
/// that does not fit fails the build.
pub(crate) const fn to_u16(value: u32) -> u16 {
    assert!(value <= u16::MAX as u32);
    value as u16
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a number of queues the device cannot use.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// The driver made a queue ready whose rings are not inside guest RAM.
    #[error("queue {0} rings are not inside guest RAM")]
    InvalidQueue(usize),
    /// The device's back end (a vhost driver in the kernel, ...) refused to start.
    #[error("the device's back end could not be started")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A queue error after which the device cannot go on without a reset (DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A descriptor chain loops, is longer than the queue, or its table is outside RAM.
    #[error("queue {queue}: malformed descriptor chain at head {head}")]
    MalformedChain {
        /// The queue index.
        queue: u16,
        /// The chain's head descriptor index.
        head: u16,
    },
    /// Walking the available ring or adding to the used ring failed.
    #[error("queue {queue}: ring access failed")]
    Ring {
        /// The queue index.
        queue: u16,
        /// What virtio-queue reported.
        #[source]
        source: virtio_queue::Error,
    },
    /// The process serving the device's rings (a vhost-user back end) is gone.
    #[error("{device}: the back end closed its socket")]
    BackendGone {
        /// "<device type> '<id>'".
        device: String,
    },
}

impl QueueError {
    /// The error for a failed ring access on `queue`, to give to `map_err`.
    pub(crate) fn ring(queue: u16) -> impl Fn(virtio_queue::Error) -> QueueError + Copy {
        move |source| QueueError::Ring { queue, source }
    }
}

/// A device's interrupt: the InterruptStatus bits it shares with its transport, the event file
/// descriptor that raises its IRQ line (an irqfd), and the configuration generation.
#[derive(Clone, Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt raised by writing `evt`, with no status bit set.
    pub fn new(evt: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            config_generation: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Tells the driver the configuration space changed: a new generation and an interrupt.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.trigger(INT_CONFIG_CHANGE)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the `bits` the driver acknowledged (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets InterruptStatus and ConfigGeneration as a snapshot had them.
    pub fn restore(&self, status: u32, config_generation: u32) {
        self.status.store(status, Ordering::SeqCst);
        self.config_generation
            .store(config_generation, Ordering::SeqCst);
    }

    /// Clears every status bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// The event file descriptor that raises the line, to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Copies configuration space bytes from `config` at `offset` into `data`; bytes past its end
/// (or at offsets that overflow) read as 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        let at = offset
            .checked_add(i as u64)
            .and_then(|a| usize::try_from(a).ok());
        *byte = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
    }
}

/// The `N` queues of a device with `N` queues; an error for any other count, or for a ready
/// queue whose rings are not inside guest RAM.
pub(crate) fn checked_queues<const N: usize>(
    queues: Vec<Queue>,
    mem: &GuestMemoryMmap,
) -> Result<[Queue; N], ActivateError> {
    let queues = <[Queue; N]>::try_from(queues).map_err(|queues| ActivateError::QueueCount {
        expected: N,
        got: queues.len(),
    })?;
    match queues.iter().position(|q| q.ready() && !q.is_valid(mem)) {
        Some(bad) => Err(ActivateError::InvalidQueue(bad)),
        None => Ok(queues),
    }
}

/// A descriptor a device started or stopped using while it runs (a vsock connection's socket),
/// for the loop that watches the device's sources.
#[derive(Debug)]
pub enum FdChange {
    /// Watch `fd` edge-triggered for input, output and hang-up; its events come back as
    /// [`VirtioDevice::handle_fd_event`]`(token, ..)`. Tokens are below 2^31.
    Add {
        /// The descriptor, open until a `Remove` hands it over.
        fd: RawFd,
        /// The device's name for it.
        token: u32,
    },
    /// Stop watching the descriptor, then close it (in that order: a closed descriptor's
    /// number may already name the next one added).
    Remove {
        /// The descriptor, owned by the change from here on.
        close: OwnedFd,
    },
}

/// What an event said about a descriptor added through [`FdChange::Add`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Input (or its end) may be read.
    pub readable: bool,
    /// Output may be written.
    pub writable: bool,
    /// The peer hung up or the descriptor failed.
    pub closed: bool,
}

/// A virtio device behind a transport. The transport owns the register state and the queues
/// until the driver sets DRIVER_OK; then it hands the queues to [`VirtioDevice::activate`].
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block, ...).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &'static [u16];
    /// Device feature bits offered, without VIRTIO_F_VERSION_1 (the transport adds it).
    fn features(&self) -> u64;
    /// Reads configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes configuration space at `offset`; read-only fields ignore the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the features the driver accepted, guest memory, every queue (in
    /// order, ready or not) and its interrupt.
    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// Drops all in-flight state and the queues; the device can be activated again.
    fn reset(&mut self);
    /// Makes what the guest wrote durable (a disk's fdatasync) without ending anything: a
    /// snapshot is being taken.
    fn flush(&mut self) {}
    /// The device was activated again from a snapshot (its transport's registers restored):
    /// what it kept outside guest memory is gone (vsock tells the guest its connections are).
    fn restored(&mut self) {}
    /// Processes what the driver made available on queue `index` (the driver notified it).
    /// A queue that is not ready, or a device that is not activated, is ignored.
    fn process_queue(&mut self, index: u16) -> Result<(), QueueError>;
    /// Whether notifications still reach [`VirtioDevice::process_queue`] once the device
    /// needs a reset (a vhost-user disk whose back end is gone answers each request with an
    /// I/O error rather than leaving the guest waiting).
    fn serves_after_needs_reset(&self) -> bool {
        false
    }
    /// File descriptors the device wants watched for input besides its queue notifications
    /// (an I/O completion eventfd, a tap). The set is fixed when the device is created and the
    /// descriptors stay open as long as the device; fd `i` readable leads to `handle_event(i)`.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// The VM is ending: finish in-flight work and make written data durable (a disk flushes
    /// its image). Called once, after the vCPUs stopped.
    fn shutdown(&mut self) {}
    /// The VM stopped (QMP `stop`, before a snapshot): finish every request the driver made
    /// available and every one still in flight, so that guest memory holds the whole state
    /// of the queues (a disk waits for its io_uring requests). Called with the vCPUs parked.
    fn quiesce(&mut self) -> Result<(), QueueError> {
        Ok(())
    }
    /// Event source `index` of [`VirtioDevice::event_fds`] is readable; the device reads it.
    /// Called whether or not the device is activated.
    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        let _ = index;
        Ok(())
    }
    /// The descriptors the device started or stopped using since the last call, in order
    /// (sockets of connections that come and go). The loop takes them after every event of
    /// the device; a device that changes them outside such an event (a reset from a vCPU)
    /// makes one of its [`VirtioDevice::event_fds`] readable so that the loop comes.
    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        Vec::new()
    }
    /// Descriptor `token` of an [`FdChange::Add`] is ready.
    fn handle_fd_event(&mut self, token: u32, ready: Readiness) -> Result<(), QueueError> {
        let _ = (token, ready);
        Ok(())
    }
}

/// A device shared between its transport (which owns a clone as its `Box<dyn VirtioDevice>`)
/// and the machine (which reaches the device through [`Shared::lock`]: a net device's receive
/// path on the event loop, a hot-plug slot swapping its backend). Every trait call takes the
/// lock; the lock order is transport, then device.
pub struct Shared<D>(Arc<Mutex<D>>);

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<D> Shared<D> {
    /// Shares `device`.
    pub fn new(device: D) -> Shared<D> {
        Shared(Arc::new(Mutex::new(device)))
    }

    /// The device. A panic while it was held leaves it usable: device state is plain data.
    pub fn lock(&self) -> MutexGuard<'_, D> {
        address_space::sync::lock(&self.0)
    }
}

impl<D: VirtioDevice> VirtioDevice for Shared<D> {
    fn device_type(&self) -> u32 {
        self.lock().device_type()
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        self.lock().queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.lock().features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.lock().read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.lock().write_config(offset, data);
    }

    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        self.lock().activate(acked_features, mem, queues, interrupt)
    }

    fn reset(&mut self) {
        self.lock().reset();
    }

    fn restored(&mut self) {
        self.lock().restored();
    }

    fn flush(&mut self) {
        self.lock().flush();
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        self.lock().process_queue(index)
    }

    fn serves_after_needs_reset(&self) -> bool {
        self.lock().serves_after_needs_reset()
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.lock().event_fds()
    }

    fn shutdown(&mut self) {
        self.lock().shutdown();
    }

    fn quiesce(&mut self) -> Result<(), QueueError> {
        self.lock().quiesce()
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        self.lock().handle_event(index)
    }

    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        self.lock().take_fd_changes()
    }

    fn handle_fd_event(&mut self, token: u32, ready: Readiness) -> Result<(), QueueError> {
        self.lock().handle_fd_event(token, ready)
    }
}
