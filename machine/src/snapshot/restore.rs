//! Starting a machine from a snapshot (`-incoming file:<dir>`): the state file is read and
//! checked against the command line before KVM is opened; guest RAM maps the memory file; each
//! vCPU and the irqchip, PIT, clock, UART and virtio transports get their saved state back
//! before any vCPU runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use address_space::sync::lock;
use address_space::{RamBacking, RamOptions};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::{Cap, Kvm, VmFd};
use virtio::MmioTransport;

use super::{MachineState, SnapshotError, MEMORY_FILE};
use crate::config::MachineConfig;
use crate::error::MachineError;
use crate::vcpu::Vcpu;

/// A snapshot being restored.
pub struct Restore {
    /// What the state file holds.
    pub state: MachineState,
    dir: PathBuf,
}

/// Reads `<dir>/state` and checks it against the RAM size and vCPU count of `config`.
pub fn read_snapshot(dir: &Path, config: &MachineConfig) -> Result<Restore, MachineError> {
    let err = |source| MachineError::restore(dir, &source);
    if !config.vhost_user.is_empty() {
        return Err(err(SnapshotError::Unsupported(
            "vhost-user devices (no restore is defined for them yet)".into(),
        )));
    }
    let state = super::read(dir).map_err(err)?;
    state
        .check_machine(config.ram_size, config.cpus)
        .map_err(err)?;
    let memory = dir.join(MEMORY_FILE);
    let found = std::fs::metadata(&memory)
        .map_err(|source| {
            err(SnapshotError::File {
                what: "cannot read",
                path: memory.clone(),
                source,
            })
        })?
        .len();
    if found != state.ram_size {
        return Err(err(SnapshotError::MemoryFile {
            path: memory,
            found,
            expected: state.ram_size,
        }));
    }
    Ok(Restore {
        state,
        dir: dir.to_owned(),
    })
}

impl Restore {
    fn err(&self, source: SnapshotError) -> MachineError {
        MachineError::restore(&self.dir, &source)
    }

    /// Guest RAM from the memory file, mapped private.
    pub fn ram_options(&self, base: &RamOptions) -> RamOptions {
        RamOptions {
            backing: RamBacking::SnapshotFile(self.dir.join(MEMORY_FILE)),
            prealloc: false,
            dump: base.dump,
        }
    }

    /// Puts the saved state into `vcpu` (its CPUID already set). The guest's TSC frequency
    /// must be this host's, or one KVM can scale to.
    pub fn restore_vcpu(&self, kvm: &Kvm, vcpu: &Vcpu) -> Result<(), MachineError> {
        let id = vcpu.id();
        let saved = self
            .state
            .vcpus
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| self.err(SnapshotError::Mismatch(format!("no state for vCPU {id}"))))?;
        let fd = vcpu.fd();
        let host_khz = fd
            .get_tsc_khz()
            .map_err(|e| self.err(SnapshotError::Kvm("KVM_GET_TSC_KHZ", e)))?;
        if saved.tsc_khz != 0 && saved.tsc_khz != host_khz {
            if !kvm.check_extension(Cap::TscControl) {
                return Err(self.err(SnapshotError::Mismatch(format!(
                    "the snapshot was taken with a TSC of {} kHz, this host's runs at {host_khz} \
                     kHz and KVM cannot scale it",
                    saved.tsc_khz
                ))));
            }
            fd.set_tsc_khz(saved.tsc_khz)
                .map_err(|e| self.err(SnapshotError::Kvm("KVM_SET_TSC_KHZ", e)))?;
        }
        saved
            .restore(fd)
            .map_err(|source| self.err(SnapshotError::Vcpu { id, source }))
    }

    /// Puts back the irqchip, the PIT, the KVM clock and the virtio transports (whose device
    /// types must be the saved ones, slot by slot).
    pub fn restore_machine(
        &self,
        vm: &VmFd,
        transports: &[Arc<Mutex<MmioTransport>>],
    ) -> Result<(), MachineError> {
        let types: Vec<u32> = transports.iter().map(|t| lock(t).device_type()).collect();
        self.state.check_devices(&types).map_err(|e| self.err(e))?;
        for chip in &self.state.irqchip {
            vm.set_irqchip(chip)
                .map_err(|e| self.err(SnapshotError::Kvm("KVM_SET_IRQCHIP", e)))?;
        }
        vm.set_pit2(&self.state.pit)
            .map_err(|e| self.err(SnapshotError::Kvm("KVM_SET_PIT2", e)))?;
        let clock = kvm_clock_data {
            clock: self.state.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock)
            .map_err(|e| self.err(SnapshotError::Kvm("KVM_SET_CLOCK", e)))?;
        for (index, (transport, saved)) in transports.iter().zip(&self.state.transports).enumerate()
        {
            lock(transport)
                .restore_state(saved)
                .map_err(|source| self.err(SnapshotError::Transport { index, source }))?;
        }
        log::info!(
            "restored {} vCPUs and {} virtio devices from {}",
            self.state.cpus,
            transports.len(),
            self.dir.display()
        );
        Ok(())
    }
}
