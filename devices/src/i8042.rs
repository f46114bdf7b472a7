//! The part of the i8042 keyboard controller a microvm needs: the CPU reset line.
//!
//! Linux (`reboot=k`) resets the machine by writing command 0xFE to the command port 0x64. The
//! device answers status reads with "both buffers empty" so drivers never wait on it.

use address_space::IoHandler;
use vmm_sys_util::eventfd::EventFd;

/// Offset of the data port (0x60) within the device's 5-port window 0x60..0x65.
#[cfg(test)]
const DATA_OFFSET: u64 = 0;
/// Offset of the command/status port (0x64).
pub const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller: signals `reset_evt` when the guest pulses the reset line.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    /// A controller that writes to `reset_evt` on a CPU reset command.
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl IoHandler for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty; data: nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            log::info!("guest requested a reset through the i8042");
            if let Err(err) = self.reset_evt.write(1) {
                log::error!("cannot signal the i8042 reset: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

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
        assert!(evt.read().is_err());
    }

    #[test]
    fn status_reads_report_empty_buffers() {
        let (mut dev, _evt) = device();
        let mut status = [0xff];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
