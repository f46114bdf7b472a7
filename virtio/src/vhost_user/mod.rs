//! vhost-user devices: the rings are served by a back end in another process (virtiofsd,
//! qemu-storage-daemon, SPDK) that Nimbus reaches over a Unix socket with rust-vmm's `vhost`
//! crate (its frontend). The guest sees a plain virtio-mmio device.
//!
//! - At creation Nimbus connects, takes ownership, reads the back end's features and protocol
//!   features and (for a disk) its configuration space: a back end that is not there, refuses
//!   or answers nonsense stops Nimbus at start with one line.
//! - At DRIVER_OK: the features the guest accepted, the memory table (guest RAM must be a
//!   shared file mapping, `-machine mem-share=on`: the back end maps the same pages), the
//!   inflight region if the back end keeps one (GET_INFLIGHT_FD once per driver session, then
//!   SET_INFLIGHT_FD), then for each ready queue its size, ring addresses (in Nimbus's address
//!   space, as the spec wants), next index, call and kick eventfds, and ENABLE.
//! - Notifications: KVM's ioeventfd reaches the device as `process_queue`, which writes the
//!   queue's kick eventfd (a relay); the back end's call eventfds are the device's event
//!   sources, and each raises the used-buffer interrupt with its InterruptStatus bit (virtio-mmio
//!   drivers read the status before the rings, so the call cannot go straight to the irqfd).
//! - Every request has a deadline ([`watchdog`]): a back end that stops answering has its
//!   socket shut down, and counts as gone.
//! - A request the back end refuses, or answers for another request, fails: at creation
//!   Nimbus stops with one line, at DRIVER_OK the device needs a reset.
//! - When the back end goes away (its socket closes), Nimbus says so once, naming the device.
//!   With `reconnect=N` it tries the socket every N seconds; once back, the back end gets the
//!   whole set-up again, the inflight region included, and the rings restart from the guest's
//!   used index, so that what the back end had taken and not answered is done again. Without
//!   it a running device needs a reset, and a disk answers every request the back end left,
//!   and every later one, with an I/O error ([`rescue`]).

mod rescue;
mod setup;
#[cfg(test)]
mod tests;
pub mod watchdog;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use vhost::vhost_user::Frontend;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{
    read_config_bytes, ActivateError, FdChange, Interrupt, QueueError, Readiness, VirtioDevice,
    INT_USED_BUFFER,
};
pub use setup::{offered_features, VhostUserSetup};
use setup::{Ident, Inflight};
pub use watchdog::{Watchdog, REPLY_DEADLINE};

/// Most queues a vhost-user device may have.
pub const MAX_QUEUES: usize = 16;

/// Which device the back end serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostUserKind {
    /// virtio-blk (`vhost-user-blk-device`): `num_queues` request queues; the configuration
    /// space is the back end's.
    Blk {
        /// `num-queues=`.
        num_queues: u16,
    },
    /// virtio-fs (`vhost-user-fs-device`): a high-priority queue and `request_queues` request
    /// queues of `queue_size` entries; the configuration space (tag, queue count) is Nimbus's.
    Fs {
        /// `tag=`: what the guest mounts (at most 36 bytes).
        tag: String,
        /// `num-request-queues=`.
        request_queues: u16,
        /// `queue-size=`.
        queue_size: u16,
    },
}

/// What `-chardev socket,path=` and `-device vhost-user-*-device` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserOptions {
    /// `id=`, for messages.
    pub id: String,
    /// The back end's socket.
    pub socket: PathBuf,
    /// The device.
    pub kind: VhostUserKind,
    /// `reconnect=N` of the chardev: when the back end goes away, try its socket again every
    /// this long.
    pub reconnect: Option<Duration>,
}

