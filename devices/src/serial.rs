//! The 16550 UART (COM1 at 0x3f8, IRQ 4), a thin wrapper around vm-superio's sans-IO core.
//!
//! Output goes to any `Write` (stdout, a file, or nowhere). Console input is queued by the
//! event loop with [`Serial::queue_input`]; bytes move into the UART's 64-byte FIFO as the guest
//! drains it, so a fast producer never loses input and never spins the event loop.

use address_space::IoHandler;
use std::collections::VecDeque;
use std::io::Write;
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Bytes of console input held back while the guest's FIFO is full.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;
const RBR_OFFSET: u64 = 0;

/// Errors of the serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The guest did not drain its input and the host-side queue is full.
    #[error("serial input queue is full; {dropped} bytes dropped")]
    InputQueueFull {
        /// How many bytes did not fit.
        dropped: usize,
    },
}

/// Raises the UART's interrupt line by writing to an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART's registers and FIFO as a snapshot keeps them (console input not yet in the FIFO
/// is not kept: a restored console starts with none).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState {
    /// Divisor latch, low and high byte.
    pub divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 7],
    /// Bytes in the receive FIFO.
    pub fifo: Vec<u8>,
}

/// A [`UartState`] that does not fit the UART.
#[derive(Debug, thiserror::Error)]
#[error("the serial port's saved FIFO holds {0} bytes, more than it can")]
pub struct UartStateError(usize);

/// The UART together with its pending console input.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    pending: VecDeque<u8>,
}

impl Serial {
    /// A UART that interrupts through `irq` and writes guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
            pending: VecDeque::new(),
        }
    }

    /// A UART as [`Serial::new`], with the registers and FIFO of `state` (a snapshot).
    pub fn with_state(
        irq: EventFd,
        out: Box<dyn Write + Send>,
        state: &UartState,
    ) -> Result<Self, UartStateError> {
        let [ier, iir, lcr, lsr, mcr, msr, scr] = state.registers;
        let saved = vm_superio::serial::SerialState {
            baud_divisor_low: state.divisor[0],
            baud_divisor_high: state.divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: state.fifo.clone(),
        };
        let uart = vm_superio::Serial::from_state(&saved, IrqTrigger(irq), NoEvents, out)
            .map_err(|_| UartStateError(state.fifo.len()))?;
        Ok(Self {
            uart,
            pending: VecDeque::new(),
        })
    }

    /// The registers and FIFO, for a snapshot.
    pub fn save_state(&self) -> UartState {
        let s = self.uart.state();
        UartState {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            fifo: s.in_buffer,
        }
    }

    /// Queues console input for the guest; bytes beyond [`MAX_PENDING_INPUT`] are dropped.
    pub fn queue_input(&mut self, input: &[u8]) -> Result<(), SerialError> {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        let taken = input.len().min(room);
        self.pending.extend(&input[..taken]);
        self.fill_fifo();
        match input.len() - taken {
            0 => Ok(()),
            dropped => Err(SerialError::InputQueueFull { dropped }),
        }
    }

    /// Bytes waiting for room in the guest's FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn fill_fifo(&mut self) {
        let room = self.uart.fifo_capacity();
        if room == 0 || self.pending.is_empty() {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(room).copied().collect();
        match self.uart.enqueue_raw_bytes(&chunk) {
            Ok(accepted) => {
                self.pending.drain(..accepted);
            }
            Err(err) => log::warn!("serial: cannot deliver console input: {err:?}"),
        }
    }
}

impl IoHandler for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(offset) = u8::try_from(offset) else {
            data.fill(0);
            return;
        };
        data.fill(self.uart.read(offset));
        if offset as u64 == RBR_OFFSET && !self.pending.is_empty() {
            self.fill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(err) = self.uart.write(offset, value) {
            log::warn!("serial: cannot write guest output: {err:?}");
        }
        if let Err(err) = self.uart.writer_mut().flush() {
            log::warn!("serial: cannot flush guest output: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let out = SharedBuf::default();
        let dev = Serial::new(irq.try_clone().expect("clone"), Box::new(out.clone()));
        (dev, out, irq)
    }

    #[test]
    fn saved_registers_and_fifo_come_back() {
        let (mut dev, _, _) = serial();
        dev.write(3, &[0x83]); // LCR: DLAB, 8 bits
        dev.write(0, &[0x01]); // divisor low
        dev.write(3, &[0x03]);
        dev.write(7, &[0x5a]); // scratch
        dev.queue_input(b"hi").expect("input");
        let saved = dev.save_state();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut back =
            Serial::with_state(irq, Box::new(std::io::sink()), &saved).expect("restores");
        assert_eq!(back.save_state(), saved);
        let mut byte = [0u8];
        back.read(0, &mut byte);
        assert_eq!(byte[0], b'h');
        let too_big = UartState {
            fifo: vec![0; 1000],
            ..saved
        };
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        assert!(Serial::with_state(irq, Box::new(std::io::sink()), &too_big).is_err());
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let (mut dev, out, _irq) = serial();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().expect("lock").as_slice(), b"hi\n");
    }

    #[test]
    fn queued_input_is_read_back_in_order_beyond_the_fifo_size() {
        let (mut dev, _out, _irq) = serial();
        let input: Vec<u8> = (0..200u8).collect();
        dev.queue_input(&input).expect("queued");
        let mut got = Vec::new();
        for _ in 0..200 {
            let mut lsr = [0];
            dev.read(5, &mut lsr);
            assert_eq!(lsr[0] & 1, 1, "data ready");
            let mut b = [0];
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
        assert_eq!(dev.pending_input(), 0);
    }

    #[test]
    fn input_beyond_the_pending_limit_is_dropped_and_reported() {
        let (mut dev, _out, _irq) = serial();
        let input = vec![b'x'; MAX_PENDING_INPUT + 100];
        let err = dev.queue_input(&input).expect_err("overflow reported");
        assert!(matches!(err, SerialError::InputQueueFull { dropped } if dropped > 0));
    }

    #[test]
    fn received_data_raises_the_interrupt_when_enabled() {
        let (mut dev, _out, irq) = serial();
        dev.write(1, &[0x01]); // IER: received data available
        dev.queue_input(b"a").expect("queued");
        assert_eq!(irq.read().expect("interrupt"), 1);
    }

    #[test]
    fn out_of_range_offset_is_ignored() {
        let (mut dev, _out, _irq) = serial();
        let mut data = [0xff];
        dev.read(0x1_0000, &mut data);
        dev.write(0x1_0000, &[1]);
        assert_eq!(data, [0]);
    }
}
