//! Network hot-plug through replaceable slots (`slots.rs`), like block hot-plug: `slots`
//! virtio-net devices exist from boot, the command line's net devices fill slots 0.. in order
//! and the rest are empty (link down). QMP `netdev_add` opens a tap (by name, or a descriptor
//! passed with `getfd`) and registers it as a backend, `device_add` puts a backend behind a
//! slot (the link comes up, with a configuration-change interrupt), `device_del` takes it back
//! (link down) and `netdev_del` closes a backend no device uses. Errors are worded as QEMU
//! words them.

use crate::config::NetConfig;
use crate::error::MachineError;
use crate::event_loop::{DeviceId, EventLoop};
use crate::net_devices::{
    create_net, create_vhost_net, netdev_error, open_tap, open_vhost, watch_net,
};
use crate::slots::{device_deleted, new_device_id, Labelled, SlotTable};
use address_space::vm_memory::GuestMemoryMmap;
use qmp::schema::{DeviceAddArgs, NetdevAddArgs};
use qmp::{Event, QmpError};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use virtio::{MacAddr, SharedNet, Tap, TapError, TapIo};

/// Net slots created when the machine has a QMP monitor and the configuration says nothing.
pub const DEFAULT_NET_SLOTS: usize = 2;

/// Device models `device_add` takes for a net slot.
const NET_DRIVERS: [&str; 2] = ["virtio-net-mmio", "virtio-net-device"];

/// A backend registered by `netdev_add` (or a `-netdev`).
struct Backend {
    /// The tap while no device holds it.
    tap: Option<Box<dyn TapIo>>,
    /// The slot whose device holds it.
    slot: Option<usize>,
}

/// One replaceable net device: the device, and its subscriber on the loop.
struct NetSlot {
    net: SharedNet,
    events: DeviceId,
}

/// The net slots (the occupant's backend is a netdev id) and the backends that can go in them.
pub struct NetSlots {
    slots: SlotTable<NetSlot>,
    backends: BTreeMap<String, Backend>,
}

/// Creates `max(slots, nets.len())` net devices: the command line's in order (their taps
/// opened now), then empty slots; each device joins `events`. A net with `vhost=on` is a
/// vhost-net device over guest memory `mem`: it takes a slot's place but is not a slot (its
/// tap cannot be swapped), and the loop does not watch its tap.
pub fn net_devices(
    nets: &[NetConfig],
    slots: usize,
    mem: &Arc<GuestMemoryMmap>,
    events: &mut EventLoop,
) -> Result<(NetSlots, Vec<Labelled>), MachineError> {
    let mut table = NetSlots {
        slots: SlotTable::default(),
        backends: BTreeMap::new(),
    };
    let mut devices = Vec::new();
    for config in nets {
        let netdev_err = |err| netdev_error(&config.netdev, err);
        let vhost = open_vhost(config, mem).map_err(netdev_err)?;
        let tap = open_tap(config).map_err(netdev_err)?;
        if let Some(backend) = vhost {
            if config.iothread.is_some() {
                return Err(MachineError::IoThreadRefused {
                    device: config.netdev.clone(),
                    why: "vhost=on",
                });
            }
            let net = create_vhost_net(&config.id, config.mac, backend, tap).map_err(netdev_err)?;
            let from = match config.vhostfd {
                Some(fd) => format!("inherited vhostfd {fd}"),
                None => virtio::net::VHOST_NET_PATH.to_string(),
            };
            let label = format!(
                "netdev '{}' (vhost-net on {from}): {:?} mac={}",
                config.netdev,
                config.tap,
                net.mac()
            );
            devices.push((label, Box::new(net) as _));
            continue;
        }
        let index = table.slots.len();
        let net = create_net(&config.id, config.mac, Some(tap)).map_err(netdev_err)?;
        let subscriber = watch_net(&net, &config.id, config.iothread.as_deref(), events)?;
        let mac = net.lock().mac();
        let label = format!(
            "netdev '{}' (net slot {index}): {:?} mac={mac}",
            config.netdev, config.tap
        );
        let slot = NetSlot {
            net: net.clone(),
            events: subscriber,
        };
        let occupant = (config.id.clone(), config.netdev.clone());
        table.slots.push(slot, Some(occupant));
        table.backends.insert(
            config.netdev.clone(),
            Backend {
                tap: None,
                slot: Some(index),
            },
        );
        devices.push((label, Box::new(net) as _));
    }
    for index in nets.len()..slots {
        let id = format!("netslot{index}");
        let netdev_err = |source| MachineError::Netdev {
            netdev: id.clone(),
            source,
        };
        let net = create_net(&id, None, None).map_err(netdev_err)?;
        let subscriber = watch_net(&net, &id, None, events)?;
        let label = format!("empty net slot {index}, mac={}", net.lock().mac());
        let slot = NetSlot {
            net: net.clone(),
            events: subscriber,
        };
        table.slots.push(slot, None);
        devices.push((label, Box::new(net) as _));
    }
    Ok((table, devices))
}

