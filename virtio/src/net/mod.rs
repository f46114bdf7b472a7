//! virtio-net over a tap: receive queue 0, transmit queue 1, no control queue.
//!
//! Transmit runs on the thread that notified queue 1. Receive runs when the machine's event
//! loop sees the tap readable and calls [`Net::rx_ready`]; when the guest has no buffers left
//! the device keeps the frame it read, asks the loop to stop polling the tap
//! ([`RxOutcome::NeedBuffers`]), and writes [`Net::rx_resume_event`] once the guest posted
//! buffers (queue 0 notification) and the frame is delivered. The machine shares the device
//! with its transport through [`SharedNet`].

mod header;
mod mac;
mod rx;
mod slot;
pub mod tap;
mod tx;
pub mod vhost;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use log::warn;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::header::{MAX_FRAME_LEN, MAX_PACKET_LEN, VNET_HDR_LEN};
pub use self::mac::{MacAddr, MacError};
use self::rx::{deliver, Delivery, RxDrop, RxFrame};
pub use self::slot::{NetSlotError, NoTap};
pub use self::tap::{Tap, TapError, TapIo};
use self::tx::{transmit, TxDrop, TxResult, TxScratch};
pub use self::vhost::{KernelNet, VhostError, VhostMode, VhostNet, VhostTap, VHOST_NET_PATH};
use crate::device::{
    checked_queues, feature, read_config_bytes, to_u16, ActivateError, Interrupt, QueueError,
    Shared, VirtioDevice, INT_USED_BUFFER,
};

/// Virtio device ID of a network device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_NET as DEVICE_TYPE_NET;
/// The receive queue.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue.
pub const TX_QUEUE: u16 = 1;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// Frames read from the tap per [`Net::rx_ready`] call, so one busy tap cannot hold the loop.
pub const RX_BUDGET: usize = 256;

/// Features every net device offers (VIRTIO_NET_F_MTU is added when an MTU is set).
pub const NET_FEATURES: u64 = feature(VIRTIO_NET_F_CSUM)
    | feature(VIRTIO_NET_F_GUEST_CSUM)
    | feature(VIRTIO_NET_F_MAC)
    | feature(VIRTIO_NET_F_GUEST_TSO4)
    | feature(VIRTIO_NET_F_GUEST_TSO6)
    | feature(VIRTIO_NET_F_GUEST_UFO)
    | feature(VIRTIO_NET_F_HOST_TSO4)
    | feature(VIRTIO_NET_F_HOST_TSO6)
    | feature(VIRTIO_NET_F_HOST_UFO)
    | feature(VIRTIO_NET_F_MRG_RXBUF)
    | feature(VIRTIO_NET_F_STATUS)
    | feature(VIRTIO_RING_F_EVENT_IDX);

/// Bytes of configuration space: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_SIZE: usize = 12;

