//! Builds the VM from a [`MachineConfig`] and runs it to the end.

use crate::config::{MachineConfig, SerialConfig};
use crate::error::MachineError;
use crate::event_loop::{EventLoop, Token};
use crate::layout::*;
use crate::legacy::{build_pio_space, LegacyDevices};
use crate::memory::build_memory_space;
use crate::signals::StopSignals;
use crate::terminal::RawTerminal;
use crate::vcpu::{self, Request, StopReason, Vcpu, VcpuControl, VcpuHandle, VcpuStopped};
use address_space::AddressSpace;
use boot_loader::{BootConfig, BootInfo};
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
}

/// How long vCPU threads get to leave after the machine stops.
const VCPU_EXIT_GRACE: Duration = Duration::from_millis(500);

/// Builds the VM described by `config`, runs it and returns how it ended.
pub fn run(config: &MachineConfig) -> Result<ExitReason, MachineError> {
    log::info!(
        "starting VM {} (uuid {}): {} vCPUs, {} MiB",
        config.name.as_deref().unwrap_or("-"),
        config.uuid.as_deref().unwrap_or("-"),
        config.cpus,
        config.ram_size >> 20
    );
    let stop_signals = StopSignals::new().map_err(MachineError::EventLoop)?;
    let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
    check_capabilities(&kvm)?;
    let vm = Arc::new(kvm.create_vm().map_err(MachineError::CreateVm)?);
    setup_vm(&vm)?;
    let mmio = build_memory_space(config.ram_size, vm.clone())?;
    let ram_split = split_ram(config.ram_size);
    let (pio, legacy) = build_pio_space(&vm, &config.serial, ram_split)?;
    let boot = load_guest(&mmio, config)?;
    log::info!(
        "loaded {:?} kernel, entry {:#x}",
        boot.format,
        boot.entry.rip
    );
    let (stopped_tx, stopped_rx) = channel();
    let stopped_evt = EventFd::new(EFD_NONBLOCK).map_err(MachineError::EventLoop)?;
    let control = Arc::new(VcpuControl::default());
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
            control.clone(),
            stopped_tx.clone(),
            stopped_evt,
        );
        configure_vcpu(&kvm, &vcpu, id, config.cpus, &boot)
            .map_err(|source| MachineError::SetupVcpu { id, source })?;
        vcpus.push(vcpu);
    }
    let running = RunningVm {
        control,
        vcpus: Vec::new(),
        stopped_rx,
        stopped_evt,
        legacy,
        stop_signals,
    };
    running.start(vcpus, &config.serial)
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

fn load_guest(mmio: &AddressSpace, config: &MachineConfig) -> Result<BootInfo, MachineError> {
    let memory = mmio.memory();
    let boot = BootConfig {
        kernel: &config.kernel,
        initrd: config.initrd.as_deref(),
        cmdline: &config.cmdline,
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
    id: u8,
    cpus: u8,
    boot: &BootInfo,
) -> Result<(), vcpu::VcpuSetupError> {
    let fd = vcpu.fd();
    vcpu::configure_cpuid(kvm, fd, id, cpus)?;
    vcpu::configure_msrs(kvm, fd)?;
    vcpu::configure_fpu(fd)?;
    vcpu::configure_lapic(fd)?;
    if id == 0 {
        vcpu::configure_boot_state(fd, &boot.entry)?;
    }
    Ok(())
}

/// The VM after its vCPU threads started: the VMM thread's side.
struct RunningVm {
    control: Arc<VcpuControl>,
    vcpus: Vec<VcpuHandle>,
    stopped_rx: Receiver<VcpuStopped>,
    stopped_evt: EventFd,
    legacy: LegacyDevices,
    stop_signals: StopSignals,
}

impl RunningVm {
    fn start(
        mut self,
        vcpus: Vec<Vcpu>,
        serial: &SerialConfig,
    ) -> Result<ExitReason, MachineError> {
        let console = *serial == SerialConfig::Stdio;
        let _raw_terminal = if console {
            RawTerminal::enable(libc::STDIN_FILENO).map_err(MachineError::Terminal)?
        } else {
            None
        };
        for vcpu in vcpus {
            let id = vcpu.id();
            let handle = vcpu
                .spawn()
                .map_err(|source| MachineError::SpawnVcpu { id, source });
            match handle {
                Ok(handle) => self.vcpus.push(handle),
                Err(err) => {
                    self.stop_vcpus();
                    return Err(err);
                }
            }
        }
        let result = self.event_loop(console);
        self.stop_vcpus();
        result
    }

    fn event_loop(&mut self, console: bool) -> Result<ExitReason, MachineError> {
        let events = EventLoop::new().map_err(MachineError::EventLoop)?;
        events
            .add(self.stopped_evt.as_raw_fd(), Token::VcpuStopped)
            .map_err(MachineError::EventLoop)?;
        events
            .add(self.legacy.reset_evt.as_raw_fd(), Token::I8042Reset)
            .map_err(MachineError::EventLoop)?;
        events
            .add(self.stop_signals.as_raw_fd(), Token::StopSignal)
            .map_err(MachineError::EventLoop)?;
        if console {
            match events.add(libc::STDIN_FILENO, Token::Stdin) {
                Ok(()) => {}
                // Regular files and /dev/null cannot be polled: there is no live input to wait for.
                Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                    log::debug!("stdin cannot be polled; console input is off");
                }
                Err(err) => return Err(MachineError::EventLoop(err)),
            }
        }
        loop {
            for token in events.wait().map_err(MachineError::EventLoop)? {
                match token {
                    Token::Stdin => self.forward_console_input(&events),
                    Token::I8042Reset => return Ok(ExitReason::Reset),
                    Token::StopSignal => {
                        if let Some(signal) = self.stop_signals.read() {
                            log::info!("host signal {signal}: ending the VM");
                            return Ok(ExitReason::HostSignal(signal));
                        }
                    }
                    Token::VcpuStopped => {
                        if let Some(result) = self.vcpu_stopped() {
                            return result;
                        }
                    }
                }
            }
        }
    }

    fn forward_console_input(&self, events: &EventLoop) {
        let mut buf = [0u8; 1024];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                log::debug!("console input closed");
                if let Err(err) = events.remove(libc::STDIN_FILENO) {
                    log::warn!("cannot stop watching stdin: {err}");
                }
            }
            Ok(n) => {
                let mut serial = self.legacy.serial.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(err) = serial.queue_input(&buf[..n]) {
                    log::warn!("console input: {err}");
                }
            }
        }
    }

    fn vcpu_stopped(&self) -> Option<Result<ExitReason, MachineError>> {
        let _ = self.stopped_evt.read();
        let VcpuStopped { id, reason } = self.stopped_rx.try_recv().ok()?;
        Some(match reason {
            StopReason::Reset => Ok(ExitReason::Reset),
            StopReason::PowerOff => Ok(ExitReason::PowerOff),
            StopReason::TripleFault => {
                log::warn!("vCPU {id}: guest triple fault (KVM_EXIT_SHUTDOWN), handled as a reset");
                Ok(ExitReason::TripleFault)
            }
            StopReason::Fault(fault) => Err(MachineError::VcpuFault { id, fault }),
        })
    }

    fn stop_vcpus(&self) {
        self.control.request(Request::Exit);
        let deadline = Instant::now() + VCPU_EXIT_GRACE;
        while Instant::now() < deadline && !self.vcpus.iter().all(VcpuHandle::is_finished) {
            self.vcpus
                .iter()
                .filter(|v| !v.is_finished())
                .for_each(VcpuHandle::kick);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