impl NetSlots {
    /// Whether `driver` is a net device model `device_add` puts in a slot.
    pub fn is_net_driver(driver: &str) -> bool {
        NET_DRIVERS.contains(&driver)
    }

    /// `netdev_add`: opens the tap (`ifname`, or `fd`/`fds`: a name stored by `getfd`, which
    /// this takes, or a descriptor number) and registers it under `id`.
    pub fn netdev_add(
        &mut self,
        args: &NetdevAddArgs,
        fds: &mut HashMap<String, File>,
    ) -> Result<(), QmpError> {
        let id = &args.id;
        if args.kind != "tap" {
            return Err(QmpError::generic(format!(
                "Parameter 'type' does not accept value '{}' (Nimbus has tap backends only)",
                args.kind
            )));
        }
        if self.backends.contains_key(id) {
            return Err(QmpError::generic(format!("Duplicate ID '{id}' for netdev")));
        }
        if args.vhost.unwrap_or(false) || args.vhostfds.is_some() {
            // A vhost-net device is not a slot: its tap cannot be swapped.
            return Err(QmpError::generic(format!(
                "netdev '{id}': vhost=on is not supported by netdev_add (give the netdev on \
                 the command line)"
            )));
        }
        if args.queues.is_some_and(|q| q > 1) {
            return Err(QmpError::generic(format!(
                "netdev '{id}': multiqueue (queues > 1) is not supported"
            )));
        }
        let tap = self.tap_for(args, fds)?;
        log::info!("netdev_add '{id}': tap {}", tap.if_name());
        self.backends.insert(
            id.clone(),
            Backend {
                tap: Some(Box::new(tap)),
                slot: None,
            },
        );
        Ok(())
    }

    /// Opens the tap `args` names, or takes the descriptor it names.
    fn tap_for(
        &self,
        args: &NetdevAddArgs,
        fds: &mut HashMap<String, File>,
    ) -> Result<Tap, QmpError> {
        let id = &args.id;
        let fd = match (&args.fd, &args.fds) {
            (Some(_), Some(_)) => {
                return Err(QmpError::generic(
                    "Parameters 'fd' and 'fds' are mutually exclusive",
                ))
            }
            (Some(fd), None) | (None, Some(fd)) => Some(fd),
            (None, None) => None,
        };
        let tap_err = |e: TapError| QmpError::generic(format!("netdev '{id}': {}", chain(&e)));
        match (fd, &args.ifname) {
            (Some(_), Some(_)) => Err(QmpError::generic(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are \
                 invalid with fds=",
            )),
            (Some(fd), None) if fd.contains(':') => Err(QmpError::generic(format!(
                "netdev '{id}': several tap descriptors (multiqueue) are not supported"
            ))),
            (Some(fd), None) => {
                if let Ok(number) = fd.parse::<i32>() {
                    return Tap::from_inherited_fd(number).map_err(tap_err);
                }
                let file = fds.remove(fd).ok_or_else(|| {
                    QmpError::generic(format!("File descriptor named '{fd}' has not been found"))
                })?;
                Tap::from_owned_fd(OwnedFd::from(file)).map_err(tap_err)
            }
            (None, Some(name)) => Tap::open(name).map_err(tap_err),
            (None, None) => Err(QmpError::generic(format!(
                "netdev '{id}': a tap needs 'ifname' or 'fd' (Nimbus runs no helper scripts)"
            ))),
        }
    }

