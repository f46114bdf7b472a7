//! Builds the VM from a [`MachineConfig`] and runs it to the end.

use crate::chardevs::{join_frontends, Chardevs};
use crate::config::{ChardevBackend, MachineConfig, SerialConfig, VsockBackend};
use crate::control::ControlEvents;
use crate::error::MachineError;
use crate::event_loop::EventLoop;
use crate::iothread::IoThread;
use crate::layout::*;
use crate::legacy::build_pio_space;
use crate::memory::build_memory_space;
use crate::monitor::{Hotplug, MonitorState};
use crate::qmp_server::QmpServer;
use crate::running::{QmpOnLoop, RunningVm};
use crate::seccomp::{DeviceSyscalls, Seccomp, VsockSyscalls};
use crate::signals::StopSignals;
use crate::snapshot::{restore, Snapshotter};
use crate::vcpu::{self, Vcpu, VcpuControl, VcpuSet};
use crate::virtio_devices::{build_virtio_devices, check_device_count, other_devices, SlotCounts};
use address_space::AddressSpace;
use boot_loader::{BootConfig, BootInfo};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use qmp::schema::ShutdownCause;
use qmp::VersionInfo;
use std::collections::HashMap;
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How a VM ended normally (the process then exits with status 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 or KVM reset event); microvm treats it as shutdown.
    Reset,
    /// The guest triple-faulted, which a PC turns into a reset.
    TripleFault,
    /// The guest powered off.
    PowerOff,
    /// The host asked the VM to end (SIGTERM, SIGINT or SIGHUP).
    HostSignal(i32),
    /// A QMP command ended the VM (`quit`, `system_reset`, `system_powerdown`).
    HostRequest(ShutdownCause),
}

/// Builds the VM described by `config`, runs it and returns how it ended.
pub fn run(config: &MachineConfig) -> Result<ExitReason, MachineError> {
    run_notifying(config, || {})
}

