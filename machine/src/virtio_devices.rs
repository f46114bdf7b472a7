//! Places the virtio-mmio devices in the memory space and wires their interrupts and events.
//!
//! Device `i` gets the 4 KiB window at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE` and IOAPIC
//! line `VIRTIO_IRQS[i]`, raised through an irqfd. Where KVM offers ioeventfds, each queue gets
//! an eventfd bound to a QueueNotify write of its index, so a notification costs no exit to
//! userspace: the VMM thread's loop reads it and runs the queue. Without ioeventfds, QueueNotify
//! is a register write handled on the vCPU thread that made it. The device's own event sources
//! (an io_uring completion eventfd, a tap) are watched by the same loop. A disk or net device
//! given an iothread (`iothread=`) has all of these watched by that thread's loop instead.

use crate::balloon::{balloon_device, BalloonHandle};
use crate::block_slots::{block_devices, BlockSlots};
use crate::config::MachineConfig;
use crate::error::MachineError;
use crate::event_loop::{input, unwatch, watch, EventLoop, IoThreadRefusal, Subscriber};
use crate::iothread::IoThreadError;
use crate::layout::{VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE};
use crate::net_slots::{net_devices, NetSlots};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::slots::Labelled;
use crate::vsock_devices::vsock_device;
use address_space::sync::lock;
use address_space::{AddressSpace, Region, SharedIo};
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio::mmio::reg::QUEUE_NOTIFY;
use virtio::{
    FdChange, Interrupt, MmioTransport, Readiness, Rng, RngOptions, VhostUser, VhostUserWatchdog,
    VirtioDevice, MMIO_WINDOW_SIZE,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The virtio devices and their command-line parameters.
pub struct VirtioDevices {
    /// `virtio_mmio.device=` parameters to append to the guest command line.
    pub cmdline: Vec<String>,
    /// Every transport, to shut the devices down (flush disks) when the VM ends.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The replaceable block devices (QMP hot-plug), see `hotplug.rs`.
    pub block_slots: BlockSlots,
    /// The replaceable net devices (QMP hot-plug), see `net_slots.rs`.
    pub net_slots: NetSlots,
    /// The balloon, for QMP.
    pub balloon: Option<BalloonHandle>,
}

/// Virtio devices besides disks and nets: vhost-user, entropy and vsock devices.
pub fn other_devices(config: &MachineConfig) -> usize {
    config.vhost_user.len()
        + usize::from(config.rng.is_some())
        + usize::from(config.balloon.is_some())
        + usize::from(config.vsock.is_some())
        + usize::from(config.console.is_some())
}

/// The one check of the virtio device count: `drives` disks, `nets` net devices and `others`
/// other devices must fit the interrupt lines. Runs before anything is opened or created.
pub fn check_device_count(drives: usize, nets: usize, others: usize) -> Result<(), MachineError> {
    let given = drives + nets + others;
    if given > VIRTIO_IRQS.len() {
        return Err(MachineError::TooManyVirtioDevices {
            given,
            drives,
            nets,
            others,
            max: VIRTIO_IRQS.len(),
        });
    }
    Ok(())
}

/// How many replaceable slots to create (0 without a QMP monitor: nothing could fill them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCounts {
    /// Block slots (at least one per drive).
    pub blk: usize,
    /// Net slots (at least one per net device).
    pub net: usize,
}

impl SlotCounts {
    /// The counts that fit the interrupt lines next to `drives` disks, `nets` net devices and
    /// `others` other devices: empty slots beyond the lines are dropped (block slots kept
    /// first), with a warning.
    fn fitted(self, drives: usize, nets: usize, others: usize) -> SlotCounts {
        let mut room = VIRTIO_IRQS.len().saturating_sub(drives + nets + others);
        let mut fit = |wanted: usize, present: usize| {
            let empty = wanted.saturating_sub(present).min(room);
            room -= empty;
            present + empty
        };
        let fitted = SlotCounts {
            blk: fit(self.blk, drives),
            net: fit(self.net, nets),
        };
        if fitted.blk < self.blk.max(drives) || fitted.net < self.net.max(nets) {
            log::warn!(
                "only {} block and {} net slots fit the {} virtio interrupt lines ({} and {} asked)",
                fitted.blk,
                fitted.net,
                VIRTIO_IRQS.len(),
                self.blk,
                self.net
            );
        }
        fitted
    }
}