    /// `netdev_del`: closes a backend that no device uses.
    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        match self.backends.get(id) {
            None => Err(QmpError::device_not_found(id)),
            Some(backend) if backend.slot.is_some() => Err(QmpError::generic(format!(
                "Netdev '{id}' is in use: device_del its device first"
            ))),
            Some(_) => {
                self.backends.remove(id);
                log::info!("netdev_del '{id}'");
                Ok(())
            }
        }
    }

    /// `device_add` of a net device model: puts the backend `netdev` behind the slot `addr`
    /// (the first free slot without it), with `mac` if given; the device rejoins `events`
    /// with its new tap.
    pub fn device_add(
        &mut self,
        args: &DeviceAddArgs,
        events: &mut EventLoop,
    ) -> Result<(), QmpError> {
        let id = new_device_id(args, |id| self.has_device(id))?;
        let driver = &args.driver;
        let netdev = args
            .netdev
            .as_deref()
            .ok_or_else(|| QmpError::generic("netdev property not set"))?;
        let backend = self.backends.get(netdev).ok_or_else(|| {
            QmpError::generic(format!(
                "Property '{driver}.netdev' can't find value '{netdev}'"
            ))
        })?;
        if backend.slot.is_some() {
            return Err(QmpError::generic(format!(
                "Property '{driver}.netdev' can't take value '{netdev}', it's in use"
            )));
        }
        let mac = match args.mac.as_deref() {
            Some(text) => Some(text.parse::<MacAddr>().map_err(|_| {
                QmpError::generic(format!(
                    "Property '{driver}.mac' doesn't take value '{text}'"
                ))
            })?),
            None => None,
        };
        let index = self.slots.pick("Net", &id, args.addr.as_deref())?;
        self.attach(index, id, netdev, mac)?;
        events.rejoin(self.slots[index].device.events);
        Ok(())
    }

    fn attach(
        &mut self,
        index: usize,
        id: String,
        netdev: &str,
        mac: Option<MacAddr>,
    ) -> Result<(), QmpError> {
        let backend = self
            .backends
            .get_mut(netdev)
            .ok_or_else(|| QmpError::generic(format!("Failed to find netdev '{netdev}'")))?;
        let tap = backend
            .tap
            .take()
            .ok_or_else(|| QmpError::generic(format!("Netdev '{netdev}' has no tap open")))?;
        let slot = &mut self.slots[index];
        let mut net = slot.device.net.lock();
        if let Err(tap) = net.attach_tap(tap, mac) {
            backend.tap = Some(tap);
            return Err(QmpError::generic(format!("Net slot {index:#x} is busy")));
        }
        log::info!(
            "device_add '{id}': netdev '{netdev}' in net slot {index}, mac={}",
            net.mac()
        );
        drop(net);
        backend.slot = Some(index);
        slot.occupant = Some((id, netdev.to_owned()));
        Ok(())
    }

    /// Whether one of these slots holds device `id`.
    pub fn has_device(&self, id: &str) -> bool {
        self.slots.has_device(id)
    }

    /// `device_del` of a net device: takes its backend back (the link goes down; the device
    /// rejoins `events` without the tap before anything can close it) and returns the
    /// `DEVICE_DELETED` event. `None` if no net device has `id`.
    pub fn device_del(
        &mut self,
        id: &str,
        events: &mut EventLoop,
    ) -> Option<Result<Event, QmpError>> {
        let index = self.slots.slot_of(id)?;
        let slot = &self.slots[index].device;
        let tap = match slot.net.lock().detach_tap() {
            Ok(tap) => tap,
            Err(e) => return Some(Err(QmpError::generic(e.to_string()))),
        };
        events.rejoin(slot.events);
        let (_, netdev) = self.slots.vacate(id)?;
        if let Some(backend) = self.backends.get_mut(&netdev) {
            backend.tap = Some(tap);
            backend.slot = None;
        }
        log::info!("device_del '{id}': net slot {index} is empty");
        Some(Ok(device_deleted(id)))
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "net_slots_tests.rs"]
mod tests;
