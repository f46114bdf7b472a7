//! vhost-user devices: the rings are served by a back end in another process (virtiofsd,
//! qemu-storage-daemon, SPDK) that Nimbus reaches over a Unix socket with rust-vmm's `vhost`
//! crate (its frontend). The guest sees a plain virtio-mmio device.
//!
//! - At creation Nimbus connects, takes ownership, reads the back end's features and protocol
//!   features and (for a disk) its configuration space: a back end that is not there, refuses
//!   or answers nonsense stops Nimbus at start with one line.
//! - At DRIVER_OK: the features the guest accepted, the memory table (guest RAM must be a
//!   shared file mapping, `-machine mem-share=on`: the back end maps the same pages), then for
//!   each ready queue its size, ring addresses (in Nimbus's address space, as the spec wants),
//!   next index, call and kick eventfds, and ENABLE.
//! - Notifications: KVM's ioeventfd reaches the device as `process_queue`, which writes the
//!   queue's kick eventfd (a relay); the back end's call eventfds are the device's event
//!   sources, and each raises the used-buffer interrupt with its InterruptStatus bit (virtio-mmio
//!   drivers read the status before the rings, so the call cannot go straight to the irqfd).
//! - A request the back end refuses, or answers for another request, fails: at creation
//!   Nimbus stops with one line, at DRIVER_OK the device needs a reset.
//! - Not yet (issue #14's next step): a back end that stops answering in the middle of a
//!   request blocks the thread that asked, because the `vhost` crate retries a timed-out read
//!   forever; a watchdog that shuts the socket down after a deadline would end the wait. Nor
//!   `reconnect=` with the inflight region.

mod setup;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use vhost::vhost_user::Frontend;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    read_config_bytes, ActivateError, FdChange, Interrupt, QueueError, Readiness, VirtioDevice,
    INT_USED_BUFFER,
};
pub use setup::{offered_features, VhostUserSetup};

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
    /// An eventfd could not be created.
    #[error("cannot create the device's eventfds")]
    EventFd(#[source] io::Error),
}

/// State while the driver has the device running.
struct Active {
    interrupt: Interrupt,
    /// Queues the back end serves (to stop at reset).
    started: Vec<usize>,
}

/// A vhost-user device.
pub struct VhostUser {
    setup: VhostUserSetup,
    /// The back end's socket, watched for its end (a second descriptor of the frontend's).
    watched: Option<UnixStream>,
    /// The watch is to be added to the loop (at the device's first chance).
    watch_pending: bool,
    /// The back end was seen gone (said once).
    gone: bool,
    config: Vec<u8>,
    queue_sizes: &'static [u16],
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    mem: Arc<GuestMemoryMmap>,
    active: Option<Active>,
}

impl VhostUser {
    /// Connects to the back end of `options` and learns what it offers; `mem` is guest RAM
    /// (the transport's), which must be shared.
    pub fn connect(
        options: &VhostUserOptions,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<VhostUser, VhostUserError> {
        let device = device_name(&options.kind);
        let id = options.id.clone();
        setup::memory_regions(&mem).ok_or_else(|| VhostUserError::NotShared {
            device,
            id: id.clone(),
        })?;
        let stream =
            UnixStream::connect(&options.socket).map_err(|source| VhostUserError::Connect {
                device,
                id: id.clone(),
                path: options.socket.clone(),
                reason: plain_reason(&source),
            })?;
        let watched = stream.try_clone().map_err(VhostUserError::EventFd)?;
        let queues = queue_count(&options.kind);
        let frontend = Frontend::from_stream(stream, queues as u64);
        let mut device = VhostUser::with_frontend(options, frontend, mem)?;
        device.watched = Some(watched);
        device.watch_pending = true;
        Ok(device)
    }

    /// A device over an already connected `frontend` (tests hand it a scripted back end).
    pub fn with_frontend(
        options: &VhostUserOptions,
        frontend: Frontend,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<VhostUser, VhostUserError> {
        let queues = queue_count(&options.kind);
        let setup = VhostUserSetup::handshake(
            frontend,
            device_name(&options.kind),
            &options.id,
            device_type(&options.kind),
            queues,
        )?;
        let mut device = VhostUser {
            watched: None,
            watch_pending: false,
            gone: false,
            config: Vec::new(),
            queue_sizes: Box::leak(vec![queue_size(&options.kind); queues].into_boxed_slice()),
            kicks: Vec::new(),
            calls: Vec::new(),
            mem,
            active: None,
            setup,
        };
        device.config = match &options.kind {
            VhostUserKind::Blk { .. } => device.setup.read_config(BLK_CONFIG_SIZE)?,
            VhostUserKind::Fs {
                tag,
                request_queues,
                ..
            } => fs_config(tag, *request_queues),
        };
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(VhostUserError::EventFd);
        device.kicks = (0..queues).map(|_| eventfd()).collect::<Result<_, _>>()?;
        device.calls = (0..queues).map(|_| eventfd()).collect::<Result<_, _>>()?;
        Ok(device)
    }

    /// Stops every queue the back end serves; it no longer touches guest memory afterwards.
    fn stop(&mut self) {
        if let Some(active) = self.active.take() {
            if !self.gone {
                self.setup.stop(&active.started);
            }
        }
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
        self.setup.device_type()
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        self.queue_sizes
    }

    fn features(&self) -> u64 {
        offered_features(self.setup.backend_features())
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
        let started = self
            .setup
            .start(acked_features, &self.mem, &queues, &self.kicks, &self.calls)
            .map_err(|e| ActivateError::Backend(Box::new(e)))?;
        self.active = Some(Active { interrupt, started });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if let Some(kick) = self.kicks.get(usize::from(index)) {
            if let Err(e) = kick.write(1) {
                warn!("{}: cannot kick queue {index}: {e}", self.setup.name());
            }
        }
        Ok(())
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.calls.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        if let Some(call) = self.calls.get(index) {
            // The count only says that the back end used buffers; the rings hold the rest.
            let _ = call.read();
        }
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(INT_USED_BUFFER) {
                warn!("{}: cannot raise interrupt: {e}", self.setup.name());
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        // Nimbus is ending and guest memory with it: no request that a stopped back end could
        // leave unanswered; the back end sees the socket close.
        self.active = None;
    }

    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        match (&self.watched, std::mem::take(&mut self.watch_pending)) {
            (Some(socket), true) => vec![FdChange::Add {
                fd: socket.as_raw_fd(),
                token: BACKEND_SOCKET,
            }],
            _ => Vec::new(),
        }
    }

    fn handle_fd_event(&mut self, token: u32, ready: Readiness) -> Result<(), QueueError> {
        // Only the back end's end counts: its replies are the frontend's to read (never this
        // watch's, which would take them from a request in flight on a vCPU).
        if token != BACKEND_SOCKET || self.gone || !ready.closed {
            return Ok(());
        }
        self.gone = true;
        // The transport logs it, once, and marks the device as needing a reset.
        Err(QueueError::BackendGone {
            device: self.setup.name(),
        })
    }
}

/// The token of the back end's socket among the device's added descriptors.
const BACKEND_SOCKET: u32 = 0;