/// Creates the virtio devices (`slots.blk` block slots, or one per drive if there are more, the
/// drives filling them in command-line order so the first is the guest's vda; then `slots.net`
/// net slots filled the same way by the nets; then the entropy device), maps each and wires
/// its IRQ and, with `ioeventfd`, its queue notifications; each device (and each net's tap)
/// joins `events` as a device subscriber, on the iothread its drive or net names if any. Empty
/// slots that do not fit the interrupt lines are left out.
pub fn build_virtio_devices(
    vm: &VmFd,
    mmio: &AddressSpace,
    config: &MachineConfig,
    slots: SlotCounts,
    (ioeventfd, seccomp): (bool, &Seccomp),
    events: &mut EventLoop,
    console: Option<Labelled>,
) -> Result<VirtioDevices, MachineError> {
    let (drives, nets) = (&config.drives[..], &config.nets[..]);
    let slots = slots.fitted(drives.len(), nets.len(), other_devices(config));
    let (block_slots, mut devices) = block_devices(drives, slots.blk)?;
    // Where each device is served, by index: the drives', then the nets' iothreads (with the
    // drive or netdev id, for the error naming a missing one).
    let mut homes: Vec<Option<(&str, &str)>> = drives
        .iter()
        .map(|d| d.iothread.as_deref().map(|t| (t, d.id.as_str())))
        .collect();
    homes.resize(devices.len(), None);
    homes.extend(
        nets.iter()
            .map(|n| n.iothread.as_deref().map(|t| (t, n.netdev.as_str()))),
    );
    let (net_slots, nets) = net_devices(nets, slots.net, &mmio.memory(), events)?;
    homes.resize(devices.len() + nets.len(), None);
    devices.extend(nets);
    devices.extend(vhost_user_devices(config, mmio, seccomp)?);
    if let Some(vsock) = &config.vsock {
        let device = vsock_device(vsock, ioeventfd, mmio.memory()).map_err(MachineError::Vsock)?;
        devices.push(device);
    }
    if let Some(options) = &config.rng {
        devices.push(rng_device(options)?);
    }
    let balloon = match &config.balloon {
        Some(options) => {
            let (device, handle) = balloon_device(options, config.ram_size, mmio)?;
            devices.push(device);
            Some(handle)
        }
        None => None,
    };
    devices.extend(console);
    let mut out = VirtioDevices {
        cmdline: Vec::with_capacity(devices.len()),
        transports: Vec::new(),
        block_slots,
        net_slots,
        balloon,
    };
    for (index, ((label, device), irq)) in devices.into_iter().zip(VIRTIO_IRQS).enumerate() {
        let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_STRIDE;
        let iothread = homes.get(index).copied().flatten();
        let slot = Device {
            base,
            irq,
            ioeventfd,
            iothread,
        };
        out.transports.push(slot.add(vm, mmio, device, events)?);
        log::info!(
            "{label} at {base:#x}, IRQ {irq}{}{}",
            if ioeventfd { ", ioeventfd" } else { "" },
            iothread
                .map(|(t, _)| format!(", on iothread '{t}'"))
                .unwrap_or_default()
        );
        out.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    if !out.cmdline.is_empty() {
        mmio.commit()?;
    }
    Ok(out)
}

/// The vhost-user devices, connected to their back ends, with the watchdog thread their
/// requests need (none started without them).
fn vhost_user_devices(
    config: &MachineConfig,
    mmio: &AddressSpace,
    seccomp: &Seccomp,
) -> Result<Vec<Labelled>, MachineError> {
    if config.vhost_user.is_empty() {
        return Ok(Vec::new());
    }
    let dog = start_watchdog(seccomp)?;
    let mut devices: Vec<Labelled> = Vec::new();
    for options in &config.vhost_user {
        let device = VhostUser::connect(options, mmio.memory(), dog.clone())
            .map_err(MachineError::VhostUser)?;
        let reconnect = options
            .reconnect
            .map(|p| format!(", reconnecting every {} s", p.as_secs()))
            .unwrap_or_default();
        let label = format!(
            "{} '{}' on {:?}{reconnect}",
            device_label(&options.kind),
            options.id,
            options.socket
        );
        devices.push((label, Box::new(device)));
    }
    Ok(devices)
}

/// Starts the thread that ends vhost-user requests a back end does not answer in time, under
/// its own seccomp filter (installed before it does anything else).
fn start_watchdog(seccomp: &Seccomp) -> Result<Arc<VhostUserWatchdog>, MachineError> {
    let dog = VhostUserWatchdog::new();
    let served = dog.clone();
    let seccomp = seccomp.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vhost-user-wd".into())
        .spawn(move || {
            let applied = seccomp.apply(ThreadKind::Watchdog, 0);
            let ok = applied.is_ok();
            let _ = tx.send(applied);
            if ok {
                served.serve();
            }
        })
        .map_err(MachineError::Watchdog)?;
    match rx.recv() {
        Ok(applied) => applied.map_err(MachineError::Seccomp)?,
        Err(_) => {
            return Err(MachineError::Watchdog(std::io::Error::other(
                "the thread ended before installing its filter",
            )))
        }
    }
    Ok(dog)
}

fn device_label(kind: &virtio::VhostUserKind) -> &'static str {
    match kind {
        virtio::VhostUserKind::Blk { .. } => "vhost-user-blk",
        virtio::VhostUserKind::Fs { .. } => "vhost-user-fs",
    }
}

