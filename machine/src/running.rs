//! The VM after its vCPU threads started: the VMM thread's epoll loop, console input, the QMP
//! monitor, host signals, and the end of the VM.

use crate::device_events::DeviceEvents;
use crate::error::MachineError;
use crate::event_loop::{EventLoop, Token};
use crate::legacy::LegacyDevices;
use crate::monitor::{Monitor, VmState};
use crate::qmp_server::{ClientInput, QmpServer};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::signals::StopSignals;
use crate::terminal::RawTerminal;
use crate::vcpu::{StopReason, Vcpu, VcpuStopped};
use crate::vm::ExitReason;
use qmp::schema::{ShutdownCause, ShutdownInfo};
use qmp::{AfterReply, Event, Incoming, QmpHandler, Session};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use virtio::MmioTransport;
use vmm_sys_util::eventfd::EventFd;

/// Everything the VMM thread owns once the guest runs.
pub struct RunningVm {
    /// vCPU control and machine state the monitor works on.
    pub state: VmState,
    /// vCPU stop reports.
    pub stopped_rx: Receiver<VcpuStopped>,
    /// Written when a report was sent on `stopped_rx`.
    pub stopped_evt: EventFd,
    /// UART and i8042.
    pub legacy: LegacyDevices,
    /// SIGTERM, SIGINT, SIGHUP.
    pub stop_signals: StopSignals,
    /// The QMP monitor, if asked for.
    pub qmp: Option<QmpServer>,
    /// Whether the UART is connected to stdin/stdout.
    pub console: bool,
    /// Device event sources (virtqueue ioeventfds, I/O completions, taps).
    pub device_events: DeviceEvents,
    /// The virtio devices, shut down (disks flushed) when the VM ends.
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// The seccomp filters: each vCPU thread installs its own, the VMM thread its own right
    /// before the event loop.
    pub seccomp: Seccomp,
}

/// What one event-loop step decided.
enum Step {
    Continue,
    End(Result<ExitReason, MachineError>),
}

impl RunningVm {
    /// Starts the vCPU threads and runs the event loop until the VM ends.
    pub fn run(mut self, vcpus: Vec<Vcpu>) -> Result<ExitReason, MachineError> {
        let _raw_terminal = if self.console {
            RawTerminal::enable(libc::STDIN_FILENO).map_err(MachineError::Terminal)?
        } else {
            None
        };
        for vcpu in vcpus {
            let id = vcpu.id();
            match vcpu.spawn(&self.seccomp) {
                Ok(handle) => self.state.vcpus.push(handle),
                Err(source) => {
                    self.state.stop_vcpus();
                    return Err(MachineError::SpawnVcpu { id, source });
                }
            }
        }
        let result = self.event_loop();
        self.state.stop_vcpus();
        for transport in &self.virtio {
            transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shutdown();
        }
        if let Some(qmp) = self.qmp.as_mut() {
            qmp.send_event(&Event::Shutdown(shutdown_info(&result)));
            qmp.flush_blocking();
        }
        result
    }

    fn event_loop(&mut self) -> Result<ExitReason, MachineError> {
        let events = self.register_sources()?;
        crate::memory::release_free_heap();
        // Last step of setup: from here on the VMM thread may only make the syscalls of
        // seccomp/lists.rs.
        self.seccomp
            .apply(ThreadKind::Vmm, 0)
            .map_err(MachineError::Seccomp)?;
        loop {
            for token in events.wait().map_err(MachineError::EventLoop)? {
                if let Step::End(result) = self.handle(token, &events) {
                    return result;
                }
            }
        }
    }