/// As [`run`], calling `on_ready` once the VM is built and its QMP socket listens, just before
/// the vCPUs start (`-daemonize` tells the launcher then).
pub fn run_notifying(
    config: &MachineConfig,
    on_ready: impl FnOnce(),
) -> Result<ExitReason, MachineError> {
    log::info!(
        "starting VM {} (uuid {}): {} vCPUs, {} MiB",
        config.name.as_deref().unwrap_or("-"),
        config.uuid.as_deref().unwrap_or("-"),
        config.cpus,
        config.ram_size >> 20
    );
    check_device_count(
        config.drives.len(),
        config.nets.len(),
        other_devices(config),
    )?;
    let restore = match &config.incoming {
        Some(dir) => Some(restore::read_snapshot(dir, config)?),
        None => None,
    };
    let stop_signals = StopSignals::new().map_err(MachineError::EventLoop)?;
    let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
    check_capabilities(&kvm)?;
    let vm = Arc::new(kvm.create_vm().map_err(MachineError::CreateVm)?);
    // Guest RAM becomes a KVM memory slot before the irqchip exists: on this kvm-pvm host the
    // same KVM_SET_USER_MEMORY_REGION takes about 0.2 ms then and 5-7 ms after it.
    let ram_options = match &restore {
        Some(snapshot) => snapshot.ram_options(&config.ram_options),
        None => config.ram_options.clone(),
    };
    let mmio = build_memory_space(config.ram_size, &ram_options, vm.clone())?;
    setup_vm(&vm)?;
    let ram_split = split_ram(config.ram_size);
    let uart = restore.as_ref().map(|r| &r.state.uart);
    let chardevs = Chardevs::open(config)?;
    let serial_chardev = chardevs.serial(&config.serial)?;
    let (pio, legacy) = build_pio_space(
        &vm,
        (&config.serial, serial_chardev.clone()),
        ram_split,
        uart,
    )?;
    let console = config
        .console
        .as_ref()
        .map(|c| chardevs.console(c))
        .transpose()?;
    let (console_device, console_frontend) = match console {
        Some((labelled, device, chardev)) => (Some(labelled), Some((chardev, device))),
        None => (None, None),
    };
    let ioeventfd = kvm.check_extension(Cap::Ioeventfd);
    if !ioeventfd {
        log::info!("KVM has no ioeventfd: virtqueue notifications are handled on vCPU threads");
    }
    let vsock = match config.vsock.as_ref().map(|v| &v.backend) {
        None => VsockSyscalls::None,
        Some(VsockBackend::Hybrid { .. }) => VsockSyscalls::UnixSockets,
        Some(VsockBackend::Vhost { .. }) => VsockSyscalls::Vhost,
    };
    let devices = DeviceSyscalls {
        vsock,
        vhost_net: config.nets.iter().any(|n| n.vhost || n.vhostfd.is_some()),
        vhost_user: !config.vhost_user.is_empty(),
        snapshot: config.qmp.is_some(),
        chardev_socket: config.chardevs.iter().any(|c| {
            matches!(
                c.backend,
                ChardevBackend::SocketServer(_) | ChardevBackend::SocketClient(_)
            )
        }),
    };
    let seccomp =
        Seccomp::new(config.seccomp, ioeventfd, devices).map_err(MachineError::Seccomp)?;
    // Without a monitor nothing can hot-plug: no empty slots then.
    let slots = match config.qmp {
        Some(_) => SlotCounts {
            blk: config.blk_slots,
            net: config.net_slots,
        },
        None => SlotCounts { blk: 0, net: 0 },
    };
    let mut events = EventLoop::new().map_err(MachineError::EventManager)?;
    for id in &config.iothreads {
        let thread = IoThread::start(id, &seccomp).map_err(|source| MachineError::IoThread {
            id: id.clone(),
            source,
        })?;
        events.add_iothread(thread);
    }
    let virtio = build_virtio_devices(
        &vm,
        &mmio,
        config,
        slots,
        (ioeventfd, &seccomp),
        &mut events,
        console_device,
    )?;
    join_frontends(
        &mut events,
        serial_chardev.map(|c| (c, legacy.serial.clone())),
        console_frontend,
    );
    let boot = match &restore {
        Some(_) => None,
        None => {
            let boot = load_guest(
                &mmio,
                config,
                &guest_cmdline(&config.cmdline, &virtio.cmdline),
            )?;
            log::info!(
                "loaded {:?} kernel, entry {:#x}",
                boot.format,
                boot.entry.rip
            );
            Some(boot)
        }
    };
    let (stopped_tx, stopped_rx) = channel();
    let stopped_evt = EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventLoop)?;
    let vcpu_control = Arc::new(VcpuControl::default());
    let msr_list =
        vcpu::supported_msrs(&kvm).map_err(|source| MachineError::SetupVcpu { id: 0, source })?;
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for id in 0..config.cpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| MachineError::SetupVcpu {
                id,
                source: vcpu::VcpuSetupError::Create(e),
            })?;
        let stopped_evt = stopped_evt.try_clone().map_err(MachineError::EventLoop)?;
        let vcpu = Vcpu::new(
            id,
            fd,
            (pio.clone(), mmio.clone()),
            vcpu_control.clone(),
            stopped_tx.clone(),
            stopped_evt,
        );
        match (&boot, &restore) {
            (Some(boot), _) => configure_vcpu(&kvm, &vcpu, (id, config.cpus), &msr_list, boot)
                .map_err(|source| MachineError::SetupVcpu { id, source })?,
            (None, Some(snapshot)) => {
                vcpu::configure_cpuid(&kvm, vcpu.fd(), id, config.cpus)
                    .map_err(|source| MachineError::SetupVcpu { id, source })?;
                snapshot.restore_vcpu(&kvm, &vcpu)?;
            }
            (None, None) => {}
        }
        vcpus.push(vcpu);
    }
    if let Some(snapshot) = &restore {
        snapshot.restore_machine(&vm, &virtio.transports)?;
    }
    let qmp = match &config.qmp {
        Some(endpoint) => {
            let server = QmpServer::bind(endpoint, qmp_version()).map_err(|source| {
                MachineError::QmpSocket {
                    endpoint: endpoint.clone(),
                    source,
                }
            })?;
            let server = Arc::new(Mutex::new(server));
            let id = events.add(server.clone());
            Some(QmpOnLoop { server, id })
        }
        None => None,
    };
    let stdin_console = config.serial == SerialConfig::Stdio;
    let control = Arc::new(Mutex::new(ControlEvents {
        stopped_rx,
        stopped_evt,
        reset_evt: legacy.reset_evt,
        stop_signals,
        console: stdin_console.then(|| legacy.serial.clone()),
        ended: None,
    }));
    events.add(control.clone());
    let running = RunningVm {
        events,
        control,
        qmp,
        vcpus: VcpuSet::new(vm, vcpu_control, config.cpus),
        hotplug: Hotplug {
            block: virtio.block_slots,
            net: virtio.net_slots,
        },
        monitor: MonitorState {
            version: qmp_version(),
            serial_backend: serial_backend(&config.serial),
            chardevs,
            fds: HashMap::new(),
            snapshot: Snapshotter {
                ram_size: config.ram_size,
                // Only a monitor can ask for a snapshot.
                msr_list: match config.qmp {
                    Some(_) => msr_list,
                    None => Vec::new(),
                },
                memory: mmio.clone(),
                serial: legacy.serial.clone(),
                transports: virtio.transports.clone(),
                refusal: snapshot_refusal(config),
                hotplugged: false,
                last: Default::default(),
            },
            balloon: virtio.balloon,
        },
        console: stdin_console || Chardevs::uses_stdio(config),
        virtio: virtio.transports,
        seccomp,
    };
    on_ready();
    running.run(vcpus)
}

