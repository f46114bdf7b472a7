//! The machine's own event sources: vCPU stop reports, the i8042 reset line, host stop signals
//! and console input. The subscriber records how the VM ended; the loop in `running.rs` stops
//! once it has.

use crate::error::MachineError;
use crate::event_loop::{input, unwatch};
use crate::signals::StopSignals;
use crate::vcpu::{StopReason, VcpuStopped};
use crate::vm::ExitReason;
use devices::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The control sources, as their events' data.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// A vCPU thread stopped and sent its report.
    VcpuStopped,
    /// The guest pulsed the i8042 reset line.
    I8042Reset,
    /// SIGTERM, SIGINT or SIGHUP arrived.
    StopSignal,
    /// Console input on stdin.
    Stdin,
}

impl Token {
    const ALL: [Token; 4] = [
        Token::VcpuStopped,
        Token::I8042Reset,
        Token::StopSignal,
        Token::Stdin,
    ];

    fn from_data(data: u32) -> Option<Token> {
        Token::ALL.into_iter().find(|t| *t as u32 == data)
    }
}

/// How a VM run ends: a reason, or the error that stopped it.
pub type Ending = Result<ExitReason, MachineError>;

/// The control sources and how the VM ended, once it has.
pub struct ControlEvents {
    /// vCPU stop reports.
    pub stopped_rx: Receiver<VcpuStopped>,
    /// Written when a report was sent on `stopped_rx`.
    pub stopped_evt: EventFd,
    /// Written by the i8042 when the guest resets.
    pub reset_evt: EventFd,
    /// SIGTERM, SIGINT, SIGHUP.
    pub stop_signals: StopSignals,
    /// The UART, fed with console input; `None` when stdin is not the console.
    pub console: Option<Arc<Mutex<Serial>>>,
    /// How the VM ended, once a source said so.
    pub ended: Option<Ending>,
}

impl ControlEvents {
    fn handle(&mut self, token: Token, events: Events, ops: &mut EventOps) {
        let ending = match token {
            Token::I8042Reset => Some(Ok(ExitReason::Reset)),
            Token::StopSignal => self.stop_signals.read().map(|signal| {
                log::info!("host signal {signal}: ending the VM");
                Ok(ExitReason::HostSignal(signal))
            }),
            Token::VcpuStopped => self.vcpu_stopped(),
            Token::Stdin => {
                self.forward_console_input(events, ops);
                None
            }
        };
        if self.ended.is_none() {
            self.ended = ending;
        }
    }

    fn forward_console_input(&self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 1024];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                log::debug!("console input closed");
                unwatch(ops, events, "stdin");
            }
            Ok(n) => {
                let Some(serial) = &self.console else { return };
                if let Err(err) = address_space::sync::lock(serial).queue_input(&buf[..n]) {
                    log::warn!("console input: {err}");
                }
            }
        }
    }

    fn vcpu_stopped(&self) -> Option<Ending> {
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
}

impl MutEventSubscriber for ControlEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match Token::from_data(events.data()) {
            Some(token) => self.handle(token, events, ops),
            None => log::warn!("control event with unknown token {}", events.data()),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let sources = [
            (
                self.stopped_evt.as_raw_fd(),
                Token::VcpuStopped,
                "vCPU stops",
            ),
            (
                self.reset_evt.as_raw_fd(),
                Token::I8042Reset,
                "the reset line",
            ),
            (
                self.stop_signals.as_raw_fd(),
                Token::StopSignal,
                "stop signals",
            ),
        ];
        for (fd, token, what) in sources {
            if let Err(source) = ops.add(input(fd, token as u32)) {
                // Without it the VM could not end: end it now.
                self.ended
                    .get_or_insert(Err(MachineError::Watch { what, source }));
            }
        }
        if self.console.is_some() {
            match ops.add(input(libc::STDIN_FILENO, Token::Stdin as u32)) {
                Ok(()) => {}
                // Regular files and /dev/null cannot be polled: no live input to wait for.
                Err(e) => log::debug!("stdin cannot be polled ({e}); console input is off"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_maps_back_from_its_data() {
        for token in Token::ALL {
            assert_eq!(Token::from_data(token as u32), Some(token));
        }
        assert_eq!(Token::from_data(Token::ALL.len() as u32), None);
    }
}