/// Why a vhost-user device could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// Guest RAM is private: the back end could not map it.
    #[error(
        "{device} '{id}' needs guest RAM the back end can map: add -machine mem-share=on \
         (or -object memory-backend-memfd,share=on)"
    )]
    NotShared {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
    },
    /// Nobody listens on the socket. One line, the system's reason included: a runtime reads
    /// the first line only.
    #[error("{device} '{id}': no back end at {path:?}: {reason}")]
    Connect {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
        /// The socket.
        path: PathBuf,
        /// What connect(2) said.
        reason: String,
    },
    /// The back end refused a request or answered nonsense.
    #[error("{device} '{id}': the back end failed {request}")]
    Request {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
        /// The request.
        request: &'static str,
        /// What the vhost crate said.
        #[source]
        source: vhost::Error,
    },
    /// The back end lacks something the device needs.
    #[error("{device} '{id}': {what}")]
    Unsupported {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
        /// What is missing.
        what: String,
    },
    /// The back end did not answer a request in time (its socket is shut down).
    #[error("{device} '{id}': the back end did not answer {request} within {} s", limit.as_secs())]
    Timeout {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
        /// The request.
        request: &'static str,
        /// How long it had.
        limit: Duration,
    },
    /// The back end went away and no reconnect was asked for.
    #[error("{device} '{id}': the back end is gone")]
    Gone {
        /// The device type.
        device: &'static str,
        /// Its id.
        id: String,
    },
    /// An eventfd, timer or second socket descriptor could not be created.
    #[error("cannot create the device's descriptors")]
    Descriptor(#[source] io::Error),
}

/// State while the driver has the device running.
struct Active {
    interrupt: Interrupt,
    acked: u64,
    /// The queues as the driver set them up (restarted from here after a reconnect).
    queues: Vec<Queue>,
    /// Queues the back end serves (to stop at reset); empty while it is away.
    started: Vec<usize>,
}

/// The connection to the back end.
struct Link {
    setup: VhostUserSetup,
    /// A second descriptor of the socket, watched on the event loop for the back end's end.
    watched: Option<UnixStream>,
}

/// Whether the back end is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Connected,
    /// It went away and `reconnect=` is set: the timer retries; `reported` once a retry failed.
    Reconnecting {
        reported: bool,
    },
    /// It went away for good: a disk's requests are answered with I/O errors.
    Gone,
}

/// A vhost-user device.
pub struct VhostUser {
    options: VhostUserOptions,
    watchdog: Arc<Watchdog>,
    link: Option<Link>,
    presence: Presence,
    device_type: u32,
    /// The features offered to the guest: a back end met again must still offer them.
    offered: u64,
    config: Vec<u8>,
    queue_sizes: &'static [u16],
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// With `reconnect=`: fires every period while the back end is away.
    retry: Option<TimerFd>,
    mem: Arc<GuestMemoryMmap>,
    active: Option<Active>,
    /// The back end's inflight region for this driver session, if it keeps one.
    inflight: Option<Inflight>,
    fd_changes: Vec<FdChange>,
}

impl VhostUser {
    /// Connects to the back end of `options` and learns what it offers; `mem` is guest RAM
    /// (the transport's), which must be shared. Requests are given [`REPLY_DEADLINE`] each,
    /// enforced by `watchdog` (see [`Watchdog`]).
    pub fn connect(
        options: &VhostUserOptions,
        mem: Arc<GuestMemoryMmap>,
        watchdog: Arc<Watchdog>,
    ) -> Result<VhostUser, VhostUserError> {
        setup::memory_regions(&mem).ok_or_else(|| VhostUserError::NotShared {
            device: device_name(&options.kind),
            id: options.id.clone(),
        })?;
        let link = open_link(options, &watchdog, REPLY_DEADLINE)?;
        VhostUser::over(options, link, mem, watchdog)
    }

    /// A device over an already connected `frontend` (tests hand it a scripted back end),
    /// each request given `limit`.
    pub fn with_frontend(
        options: &VhostUserOptions,
        frontend: Frontend,
        mem: Arc<GuestMemoryMmap>,
        watchdog: Arc<Watchdog>,
        limit: Duration,
    ) -> Result<VhostUser, VhostUserError> {
        let setup = handshake(options, frontend, &watchdog, limit)?;
        let link = Link {
            setup,
            watched: None,
        };
        VhostUser::over(options, link, mem, watchdog)
    }

