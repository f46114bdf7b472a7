//! The machine's side of QMP: carries out each command on the running VM.

use crate::block_slots::BlockSlots;
use crate::event_loop::EventLoop;
use crate::net_slots::NetSlots;
use crate::slots::duplicate_device_id;
use crate::vcpu::VcpuSet;
use qmp::schema::{
    BalloonArgs, ChardevInfo, CpuInfo, CpuInfoFast, CpuInstanceProperties, DeviceAddArgs,
    HotpluggableCpu, IoThreadInfo, KvmInfo, MachineInfo, ShutdownCause, StatusInfo, TargetInfo,
    VersionInfo,
};
use qmp::{AfterReply, Command, Event, QmpError, QmpHandler, Response};
use std::collections::HashMap;
use std::fs::File;

/// What only the monitor keeps: what it reports about the machine and the descriptors
/// `getfd` stored.
pub struct MonitorState {
    /// The QMP version reported.
    pub version: VersionInfo,
    /// What the serial console is connected to, for `query-chardev`.
    pub serial_backend: String,
    /// The chardevs, for `query-chardev`.
    pub chardevs: crate::chardevs::Chardevs,
    /// Descriptors stored by `getfd`.
    pub fds: HashMap<String, File>,
    /// `migrate` to a file and `query-migrate`.
    pub snapshot: crate::snapshot::Snapshotter,
    /// The balloon, if any (`balloon`, `query-balloon`, `qom-get`, `qom-set`).
    pub balloon: Option<crate::balloon::BalloonHandle>,
}

/// The replaceable devices and the backends that can go in them.
pub struct Hotplug {
    /// Block slots and `blockdev-add` nodes.
    pub block: BlockSlots,
    /// Net slots and `netdev_add` backends.
    pub net: NetSlots,
}

/// The parts of the running machine a command can act on.
pub struct Machine<'a> {
    /// The vCPUs (`stop`, `cont`, `query-cpus`).
    pub vcpus: &'a mut VcpuSet,
    /// The device slots (hot-plug).
    pub hotplug: &'a mut Hotplug,
    /// The event loop: `stop` freezes the devices on it, hot-plug makes a device rejoin it.
    pub events: &'a mut EventLoop,
    /// The monitor's own data.
    pub state: &'a mut MonitorState,
}

/// One command's view of the machine: its parts, the descriptor that came with the command's
/// bytes, and the events the command caused.
pub struct Monitor<'a> {
    machine: Machine<'a>,
    received_fd: &'a mut Option<File>,
    events: Vec<Event>,
}

impl<'a> Monitor<'a> {
    /// A monitor over `machine`; `received_fd` is what `getfd` stores.
    pub fn new(machine: Machine<'a>, received_fd: &'a mut Option<File>) -> Self {
        Self {
            machine,
            received_fd,
            events: Vec::new(),
        }
    }

