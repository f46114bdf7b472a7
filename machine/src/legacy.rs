//! Places the legacy devices on the port I/O bus and wires their interrupts.

use crate::config::SerialConfig;
use crate::error::MachineError;
use crate::layout::*;
use address_space::{AddressSpace, Region, SharedIo, SpaceKind};
use devices::{Cmos, Serial, Sink, UartState, I8042};
use kvm_ioctls::VmFd;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The legacy devices the machine talks to after boot.
pub struct LegacyDevices {
    /// The UART, for console input.
    pub serial: Arc<Mutex<Serial>>,
    /// Written by the i8042 when the guest resets.
    pub reset_evt: EventFd,
}

/// Builds the port I/O space with the UART, i8042, CMOS and POST port.
pub fn build_pio_space(
    vm: &VmFd,
    serial: (&SerialConfig, Option<crate::chardev::SharedChardev>),
    ram: (u64, u64),
    uart: Option<&UartState>,
) -> Result<(Arc<AddressSpace>, LegacyDevices), MachineError> {
    let root = Region::container("pio", PIO_SPACE_SIZE);
    let (irq, out) = (serial_irq(vm)?, serial_output(serial.0, serial.1)?);
    let serial = Arc::new(Mutex::new(match uart {
        Some(state) => Serial::with_state(irq, out, state).map_err(|e| {
            MachineError::restore(
                std::path::Path::new("-incoming"),
                &crate::snapshot::SnapshotError::Uart(e),
            )
        })?,
        None => Serial::new(irq, out),
    }));
    let reset_evt =
        EventFd::new(EFD_NONBLOCK).map_err(|source| MachineError::Irq { irq: 0, source })?;
    let i8042 = I8042::new(
        reset_evt
            .try_clone()
            .map_err(|source| MachineError::Irq { irq: 0, source })?,
    );
    let shared_serial: SharedIo = serial.clone();
    let devices: [(&str, u64, u64, SharedIo); 4] = [
        ("serial", SERIAL_PORT, SERIAL_PORT_COUNT, shared_serial),
        (
            "i8042",
            I8042_PORT,
            I8042_PORT_COUNT,
            Arc::new(Mutex::new(i8042)),
        ),
        (
            "cmos",
            CMOS_PORT,
            CMOS_PORT_COUNT,
            Arc::new(Mutex::new(Cmos::new(ram.0, ram.1))),
        ),
        ("post", POST_PORT, 1, Arc::new(Mutex::new(Sink::new(0)))),
    ];
    for (name, port, count, handler) in devices {
        root.add_subregion(Region::io(name, count, handler), port, 0)?;
    }
    let space = AddressSpace::new(SpaceKind::Io, root)?;
    Ok((Arc::new(space), LegacyDevices { serial, reset_evt }))
}

fn serial_irq(vm: &VmFd) -> Result<EventFd, MachineError> {
    let irq_err = |source| MachineError::Irq {
        irq: SERIAL_IRQ,
        source,
    };
    let evt = EventFd::new(EFD_NONBLOCK).map_err(irq_err)?;
    vm.register_irqfd(&evt, SERIAL_IRQ)
        .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
    Ok(evt)
}

fn serial_output(
    config: &SerialConfig,
    chardev: Option<crate::chardev::SharedChardev>,
) -> Result<Box<dyn Write + Send>, MachineError> {
    if let Some(chardev) = chardev {
        return Ok(crate::chardevs::serial_writer(chardev));
    }
    Ok(match config {
        SerialConfig::None | SerialConfig::Chardev(_) => Box::new(std::io::sink()),
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| MachineError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}