    fn over(
        options: &VhostUserOptions,
        mut link: Link,
        mem: Arc<GuestMemoryMmap>,
        watchdog: Arc<Watchdog>,
    ) -> Result<VhostUser, VhostUserError> {
        let queues = queue_count(&options.kind);
        let config = initial_config(&options.kind, &mut link.setup)?;
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::Descriptor);
        let retry = match options.reconnect {
            Some(_) => Some(TimerFd::new().map_err(|e| VhostUserError::Descriptor(e.into()))?),
            None => None,
        };
        let mut fd_changes = Vec::new();
        if let Some(watched) = &link.watched {
            fd_changes.push(FdChange::Add {
                fd: watched.as_raw_fd(),
                token: BACKEND_SOCKET,
            });
        }
        Ok(VhostUser {
            options: options.clone(),
            device_type: link.setup.device_type(),
            offered: offered_features(link.setup.backend_features()),
            link: Some(link),
            presence: Presence::Connected,
            watchdog,
            config,
            queue_sizes: Box::leak(vec![queue_size(&options.kind); queues].into_boxed_slice()),
            kicks: (0..queues).map(|_| eventfd()).collect::<Result<_, _>>()?,
            calls: (0..queues).map(|_| eventfd()).collect::<Result<_, _>>()?,
            retry,
            mem,
            active: None,
            inflight: None,
            fd_changes,
        })
    }

    /// "<device> '<id>'", for messages.
    fn name(&self) -> String {
        format!("{} '{}'", device_name(&self.options.kind), self.options.id)
    }

    /// Stops every queue the back end serves; it no longer touches guest memory afterwards.
    fn stop(&mut self) {
        if let Some(active) = self.active.take() {
            if let Some(link) = &mut self.link {
                link.setup.stop(&active.started);
            }
        }
    }

    /// The back end closed its socket (or the watchdog closed it): with `reconnect=` the
    /// timer starts retrying; otherwise a disk's requests are answered with I/O errors, and a
    /// running device needs a reset.
    fn lose_back_end(&mut self) -> Result<(), QueueError> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        if let Some(watched) = link.watched {
            self.fd_changes.push(FdChange::Remove {
                close: OwnedFd::from(watched),
            });
        }
        let started = self
            .active
            .as_mut()
            .map(|a| std::mem::take(&mut a.started))
            .unwrap_or_default();
        if let (Some(timer), Some(period)) = (&mut self.retry, self.options.reconnect) {
            if let Err(e) = timer.reset(period, Some(period)) {
                warn!("{}: cannot arm the reconnect timer: {e}", self.name());
            }
            self.presence = Presence::Reconnecting { reported: false };
            warn!(
                "{}: the back end closed its socket; reconnecting every {} s",
                self.name(),
                period.as_secs()
            );
            return Ok(());
        }
        self.presence = Presence::Gone;
        if matches!(self.options.kind, VhostUserKind::Blk { .. }) {
            self.answer_abandoned(&started);
        }
        let gone = QueueError::BackendGone {
            device: self.name(),
        };
        if self.active.is_some() {
            // The transport logs it, once, and marks the device as needing a reset.
            return Err(gone);
        }
        warn!("{gone}");
        Ok(())
    }

    /// Answers with IOERR the requests the back end of a disk left on the `started` queues.
    fn answer_abandoned(&mut self, started: &[usize]) {
        let name = self.name();
        let Some(active) = &mut self.active else {
            return;
        };
        let mut answered = 0;
        for &index in started {
            let region = self.inflight.as_ref().and_then(|r| r.region(index));
            if let Some(queue) = active.queues.get_mut(index) {
                answered += rescue::fail_abandoned(&self.mem, queue, region);
            }
        }
        if answered > 0 {
            raise_used(&active.interrupt, &name);
        }
    }

    /// The reconnect timer fired: tries the back end's socket again.
    fn retry_back_end(&mut self) {
        if let Some(timer) = &mut self.retry {
            let _ = timer.wait();
        }
        let Presence::Reconnecting { reported } = self.presence else {
            return;
        };
        match self.reconnect() {
            Ok(()) => {
                if let Some(timer) = &mut self.retry {
                    let _ = timer.clear();
                }
                self.presence = Presence::Connected;
                warn!("{}: reconnected to the back end", self.name());
            }
            Err(e) => {
                if !reported {
                    warn!("{}: not reconnected yet: {e}", self.name());
                    self.presence = Presence::Reconnecting { reported: true };
                }
            }
        }
    }

    /// Connects to the back end again, checks it is the same device, and restarts the rings
    /// the driver had running from the guest's used index (a back end with an inflight region
    /// resubmits what it had taken).
    fn reconnect(&mut self) -> Result<(), VhostUserError> {
        let mut link = open_link(&self.options, &self.watchdog, REPLY_DEADLINE)?;
        let offered = offered_features(link.setup.backend_features());
        if self.offered & !offered != 0 {
            return Err(VhostUserError::Unsupported {
                device: device_name(&self.options.kind),
                id: self.options.id.clone(),
                what: format!(
                    "the back end no longer offers features {:#x} the guest was offered",
                    self.offered & !offered
                ),
            });
        }
        let config = initial_config(&self.options.kind, &mut link.setup)?;
        let config_changed = config != self.config;
        self.config = config;
        if let Some(active) = &mut self.active {
            for queue in active.queues.iter_mut().filter(|q| q.ready()) {
                if let Ok(used) = queue.used_idx(self.mem.as_ref(), Ordering::Acquire) {
                    queue.set_next_avail(used.0);
                }
            }
            start_rings(
                &mut link.setup,
                active,
                &mut self.inflight,
                &self.mem,
                (&self.kicks, &self.calls),
            )?;
            // What the guest posted while the back end was away.
            for &index in &active.started {
                let _ = self.kicks[index].write(1);
            }
            if config_changed {
                let _ = active.interrupt.signal_config_change();
            }
        }
        if let Some(watched) = &link.watched {
            self.fd_changes.push(FdChange::Add {
                fd: watched.as_raw_fd(),
                token: BACKEND_SOCKET,
            });
        }
        self.link = Some(link);
        Ok(())
    }
}

