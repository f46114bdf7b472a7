//! virtio-balloon (device ID 5): the host asks the guest for memory back (`num_pages`), the
//! guest puts pages in the balloon (inflate queue) and takes them out again (deflate queue),
//! reports its memory statistics (stats queue) and, with free page reporting, names free
//! ranges it will not use until it allocates them again (reporting queue).
//!
//! Inflated and reported pages go back to the host through [`Discard`] (`madvise` or a hole
//! punched in the shared file, see `address_space::RamDiscard`); a deflated page needs
//! nothing: the guest's next touch faults it back in. Pages outside RAM, pages inflated twice
//! and pages deflated without being inflated are ignored and counted ([`BalloonCounters`]);
//! a request whose buffers are outside RAM, whose length is not whole page numbers, or that
//! is too long is dropped whole and counted. Every request is completed, so a hostile driver
//! cannot make the device stop.
//!
//! Queues, in order: inflate, deflate, then stats (VIRTIO_BALLOON_F_STATS_VQ, always offered)
//! and reporting (VIRTIO_BALLOON_F_REPORTING, offered with `free-page-reporting=true`), each
//! present only when its feature is negotiated, as the spec numbers them.

mod pages;
mod stats;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use log::warn;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{
    feature, read_config_bytes, ActivateError, Interrupt, QueueError, VirtioDevice, INT_USED_BUFFER,
};

pub use pages::{BalloonCounters, Discard, Inflated};
pub use stats::{GuestStats, Stats, STAT_NAMES};

/// Virtio device ID of a memory balloon.
pub const DEVICE_TYPE_BALLOON: u32 = 5;
/// The host must be told before the guest uses a deflated page (not offered).
pub const F_MUST_TELL_HOST: u32 = 0;
/// The stats queue exists.
pub const F_STATS_VQ: u32 = 1;
/// The guest deflates when it runs out of memory.
pub const F_DEFLATE_ON_OOM: u32 = 2;
/// The reporting queue exists (free page reporting).
pub const F_REPORTING: u32 = 5;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 128;
/// Bytes of page numbers read from one inflate or deflate request at most (Linux sends 256).
pub const MAX_PFN_BYTES: usize = 64 * 1024;
/// Size of the balloon's page (the protocol's, whatever the host's).
pub const PAGE: u64 = 4096;

const QUEUES_3: [u16; 3] = [QUEUE_SIZE; 3];
const QUEUES_4: [u16; 4] = [QUEUE_SIZE; 4];

/// What `-device virtio-balloon-device` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// The device id (`id=`), for QMP paths.
    pub id: Option<String>,
    /// `deflate-on-oom`.
    pub deflate_on_oom: bool,
    /// `free-page-reporting`.
    pub free_page_reporting: bool,
}

/// Why the balloon could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// The stats timer or the change notifier could not be created.
    #[error("cannot create the balloon's event sources")]
    Events(#[source] io::Error),
}

/// What each queue index is for, given the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

fn role(index: u16, acked: u64) -> Option<Role> {
    let mut roles = vec![Role::Inflate, Role::Deflate];
    if acked & feature(F_STATS_VQ) != 0 {
        roles.push(Role::Stats);
    }
    if acked & feature(F_REPORTING) != 0 {
        roles.push(Role::Reporting);
    }
    roles.get(usize::from(index)).copied()
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    acked: u64,
    interrupt: Interrupt,
    /// The stats buffer the device holds until it wants new statistics.
    stats_head: Option<u16>,
}

/// The balloon device.
pub struct Balloon {
    options: BalloonOptions,
    ram_size: u64,
    ram: Arc<dyn Discard>,
    num_pages: u32,
    actual: u32,
    inflated: Inflated,
    counters: BalloonCounters,
    stats: Stats,
    poll_interval: u64,
    timer: TimerFd,
    /// Written when the guest changed `actual` (to wake the loop that reports it) and at
    /// activation (to serve what the driver queued before DRIVER_OK).
    changed_evt: EventFd,
    changed: bool,
    /// The device was activated: its queues are served once on the loop.
    serve_pending: bool,
    active: Option<Active>,
}