    /// The events the commands caused, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn props(&self, id: u8) -> CpuInstanceProperties {
        CpuInstanceProperties {
            node_id: None,
            socket_id: Some(0),
            die_id: Some(0),
            core_id: Some(i64::from(id)),
            thread_id: Some(0),
        }
    }

    fn query_cpus(&self) -> Vec<CpuInfo> {
        self.machine
            .vcpus
            .handles()
            .iter()
            .map(|v| CpuInfo {
                cpu: i64::from(v.id),
                current: v.id == 0,
                halted: false,
                qom_path: qom_path(v.id),
                thread_id: i64::from(v.thread_id),
                props: Some(self.props(v.id)),
                arch: "x86".to_string(),
                pc: None,
            })
            .collect()
    }

    fn query_cpus_fast(&self) -> Vec<CpuInfoFast> {
        self.machine
            .vcpus
            .handles()
            .iter()
            .map(|v| CpuInfoFast {
                cpu_index: i64::from(v.id),
                qom_path: qom_path(v.id),
                thread_id: i64::from(v.thread_id),
                props: Some(self.props(v.id)),
                arch: "x86".to_string(),
                target: "x86_64".to_string(),
            })
            .collect()
    }

    fn query_hotpluggable_cpus(&self) -> Vec<HotpluggableCpu> {
        (0..self.machine.vcpus.count())
            .map(|id| HotpluggableCpu {
                kind: "host-x86_64-cpu".to_string(),
                vcpus_count: 1,
                props: self.props(id),
                qom_path: Some(qom_path(id)),
            })
            .collect()
    }

    fn getfd(&mut self, name: String) -> Result<Response, QmpError> {
        let fd = self
            .received_fd
            .take()
            .ok_or_else(|| QmpError::generic("No file descriptor supplied via SCM_RIGHTS"))?;
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::generic(
                "Parameter 'fdname' may not start with a digit",
            ));
        }
        self.machine.state.fds.insert(name, fd);
        Ok(Response::empty())
    }

    fn closefd(&mut self, name: &str) -> Result<Response, QmpError> {
        match self.machine.state.fds.remove(name) {
            Some(_) => Ok(Response::empty()),
            None => Err(QmpError::generic(format!(
                "File descriptor named '{name}' not found"
            ))),
        }
    }

    fn query_iothreads(&self) -> Vec<IoThreadInfo> {
        self.machine
            .events
            .iothreads()
            .iter()
            .map(|t| IoThreadInfo {
                id: t.id().to_owned(),
                thread_id: i64::from(t.thread_id()),
                poll_max_ns: 0,
                poll_grow: 0,
                poll_shrink: 0,
                aio_max_batch: 0,
            })
            .collect()
    }

    /// The UART's built-in back end (stdio, a file, none) as `serial0`, unless a chardev
    /// serves it, then every chardev.
    fn query_chardev(&self) -> Vec<ChardevInfo> {
        let state = &self.machine.state;
        let builtin = (!state.serial_backend.starts_with("chardev:")).then(|| ChardevInfo {
            label: "serial0".to_string(),
            filename: state.serial_backend.clone(),
            frontend_open: true,
        });
        builtin.into_iter().chain(state.chardevs.query()).collect()
    }

    fn machines(&self) -> Vec<MachineInfo> {
        vec![MachineInfo {
            name: "microvm".to_string(),
            alias: None,
            is_default: Some(true),
            cpu_max: i64::from(crate::layout::MAX_VCPUS),
            hotpluggable_cpus: false,
            numa_mem_supported: false,
            deprecated: false,
            default_cpu_type: Some("host-x86_64-cpu".to_string()),
        }]
    }
}

impl Monitor<'_> {
    /// `stop`: parks the vCPUs, then freezes every device source, so devices process nothing
    /// until `cont`, and lets each device finish what the guest had asked of it (a disk's
    /// requests in flight), so that guest memory holds the whole state of every queue: a
    /// snapshot taken now leaves no request outside the rings.
    fn stop(&mut self) -> Result<Response, QmpError> {
        if !self.machine.vcpus.is_paused() {
            if !self.machine.vcpus.pause() {
                return Err(QmpError::generic("the vCPUs did not stop in time"));
            }
            self.machine.events.freeze_devices();
            for transport in &self.machine.state.snapshot.transports {
                address_space::sync::lock(transport).quiesce();
            }
            self.events.push(Event::Stop);
        }
        Ok(Response::empty())
    }

    /// `device_add` into a block or a net slot. Each slot table refuses the ids it holds; a
    /// device id is unique across both, as in QEMU, so the other table is asked too. A slot is
    /// served where it was at start (on the iothread of the `-device` that filled it, else on
    /// the VMM thread), so `iothread` is refused.
    fn device_add(&mut self, args: &DeviceAddArgs) -> Result<Response, QmpError> {
        if args.extra.contains_key("iothread") {
            return Err(QmpError::generic(
                "Property 'iothread' is not supported by device_add: a hot-plug slot stays \
                 on the thread it was given at start (-device ...,iothread=)",
            ));
        }
        let hotplug = &mut *self.machine.hotplug;
        let (blocks, nets) = (&mut hotplug.block, &mut hotplug.net);
        let id = args.id.as_deref();
        if BlockSlots::is_block_driver(&args.driver) {
            if let Some(id) = id.filter(|id| nets.has_device(id)) {
                return Err(duplicate_device_id(id));
            }
            blocks.device_add(args)?;
        } else if NetSlots::is_net_driver(&args.driver) {
            if let Some(id) = id.filter(|id| blocks.has_device(id)) {
                return Err(duplicate_device_id(id));
            }
            nets.device_add(args, self.machine.events)?;
        } else {
            return Err(not_yet(&format!("device_add of '{}'", args.driver)));
        }
        Ok(Response::empty())
    }
}

fn snapshot_error(err: crate::snapshot::SnapshotError) -> QmpError {
    QmpError::generic(crate::error::one_line(&err))
}