/// Connects to the back end's socket and negotiates.
fn open_link(
    options: &VhostUserOptions,
    watchdog: &Arc<Watchdog>,
    limit: Duration,
) -> Result<Link, VhostUserError> {
    let stream =
        UnixStream::connect(&options.socket).map_err(|source| VhostUserError::Connect {
            device: device_name(&options.kind),
            id: options.id.clone(),
            path: options.socket.clone(),
            reason: plain_reason(&source),
        })?;
    let watched = stream.try_clone().map_err(VhostUserError::Descriptor)?;
    let frontend = Frontend::from_stream(stream, queue_count(&options.kind) as u64);
    let setup = handshake(options, frontend, watchdog, limit)?;
    Ok(Link {
        setup,
        watched: Some(watched),
    })
}

fn handshake(
    options: &VhostUserOptions,
    frontend: Frontend,
    watchdog: &Arc<Watchdog>,
    limit: Duration,
) -> Result<VhostUserSetup, VhostUserError> {
    let ident = Ident {
        device: device_name(&options.kind),
        id: options.id.clone(),
    };
    VhostUserSetup::handshake(
        frontend,
        ident,
        device_type(&options.kind),
        queue_count(&options.kind),
        watchdog.clone(),
        limit,
    )
}

/// The configuration space: a disk's is the back end's, virtio-fs's is Nimbus's.
fn initial_config(
    kind: &VhostUserKind,
    setup: &mut VhostUserSetup,
) -> Result<Vec<u8>, VhostUserError> {
    Ok(match kind {
        VhostUserKind::Blk { .. } => setup.read_config(BLK_CONFIG_SIZE)?,
        VhostUserKind::Fs {
            tag,
            request_queues,
            ..
        } => fs_config(tag, *request_queues),
    })
}

/// Starts the back end on the rings of `active` (asking for an inflight region first if
/// there is none yet) and records the queues started.
fn start_rings(
    setup: &mut VhostUserSetup,
    active: &mut Active,
    inflight: &mut Option<Inflight>,
    mem: &GuestMemoryMmap,
    eventfds: (&[EventFd], &[EventFd]),
) -> Result<(), VhostUserError> {
    if inflight.is_none() {
        let size = active.queues.first().map_or(0, QueueT::max_size);
        *inflight = setup.new_inflight(active.queues.len() as u16, size)?;
    }
    active.started = setup.start(
        active.acked,
        mem,
        &active.queues,
        eventfds,
        inflight.as_ref(),
    )?;
    Ok(())
}

fn raise_used(interrupt: &Interrupt, name: &str) {
    if let Err(e) = interrupt.trigger(INT_USED_BUFFER) {
        warn!("{name}: cannot raise interrupt: {e}");
    }
}

/// `struct virtio_blk_config` up to and including the fields Linux reads (60 bytes, as
/// QEMU's vhost-user-blk asks).
const BLK_CONFIG_SIZE: usize = 60;
/// Bytes of virtio-fs's tag field.
const FS_TAG_LEN: usize = 36;