/// How to build a net device (`-device virtio-net-device,...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// The device id; the default MAC derives from it.
    pub id: String,
    /// `mac=`.
    pub mac: Option<MacAddr>,
    /// The MTU to offer (VIRTIO_NET_F_MTU), if any.
    pub mtu: Option<u16>,
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is below the 68 bytes IPv4 needs or above what a frame can hold.
    #[error("net device {id:?}: MTU {mtu} outside 68..={max}")]
    Mtu {
        /// The device.
        id: String,
        /// The MTU asked for.
        mtu: u16,
        /// The largest MTU.
        max: usize,
    },
    /// The receive-resume event could not be created.
    #[error("net device {id:?}: cannot create an eventfd")]
    EventFd {
        /// The device.
        id: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// What [`Net::rx_ready`] tells the event loop.
#[derive(Debug)]
pub enum RxOutcome {
    /// The tap is empty or this call's budget is used: keep polling the tap (level-triggered).
    KeepPolling,
    /// The guest has no receive buffers (or the device is not running): stop polling the tap
    /// until [`Net::rx_resume_event`] is written; the frame already read is kept.
    NeedBuffers,
    /// A receive chain was malformed; the device needs a reset. Stop polling the tap until
    /// [`Net::rx_resume_event`] is written (at the next activation).
    NeedsReset,
    /// Reading the tap failed (not EAGAIN), for the first time: the tap is taken as lost (its
    /// interface was deleted, say), the link goes down and the driver gets a
    /// configuration-change interrupt. Stop polling it; log this one.
    TapFailed(io::Error),
    /// The tap was lost before (see `TapFailed`); it is not polled again until another tap is
    /// attached. Nothing new to report.
    TapLost,
}

/// Frames and bytes moved, and frames dropped by reason. Frame bytes exclude the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames from the tap that reached the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Guest frames larger than [`MAX_PACKET_LEN`] with their header.
    pub tx_dropped_oversize: u64,
    /// Guest frames with a nonsense or non-negotiated header, or runts.
    pub tx_dropped_bad_header: u64,
    /// Guest frames in malformed chains (writable descriptors, outside RAM, loops).
    pub tx_dropped_bad_chain: u64,
    /// Guest frames the tap refused.
    pub tx_dropped_tap_error: u64,
    /// Tap frames no receive chain could hold.
    pub rx_dropped_too_big: u64,
    /// Tap frames shorter than the header, or needing offloads the guest refused.
    pub rx_dropped_bad_header: u64,
    /// Tap frames lost to a malformed receive chain.
    pub rx_dropped_bad_chain: u64,
    /// A pending tap frame lost to a device reset.
    pub rx_dropped_reset: u64,
}

/// What an activated device holds.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    acked: u64,
}

/// A virtio network device over a tap.
pub struct Net {
    tap: Box<dyn TapIo>,
    /// A real tap is behind the device (not [`NoTap`]).
    attached: bool,
    features: u64,
    config: [u8; CONFIG_SIZE],
    counters: NetCounters,
    active: Option<Active>,
    frame: RxFrame,
    scratch: TxScratch,
    /// Rx stopped for lack of buffers; the loop does not poll the tap.
    rx_paused: bool,
    rx_resume: EventFd,
    /// The head of a malformed chain: the device waits for a reset.
    broken: Option<(u16, u16)>,
    /// Reading the tap failed: it is gone (or unusable) until another tap is attached.
    tap_lost: bool,
}

