//! The virtio-mmio transport, register layout version 2 (virtio 1.x, section 4.2.2).
//!
//! The transport owns the register state: status, feature negotiation and queue setup. At
//! DRIVER_OK it hands the queues to the device; QueueNotify then runs the device's queue
//! processing. Everything here is written by the guest, so no write sequence may panic.

use std::os::fd::RawFd;
use std::sync::Arc;

use address_space::vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use address_space::IoHandler;
use log::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueState, QueueT};

use crate::device::{
    feature, ActivateError, FdChange, Interrupt, QueueError, Readiness, VirtioDevice,
    INT_CONFIG_CHANGE,
};

/// "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout version implemented (virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver: "NIMB" in little-endian.
pub const MMIO_VENDOR_ID: u32 = 0x424d_494e;
/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the device configuration space.
pub const MMIO_CONFIG_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1): the guest found the device (`STATUS_ACKNOWLEDGE`),
/// has a driver for it (`STATUS_DRIVER`), the driver is ready (`STATUS_DRIVER_OK`), feature
/// negotiation is done (`STATUS_FEATURES_OK`), the device needs a reset
/// (`STATUS_DEVICE_NEEDS_RESET`), the guest gave up on it (`STATUS_FAILED`).
pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as STATUS_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as STATUS_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as STATUS_DRIVER_OK, VIRTIO_CONFIG_S_FAILED as STATUS_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as STATUS_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET as STATUS_DEVICE_NEEDS_RESET,
};

/// Register offsets of layout version 2.
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// One queue's registers as the driver wrote them.
#[derive(Clone, Debug, Default)]
struct QueueRegs {
    max_size: u16,
    size: u32,
    desc: u64,
    driver: u64,
    device: u64,
    /// The validated queue, present once the driver wrote QueueReady = 1 and it was accepted.
    ready: Option<QueueState>,
}

impl QueueRegs {
    fn new(max_size: u16) -> QueueRegs {
        QueueRegs {
            max_size,
            size: u32::from(max_size),
            ..QueueRegs::default()
        }
    }

    /// Builds the queue the registers describe, or `None` if the driver got something wrong.
    fn build(&self, mem: &GuestMemoryMmap) -> Option<QueueState> {
        let mut queue = Queue::new(self.max_size).ok()?;
        queue.try_set_size(u16::try_from(self.size).ok()?).ok()?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .ok()?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        queue.set_ready(true);
        queue.is_valid(mem).then(|| queue.state())
    }
}

/// A transport's registers as a snapshot keeps them (`machine`'s snapshots): what the driver
/// negotiated and set up, and the interrupt state. Queue positions are not kept: at restore
/// each activated queue resumes at the used index the guest's ring holds, which is where a
/// device with nothing in flight (requests are drained at `stop`) left it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    /// The virtio device type, to check that the restore machine has the same device here.
    pub device_type: u32,
    /// Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// What the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Whether DRIVER_OK activated the device.
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Each queue: size, descriptor, driver and device area addresses, ready.
    pub queues: Vec<QueueRegsState>,
}

/// One queue's registers in a [`TransportState`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegsState {
    /// QueueNum.
    pub size: u32,
    /// QueueDesc.
    pub desc: u64,
    /// QueueDriver.
    pub driver: u64,
    /// QueueDevice.
    pub device: u64,
    /// QueueReady (accepted).
    pub ready: bool,
}

/// Why a [`TransportState`] does not fit this transport.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Another kind of device.
    #[error("device type {found} in the snapshot, {expected} on the command line")]
    DeviceType {
        /// On the command line.
        expected: u32,
        /// In the snapshot.
        found: u32,
    },
    /// Another number of queues.
    #[error("{found} queues in the snapshot, {expected} here")]
    QueueCount {
        /// Here.
        expected: usize,
        /// In the snapshot.
        found: usize,
    },
    /// A ready queue the registers no longer describe validly (rings outside RAM).
    #[error("queue {0} is not valid in this guest memory")]
    Queue(usize),
    /// The device refused to start again.
    #[error("the device could not be started again")]
    Activate(#[source] ActivateError),
}