/// Why `migrate` must refuse this machine, if it must.
fn snapshot_refusal(config: &MachineConfig) -> Option<String> {
    if !config.vhost_user.is_empty() {
        return Some("vhost-user devices (no restore is defined for them yet)".into());
    }
    config
        .balloon
        .as_ref()
        .map(|_| "a virtio-balloon (its state is not saved yet)".into())
}

fn check_capabilities(kvm: &Kvm) -> Result<(), MachineError> {
    let required = [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::SetTssAddr, "TSS address"),
        (Cap::Pit2, "PIT"),
        (Cap::ImmediateExit, "immediate exit"),
    ];
    match required
        .into_iter()
        .find(|(cap, _)| !kvm.check_extension(*cap))
    {
        Some((_, name)) => Err(MachineError::MissingCapability(name)),
        None => Ok(()),
    }
}

fn setup_vm(vm: &VmFd) -> Result<(), MachineError> {
    let err = |what| move |source| MachineError::SetupVm { what, source };
    vm.set_tss_address(KVM_TSS_ADDR).map_err(err("TSS"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(err("identity map"))?;
    vm.create_irq_chip().map_err(err("irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(err("PIT"))
}

/// RAM below and above the MMIO hole.
fn split_ram(ram_size: u64) -> (u64, u64) {
    let low = ram_size.min(MMIO_HOLE_START);
    (low, ram_size - low)
}

/// The user's command line followed by the parameters the devices need.
fn guest_cmdline(user: &str, extra: &[String]) -> String {
    std::iter::once(user)
        .chain(extra.iter().map(String::as_str))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_guest(
    mmio: &AddressSpace,
    config: &MachineConfig,
    cmdline: &str,
) -> Result<BootInfo, MachineError> {
    let memory = mmio.memory();
    let boot = BootConfig {
        kernel: &config.kernel,
        initrd: config.initrd.as_deref(),
        cmdline,
        ram_size: config.ram_size,
        mmio_hole: (MMIO_HOLE_START, MMIO_HOLE_END),
        cpus: config.cpus,
        ioapic_addr: IOAPIC_ADDR,
        lapic_addr: LAPIC_ADDR,
    };
    Ok(boot_loader::load(&memory, &boot)?)
}

fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &Vcpu,
    (id, cpus): (u8, u8),
    msr_list: &[u32],
    boot: &BootInfo,
) -> Result<(), vcpu::VcpuSetupError> {
    let fd = vcpu.fd();
    vcpu::configure_cpuid(kvm, fd, id, cpus)?;
    vcpu::configure_msrs(fd, msr_list)?;
    vcpu::configure_fpu(fd)?;
    vcpu::configure_lapic(fd)?;
    if id == 0 {
        vcpu::configure_boot_state(fd, &boot.entry)?;
    }
    Ok(())
}

fn qmp_version() -> VersionInfo {
    VersionInfo::nimbus(env!("CARGO_PKG_VERSION"))
}

fn serial_backend(serial: &SerialConfig) -> String {
    match serial {
        SerialConfig::None => "null".to_string(),
        SerialConfig::Stdio => "stdio".to_string(),
        SerialConfig::File(path) => format!("file:{}", path.display()),
        SerialConfig::Chardev(id) => format!("chardev:{id}"),
    }
}