impl Net {
    /// A device over `tap` (a [`Tap`], or a stand-in in tests).
    pub fn new(options: &NetOptions, tap: Box<dyn TapIo>) -> Result<Net, NetError> {
        let (features, config) = config_space(options)?;
        let rx_resume = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::EventFd {
            id: options.id.clone(),
            source,
        })?;
        Ok(Net {
            tap,
            attached: true,
            features,
            config,
            counters: NetCounters::default(),
            active: None,
            frame: RxFrame::new(),
            scratch: TxScratch::new(),
            rx_paused: true,
            rx_resume,
            broken: None,
            tap_lost: false,
        })
    }

    /// The MAC address in config space.
    pub fn mac(&self) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[0..6]);
        MacAddr(mac)
    }

    /// The tap descriptor, to poll for readability (then call [`Net::rx_ready`]); `None`
    /// while the device has no tap.
    pub fn tap_fd(&self) -> Option<RawFd> {
        self.attached.then(|| self.tap.raw_fd())
    }

    /// Written when receive can go on after [`RxOutcome::NeedBuffers`] or
    /// [`RxOutcome::NeedsReset`]: poll the tap again (and read this eventfd to clear it).
    pub fn rx_resume_event(&self) -> &EventFd {
        &self.rx_resume
    }

    /// The counters so far (they survive device resets).
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Moves frames from the tap into the guest until the tap is empty, the guest has no
    /// buffers, or [`RX_BUDGET`] frames were read; interrupts the guest if it asked.
    pub fn rx_ready(&mut self) -> RxOutcome {
        if self.broken.is_some() {
            return RxOutcome::NeedsReset;
        }
        if self.tap_lost {
            return RxOutcome::TapLost;
        }
        let Some(active) = self.active.as_mut().filter(|a| a.rx.ready()) else {
            self.rx_paused = true;
            return RxOutcome::NeedBuffers;
        };
        let used_before = active.rx.next_used();
        let mut moved = 0usize;
        let outcome = loop {
            if moved >= RX_BUDGET {
                break RxOutcome::KeepPolling;
            }
            if !self.frame.is_pending() {
                moved += 1;
                match self.tap.read_frame(self.frame.buffer()) {
                    Ok(n) => {
                        if let Err(drop) = self.frame.load(n, active.acked) {
                            count_rx_drop(&mut self.counters, drop);
                            continue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        break RxOutcome::KeepPolling
                    }
                    Err(e) => {
                        self.tap_lost = true;
                        break RxOutcome::TapFailed(e);
                    }
                }
            }
            match rx_step(active, &mut self.frame, &mut self.counters) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.rx_paused = true;
                    break RxOutcome::NeedBuffers;
                }
                Err(head) => {
                    self.broken = Some((RX_QUEUE, head));
                    break RxOutcome::NeedsReset;
                }
            }
        };
        if active.rx.next_used() != used_before {
            signal_used(&mut active.rx, &active.mem, &active.interrupt);
        }
        if self.tap_lost {
            // The guest's driver sees the carrier go, as when the tap is detached.
            self.set_link(false);
        }
        outcome
    }

    /// Queue 0 was notified: the guest posted receive buffers.
    fn process_rx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut().filter(|a| a.rx.ready()) else {
            return Ok(());
        };
        if !self.rx_paused {
            // Not waiting: the buffers are used on the next tap read.
            return Ok(());
        }
        let used_before = active.rx.next_used();
        let mut result = Ok(());
        while self.frame.is_pending() {
            match rx_step(active, &mut self.frame, &mut self.counters) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(head) => {
                    self.broken = Some((RX_QUEUE, head));
                    result = Err(QueueError::MalformedChain {
                        queue: RX_QUEUE,
                        head,
                    });
                    break;
                }
            }
        }
        if active.rx.next_used() != used_before {
            signal_used(&mut active.rx, &active.mem, &active.interrupt);
        }
        if result.is_ok() && !self.frame.is_pending() {
            // Back to polling the tap: guest notifications are not needed until buffers run out.
            let _ = active.rx.disable_notification(active.mem.as_ref());
            self.resume_rx();
        }
        result
    }

    fn resume_rx(&mut self) {
        self.rx_paused = false;
        if let Err(e) = self.rx_resume.write(1) {
            warn!("virtio-net: cannot write the rx resume event: {e}");
        }
    }

    /// Queue 1 was notified: send every frame the guest made available.
    fn process_tx(&mut self) -> Result<(), QueueError> {
        let Some(active) = self.active.as_mut().filter(|a| a.tx.ready()) else {
            return Ok(());
        };
        let used_before = active.tx.next_used();
        let mut tap_gone = false;
        let result = drain_tx(
            active,
            self.tap.as_mut(),
            &mut self.scratch,
            &mut self.counters,
            &mut tap_gone,
        );
        if active.tx.next_used() != used_before {
            signal_used(&mut active.tx, &active.mem, &active.interrupt);
        }
        if tap_gone && !self.tap_lost {
            // Found by a send while receive was not reading the tap: the same end as a failed
            // read, logged here since the loop's handler would not see it.
            warn!(
                "virtio-net: tap {} is gone (its interface was deleted); link down",
                self.tap.name()
            );
            self.tap_lost = true;
            self.set_link(false);
            self.resume_rx();
        }
        if let Err(QueueError::MalformedChain { queue, head }) = &result {
            self.broken = Some((*queue, *head));
        }
        result
    }
}