/// A virtio device behind the virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    activated: bool,
}

impl MmioTransport {
    /// Puts `device` behind a register window; queues will live in `mem` and `interrupt` raises
    /// the device's IRQ line.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Interrupt,
    ) -> MmioTransport {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs::new(max))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated: false,
        }
    }

    /// Makes what the device wrote durable (a snapshot is being taken).
    pub fn flush(&mut self) {
        self.device.flush();
    }

    /// The virtio device type behind the window.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The registers a snapshot keeps.
    pub fn save_state(&self) -> TransportState {
        TransportState {
            device_type: self.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            config_generation: self.interrupt.config_generation(),
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegsState {
                    size: q.size,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    ready: q.ready.is_some(),
                })
                .collect(),
        }
    }

    /// Puts the registers of `state` back (the machine restoring a snapshot, before any vCPU
    /// runs) and, if the device was running, activates it again with each ready queue resuming
    /// at the used index in guest memory, then processes each ready queue once (as if the
    /// driver notified it: a notification still unhandled when the VM stopped is not lost).
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let expected = self.device_type();
        if state.device_type != expected {
            return Err(RestoreError::DeviceType {
                expected,
                found: state.device_type,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                expected: self.queues.len(),
                found: state.queues.len(),
            });
        }
        for (index, (regs, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            regs.size = saved.size;
            regs.desc = saved.desc;
            regs.driver = saved.driver;
            regs.device = saved.device;
            regs.ready = None;
            if saved.ready {
                let mut queue = regs.build(&self.mem).ok_or(RestoreError::Queue(index))?;
                let used = resume_index(&self.mem, &queue);
                queue.next_avail = used;
                queue.next_used = used;
                regs.ready = Some(queue);
            }
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.interrupt
            .restore(state.interrupt_status, state.config_generation);
        self.activated = false;
        if state.activated {
            let queues = self
                .queues
                .iter()
                .map(|q| match q.ready {
                    Some(state) => Queue::try_from(state).ok(),
                    None => Queue::new(q.max_size).ok(),
                })
                .collect::<Option<Vec<Queue>>>()
                .ok_or(RestoreError::Queue(0))?;
            self.device
                .activate(
                    self.driver_features,
                    Arc::clone(&self.mem),
                    queues,
                    self.interrupt.clone(),
                )
                .map_err(RestoreError::Activate)?;
            self.activated = true;
            self.device.restored();
            // A notification the old process had not handled when it stopped is lost: each
            // ready queue is processed once, as if the driver had notified it again.
            let ready: Vec<u32> = (0u32..)
                .zip(&self.queues)
                .filter(|(_, regs)| regs.ready.is_some())
                .map(|(index, _)| index)
                .collect();
            for index in ready {
                self.notify(index);
            }
        }
        Ok(())
    }

    /// The device's interrupt (its eventfd is the one to register as an irqfd).
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device has been activated (DRIVER_OK accepted).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// How many queues the device has (QueueNotify values `0..num_queues()` are meaningful).
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The driver notified queue `index` through an ioeventfd bound to QueueNotify: the same
    /// as writing `index` there.
    pub fn queue_notify(&mut self, index: u32) {
        self.notify(index);
    }

    /// The device's own event sources ([`VirtioDevice::event_fds`]).
    pub fn device_event_fds(&self) -> Vec<RawFd> {
        self.device.event_fds()
    }

    /// The VM is ending: the device finishes in-flight work and flushes what it wrote.
    pub fn shutdown(&mut self) {
        self.device.shutdown();
    }

    /// The VM stopped: an activated device finishes what the driver made available and what
    /// it has in flight ([`VirtioDevice::quiesce`]); an error marks it as needing a reset.
    pub fn quiesce(&mut self) {
        if self.activated {
            let result = self.device.quiesce();
            self.device_result(result);
        }
    }

    /// Device event source `index` is readable: the device handles it; an error it reports
    /// while activated marks the device as needing a reset.
    pub fn device_event(&mut self, index: usize) {
        let result = self.device.handle_event(index);
        self.device_result(result);
    }

    /// Descriptor `token` the device added ([`VirtioDevice::take_fd_changes`]) is ready: as
    /// [`MmioTransport::device_event`].
    pub fn device_fd_event(&mut self, token: u32, ready: Readiness) {
        let result = self.device.handle_fd_event(token, ready);
        self.device_result(result);
    }

    /// The descriptors the device started or stopped using since the last call.
    pub fn take_device_fd_changes(&mut self) -> Vec<FdChange> {
        self.device.take_fd_changes()
    }

    /// An error the device reported from one of its sources while activated marks it as
    /// needing a reset.
    fn device_result(&mut self, result: Result<(), QueueError>) {
        if let Err(e) = result {
            if self.activated && self.status & STATUS_DEVICE_NEEDS_RESET == 0 {
                warn!("virtio-mmio: {e}; device needs reset");
                self.needs_reset();
            }
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | feature(VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?)
    }

    /// The selected queue if its registers may be written now: features negotiated, device not
    /// running, queue not yet ready.
    fn writable_queue(&mut self) -> Option<&mut QueueRegs> {
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        let queue = self.queues.get_mut(usize::try_from(self.queue_sel).ok()?)?;
        queue.ready.is_none().then_some(queue)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self
                .selected_queue()
                .map_or(0, |q| u32::from(q.ready.is_some())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::QUEUE_DESC_LOW => self.selected_queue().map_or(0, |q| q.desc as u32),
            reg::QUEUE_DESC_HIGH => self.selected_queue().map_or(0, |q| (q.desc >> 32) as u32),
            reg::QUEUE_DRIVER_LOW => self.selected_queue().map_or(0, |q| q.driver as u32),
            reg::QUEUE_DRIVER_HIGH => self.selected_queue().map_or(0, |q| (q.driver >> 32) as u32),
            reg::QUEUE_DEVICE_LOW => self.selected_queue().map_or(0, |q| q.device as u32),
            reg::QUEUE_DEVICE_HIGH => self.selected_queue().map_or(0, |q| (q.device >> 32) as u32),
            // No shared memory regions: a length of all ones says "none".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.writable_queue() {
                    q.size = value;
                }
            }
            reg::QUEUE_DESC_LOW => set_low(self.writable_queue().map(|q| &mut q.desc), value),
            reg::QUEUE_DESC_HIGH => set_high(self.writable_queue().map(|q| &mut q.desc), value),
            reg::QUEUE_DRIVER_LOW => set_low(self.writable_queue().map(|q| &mut q.driver), value),
            reg::QUEUE_DRIVER_HIGH => set_high(self.writable_queue().map(|q| &mut q.driver), value),
            reg::QUEUE_DEVICE_LOW => set_low(self.writable_queue().map(|q| &mut q.device), value),
            reg::QUEUE_DEVICE_HIGH => set_high(self.writable_queue().map(|q| &mut q.device), value),
            reg::QUEUE_READY => self.write_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            _ => {
                debug!("virtio-mmio: write {value:#x} to read-only or unknown register {offset:#x}")
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            debug!("virtio-mmio: driver features written outside negotiation, ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32);
            }
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let mem = Arc::clone(&self.mem);
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return;
        }
        let Some(queue) = self
            .queues
            .get_mut(usize::try_from(self.queue_sel).unwrap_or(usize::MAX))
        else {
            return;
        };
        if value == 0 {
            queue.ready = None;
        } else if queue.ready.is_none() {
            queue.ready = queue.build(&mem);
            if queue.ready.is_none() {
                warn!(
                    "virtio-mmio: queue {} setup refused (size or rings invalid)",
                    self.queue_sel
                );
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status & !STATUS_DEVICE_NEEDS_RESET;
        if value & old != old {
            warn!(
                "virtio-mmio: status {value:#x} clears bits of {old:#x} without a reset, ignored"
            );
            return;
        }
        let new_bits = value & !old;
        for bit in [
            STATUS_ACKNOWLEDGE,
            STATUS_DRIVER,
            STATUS_FEATURES_OK,
            STATUS_DRIVER_OK,
        ] {
            if new_bits & bit != 0 && self.accept_status_bit(bit) {
                self.status |= bit;
            }
        }
        if new_bits & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
        }
    }

    /// Whether the driver may set `bit` now; setting DRIVER_OK activates the device.
    fn accept_status_bit(&mut self, bit: u32) -> bool {
        match bit {
            STATUS_ACKNOWLEDGE => true,
            STATUS_DRIVER => self.status & STATUS_ACKNOWLEDGE != 0,
            STATUS_FEATURES_OK => self.status & STATUS_DRIVER != 0 && self.features_acceptable(),
            STATUS_DRIVER_OK => self.status & STATUS_FEATURES_OK != 0 && self.activate(),
            _ => false,
        }
    }

    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.device_features();
        if unknown != 0 {
            warn!("virtio-mmio: driver accepted features {unknown:#x} never offered");
            return false;
        }
        if self.driver_features & feature(VIRTIO_F_VERSION_1) == 0 {
            warn!("virtio-mmio: driver lacks VIRTIO_F_VERSION_1 (legacy drivers unsupported)");
            return false;
        }
        true
    }

    fn activate(&mut self) -> bool {
        if self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return false;
        }
        let queues = self
            .queues
            .iter()
            .map(|q| match q.ready {
                Some(state) => Queue::try_from(state).ok(),
                None => Queue::new(q.max_size).ok(),
            })
            .collect::<Option<Vec<Queue>>>();
        let Some(queues) = queues else {
            warn!("virtio-mmio: device has an invalid queue maximum size");
            return false;
        };
        let result = self.device.activate(
            self.driver_features,
            Arc::clone(&self.mem),
            queues,
            self.interrupt.clone(),
        );
        match result {
            Ok(()) => {
                self.activated = true;
                true
            }
            Err(e) => {
                warn!("virtio-mmio: device activation failed: {e}");
                self.needs_reset();
                false
            }
        }
    }

    fn notify(&mut self, value: u32) {
        let broken = self.status & STATUS_DEVICE_NEEDS_RESET != 0;
        if !self.activated || (broken && !self.device.serves_after_needs_reset()) {
            return;
        }
        let Ok(index) = u16::try_from(value) else {
            return;
        };
        if usize::from(index) >= self.queues.len() {
            return;
        }
        if let Err(e) = self.device.process_queue(index) {
            warn!("virtio-mmio: {e}; device needs reset");
            self.needs_reset();
        }
    }

    /// Marks the device as needing a reset and tells the driver.
    fn needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(INT_CONFIG_CHANGE) {
            warn!("virtio-mmio: cannot raise interrupt: {e}");
        }
    }

    /// Device reset: drops the device's in-flight state, queues, features and interrupt status.
    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueRegs::new(queue.max_size);
        }
        self.interrupt.clear();
    }
}