    fn register_sources(&self) -> Result<EventLoop, MachineError> {
        let events = EventLoop::new().map_err(MachineError::EventLoop)?;
        let fds = [
            (self.stopped_evt.as_raw_fd(), Token::VcpuStopped),
            (self.legacy.reset_evt.as_raw_fd(), Token::I8042Reset),
            (self.stop_signals.as_raw_fd(), Token::StopSignal),
        ];
        for (fd, token) in fds {
            events.add(fd, token).map_err(MachineError::EventLoop)?;
        }
        self.device_events
            .register(&events)
            .map_err(MachineError::EventLoop)?;
        if let Some(qmp) = &self.qmp {
            events
                .add(qmp.listener_fd(), Token::QmpListener)
                .map_err(MachineError::EventLoop)?;
        }
        if self.console {
            match events.add(libc::STDIN_FILENO, Token::Stdin) {
                Ok(()) => {}
                // Regular files and /dev/null cannot be polled: there is no live input to wait for.
                Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                    log::debug!("stdin cannot be polled; console input is off");
                }
                Err(err) => return Err(MachineError::EventLoop(err)),
            }
        }
        Ok(events)
    }

    fn handle(&mut self, token: Token, events: &EventLoop) -> Step {
        match token {
            Token::Stdin => self.forward_console_input(events),
            Token::I8042Reset => return Step::End(Ok(ExitReason::Reset)),
            Token::StopSignal => {
                if let Some(signal) = self.stop_signals.read() {
                    log::info!("host signal {signal}: ending the VM");
                    return Step::End(Ok(ExitReason::HostSignal(signal)));
                }
            }
            Token::VcpuStopped => {
                if let Some(result) = self.vcpu_stopped() {
                    return Step::End(result);
                }
            }
            Token::QmpListener => self.accept_qmp_client(events),
            Token::QmpClient => return self.serve_qmp_client(events),
            Token::Device(n) => self.device_events.dispatch(n, events),
        }
        Step::Continue
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

    fn accept_qmp_client(&mut self, events: &EventLoop) {
        let Some(qmp) = self.qmp.as_mut() else { return };
        match qmp.accept() {
            Ok(true) => {
                let client = qmp.client_fd();
                // One client at a time: the next one waits in the backlog until this one leaves.
                let watched = client.map(|fd| events.add(fd, Token::QmpClient));
                if let Some(Err(err)) = watched {
                    log::warn!("cannot watch the QMP client: {err}");
                    qmp.disconnect();
                    return;
                }
                if let Err(err) = events.remove(qmp.listener_fd()) {
                    log::warn!("cannot pause the QMP listener: {err}");
                }
                self.update_qmp_interest(events);
            }
            Ok(false) => {}
            Err(err) => log::warn!("cannot accept a QMP client: {err}"),
        }
    }

    fn serve_qmp_client(&mut self, events: &EventLoop) -> Step {
        let Some(qmp) = self.qmp.as_mut() else {
            return Step::Continue;
        };
        if let Err(err) = qmp.flush() {
            log::debug!("QMP client write failed: {err}");
            return self.close_qmp_client(events);
        }
        let bytes = match qmp.read() {
            ClientInput::Data(bytes) => bytes,
            ClientInput::Nothing => {
                self.update_qmp_interest(events);
                return Step::Continue;
            }
            ClientInput::Closed => return self.close_qmp_client(events),
        };
        let Some(client) = qmp.client_mut() else {
            return Step::Continue;
        };
        let incoming = client.session.feed(&bytes);
        for item in incoming {
            match item {
                Incoming::Reply(reply) => qmp.queue(&reply),
                Incoming::Overflow(reply) => {
                    qmp.queue(&reply);
                    return self.close_qmp_client(events);
                }
                Incoming::Request(request) => {
                    let mut received_fd = qmp.pending_fd().and_then(Option::take);
                    let mut monitor = Monitor::new(&mut self.state, &mut received_fd);
                    let result = monitor.execute(request.command);
                    let events_out = monitor.take_events();
                    // Devices process nothing while the VM is stopped.
                    self.device_events.set_paused(self.state.paused, events);
                    if let (Some(slot), Some(fd)) = (qmp.pending_fd(), received_fd) {
                        slot.get_or_insert(fd);
                    }
                    for event in &events_out {
                        qmp.send_event(event);
                    }
                    let after = result.as_ref().map_or(AfterReply::Nothing, |r| r.after);
                    qmp.queue(&Session::reply(request.id, result.map(|r| r.value)));
                    if let AfterReply::Shutdown(cause) = after {
                        return Step::End(Ok(ExitReason::HostRequest(cause)));
                    }
                }
            }
            if qmp.client_fd().is_none() {
                return self.close_qmp_client(events);
            }
        }
        self.update_qmp_interest(events);
        Step::Continue
    }

    /// Watches the client for output room only while output is pending.
    fn update_qmp_interest(&self, events: &EventLoop) {
        let Some(qmp) = &self.qmp else { return };
        if let Some(fd) = qmp.client_fd() {
            let want_write = qmp.pending_output() > 0;
            if let Err(err) = events.modify(fd, Token::QmpClient, want_write) {
                log::warn!("cannot update the QMP client's events: {err}");
            }
        }
    }

    fn close_qmp_client(&mut self, events: &EventLoop) -> Step {
        let Some(qmp) = self.qmp.as_mut() else {
            return Step::Continue;
        };
        if let Some(fd) = qmp.client_fd() {
            let _ = events.remove(fd);
        }
        qmp.disconnect();
        if let Err(err) = events.add(qmp.listener_fd(), Token::QmpListener) {
            log::warn!("cannot watch the QMP listener again: {err}");
        }
        Step::Continue
    }
}

/// The `SHUTDOWN` event data for how the VM ended.
fn shutdown_info(result: &Result<ExitReason, MachineError>) -> ShutdownInfo {
    let (guest, reason) = match result {
        Ok(ExitReason::Reset | ExitReason::TripleFault) => (true, ShutdownCause::GuestReset),
        Ok(ExitReason::PowerOff) => (true, ShutdownCause::GuestShutdown),
        Ok(ExitReason::HostSignal(_)) => (false, ShutdownCause::HostSignal),
        Ok(ExitReason::HostRequest(cause)) => (false, *cause),
        Err(_) => (false, ShutdownCause::HostError),
    };
    ShutdownInfo { guest, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_reset_and_triple_fault_are_guest_resets() {
        for reason in [ExitReason::Reset, ExitReason::TripleFault] {
            let info = shutdown_info(&Ok(reason));
            assert!(info.guest);
            assert_eq!(info.reason, ShutdownCause::GuestReset);
        }
    }

    #[test]
    fn signals_and_quit_are_host_shutdowns() {
        assert_eq!(
            shutdown_info(&Ok(ExitReason::HostSignal(15))).reason,
            ShutdownCause::HostSignal
        );
        let quit = shutdown_info(&Ok(ExitReason::HostRequest(ShutdownCause::HostQmpQuit)));
        assert_eq!(
            (quit.guest, quit.reason),
            (false, ShutdownCause::HostQmpQuit)
        );
    }
}
