//! virtio-rng (entropy device, ID 4): fills the guest's writable buffers with bytes read from a
//! host source (`-object rng-random,filename=/dev/urandom`), optionally rate-limited to
//! `max-bytes` per `period` milliseconds as QEMU's `virtio-rng-device` is.
//!
//! When the budget of a period is spent, the device leaves the remaining requests in the ring
//! and arms a timer; its expiry (an event source the machine watches) refills the budget and
//! serves them. A chain with bad addresses gets zero bytes; a broken ring needs a reset.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{
    checked_queues, ActivateError, Interrupt, QueueError, VirtioDevice, INT_USED_BUFFER,
};

/// Virtio device ID of an entropy source.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_RNG as DEVICE_TYPE_RNG;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served for one request (Linux asks for at most a page or so).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// QEMU's default rate-limit period.
pub const DEFAULT_PERIOD_MS: u64 = 1000;

/// What `-object rng-random` and `-device virtio-rng-device` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngOptions {
    /// The host entropy source.
    pub source: PathBuf,
    /// Most bytes per period, unlimited when `None`.
    pub max_bytes: Option<u64>,
    /// The period in milliseconds.
    pub period_ms: u64,
}

/// Why the entropy device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The source cannot be opened.
    #[error("cannot open entropy source {path:?}")]
    Open {
        /// The source.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The rate-limit timer cannot be created.
    #[error("cannot create the rate-limit timer")]
    Timer(#[source] io::Error),
    /// A period of zero.
    #[error("the rate-limit period must be at least 1 ms")]
    ZeroPeriod,
}

/// Bytes allowed per period.
#[derive(Debug)]
struct Budget {
    max: u64,
    period: Duration,
    left: u64,
    period_start: Instant,
}

impl Budget {
    fn refill_if_due(&mut self, now: Instant) {
        if now.duration_since(self.period_start) >= self.period {
            self.left = self.max;
            self.period_start = now;
        }
    }

    fn until_next_period(&self, now: Instant) -> Duration {
        self.period
            .saturating_sub(now.duration_since(self.period_start))
            .max(Duration::from_millis(1))
    }
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Interrupt,
}

/// The entropy device.
pub struct Rng {
    source: File,
    budget: Option<(Budget, TimerFd)>,
    active: Option<Active>,
    timer_armed: bool,
    served_bytes: u64,
}

impl Rng {
    /// Opens the source and, with a rate limit, the timer that ends a spent period.
    pub fn new(options: &RngOptions) -> Result<Rng, RngError> {
        let source = File::open(&options.source).map_err(|source| RngError::Open {
            path: options.source.clone(),
            source,
        })?;
        Rng::with_source(source, options.max_bytes, options.period_ms)
    }

    /// A device reading from an already open `source`.
    pub fn with_source(
        source: File,
        max_bytes: Option<u64>,
        period_ms: u64,
    ) -> Result<Rng, RngError> {
        if period_ms == 0 {
            return Err(RngError::ZeroPeriod);
        }
        let budget = match max_bytes {
            Some(max) => {
                let timer = TimerFd::new()
                    .map_err(|e| RngError::Timer(io::Error::from_raw_os_error(e.errno())))?;
                let budget = Budget {
                    max,
                    period: Duration::from_millis(period_ms),
                    left: max,
                    period_start: Instant::now(),
                };
                Some((budget, timer))
            }
            None => None,
        };
        Ok(Rng {
            source,
            budget,
            active: None,
            timer_armed: false,
            served_bytes: 0,
        })
    }

    /// Bytes handed to the guest so far.
    pub fn served_bytes(&self) -> u64 {
        self.served_bytes
    }

    /// The source path of an options set, for messages.
    pub fn describe(options: &RngOptions) -> &Path {
        &options.source
    }

    /// Bytes the next request may have now (refilling the budget when a new period began).
    fn allowance(&mut self) -> u64 {
        match &mut self.budget {
            None => MAX_REQUEST_BYTES as u64,
            Some((budget, _)) => {
                budget.refill_if_due(Instant::now());
                budget.left.min(MAX_REQUEST_BYTES as u64)
            }
        }
    }

    fn arm_timer(&mut self) {
        let Some((budget, timer)) = &mut self.budget else {
            return;
        };
        if self.timer_armed {
            return;
        }
        let wait = budget.until_next_period(Instant::now());
        match timer.reset(wait, None) {
            Ok(()) => self.timer_armed = true,
            Err(err) => warn!("virtio-rng: cannot arm the rate-limit timer: {err}"),
        }
    }

    fn serve(&mut self) -> Result<(), QueueError> {
        let ring = QueueError::ring(0);
        let mut completed = 0usize;
        let result = loop {
            let Some(active) = self.active.as_ref() else {
                return Ok(());
            };
            if !active.queue.ready() {
                return Ok(());
            }
            let allowance = self.allowance();
            if allowance == 0 {
                self.arm_timer();
                break Ok(());
            }
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            let mem = Arc::clone(&active.mem);
            let chain = match active.queue.iter(mem.as_ref()).map_err(ring) {
                Ok(mut iter) => iter.next(),
                Err(err) => break Err(err),
            };
            let Some(chain) = chain else { break Ok(()) };
            let head = chain.head_index();
            let written = fill(&mut self.source, mem.as_ref(), chain, allowance as usize);
            if let Some((budget, _)) = &mut self.budget {
                budget.left -= written as u64;
            }
            self.served_bytes += written as u64;
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            if let Err(err) = active
                .queue
                .add_used(mem.as_ref(), head, written as u32)
                .map_err(ring)
            {
                break Err(err);
            }
            completed += 1;
        };
        if let Some(active) = self.active.as_mut() {
            let needs = active
                .queue
                .needs_notification(active.mem.as_ref())
                .unwrap_or(true);
            if completed > 0 && needs {
                if let Err(err) = active.interrupt.trigger(INT_USED_BUFFER) {
                    warn!("virtio-rng: cannot raise interrupt: {err}");
                }
            }
        }
        result
    }
}

/// Writes up to `limit` bytes from `source` into the chain's writable buffers; returns how many.
fn fill(
    source: &mut File,
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    limit: usize,
) -> usize {
    let mut writer = match Writer::new(mem, chain) {
        Ok(writer) => writer,
        Err(err) => {
            warn!("virtio-rng: unusable request buffers: {err}");
            return 0;
        }
    };
    let want = writer.available_bytes().min(limit);
    let mut bytes = vec![0u8; want];
    if let Err(err) = source.read_exact(&mut bytes) {
        warn!("virtio-rng: cannot read the entropy source: {err}");
        return 0;
    }
    match writer.write_all(&bytes) {
        Ok(()) => want,
        Err(err) => {
            warn!("virtio-rng: cannot write guest buffers: {err}");
            writer.bytes_written()
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

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

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if index != 0 {
            return Ok(());
        }
        self.serve()
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.budget
            .iter()
            .map(|(_, timer)| timer.as_raw_fd())
            .collect()
    }

    fn handle_event(&mut self, _index: usize) -> Result<(), QueueError> {
        if let Some((_, timer)) = &mut self.budget {
            // Reading clears the expiry; a spurious wake-up reads nothing.
            let _ = timer.wait();
        }
        self.timer_armed = false;
        self.serve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{memory, probe, TestQueue};
    use crate::MmioTransport;
    use address_space::vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const QUEUE_BASE: u64 = 0x1000;
    const BUF: u64 = 0x8000;

    /// A "source" of known bytes: a temp file of 0xab, its own for each call (tests run in
    /// parallel).
    fn source(len: usize) -> File {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nimbus-rng-{}-{n}", std::process::id()));
        std::fs::write(&path, vec![0xab; len]).expect("write");
        let file = File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        file
    }

    fn device(rng: Rng) -> (MmioTransport, Arc<GuestMemoryMmap>, TestQueue) {
        let mem = memory();
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let mut transport = MmioTransport::new(Box::new(rng), Arc::clone(&mem), interrupt);
        let queue = TestQueue::new(16, QUEUE_BASE);
        probe(&mut transport, &[&queue]);
        (transport, mem, queue)
    }

    fn notify(t: &mut MmioTransport) {
        crate::testing::wr(t, 0x50, 0);
    }

    #[test]
    fn request_is_filled_from_the_source() {
        let rng = Rng::with_source(source(4096), None, DEFAULT_PERIOD_MS).expect("rng");
        let (mut t, mem, mut q) = device(rng);
        q.add_chain(&mem, &[(BUF, 64, true)]);
        notify(&mut t);
        assert_eq!(q.used_idx(&mem), 1);
        assert_eq!(q.used_elem(&mem, 0).1, 64);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(BUF)).expect("read");
        assert_eq!(got, [0xab; 64]);
    }

    #[test]
    fn rate_limit_caps_bytes_per_period_and_serves_the_rest_after_the_timer() {
        let rng = Rng::with_source(source(4096), Some(100), 50).expect("rng");
        let (mut t, mem, mut q) = device(rng);
        q.add_chain(&mem, &[(BUF, 64, true)]);
        q.add_chain(&mem, &[(BUF + 0x100, 64, true)]);
        q.add_chain(&mem, &[(BUF + 0x200, 64, true)]);
        notify(&mut t);
        // 64 + 36 bytes fit the first period; the third request waits.
        assert_eq!(q.used_idx(&mem), 2);
        assert_eq!(q.used_elem(&mem, 1).1, 36);
        std::thread::sleep(Duration::from_millis(60));
        let fds = t.device_event_fds();
        assert_eq!(fds.len(), 1, "the timer is an event source");
        t.device_event(0);
        assert_eq!(q.used_idx(&mem), 3);
        assert_eq!(q.used_elem(&mem, 2).1, 64);
    }

    #[test]
    fn readable_only_chain_gets_zero_bytes() {
        let rng = Rng::with_source(source(4096), None, DEFAULT_PERIOD_MS).expect("rng");
        let (mut t, mem, mut q) = device(rng);
        q.add_chain(&mem, &[(BUF, 64, false)]);
        notify(&mut t);
        assert_eq!(q.used_elem(&mem, 0).1, 0);
    }

    #[test]
    fn buffer_outside_ram_gets_zero_bytes_and_the_device_goes_on() {
        let rng = Rng::with_source(source(4096), None, DEFAULT_PERIOD_MS).expect("rng");
        let (mut t, mem, mut q) = device(rng);
        q.add_chain(&mem, &[(0xfff_0000, 64, true)]);
        q.add_chain(&mem, &[(BUF, 16, true)]);
        notify(&mut t);
        assert_eq!(q.used_idx(&mem), 2);
        assert_eq!(q.used_elem(&mem, 0).1, 0);
        assert_eq!(q.used_elem(&mem, 1).1, 16);
    }

    #[test]
    fn oversized_request_is_capped() {
        let rng =
            Rng::with_source(source(MAX_REQUEST_BYTES + 10), None, DEFAULT_PERIOD_MS).expect("rng");
        let (mut t, mem, mut q) = device(rng);
        q.add_chain(&mem, &[(0x2_0000, (MAX_REQUEST_BYTES + 4096) as u32, true)]);
        notify(&mut t);
        assert_eq!(q.used_elem(&mem, 0).1 as usize, MAX_REQUEST_BYTES);
    }

    #[test]
    fn missing_source_is_refused_by_name() {
        let options = RngOptions {
            source: "/nonexistent/rng".into(),
            max_bytes: None,
            period_ms: 1000,
        };
        let err = Rng::new(&options).err().expect("refused");
        assert!(err.to_string().contains("/nonexistent/rng"), "{err}");
    }

    #[test]
    fn zero_period_is_refused() {
        assert!(matches!(
            Rng::with_source(source(1), Some(1), 0),
            Err(RngError::ZeroPeriod)
        ));
    }

    #[test]
    fn config_space_is_empty_and_no_features_are_offered() {
        let rng = Rng::with_source(source(1), None, 1000).expect("rng");
        assert_eq!(rng.features(), 0);
        assert_eq!(rng.device_type(), DEVICE_TYPE_RNG);
        let mut data = [0xff; 4];
        rng.read_config(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