fn qom_path(id: u8) -> String {
    format!("/machine/unattached/device[{id}]")
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response, QmpError> {
    Response::from_serialize(value)
}

fn not_yet(what: &str) -> QmpError {
    QmpError::generic(format!("{what} is not supported yet"))
}

impl QmpHandler for Monitor<'_> {
    fn execute(&mut self, command: Command) -> Result<Response, QmpError> {
        match command {
            Command::QueryStatus => json(&StatusInfo::new(!self.machine.vcpus.is_paused())),
            Command::Stop => self.stop(),
            Command::Migrate(args) => {
                let dir = crate::snapshot::parse_uri(&args.uri).map_err(snapshot_error)?;
                let state = &mut *self.machine.state;
                state
                    .snapshot
                    .take(self.machine.vcpus, &dir)
                    .map_err(snapshot_error)?;
                Ok(Response::empty())
            }
            Command::QueryMigrate => json(&self.machine.state.snapshot.last),
            Command::Cont => {
                if self.machine.vcpus.is_paused() {
                    self.machine.events.thaw_devices();
                    self.machine.vcpus.resume();
                    self.events.push(Event::Resume);
                }
                Ok(Response::empty())
            }
            Command::Quit => {
                Ok(Response::empty().then(AfterReply::Shutdown(ShutdownCause::HostQmpQuit)))
            }
            Command::SystemReset => {
                Ok(Response::empty().then(AfterReply::Shutdown(ShutdownCause::HostQmpSystemReset)))
            }
            Command::SystemPowerdown => {
                // No ACPI on microvm: nothing can ask the guest, so power off as QEMU's `quit`.
                self.events.push(Event::Powerdown);
                Ok(Response::empty().then(AfterReply::Shutdown(ShutdownCause::HostQmpQuit)))
            }
            Command::QueryCpus => json(&self.query_cpus()),
            Command::QueryCpusFast => json(&self.query_cpus_fast()),
            Command::QueryHotpluggableCpus => json(&self.query_hotpluggable_cpus()),
            Command::Getfd(args) => self.getfd(args.fdname),
            Command::Closefd(args) => self.closefd(&args.fdname),
            Command::BlockdevAdd(options) => {
                self.machine.hotplug.block.blockdev_add(&options)?;
                Ok(Response::empty())
            }
            Command::BlockdevDel(args) => {
                self.machine.hotplug.block.blockdev_del(&args.node_name)?;
                Ok(Response::empty())
            }
            Command::NetdevAdd(args) => {
                let fds = &mut self.machine.state.fds;
                self.machine.hotplug.net.netdev_add(&args, fds)?;
                Ok(Response::empty())
            }
            Command::NetdevDel(args) => {
                self.machine.hotplug.net.netdev_del(&args.id)?;
                Ok(Response::empty())
            }
            Command::DeviceAdd(args) => {
                let added = self.device_add(&args);
                self.machine.state.snapshot.hotplugged |= added.is_ok();
                added
            }
            Command::DeviceDel(args) => {
                let hotplug = &mut *self.machine.hotplug;
                let deleted = match hotplug.block.device_del(&args.id) {
                    Some(deleted) => Some(deleted),
                    None => hotplug.net.device_del(&args.id, self.machine.events),
                };
                match deleted {
                    Some(deleted) => {
                        self.events.push(deleted?);
                        self.machine.state.snapshot.hotplugged = true;
                        Ok(Response::empty())
                    }
                    None => Err(QmpError::device_not_found(&args.id)),
                }
            }
            Command::Balloon(BalloonArgs { value }) => {
                crate::balloon::balloon(self.machine.state.balloon.as_ref(), value)
            }
            Command::QueryBalloon => {
                crate::balloon::query_balloon(self.machine.state.balloon.as_ref())
            }
            Command::QomGet(args) => {
                crate::balloon::qom_get(self.machine.state.balloon.as_ref(), &args)
            }
            Command::QomSet(args) => {
                crate::balloon::qom_set(self.machine.state.balloon.as_ref(), &args)
            }
            Command::QueryVersion => json(&self.machine.state.version),
            Command::QueryCommands => json(&qmp::query_commands()),
            Command::QueryEvents => json(&qmp::query_events()),
            Command::QueryMachines => json(&self.machines()),
            Command::QueryKvm => json(&KvmInfo {
                enabled: true,
                present: true,
            }),
            Command::QueryTarget => json(&TargetInfo {
                arch: "x86_64".to_string(),
            }),
            Command::QueryBlock => json(&self.machine.hotplug.block.query_block()),
            Command::QueryIothreads => json(&self.query_iothreads()),
            Command::QueryChardev => json(&self.query_chardev()),
        }
    }
}