impl Balloon {
    /// A balloon over guest RAM of `ram_size` bytes, releasing pages through `ram`.
    pub fn new(
        options: BalloonOptions,
        ram_size: u64,
        ram: Arc<dyn Discard>,
    ) -> Result<Balloon, BalloonError> {
        let err = |e: vmm_sys_util::errno::Error| {
            BalloonError::Events(io::Error::from_raw_os_error(e.errno()))
        };
        let timer = TimerFd::new().map_err(err)?;
        let changed_evt = EventFd::new(EFD_NONBLOCK).map_err(BalloonError::Events)?;
        Ok(Balloon {
            inflated: Inflated::new(ram.ram_end()),
            options,
            ram_size,
            ram,
            num_pages: 0,
            actual: 0,
            counters: BalloonCounters::default(),
            stats: Stats::default(),
            poll_interval: 0,
            timer,
            changed_evt,
            changed: false,
            serve_pending: false,
            active: None,
        })
    }

    /// The options it was made with.
    pub fn options(&self) -> &BalloonOptions {
        &self.options
    }

    /// `balloon {"value": bytes}`: asks the guest to leave it `target` bytes (at most all of
    /// RAM), and tells it when it runs.
    pub fn set_target(&mut self, target: u64) {
        let pages = (self.ram_size - target.min(self.ram_size)) / PAGE;
        self.num_pages = u32::try_from(pages).unwrap_or(u32::MAX);
        if let Some(active) = &self.active {
            if let Err(err) = active.interrupt.signal_config_change() {
                warn!("virtio-balloon: cannot raise the config interrupt: {err}");
            }
        }
    }

    /// Bytes of RAM the guest has not put in the balloon, by its own count (`query-balloon`).
    pub fn actual_bytes(&self) -> u64 {
        self.ram_size.saturating_sub(u64::from(self.actual) * PAGE)
    }

    /// The new [`Balloon::actual_bytes`] if the guest changed it since the last call.
    pub fn take_change(&mut self) -> Option<u64> {
        std::mem::take(&mut self.changed).then(|| self.actual_bytes())
    }

    /// What the device did and ignored.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Pages in the balloon by the device's count.
    pub fn inflated_pages(&self) -> u64 {
        self.inflated.count()
    }

    /// `guest-stats`.
    pub fn guest_stats(&self) -> GuestStats {
        self.stats.guest_stats()
    }

    /// `guest-stats-polling-interval`.
    pub fn poll_interval(&self) -> u64 {
        self.poll_interval
    }

    /// Sets `guest-stats-polling-interval` (seconds, 0 stops polling); enabling it asks for
    /// statistics at once, as QEMU does.
    pub fn set_poll_interval(&mut self, seconds: u64) {
        let was = self.poll_interval;
        self.poll_interval = seconds;
        let wait = match (was, seconds) {
            (_, 0) => None,
            (0, _) => Some(Duration::from_millis(1)),
            (_, s) => Some(Duration::from_secs(s)),
        };
        self.arm_timer(wait);
    }

    fn arm_timer(&mut self, wait: Option<Duration>) {
        let result = match wait {
            Some(wait) => self.timer.reset(wait, None),
            None => self.timer.clear(),
        };
        if let Err(err) = result {
            warn!("virtio-balloon: cannot set the stats timer: {err}");
        }
    }

    /// The stats timer expired: hands the held stats buffer back so the guest refills it.
    fn poll_stats(&mut self) {
        let _ = self.timer.wait();
        if self.poll_interval == 0 {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(index) =
            (0..active.queues.len() as u16).find(|i| role(*i, active.acked) == Some(Role::Stats))
        else {
            return;
        };
        if let Some(head) = active.stats_head.take() {
            complete(active, index, head);
            notify(active, index);
        }
    }

    fn serve(&mut self, index: u16) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(role) = role(index, active.acked) else {
            return Ok(());
        };
        let mem = Arc::clone(&active.mem);
        let mut completed = false;
        let mut got_stats = false;
        loop {
            let Some(queue) = active.queues.get_mut(usize::from(index)) else {
                return Ok(());
            };
            if !queue.ready() {
                return Ok(());
            }
            let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            match role {
                Role::Inflate | Role::Deflate => {
                    match page_numbers(mem.as_ref(), chain) {
                        Some(pfns) if role == Role::Inflate => pages::inflate(
                            &pfns,
                            &mut self.inflated,
                            self.ram.as_ref(),
                            &mut self.counters,
                        ),
                        Some(pfns) => pages::deflate(&pfns, &mut self.inflated, &mut self.counters),
                        None => self.counters.dropped_requests += 1,
                    }
                    complete(active, index, head);
                    completed = true;
                }
                Role::Reporting => {
                    for desc in chain {
                        pages::report(
                            desc.addr().0,
                            u64::from(desc.len()),
                            self.ram.as_ref(),
                            &mut self.counters,
                        );
                    }
                    complete(active, index, head);
                    completed = true;
                }
                Role::Stats => {
                    match stats_bytes(mem.as_ref(), chain) {
                        Some(bytes) => self.stats.update(&bytes, now_secs()),
                        None => self.counters.dropped_requests += 1,
                    }
                    // A second buffer while one is held: give the older one back.
                    if let Some(old) = active.stats_head.replace(head) {
                        complete(active, index, old);
                        completed = true;
                    }
                    got_stats = true;
                }
            }
        }
        if completed {
            notify(active, index);
        }
        if got_stats && self.poll_interval > 0 {
            self.arm_timer(Some(Duration::from_secs(self.poll_interval)));
        }
        Ok(())
    }
}