fn rng_device(options: &RngOptions) -> Result<Labelled, MachineError> {
    let rng = Rng::new(options).map_err(MachineError::Rng)?;
    let limit = match options.max_bytes {
        Some(max) => format!(", at most {max} bytes per {} ms", options.period_ms),
        None => String::new(),
    };
    let label = format!("virtio-rng from {:?}{limit}", options.source);
    Ok((label, Box::new(rng)))
}

/// Where one virtio-mmio device goes.
struct Device<'a> {
    base: u64,
    irq: u32,
    ioeventfd: bool,
    /// The iothread that serves it and the device's id, if it has one.
    iothread: Option<(&'a str, &'a str)>,
}

impl Device<'_> {
    /// Maps `device` behind a virtio-mmio window and adds its event sources to `events`.
    fn add(
        &self,
        vm: &VmFd,
        mmio: &AddressSpace,
        device: Box<dyn VirtioDevice>,
        events: &mut EventLoop,
    ) -> Result<Arc<Mutex<MmioTransport>>, MachineError> {
        let (base, irq) = (self.base, self.irq);
        let irq_err = |source| MachineError::Irq { irq, source };
        let evt = EventFd::new(EFD_NONBLOCK).map_err(irq_err)?;
        vm.register_irqfd(&evt, irq)
            .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            mmio.memory(),
            Interrupt::new(evt),
        )));
        let handler: SharedIo = transport.clone();
        let name = format!("virtio-mmio@{base:#x}");
        mmio.root()
            .add_subregion(Region::io(&name, MMIO_WINDOW_SIZE, handler), base, 0)?;
        let queue_evts = if self.ioeventfd {
            self.queue_eventfds(vm, &transport)?
        } else {
            Vec::new()
        };
        let device_fds = lock(&transport).device_event_fds();
        let subscriber: Subscriber = Arc::new(Mutex::new(VirtioEvents {
            transport: transport.clone(),
            queue_evts,
            device_fds,
            added: HashMap::new(),
        }));
        match self.iothread {
            Some((iothread, id)) => add_device_on(events, subscriber, Some(iothread), id)?,
            None => events.add_device(subscriber),
        };
        Ok(transport)
    }

    /// One eventfd per queue, written by KVM when the guest writes the queue's index to
    /// QueueNotify. Registered once for the device's life: a reset device keeps them.
    fn queue_eventfds(
        &self,
        vm: &VmFd,
        transport: &Mutex<MmioTransport>,
    ) -> Result<Vec<EventFd>, MachineError> {
        let queues = lock(transport).num_queues();
        let addr = IoEventAddress::Mmio(self.base + QUEUE_NOTIFY);
        (0..queues)
            .map(|queue| {
                let err = |source| MachineError::Ioeventfd {
                    base: self.base,
                    queue,
                    source,
                };
                let evt = EventFd::new(EFD_NONBLOCK).map_err(err)?;
                vm.register_ioevent(&evt, &addr, queue as u32)
                    .map_err(|e| err(std::io::Error::from_raw_os_error(e.errno())))?;
                Ok(evt)
            })
            .collect()
    }
}

