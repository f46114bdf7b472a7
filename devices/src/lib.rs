//! Legacy PC devices of the microvm machine: the 16550 UART, the i8042 reset line, the CMOS/RTC
//! and a sink for debug ports.
//!
//! Each device implements `address_space::IoHandler` on offsets relative to its own base and
//! never knows where it is mapped, nor anything about KVM: interrupts and requests leave a device
//! through event file descriptors handed to it by the machine.
#![deny(unsafe_code)]

mod cmos;
mod i8042;
mod serial;
mod sink;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::{Serial, SerialError, UartState, UartStateError};
pub use sink::Sink;
