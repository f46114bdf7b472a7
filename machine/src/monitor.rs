//! The machine's side of QMP: carries out each command on the running VM.

use crate::hotplug::{duplicate_device_id, BlockSlots};
use crate::net_slots::NetSlots;
use crate::vcpu::{Request, VcpuControl, VcpuHandle};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use qmp::schema::{
    BalloonArgs, ChardevInfo, CpuInfo, CpuInfoFast, CpuInstanceProperties, DeviceAddArgs,
    HotpluggableCpu, KvmInfo, MachineInfo, ShutdownCause, StatusInfo, TargetInfo, VersionInfo,
};
use qmp::{AfterReply, Command, Event, QmpError, QmpHandler, Response};
use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `stop` waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long vCPU threads get to leave after the machine stops.
const VCPU_EXIT_GRACE: Duration = Duration::from_millis(500);

/// The running machine as the monitor sees it.
pub struct VmState {
    /// The KVM VM (for the clock).
    pub vm: Arc<VmFd>,
    /// Run/pause/exit requests for the vCPU threads.
    pub control: Arc<VcpuControl>,
    /// The vCPU threads.
    pub vcpus: Vec<VcpuHandle>,
    /// Number of vCPUs the machine has.
    pub cpus: u8,
    /// The QMP version reported.
    pub version: VersionInfo,
    /// What the serial console is connected to, for `query-chardev`.
    pub serial_backend: String,
    /// Whether `stop` paused the vCPUs.
    pub paused: bool,
    /// The guest clock saved at `stop`, restored at `cont`.
    pub frozen_clock: Option<kvm_clock_data>,
    /// Descriptors stored by `getfd`.
    pub fds: HashMap<String, File>,
    /// The replaceable block devices and the backends `blockdev-add` registered.
    pub block_slots: BlockSlots,
    /// The replaceable net devices and the backends `netdev_add` registered.
    pub net_slots: NetSlots,
}

impl VmState {
    /// Kicks every vCPU out of the guest and parks it; freezes the guest clock.
    pub fn pause(&mut self) -> Result<(), QmpError> {
        if self.paused {
            return Ok(());
        }
        self.control.request(Request::Pause);
        self.kick_all();
        let running = self.vcpus.iter().filter(|v| !v.is_finished()).count();
        if !self.control.wait_paused(running, PAUSE_TIMEOUT) {
            self.control.request(Request::Run);
            return Err(QmpError::generic("the vCPUs did not stop in time"));
        }
        self.frozen_clock = match self.vm.get_clock() {
            Ok(clock) => Some(clock),
            Err(err) => {
                log::warn!("cannot read the guest clock: {err}");
                None
            }
        };
        self.paused = true;
        Ok(())
    }

    /// Restores the guest clock and lets the vCPUs run again.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        if let Some(clock) = self.frozen_clock.take() {
            let restore = kvm_clock_data {
                clock: clock.clock,
                ..Default::default()
            };
            if let Err(err) = self.vm.set_clock(&restore) {
                log::warn!("cannot restore the guest clock: {err}");
            }
        }
        self.control.request(Request::Run);
        self.paused = false;
    }

    /// Asks every vCPU thread to leave and waits a little for them.
    pub fn stop_vcpus(&self) {
        self.control.request(Request::Exit);
        let deadline = Instant::now() + VCPU_EXIT_GRACE;
        while Instant::now() < deadline && !self.vcpus.iter().all(VcpuHandle::is_finished) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kick_all(&self) {
        self.vcpus
            .iter()
            .filter(|v| !v.is_finished())
            .for_each(VcpuHandle::kick);
    }
}

/// One command's view of the machine: the state, the descriptor that came with the command's
/// bytes, and the events the command caused.
pub struct Monitor<'a> {
    state: &'a mut VmState,
    received_fd: &'a mut Option<File>,
    events: Vec<Event>,
}

impl<'a> Monitor<'a> {
    /// A monitor over `state`; `received_fd` is what `getfd` stores.
    pub fn new(state: &'a mut VmState, received_fd: &'a mut Option<File>) -> Self {
        Self {
            state,
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
        self.state
            .vcpus
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
        self.state
            .vcpus
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
        (0..self.state.cpus)
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
        self.state.fds.insert(name, fd);
        Ok(Response::empty())
    }

    fn closefd(&mut self, name: &str) -> Result<Response, QmpError> {
        match self.state.fds.remove(name) {
            Some(_) => Ok(Response::empty()),
            None => Err(QmpError::generic(format!(
                "File descriptor named '{name}' not found"
            ))),
        }
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
    /// `device_add` into a block or a net slot. Each slot table refuses the ids it holds; a
    /// device id is unique across both, as in QEMU, so the other table is asked too.
    fn device_add(&mut self, args: &DeviceAddArgs) -> Result<Response, QmpError> {
        let (blocks, nets) = (&mut self.state.block_slots, &mut self.state.net_slots);
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
            nets.device_add(args)?;
        } else {
            return Err(not_yet(&format!("device_add of '{}'", args.driver)));
        }
        Ok(Response::empty())
    }
}

fn qom_path(id: u8) -> String {
    format!("/machine/unattached/device[{id}]")
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response, QmpError> {
    Response::from_serialize(value)
}

fn no_balloon() -> QmpError {
    QmpError::device_not_active("No balloon device has been activated")
}

fn not_yet(what: &str) -> QmpError {
    QmpError::generic(format!("{what} is not supported yet"))
}

impl QmpHandler for Monitor<'_> {
    fn execute(&mut self, command: Command) -> Result<Response, QmpError> {
        match command {
            Command::QueryStatus => json(&StatusInfo::new(!self.state.paused)),
            Command::Stop => {
                if !self.state.paused {
                    self.state.pause()?;
                    self.events.push(Event::Stop);
                }
                Ok(Response::empty())
            }
            Command::Cont => {
                if self.state.paused {
                    self.state.resume();
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
                self.state.block_slots.blockdev_add(&options)?;
                Ok(Response::empty())
            }
            Command::BlockdevDel(args) => {
                self.state.block_slots.blockdev_del(&args.node_name)?;
                Ok(Response::empty())
            }
            Command::NetdevAdd(args) => {
                let state = &mut *self.state;
                state.net_slots.netdev_add(&args, &mut state.fds)?;
                Ok(Response::empty())
            }
            Command::NetdevDel(args) => {
                self.state.net_slots.netdev_del(&args.id)?;
                Ok(Response::empty())
            }
            Command::DeviceAdd(args) => self.device_add(&args),
            Command::DeviceDel(args) => {
                let deleted = match self.state.block_slots.device_del(&args.id) {
                    Some(deleted) => Some(deleted),
                    None => self.state.net_slots.device_del(&args.id),
                };
                match deleted {
                    Some(deleted) => {
                        self.events.push(deleted?);
                        Ok(Response::empty())
                    }
                    None => Err(QmpError::device_not_found(&args.id)),
                }
            }
            Command::Balloon(BalloonArgs { .. }) | Command::QueryBalloon => Err(no_balloon()),
            Command::QueryVersion => json(&self.state.version),
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
            Command::QueryBlock => json(&self.state.block_slots.query_block()),
            Command::QueryChardev => json(&vec![ChardevInfo {
                label: "serial0".to_string(),
                filename: self.state.serial_backend.clone(),
                frontend_open: true,
            }]),
        }
    }
}