/// The features and configuration space (MAC, link up, one queue pair, MTU) of a device
/// with `options`, with vhost-net or without.
fn config_space(options: &NetOptions) -> Result<(u64, [u8; CONFIG_SIZE]), NetError> {
    let mut features = NET_FEATURES;
    let mac = options
        .mac
        .unwrap_or_else(|| MacAddr::default_for_id(&options.id));
    let mut config = [0u8; CONFIG_SIZE];
    config[0..6].copy_from_slice(&mac.0);
    config[6..8].copy_from_slice(&to_u16(VIRTIO_NET_S_LINK_UP).to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    if let Some(mtu) = options.mtu {
        let max = MAX_FRAME_LEN - header::ETH_HLEN;
        if mtu < 68 || usize::from(mtu) > max {
            return Err(NetError::Mtu {
                id: options.id.clone(),
                mtu,
                max,
            });
        }
        features |= feature(VIRTIO_NET_F_MTU);
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
    }
    Ok((features, config))
}

/// Tries to deliver the pending frame: `Some(true)` delivered, `Some(false)` dropped (counted),
/// `None` no buffers and notifications re-enabled, `Err(head)` a malformed chain.
fn rx_step(
    active: &mut Active,
    frame: &mut RxFrame,
    counters: &mut NetCounters,
) -> Result<Option<bool>, u16> {
    let mergeable = active.acked & feature(VIRTIO_NET_F_MRG_RXBUF) != 0;
    let mem = active.mem.as_ref();
    // Retries after re-enabling notifications; bounded so a ring that reports buffers it does
    // not yield cannot spin.
    for _ in 0..=QUEUE_SIZE {
        let len = frame.frame_len() as u64;
        match deliver(mem, &mut active.rx, frame, mergeable) {
            Ok(Delivery::Delivered) => {
                counters.rx_frames += 1;
                counters.rx_bytes += len;
                return Ok(Some(true));
            }
            Ok(Delivery::Dropped(drop)) => {
                count_rx_drop(counters, drop);
                return Ok(Some(false));
            }
            Ok(Delivery::NoBuffers) => match active.rx.enable_notification(mem) {
                // Buffers arrived while notifications were off: turn them off again, retry.
                Ok(true) => {
                    let _ = active.rx.disable_notification(mem);
                }
                Ok(false) => return Ok(None),
                Err(_) => return Err(active.rx.next_avail()),
            },
            Ok(Delivery::Broken { head }) => {
                counters.rx_dropped_bad_chain += 1;
                return Err(head);
            }
            Err(e) => {
                warn!("virtio-net: rx ring access failed: {e}");
                frame.clear();
                counters.rx_dropped_bad_chain += 1;
                return Err(active.rx.next_avail());
            }
        }
    }
    Ok(None)
}

fn count_rx_drop(counters: &mut NetCounters, drop: RxDrop) {
    match drop {
        RxDrop::TooBig => counters.rx_dropped_too_big += 1,
        RxDrop::BadHeader => counters.rx_dropped_bad_header += 1,
        RxDrop::BadChain => counters.rx_dropped_bad_chain += 1,
    }
}

/// Sends every available tx chain, with guest notifications off while it works.
/// `tap_gone` is set if a write found the tap gone.
fn drain_tx(
    active: &mut Active,
    tap: &mut dyn TapIo,
    scratch: &mut TxScratch,
    counters: &mut NetCounters,
    tap_gone: &mut bool,
) -> Result<(), QueueError> {
    let ring = QueueError::ring(TX_QUEUE);
    let mem = active.mem.as_ref();
    loop {
        active.tx.disable_notification(mem).map_err(ring)?;
        let mut progress = false;
        while let Some(chain) = active.tx.iter(mem).map_err(ring)?.next() {
            progress = true;
            let head = chain.head_index();
            let result = transmit(mem, chain, active.acked, tap, scratch);
            active.tx.add_used(mem, head, 0).map_err(ring)?;
            match result {
                TxResult::Sent(len) => {
                    counters.tx_frames += 1;
                    counters.tx_bytes += len as u64;
                }
                TxResult::Dropped(TxDrop::Oversize) => counters.tx_dropped_oversize += 1,
                TxResult::Dropped(TxDrop::BadHeader) => counters.tx_dropped_bad_header += 1,
                TxResult::Dropped(TxDrop::BadChain) => counters.tx_dropped_bad_chain += 1,
                TxResult::Dropped(TxDrop::Tap) => counters.tx_dropped_tap_error += 1,
                TxResult::Dropped(TxDrop::TapGone) => {
                    counters.tx_dropped_tap_error += 1;
                    *tap_gone = true;
                }
                TxResult::Malformed => {
                    counters.tx_dropped_bad_chain += 1;
                    return Err(QueueError::MalformedChain {
                        queue: TX_QUEUE,
                        head,
                    });
                }
            }
        }
        // Stop if a pass found nothing although the ring said there was more: no spinning.
        if !active.tx.enable_notification(mem).map_err(ring)? || !progress {
            return Ok(());
        }
    }
}

/// Interrupts the guest if the queue's notification suppression (EVENT_IDX) allows it.
fn signal_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(INT_USED_BUFFER) {
            warn!("virtio-net: cannot raise interrupt: {e}");
        }
    }
}