/// The used index the guest's ring holds for `queue` (0 if it cannot be read).
fn resume_index(mem: &GuestMemoryMmap, queue: &QueueState) -> u16 {
    let at = GuestAddress(queue.used_ring).checked_add(2);
    at.and_then(|a| mem.read_obj::<u16>(a).ok())
        .map_or(0, u16::from_le)
}

fn set_low(field: Option<&mut u64>, value: u32) {
    if let Some(field) = field {
        *field = (*field & !0xffff_ffff) | u64::from(value);
    }
}

fn set_high(field: Option<&mut u64>, value: u32) {
    if let Some(field) = field {
        *field = (*field & 0xffff_ffff) | (u64::from(value) << 32);
    }
}

impl IoHandler for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            self.device.read_config(offset - MMIO_CONFIG_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(bytes) if offset & 3 == 0 => *bytes = self.read_register(offset).to_le_bytes(),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= MMIO_CONFIG_OFFSET {
            self.device.write_config(offset - MMIO_CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset & 3 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::device::{ActivateError, QueueError, INT_USED_BUFFER};
    use crate::testing::{memory, negotiate, probe, rd, wr, TestQueue};

    const FAKE_FEATURE: u64 = 1 << 3;

    #[derive(Default)]
    struct FakeState {
        activations: Vec<(u64, Vec<bool>)>,
        interrupt: Option<Interrupt>,
        notified: Vec<u16>,
        resets: usize,
        fail_queue: bool,
        config: [u8; 8],
    }

    struct FakeDevice(Arc<Mutex<FakeState>>);

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &'static [u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            FAKE_FEATURE
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let state = self.0.lock().unwrap();
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = state.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut state = self.0.lock().unwrap();
            for (i, byte) in data.iter().enumerate() {
                if let Some(b) = state.config.get_mut(offset as usize + i) {
                    *b = *byte;
                }
            }
        }
        fn activate(
            &mut self,
            acked_features: u64,
            _mem: Arc<GuestMemoryMmap>,
            queues: Vec<Queue>,
            interrupt: Interrupt,
        ) -> Result<(), ActivateError> {
            let mut state = self.0.lock().unwrap();
            state
                .activations
                .push((acked_features, queues.iter().map(|q| q.ready()).collect()));
            state.interrupt = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
        fn process_queue(&mut self, index: u16) -> Result<(), QueueError> {
            let mut state = self.0.lock().unwrap();
            state.notified.push(index);
            if state.fail_queue {
                return Err(QueueError::MalformedChain {
                    queue: index,
                    head: 0,
                });
            }
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<FakeState>>) {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let t = MmioTransport::new(
            Box::new(FakeDevice(Arc::clone(&state))),
            memory(),
            interrupt,
        );
        (t, state)
    }

    fn queues() -> (TestQueue, TestQueue) {
        (TestQueue::new(16, 0x1000), TestQueue::new(8, 0x2000))
    }

    #[test]
    fn identification_registers_describe_a_version_2_device() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, 0x000), 0x7472_6976);
        assert_eq!(rd(&mut t, 0x004), 2);
        assert_eq!(rd(&mut t, 0x008), 42);
        assert_eq!(rd(&mut t, 0x00c), MMIO_VENDOR_ID);
    }

    #[test]
    fn device_features_include_version_1_in_the_high_half() {
        let (mut t, _) = transport();
        wr(&mut t, 0x14, 0);
        assert_eq!(rd(&mut t, 0x10), FAKE_FEATURE as u32);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1);
        wr(&mut t, 0x14, 2);
        assert_eq!(rd(&mut t, 0x10), 0);
    }

    #[test]
    fn features_ok_sticks_when_driver_accepts_offered_features() {
        let (mut t, state) = transport();
        let status = negotiate(&mut t, |f| f);
        assert_eq!(
            status,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
        let (q0, q1) = queues();
        q0.setup(&mut t, 0);
        q1.setup(&mut t, 1);
        wr(&mut t, 0x70, status | STATUS_DRIVER_OK);
        let activations = &state.lock().unwrap().activations;
        assert_eq!(
            activations.as_slice(),
            &[(FAKE_FEATURE | feature(VIRTIO_F_VERSION_1), vec![true, true])]
        );
    }

    #[test]
    fn features_ok_is_refused_for_a_feature_never_offered() {
        let (mut t, _) = transport();
        let status = negotiate(&mut t, |f| f | 1 << 5);
        assert_eq!(status & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let (mut t, _) = transport();
        let status = negotiate(&mut t, |f| f & !feature(VIRTIO_F_VERSION_1));
        assert_eq!(status & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_written_after_features_ok_are_ignored() {
        let (mut t, state) = transport();
        let status = negotiate(&mut t, |_| feature(VIRTIO_F_VERSION_1));
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, FAKE_FEATURE as u32);
        wr(&mut t, 0x70, status | STATUS_DRIVER_OK);
        assert_eq!(
            state.lock().unwrap().activations[0].0,
            feature(VIRTIO_F_VERSION_1)
        );
    }

    #[test]
    fn driver_ok_before_features_ok_is_refused() {
        let (mut t, state) = transport();
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE);
        wr(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_eq!(rd(&mut t, 0x70), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert!(state.lock().unwrap().activations.is_empty());
        assert!(!t.is_activated());
    }

    #[test]
    fn queue_size_above_max_or_not_a_power_of_two_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, |f| f);
        let (q0, _) = queues();
        for size in [32, 12, 0] {
            wr(&mut t, 0x30, 0);
            wr(&mut t, 0x38, size);
            for (low, addr) in [(0x80, q0.desc), (0x90, q0.avail), (0xa0, q0.used)] {
                wr(&mut t, low, addr as u32);
            }
            wr(&mut t, 0x44, 1);
            assert_eq!(rd(&mut t, 0x44), 0, "size {size} accepted");
        }
        wr(&mut t, 0x38, 4);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x44), 1);
    }

    #[test]
    fn queue_with_rings_outside_ram_or_misaligned_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, |f| f);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x80, 0x1008);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x44), 0, "misaligned descriptor table accepted");
        wr(&mut t, 0x80, 0);
        wr(&mut t, 0x84, 1);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x44), 0, "descriptor table outside RAM accepted");
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let (mut t, _) = transport();
        let (q0, q1) = queues();
        probe(&mut t, &[&q0, &q1]);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 4);
        wr(&mut t, 0x80, 0x4000);
        wr(&mut t, 0x44, 0);
        assert_eq!(rd(&mut t, 0x44), 1);
        assert_eq!(rd(&mut t, 0x80), q0.desc as u32);
    }

    #[test]
    fn unknown_queue_selector_reads_zero_and_ignores_writes() {
        let (mut t, _) = transport();
        negotiate(&mut t, |f| f);
        wr(&mut t, 0x30, 7);
        assert_eq!(rd(&mut t, 0x34), 0);
        wr(&mut t, 0x44, 1);
        assert_eq!(rd(&mut t, 0x44), 0);
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 8);
    }

    #[test]
    fn writing_zero_to_status_resets_queues_features_and_device() {
        let (mut t, state) = transport();
        let (q0, q1) = queues();
        probe(&mut t, &[&q0, &q1]);
        t.interrupt().trigger(INT_USED_BUFFER).unwrap();
        let resets_before = state.lock().unwrap().resets;
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert_eq!(rd(&mut t, 0x60), 0);
        wr(&mut t, 0x30, 0);
        assert_eq!(rd(&mut t, 0x44), 0);
        assert_eq!(rd(&mut t, 0x80), 0);
        assert!(!t.is_activated());
        assert_eq!(state.lock().unwrap().resets, resets_before + 1);
        // Notifications after the reset do not reach the device.
        wr(&mut t, 0x50, 0);
        assert!(state.lock().unwrap().notified.is_empty());
        // And the device can be brought up again.
        let status = probe(&mut t, &[&q0, &q1]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        assert_eq!(state.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn restore_processes_each_ready_queue_once_after_activating_the_device() {
        let (mut t, _) = transport();
        let (q0, _) = queues();
        // Only queue 0 was made ready.
        assert_ne!(probe(&mut t, &[&q0]) & STATUS_DRIVER_OK, 0);
        let saved = t.save_state();
        let (mut restored, state) = transport();
        restored.restore_state(&saved).unwrap();
        let state = state.lock().unwrap();
        assert_eq!(
            state.activations,
            vec![(saved.driver_features, vec![true, false])]
        );
        assert_eq!(
            state.notified,
            vec![0],
            "a notification the snapshot lost is made up for, on ready queues only"
        );
    }

    #[test]
    fn notify_reaches_the_device_only_after_driver_ok() {
        let (mut t, state) = transport();
        negotiate(&mut t, |f| f);
        wr(&mut t, 0x50, 0);
        assert!(state.lock().unwrap().notified.is_empty());
        let (q0, q1) = queues();
        q0.setup(&mut t, 0);
        q1.setup(&mut t, 1);
        let status = rd(&mut t, 0x70);
        wr(&mut t, 0x70, status | STATUS_DRIVER_OK);
        wr(&mut t, 0x50, 1);
        wr(&mut t, 0x50, 2);
        wr(&mut t, 0x50, 0x1_0000);
        assert_eq!(state.lock().unwrap().notified, vec![1]);
    }

    #[test]
    fn queue_error_sets_needs_reset_and_raises_config_interrupt() {
        let (mut t, state) = transport();
        let (q0, q1) = queues();
        probe(&mut t, &[&q0, &q1]);
        state.lock().unwrap().fail_queue = true;
        wr(&mut t, 0x50, 0);
        assert_ne!(rd(&mut t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(rd(&mut t, 0x60), INT_CONFIG_CHANGE);
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
        wr(&mut t, 0x50, 0);
        assert_eq!(
            state.lock().unwrap().notified.len(),
            1,
            "device ran while needing reset"
        );
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
    }

    #[test]
    fn interrupt_ack_clears_only_the_acknowledged_bits() {
        let (mut t, _) = transport();
        t.interrupt()
            .trigger(INT_USED_BUFFER | INT_CONFIG_CHANGE)
            .unwrap();
        assert_eq!(rd(&mut t, 0x60), 3);
        wr(&mut t, 0x64, INT_USED_BUFFER);
        assert_eq!(rd(&mut t, 0x60), INT_CONFIG_CHANGE);
    }

    #[test]
    fn config_generation_changes_with_a_device_config_change() {
        let (mut t, state) = transport();
        let (q0, q1) = queues();
        probe(&mut t, &[&q0, &q1]);
        let before = rd(&mut t, 0xfc);
        let interrupt = state.lock().unwrap().interrupt.clone().unwrap();
        interrupt.signal_config_change().unwrap();
        assert_eq!(rd(&mut t, 0xfc), before.wrapping_add(1));
        assert_eq!(rd(&mut t, 0x60), INT_CONFIG_CHANGE);
    }

    #[test]
    fn config_space_is_byte_granular() {
        let (mut t, state) = transport();
        state.lock().unwrap().config = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut byte = [0u8; 1];
        t.read(0x103, &mut byte);
        assert_eq!(byte, [4]);
        let mut word = [0u8; 2];
        t.read(0x105, &mut word);
        assert_eq!(word, [6, 7]);
        t.write(0x101, &[0xaa]);
        assert_eq!(state.lock().unwrap().config[1], 0xaa);
        let mut past_end = [0xffu8; 4];
        t.read(0x106, &mut past_end);
        assert_eq!(past_end, [7, 8, 0, 0]);
    }

    #[test]
    fn non_word_register_accesses_are_ignored() {
        let (mut t, _) = transport();
        let mut half = [0xffu8; 2];
        t.read(0x000, &mut half);
        assert_eq!(half, [0, 0]);
        let mut unaligned = [0xffu8; 4];
        t.read(0x002, &mut unaligned);
        assert_eq!(unaligned, [0; 4]);
        t.write(0x070, &[1]);
        t.write(0x070, &[1, 0]);
        assert_eq!(rd(&mut t, 0x70), 0);
    }

    #[test]
    fn clearing_status_bits_without_reset_is_ignored() {
        let (mut t, _) = transport();
        negotiate(&mut t, |f| f);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE);
        assert_eq!(
            rd(&mut t, 0x70),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
    }

    #[test]
    fn arbitrary_register_write_sequences_never_panic() {
        let (mut t, _) = transport();
        let (q0, q1) = queues();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            if round % 1000 == 0 {
                probe(&mut t, &[&q0, &q1]);
            }
            let r = next();
            let offset = (r % 0x140) & !3;
            let value = match r >> 60 {
                0..=5 => (r >> 20) as u32 & 0xff,
                6..=9 => (r >> 16) as u32 & 0xffff,
                _ => (r >> 24) as u32,
            };
            let len = [4usize, 4, 4, 1, 2, 8][(r >> 40) as usize % 6];
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&value.to_le_bytes());
            if r & (1 << 50) == 0 {
                t.write(offset, &buf[..len]);
            } else {
                t.read(offset, &mut buf[..len]);
            }
        }
    }
}
