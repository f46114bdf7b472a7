//! Places the virtio-mmio devices in the memory space and wires their interrupts.
//!
//! Device `i` gets the 4 KiB window at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE` and IOAPIC
//! line `VIRTIO_IRQS[i]`, raised through an irqfd. QueueNotify writes are handled on the vCPU
//! thread that made them, through the transport's register write.

use crate::config::DriveConfig;
use crate::error::MachineError;
use crate::layout::{VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE};
use address_space::{AddressSpace, Region, SharedIo};
use kvm_ioctls::VmFd;
use std::sync::{Arc, Mutex};
use virtio::{Block, BlockOptions, Interrupt, MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Creates a virtio-blk device for each drive, maps it and wires its IRQ. Returns the
/// `virtio_mmio.device=` parameters to append to the guest command line.
pub fn build_virtio_devices(
    vm: &VmFd,
    mmio: &AddressSpace,
    drives: &[DriveConfig],
) -> Result<Vec<String>, MachineError> {
    if drives.len() > VIRTIO_IRQS.len() {
        return Err(MachineError::TooManyVirtioDevices {
            max: VIRTIO_IRQS.len(),
        });
    }
    let mut params = Vec::with_capacity(drives.len());
    for (index, (drive, irq)) in drives.iter().zip(VIRTIO_IRQS).enumerate() {
        let options = BlockOptions {
            path: drive.path.clone(),
            readonly: drive.readonly,
            serial: drive.serial.clone(),
        };
        let block = Block::new(&options).map_err(|source| MachineError::Drive {
            id: drive.id.clone(),
            source,
        })?;
        let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_STRIDE;
        add_device(vm, mmio, Box::new(block), base, irq)?;
        log::info!(
            "drive '{}': {:?}{} at {base:#x}, IRQ {irq}",
            drive.id,
            drive.path,
            if drive.readonly { " (read-only)" } else { "" }
        );
        params.push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
    }
    if !drives.is_empty() {
        mmio.commit()?;
    }
    Ok(params)
}

/// Maps `device` behind a virtio-mmio window at `base` whose interrupt raises `irq`.
fn add_device(
    vm: &VmFd,
    mmio: &AddressSpace,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<(), MachineError> {
    let irq_err = |source| MachineError::Irq { irq, source };
    let evt = EventFd::new(EFD_NONBLOCK).map_err(irq_err)?;
    vm.register_irqfd(&evt, irq)
        .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
    let transport = MmioTransport::new(device, mmio.memory(), Interrupt::new(evt));
    let handler: SharedIo = Arc::new(Mutex::new(transport));
    let name = format!("virtio-mmio@{base:#x}");
    mmio.root()
        .add_subregion(Region::io(&name, MMIO_WINDOW_SIZE, handler), base, 0)?;
    Ok(())
}