fn complete(active: &mut Active, index: u16, head: u16) {
    if let Some(queue) = active.queues.get_mut(usize::from(index)) {
        if let Err(err) = queue.add_used(active.mem.as_ref(), head, 0) {
            warn!("virtio-balloon: queue {index}: cannot complete a request: {err}");
        }
    }
}

fn notify(active: &mut Active, index: u16) {
    let Some(queue) = active.queues.get_mut(usize::from(index)) else {
        return;
    };
    if queue
        .needs_notification(active.mem.as_ref())
        .unwrap_or(true)
    {
        if let Err(err) = active.interrupt.trigger(INT_USED_BUFFER) {
            warn!("virtio-balloon: cannot raise interrupt: {err}");
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The device-readable bytes of a chain, at most `limit`; `None` if a buffer is outside RAM
/// or the chain holds more.
fn readable_bytes(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    limit: usize,
) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    for desc in chain.readable() {
        let len = desc.len() as usize;
        if bytes.len() + len > limit {
            return None;
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        mem.read_slice(&mut bytes[start..], GuestAddress(desc.addr().0))
            .ok()?;
    }
    Some(bytes)
}

/// The le32 page numbers of an inflate or deflate request; `None` for a request to drop.
fn page_numbers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Option<Vec<u32>> {
    let bytes = readable_bytes(mem, chain, MAX_PFN_BYTES)?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn stats_bytes(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Vec<u8>> {
    readable_bytes(mem, chain, stats::STAT_ENTRY * stats::MAX_STAT_ENTRIES)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        if self.options.free_page_reporting {
            &QUEUES_4
        } else {
            &QUEUES_3
        }
    }

    fn features(&self) -> u64 {
        let mut features = feature(F_STATS_VQ);
        if self.options.deflate_on_oom {
            features |= feature(F_DEFLATE_ON_OOM);
        }
        if self.options.free_page_reporting {
            features |= feature(F_REPORTING);
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        config[4..].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.actual.to_le_bytes();
        for (i, byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u64);
            if let Some(slot) = at.checked_sub(4).and_then(|a| actual.get_mut(a as usize)) {
                *slot = *byte;
            }
        }
        let actual = u32::from_le_bytes(actual);
        if actual != self.actual {
            self.actual = actual;
            self.changed = true;
            if let Err(err) = self.changed_evt.write(1) {
                warn!("virtio-balloon: cannot report the new size: {err}");
            }
        }
    }

    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let expected = self.queue_max_sizes().len();
        if queues.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: queues.len(),
            });
        }
        if let Some(bad) = queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem.as_ref()))
        {
            return Err(ActivateError::InvalidQueue(bad));
        }
        self.active = Some(Active {
            mem,
            queues,
            acked: acked_features,
            interrupt,
            stats_head: None,
        });
        // Linux primes the stats queue and kicks it before DRIVER_OK: what is there is served
        // on the loop (activation runs on a vCPU thread, whose seccomp list has no room for
        // the balloon's discards and timer).
        self.serve_pending = true;
        if let Err(err) = self.changed_evt.write(1) {
            warn!("virtio-balloon: cannot wake the loop: {err}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.inflated.clear();
        if self.actual != 0 {
            self.actual = 0;
            self.changed = true;
            let _ = self.changed_evt.write(1);
        }
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        self.serve(index)
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.timer.as_raw_fd(), self.changed_evt.as_raw_fd()]
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        match index {
            0 => self.poll_stats(),
            _ => {
                // A new `actual` only needs the loop awake: the machine takes the change
                // after the batch.
                let _ = self.changed_evt.read();
                if std::mem::take(&mut self.serve_pending) {
                    let queues = self.queue_max_sizes().len() as u16;
                    for index in 0..queues {
                        self.serve(index)?;
                    }
                }
            }
        }
        Ok(())
    }
}