/// Puts the chain's descriptors in `descs` (emptied first; reused so that no frame allocates);
/// `false` if the chain did not end properly (it loops, is longer than the queue, or a
/// descriptor could not be read).
fn walk(chain: DescriptorChain<&GuestMemoryMmap>, descs: &mut Vec<Descriptor>) -> bool {
    descs.clear();
    descs.extend(chain);
    matches!(descs.last(), Some(last) if !last.has_next())
}

/// The TUN_F_* offloads matching what the guest accepts on receive.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & feature(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (feature(VIRTIO_NET_F_GUEST_TSO4), libc::TUN_F_TSO4),
        (feature(VIRTIO_NET_F_GUEST_TSO6), libc::TUN_F_TSO6),
        (feature(VIRTIO_NET_F_GUEST_UFO), libc::TUN_F_UFO),
    ] {
        if acked & feature != 0 {
            flags |= flag;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
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
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR (legacy), not offered.
        log::debug!(
            "virtio-net: {}-byte config write at {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        acked_features: u64,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let [mut rx, mut tx] = checked_queues(queues, mem.as_ref())?;
        let event_idx = acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        for queue in [&mut rx, &mut tx] {
            queue.set_event_idx(event_idx);
        }
        if rx.ready() {
            // The device polls the tap; it wants rx notifications only once buffers run out.
            let _ = rx.disable_notification(mem.as_ref());
        }
        let offloads = tap_offloads(acked_features);
        if let Err(e) = self.tap.set_offload(offloads) {
            warn!("virtio-net: {e}; the guest gets no receive offloads");
            let _ = self.tap.set_offload(0);
        }
        self.frame.clear();
        self.broken = None;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            acked: acked_features,
        });
        self.resume_rx();
        Ok(())
    }

    fn reset(&mut self) {
        if self.frame.is_pending() {
            self.counters.rx_dropped_reset += 1;
        }
        self.frame.clear();
        self.active = None;
        self.broken = None;
        self.rx_paused = true;
    }

    fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
        if let Some((queue, head)) = self.broken {
            return Err(QueueError::MalformedChain { queue, head });
        }
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            _ => Ok(()),
        }
    }
}

/// A [`Net`] shared between its transport and the event loop (which calls [`Net::rx_ready`]
/// through [`Shared::lock`]).
pub type SharedNet = Shared<Net>;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bench;