/// Adds device subscriber `subscriber` (of `device`, for the error) to `events`, served by
/// `iothread` when given.
pub fn add_device_on(
    events: &mut EventLoop,
    subscriber: Subscriber,
    iothread: Option<&str>,
    device: &str,
) -> Result<crate::event_loop::DeviceId, MachineError> {
    events
        .add_device_on(subscriber, iothread)
        .map_err(|refusal| match refusal {
            IoThreadRefusal::Unknown(iothread) => MachineError::UnknownIoThread {
                device: device.to_owned(),
                iothread,
            },
            IoThreadRefusal::Ended(id) => MachineError::IoThread {
                id,
                source: IoThreadError::Ended,
            },
        })
}

/// Where an event of a virtio device comes from, as its data: a queue's ioeventfd, one of the
/// device's own sources ([`VirtioDevice::event_fds`]), or a descriptor it added while running
/// ([`FdChange::Add`], by its token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Queue(u32),
    Device(u32),
    Added(u32),
}

impl Source {
    /// Data values from here on are device sources.
    const DEVICE_BASE: u32 = 1 << 16;
    /// Data values from here on are added descriptors (tokens are below 2^31).
    const ADDED_BASE: u32 = 1 << 31;

    fn data(self) -> u32 {
        match self {
            Source::Queue(n) => n,
            Source::Device(n) => Source::DEVICE_BASE + n,
            Source::Added(token) => Source::ADDED_BASE | token,
        }
    }

    fn from_data(data: u32) -> Source {
        if data >= Source::ADDED_BASE {
            Source::Added(data - Source::ADDED_BASE)
        } else if data >= Source::DEVICE_BASE {
            Source::Device(data - Source::DEVICE_BASE)
        } else {
            Source::Queue(data)
        }
    }
}

/// An added descriptor's registration: edge-triggered input, output and hang-up.
fn added_source(fd: RawFd, token: u32) -> Events {
    let set = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    Events::with_data_raw(fd, Source::Added(token).data(), set)
}

/// The device subscriber of one virtio-mmio device: its queues' ioeventfds, its own sources,
/// and the descriptors it adds and removes while it runs.
struct VirtioEvents {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    device_fds: Vec<RawFd>,
    /// Descriptors the device added and has not removed, by token.
    added: HashMap<u32, RawFd>,
}

