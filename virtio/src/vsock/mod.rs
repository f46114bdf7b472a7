//! virtio-vsock (device ID 19) served in process: hybrid vsock, Firecracker's and Cloud
//! Hypervisor's model, with no kernel module on the host.
//!
//! The guest's stream sockets to CID 2 become Unix socket connections on the host (see
//! [`muxer`] for the protocol host programs speak). Queues: 0 receive (packets to the guest),
//! 1 transmit (packets from it), 2 events (TRANSPORT_RESET after a restore).
//!
//! Flow control is the spec's credit scheme both ways: the guest never gets more bytes than
//! its `buf_alloc` allows, and Nimbus holds at most [`BUF_ALLOC`] bytes per connection for a
//! host peer that reads slowly; a guest that sends past that is reset. A malformed packet
//! resets the connection it names (or is dropped when it is not from the guest to the host),
//! and is counted; every other connection goes on.
//!
//! Memory per connection: at most [`BUF_ALLOC`] (64 KiB) of held guest bytes, only while the
//! host peer is behind, plus about 200 bytes of state and one socket; at most
//! [`MAX_CONNECTIONS`] connections (so at most 64 MiB held in the worst case), plus
//! [`muxer::MAX_AWAITING`] host programs writing their `CONNECT` line and
//! [`muxer::MAX_QUEUED_RSTS`] RSTs of 44 bytes waiting for receive buffers.

