//! Taking a snapshot of the running machine (QMP `migrate`): the parts of the machine it reads
//! and the outcome `query-migrate` reports.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use address_space::sync::lock;
use address_space::AddressSpace;
use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use qmp::schema::MigrationInfo;
use virtio::MmioTransport;

use super::{MachineState, SnapshotError};
use crate::vcpu::VcpuSet;

/// How long the parked vCPU threads get to save their state.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The chips of KVM's irqchip, in the order a snapshot keeps them.
pub const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// What a snapshot reads besides the vCPUs, and the last outcome.
pub struct Snapshotter {
    /// Guest RAM bytes.
    pub ram_size: u64,
    /// The MSRs KVM lists, read from each vCPU.
    pub msr_list: Vec<u32>,
    /// Guest memory.
    pub memory: Arc<AddressSpace>,
    /// The UART.
    pub serial: Arc<Mutex<devices::Serial>>,
    /// The virtio-mmio transports, in slot order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Why this machine cannot be snapshotted, if it cannot (a vhost-user device).
    pub refusal: Option<String>,
    /// A QMP `device_add` or `device_del` changed a slot since boot: no restore is defined
    /// for that yet.
    pub hotplugged: bool,
    /// What `query-migrate` reports.
    pub last: MigrationInfo,
}

impl Snapshotter {
    /// Writes a snapshot of the stopped machine to `dir` and records the outcome.
    pub fn take(&mut self, vcpus: &VcpuSet, dir: &Path) -> Result<(), SnapshotError> {
        let started = Instant::now();
        let result = self.write(vcpus, dir);
        let ms = started.elapsed().as_millis() as u64;
        self.last = match &result {
            Ok(written) => {
                log::info!(
                    "snapshot written to {} in {ms} ms ({} KiB of RAM)",
                    dir.display(),
                    written >> 10
                );
                MigrationInfo {
                    status: Some("completed".into()),
                    error_desc: None,
                    total_time: Some(ms),
                }
            }
            Err(e) => MigrationInfo {
                status: Some("failed".into()),
                error_desc: Some(crate::error::one_line(e)),
                total_time: Some(ms),
            },
        };
        result.map(|_| ())
    }

    fn write(&self, vcpus: &VcpuSet, dir: &Path) -> Result<u64, SnapshotError> {
        if !vcpus.is_paused() {
            return Err(SnapshotError::Running);
        }
        if let Some(why) = &self.refusal {
            return Err(SnapshotError::Unsupported(why.clone()));
        }
        if self.hotplugged {
            return Err(SnapshotError::Unsupported(
                "hot-plugged devices (device_add or device_del since boot; no restore is \
                 defined for them yet)"
                    .into(),
            ));
        }
        let saved = vcpus
            .save_states(self.msr_list.clone(), VCPU_SAVE_TIMEOUT)
            .ok_or_else(|| SnapshotError::Unsupported("a vCPU that did not answer".into()))?;
        let mut states = Vec::with_capacity(saved.len());
        for result in saved {
            states.push(result.map_err(|(id, source)| SnapshotError::Vcpu { id, source })?);
        }
        states.sort_by_key(|s| s.id);
        // Disks are flushed before `migrate` answers: the restored VM reads the same images.
        for transport in &self.transports {
            lock(transport).flush();
        }
        let vm = vcpus.vm();
        let irqchip = IRQCHIPS
            .iter()
            .map(|&chip_id| {
                let mut chip = kvm_irqchip {
                    chip_id,
                    ..Default::default()
                };
                vm.get_irqchip(&mut chip)
                    .map(|()| chip)
                    .map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pit = vm
            .get_pit2()
            .map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?;
        let clock = match vcpus.frozen_clock() {
            Some(clock) => clock,
            None => vm
                .get_clock()
                .map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?,
        };
        let state = MachineState {
            ram_size: self.ram_size,
            cpus: vcpus.count(),
            tsc_khz: states.first().map_or(0, |s| s.tsc_khz),
            vcpus: states,
            irqchip,
            pit,
            clock,
            uart: lock(&self.serial).save_state(),
            transports: self
                .transports
                .iter()
                .map(|t| lock(t).save_state())
                .collect(),
        };
        super::write(dir, &state, &self.memory.memory())
    }
}
