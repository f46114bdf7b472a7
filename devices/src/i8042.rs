//! The part of the i8042 keyboard controller a microvm needs: the CPU reset line, a thin
//! wrapper around vm-superio's sans-IO core.
//!
//! Linux (`reboot=k`) resets the machine by writing command 0xFE to the command port 0x64,
//! after waiting for the status port to show an empty input buffer. Every port reads 0 here
//! (status: both buffers empty; data: nothing pending), so drivers never wait on the device.
//! Port 0x61 lies in the window too, but KVM's in-kernel PIT answers it first.

use address_space::IoHandler;
use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The reset line: writes an eventfd the machine watches.
#[derive(Debug)]
struct ResetLine(EventFd);

impl Trigger for ResetLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        log::info!("guest requested a reset through the i8042");
        self.0.write(1)
    }
}

/// The i8042 controller: signals `reset_evt` when the guest pulses the reset line.
#[derive(Debug)]
pub struct I8042(I8042Device<ResetLine>);

impl I8042 {
    /// A controller that writes to `reset_evt` on a CPU reset command.
    pub fn new(reset_evt: EventFd) -> Self {
        Self(I8042Device::new(ResetLine(reset_evt)))
    }
}

impl IoHandler for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0, |offset| self.0.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(err) = self.0.write(offset, value) {
            log::error!("cannot signal the i8042 reset: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Offsets of the data port (0x60) and the command/status port (0x64) in the device's
    /// 5-port window 0x60..0x65.
    const DATA_OFFSET: u64 = 0;
    const COMMAND_OFFSET: u64 = 4;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let clone = evt.try_clone().expect("clone eventfd");
        (I8042::new(clone), evt)
    }

    #[test]
    fn reset_command_on_port_0x64_signals_reset() {
        let (mut dev, evt) = device();
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().expect("reset signalled"), 1);
    }

    #[test]
    fn other_writes_do_not_signal_reset() {
        let (mut dev, evt) = device();
        dev.write(COMMAND_OFFSET, &[0xd1]);
        dev.write(DATA_OFFSET, &[0xfe]);
        dev.write(COMMAND_OFFSET + (1 << 8), &[0xfe]);
        dev.write(COMMAND_OFFSET, &[]);
        assert!(evt.read().is_err());
    }

    #[test]
    fn every_port_reads_zero_so_status_shows_empty_buffers() {
        let (mut dev, _evt) = device();
        for offset in 0..5 {
            let mut bytes = [0xff; 2];
            dev.read(offset, &mut bytes);
            assert_eq!(bytes, [0, 0], "offset {offset}");
        }
    }
}