/// virtio-fs's configuration space: the tag, NUL-padded, then the request-queue count.
fn fs_config(tag: &str, request_queues: u16) -> Vec<u8> {
    let mut config = vec![0u8; FS_TAG_LEN + 4];
    let bytes = tag.as_bytes();
    let n = bytes.len().min(FS_TAG_LEN);
    config[..n].copy_from_slice(&bytes[..n]);
    config[FS_TAG_LEN..].copy_from_slice(&u32::from(request_queues).to_le_bytes());
    config
}

/// An I/O error's reason without the "(os error N)" tail.
fn plain_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn device_name(kind: &VhostUserKind) -> &'static str {
    match kind {
        VhostUserKind::Blk { .. } => "vhost-user-blk-device",
        VhostUserKind::Fs { .. } => "vhost-user-fs-device",
    }
}

fn device_type(kind: &VhostUserKind) -> u32 {
    match kind {
        VhostUserKind::Blk { .. } => virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK,
        VhostUserKind::Fs { .. } => virtio_bindings::virtio_ids::VIRTIO_ID_FS,
    }
}

fn queue_count(kind: &VhostUserKind) -> usize {
    match kind {
        VhostUserKind::Blk { num_queues } => usize::from(*num_queues),
        VhostUserKind::Fs { request_queues, .. } => 1 + usize::from(*request_queues),
    }
}

fn queue_size(kind: &VhostUserKind) -> u16 {
    match kind {
        VhostUserKind::Blk { .. } => 256,
        VhostUserKind::Fs { queue_size, .. } => *queue_size,
    }
}

impl VirtioDevice for VhostUser {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        acked_features: u64,
        _mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        self.stop();
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        if let Some(bad) = queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(self.mem.as_ref()))
        {
            return Err(ActivateError::InvalidQueue(bad));
        }
        let mut active = Active {
            interrupt,
            acked: acked_features,
            queues,
            started: Vec::new(),
        };
        match (&mut self.link, self.presence) {
            (Some(link), _) => start_rings(
                &mut link.setup,
                &mut active,
                &mut self.inflight,
                &self.mem,
                (&self.kicks, &self.calls),
            )
            .map_err(|e| ActivateError::Backend(Box::new(e)))?,
            // Started when the back end is back.
            (None, Presence::Reconnecting { .. }) => {}
            (None, _) => {
                return Err(ActivateError::Backend(Box::new(VhostUserError::Gone {
                    device: device_name(&self.options.kind),
                    id: self.options.id.clone(),
                })))
            }
        }
        self.active = Some(active);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
        // A new driver session gets a new region.
        self.inflight = None;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if self.presence == Presence::Gone {
            let name = self.name();
            if let Some(active) = &mut self.active {
                if let Some(queue) = active.queues.get_mut(usize::from(index)) {
                    if rescue::fail_new(&self.mem, queue) > 0 {
                        raise_used(&active.interrupt, &name);
                    }
                }
            }
            return Ok(());
        }
        if let Some(kick) = self.kicks.get(usize::from(index)) {
            if let Err(e) = kick.write(1) {
                warn!("{}: cannot kick queue {index}: {e}", self.name());
            }
        }
        Ok(())
    }

    fn serves_after_needs_reset(&self) -> bool {
        // A disk whose back end is gone answers every request with an I/O error.
        self.presence == Presence::Gone
    }

    fn event_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.calls.iter().map(AsRawFd::as_raw_fd).collect();
        fds.extend(self.retry.as_ref().map(AsRawFd::as_raw_fd));
        fds
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        if index == self.calls.len() {
            self.retry_back_end();
            return Ok(());
        }
        if let Some(call) = self.calls.get(index) {
            // The count only says that the back end used buffers; the rings hold the rest.
            let _ = call.read();
        }
        if let Some(active) = &self.active {
            raise_used(&active.interrupt, &self.name());
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        // Nimbus is ending and guest memory with it: no request that a stopped back end could
        // leave unanswered; the back end sees the socket close.
        self.active = None;
    }

    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.fd_changes)
    }

    fn handle_fd_event(&mut self, token: u32, ready: Readiness) -> Result<(), QueueError> {
        // Only the back end's end counts: its replies are the frontend's to read (never this
        // watch's, which would take them from a request in flight on a vCPU).
        if token != BACKEND_SOCKET || !ready.closed {
            return Ok(());
        }
        self.lose_back_end()
    }
}

/// The token of the back end's socket among the device's added descriptors.
const BACKEND_SOCKET: u32 = 0;