mod connection;
pub(crate) mod event;
pub mod muxer;
pub mod packet;
mod socket;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use address_space::vm_memory::GuestMemoryMmap;
use log::{info, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::device::{
    checked_queues, ActivateError, FdChange, Interrupt, QueueError, Readiness, VirtioDevice,
    INT_USED_BUFFER,
};
pub use connection::{BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
use event::Posted;
use muxer::Muxer;
pub use muxer::{VsockCounters, CONN_TIMEOUT, MAX_CONNECTIONS};
use packet::{check, Header, Verdict, HEADER_SIZE, MAX_PAYLOAD};

/// Virtio device ID of a socket device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK as DEVICE_TYPE_VSOCK;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The context ids a guest may have: 0-2 are the hypervisor, local and the host, and Linux's
/// ids are 32-bit with `u32::MAX` meaning "any".
pub const GUEST_CIDS: std::ops::RangeInclusive<u64> = 3..=(u32::MAX as u64 - 1);
/// Tokens of [`FdChange::Add`] stay below this.
pub(crate) const MAX_TOKEN: u32 = 1 << 31;

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

/// The device's own event sources, as indices of [`VirtioDevice::event_fds`].
const LISTENER: usize = 0;
const TIMER: usize = 1;
const WAKE: usize = 2;

/// What `-device virtio-vsock-device` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockOptions {
    /// The guest's context id (`guest-cid=`).
    pub cid: u64,
    /// The Unix socket host programs connect to (`uds-path=`); guest connections to port P
    /// go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A reserved context id.
    #[error("guest-cid must be between 3 and 4294967294, not {0}")]
    Cid(u64),
    /// Something that is not a socket sits at `uds-path`.
    #[error("{0:?} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket cannot be bound.
    #[error("cannot listen on {path:?}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The timer or the wake-up event cannot be created.
    #[error("cannot create the device's timer or wake-up event")]
    Event(#[source] io::Error),
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queues: [Queue; 3],
    interrupt: Interrupt,
    /// One packet's payload on its way between a socket and the guest.
    scratch: Vec<u8>,
}

/// The hybrid vsock device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    timer: TimerFd,
    /// When the armed timer fires, if it is armed.
    timer_until: Option<Instant>,
    wake: EventFd,
    active: Option<Active>,
    /// A TRANSPORT_RESET waits for an event buffer.
    reset_event_owed: bool,
}

impl Vsock {
    /// Listens on `options.uds_path` (replacing a stale socket there) for guest `options.cid`.
    pub fn new(options: &VsockOptions) -> Result<Vsock, VsockError> {
        if !GUEST_CIDS.contains(&options.cid) {
            return Err(VsockError::Cid(options.cid));
        }
        let listener = listen(&options.uds_path)?;
        // Every connection and waiting host program holds a socket; Nimbus's own take < 64.
        let wanted = (MAX_CONNECTIONS + muxer::MAX_AWAITING + 64) as u64;
        match socket::raise_fd_limit(wanted) {
            Ok(limit) if limit < wanted => {
                warn!("vsock: at most {limit} open files: connections beyond fail with RST")
            }
            Ok(_) => {}
            Err(e) => warn!("vsock: cannot raise the open-file limit: {e}"),
        }
        let event_err = |e: vmm_sys_util::errno::Error| {
            VsockError::Event(io::Error::from_raw_os_error(e.errno()))
        };
        Ok(Vsock {
            cid: options.cid,
            muxer: Muxer::new(options.cid, options.uds_path.clone(), listener),
            timer: TimerFd::new().map_err(event_err)?,
            timer_until: None,
            wake: EventFd::new(EFD_NONBLOCK).map_err(VsockError::Event)?,
            active: None,
            reset_event_owed: false,
        })
    }

    /// What the device dropped or refused so far.
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// After a restore: every connection is closed and the guest gets TRANSPORT_RESET on the
    /// event queue (as soon as it has an event buffer), so it drops its sockets too.
    pub fn transport_reset(&mut self) {
        self.muxer.close_all();
        self.reset_event_owed = true;
        self.deliver_reset_event();
        self.wake_loop();
    }

    /// Makes the loop come for changes made outside one of the device's events.
    fn wake_loop(&self) {
        if let Err(e) = self.wake.write(1) {
            warn!("vsock: cannot wake the event loop: {e}");
        }
    }

    fn deliver_reset_event(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !self.reset_event_owed || !active.queues[EVENT].ready() {
            return;
        }
        let mem = Arc::clone(&active.mem);
        let id = event::EVENT_TRANSPORT_RESET;
        match event::post_event(&mut active.queues[EVENT], mem.as_ref(), id, EVENT as u16) {
            Ok(Posted::NoBuffer) => {}
            Ok(posted) => {
                // A buffer too short to hold it is given back; the next one gets the event.
                self.reset_event_owed = posted == Posted::Short;
                notify(active);
            }
            Err(e) => warn!("vsock: cannot post the transport reset event: {e}"),
        }
    }

    /// Takes every packet the guest made available on the transmit queue.
    fn process_tx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if !active.queues[TX].ready() {
            return Ok(());
        }
        let mem = Arc::clone(&active.mem);
        let ring = QueueError::ring(TX as u16);
        let mut used = 0;
        loop {
            let chain = active.queues[TX].iter(mem.as_ref()).map_err(ring)?.next();
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let packet = read_packet(mem.as_ref(), chain, self.cid, &mut active.scratch);
            active.queues[TX]
                .add_used(mem.as_ref(), head, 0)
                .map_err(ring)?;
            used += 1;
            match packet {
                Some((hdr, Verdict::Accept(op))) => {
                    let len = hdr.len as usize;
                    self.muxer.on_packet(&hdr, op, &active.scratch[..len]);
                }
                Some((hdr, Verdict::DropWrongCid)) => {
                    if self.muxer.counters.wrong_cid == 0 {
                        warn!(
                            "vsock: dropped a packet from CID {} to CID {} (the guest is {}, \
                             the host 2); further ones are only counted",
                            hdr.src_cid, hdr.dst_cid, self.cid
                        );
                    }
                    self.muxer.counters.wrong_cid += 1;
                }
                Some((hdr, Verdict::Reset(why))) => self.muxer.on_malformed(&hdr, why),
                None => self.muxer.counters.bad_chains += 1,
            }
        }
        if used > 0 {
            notify(active);
        }
        Ok(())
    }

    /// Fills the guest's receive buffers with the packets owed to it.
    fn process_rx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if !active.queues[RX].ready() {
            return Ok(());
        }
        let mem = Arc::clone(&active.mem);
        let ring = QueueError::ring(RX as u16);
        let mut used = 0;
        while self.muxer.has_packet() {
            let chain = active.queues[RX].iter(mem.as_ref()).map_err(ring)?.next();
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut writer = match Writer::new(mem.as_ref(), chain) {
                Ok(writer) if writer.available_bytes() >= HEADER_SIZE => writer,
                _ => {
                    self.muxer.counters.bad_chains += 1;
                    active.queues[RX]
                        .add_used(mem.as_ref(), head, 0)
                        .map_err(ring)?;
                    used += 1;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HEADER_SIZE).min(MAX_PAYLOAD as usize);
            let Some(hdr) = self.muxer.next_packet(&mut active.scratch[..room]) else {
                // Nothing after all (a socket would block): the buffer stays the guest's.
                active.queues[RX].go_to_previous_position();
                break;
            };
            let len = hdr.len as usize;
            let written = writer
                .write_all(&hdr.to_bytes())
                .and_then(|()| writer.write_all(&active.scratch[..len]))
                .map_or(0, |()| HEADER_SIZE + len);
            active.queues[RX]
                .add_used(mem.as_ref(), head, written as u32)
                .map_err(ring)?;
            used += 1;
        }
        if used > 0 {
            notify(active);
        }
        Ok(())
    }

    /// Arms the timer for the earliest answer the guest owes, unless it fires before then.
    fn arm_timer(&mut self) {
        let Some(deadline) = self.muxer.next_deadline() else {
            return;
        };
        if self.timer_until.is_some_and(|until| until <= deadline) {
            return;
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(std::time::Duration::from_millis(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_until = Some(deadline),
            Err(e) => warn!("vsock: cannot arm the connection timer: {e}"),
        }
    }

    /// After any event: packets owed go out and the timer follows the deadlines.
    fn settle(&mut self) -> Result<(), QueueError> {
        let result = self.process_rx();
        self.arm_timer();
        result
    }
}

/// Raises the used-buffer interrupt unless the driver suppressed it.
fn notify(active: &mut Active) {
    let mem = Arc::clone(&active.mem);
    let needed = active
        .queues
        .iter_mut()
        .any(|q| q.ready() && q.needs_notification(mem.as_ref()).unwrap_or(true));
    if needed {
        if let Err(e) = active.interrupt.trigger(INT_USED_BUFFER) {
            warn!("vsock: cannot raise interrupt: {e}");
        }
    }
}

/// Reads one packet from a transmit chain: its header and verdict, the payload (when
/// accepted) in `buf`. `None` for a chain that cannot hold a header or is outside RAM.
fn read_packet(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    cid: u64,
    buf: &mut [u8],
) -> Option<(Header, Verdict)> {
    let mut reader = Reader::new(mem, chain).ok()?;
    let mut head = [0u8; HEADER_SIZE];
    reader.read_exact(&mut head).ok()?;
    let hdr = Header::from_bytes(&head);
    let verdict = check(&hdr, cid, reader.available_bytes());
    if let Verdict::Accept(_) = verdict {
        reader.read_exact(&mut buf[..hdr.len as usize]).ok()?;
    }
    Some((hdr, verdict))
}

/// Binds the listening socket at `path`, replacing a stale socket file there.
fn listen(path: &Path) -> Result<UnixListener, VsockError> {
    let listen_err = |source| VsockError::Listen {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => return Err(VsockError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_VSOCK
    }

    fn restored(&mut self) {
        self.transport_reset();
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        _acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let queues = checked_queues(queues, mem.as_ref())?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
            scratch: vec![0; MAX_PAYLOAD as usize],
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.close_all();
        self.wake_loop();
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        match usize::from(index) {
            TX => self.process_tx()?,
            EVENT => self.deliver_reset_event(),
            _ => {}
        }
        self.settle()
    }

    fn event_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![0; 3];
        fds[LISTENER] = self.muxer.listener_fd();
        fds[TIMER] = self.timer.as_raw_fd();
        fds[WAKE] = self.wake.as_raw_fd();
        fds
    }

    fn handle_event(&mut self, index: usize) -> Result<(), QueueError> {
        match index {
            LISTENER => self.muxer.accept_host(),
            TIMER => {
                // Reading clears the expiry; a spurious wake-up reads nothing.
                let _ = self.timer.wait();
                self.timer_until = None;
                self.muxer.expire(Instant::now());
            }
            WAKE => {
                let _ = self.wake.read();
            }
            _ => {}
        }
        self.settle()
    }

    fn take_fd_changes(&mut self) -> Vec<FdChange> {
        self.muxer.take_changes()
    }

    fn handle_fd_event(&mut self, token: u32, ready: Readiness) -> Result<(), QueueError> {
        self.muxer.on_socket(token, ready);
        self.settle()
    }

    fn shutdown(&mut self) {
        let c = self.muxer.counters;
        if c != VsockCounters::default() {
            info!(
                "vsock: dropped {} packets with a wrong CID, reset {} malformed packets, \
                 {} connections past their credit, refused {} connections (table full), \
                 {} RSTs dropped, {} unusable descriptor chains",
                c.wrong_cid,
                c.malformed,
                c.credit_exceeded,
                c.table_full,
                c.rsts_dropped,
                c.bad_chains
            );
        }
        let _ = std::fs::remove_file(self.muxer.uds_path());
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