/// Follows the descriptors the device added or removed, recording them in `added`: each
/// removed one leaves the loop before it is closed. With `ops` `None` (the subscriber is off
/// the loop), only the record is kept.
fn follow_fd_changes(
    transport: &mut MmioTransport,
    added: &mut HashMap<u32, RawFd>,
    mut ops: Option<&mut EventOps>,
) {
    for change in transport.take_device_fd_changes() {
        match change {
            FdChange::Add { fd, token } => {
                if let Some(ops) = ops.as_deref_mut() {
                    watch(ops, added_source(fd, token), "a device socket");
                }
                added.insert(token, fd);
            }
            FdChange::Remove { close } => {
                let fd = close.as_raw_fd();
                let token = added.iter().find(|(_, f)| **f == fd).map(|(t, _)| *t);
                if let Some(token) = token {
                    added.remove(&token);
                    if let Some(ops) = ops.as_deref_mut() {
                        unwatch(ops, added_source(fd, token), "a device socket");
                    }
                }
                drop(close);
            }
        }
    }
}

impl MutEventSubscriber for VirtioEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut transport = lock(&self.transport);
        match Source::from_data(events.data()) {
            Source::Queue(n) => {
                if let Some(evt) = self.queue_evts.get(n as usize) {
                    // The count only says that notifications came; the queue holds the work.
                    let _ = evt.read();
                    transport.queue_notify(n);
                }
            }
            Source::Device(n) => transport.device_event(n as usize),
            Source::Added(token) => {
                let set = events.event_set();
                let ready = Readiness {
                    readable: set.contains(EventSet::IN),
                    writable: set.contains(EventSet::OUT),
                    closed: set
                        .intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP),
                };
                transport.device_fd_event(token, ready);
            }
        }
        follow_fd_changes(&mut transport, &mut self.added, Some(ops));
    }

    fn init(&mut self, ops: &mut EventOps) {
        follow_fd_changes(&mut lock(&self.transport), &mut self.added, None);
        for (token, fd) in &self.added {
            watch(ops, added_source(*fd, *token), "a device socket");
        }
        let queues = self.queue_evts.iter().map(AsRawFd::as_raw_fd);
        for (n, fd) in queues.enumerate() {
            watch(
                ops,
                input(fd, Source::Queue(n as u32).data()),
                "a queue notification",
            );
        }
        for (n, fd) in self.device_fds.iter().enumerate() {
            let source = Source::Device(n as u32);
            watch(ops, input(*fd, source.data()), "a device event source");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_devices_than_interrupt_lines_are_refused_naming_each_kind() {
        assert!(check_device_count(4, 3, 1).is_ok());
        let err = check_device_count(7, 1, 1).expect_err("9 > 8");
        assert_eq!(
            err.to_string(),
            "too many virtio devices: 9 given (7 disks, 1 network devices, 1 other), \
             at most 8 fit the interrupt lines"
        );
    }

    #[test]
    fn every_source_maps_back_from_its_data() {
        for source in [
            Source::Queue(0),
            Source::Queue(7),
            Source::Device(0),
            Source::Device(3),
            Source::Added(0),
            Source::Added((1 << 31) - 1),
        ] {
            assert_eq!(Source::from_data(source.data()), source);
        }
    }

    #[test]
    fn empty_slots_shrink_to_fit_the_interrupt_lines_block_slots_first() {
        let wanted = SlotCounts { blk: 4, net: 2 };
        assert_eq!(wanted.fitted(0, 0, 1), wanted, "4 + 2 + rng fit 8 lines");
        assert_eq!(wanted.fitted(6, 1, 1), SlotCounts { blk: 6, net: 1 });
        assert_eq!(wanted.fitted(3, 0, 1), SlotCounts { blk: 4, net: 2 });
        assert_eq!(wanted.fitted(5, 0, 1), SlotCounts { blk: 5, net: 2 });
        assert_eq!(wanted.fitted(2, 3, 1), SlotCounts { blk: 4, net: 3 });
        let none = SlotCounts { blk: 0, net: 0 };
        assert_eq!(none.fitted(2, 1, 0), SlotCounts { blk: 2, net: 1 });
    }
}
