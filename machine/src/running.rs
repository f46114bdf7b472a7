//! The VM after its vCPU threads started: the VMM thread runs the event loop until the VM
//! ends, and between event batches runs the QMP commands that came in (they act on the whole
//! machine, the loop included: `stop` freezes the devices on it, hot-plug makes a device
//! rejoin it).

use crate::control::{ControlEvents, Ending};
use crate::error::MachineError;
use crate::event_loop::EventLoop;
use crate::monitor::{Hotplug, Machine, Monitor, MonitorState};
use crate::pit::PitSetup;
use crate::qmp_server::QmpServer;
use crate::seccomp::{Seccomp, ThreadKind};
use crate::terminal::RawTerminal;
use crate::vcpu::{Vcpu, VcpuSet};
use crate::vm::ExitReason;
use address_space::sync::lock;
use event_manager::SubscriberId;
use qmp::schema::{ShutdownCause, ShutdownInfo};
use qmp::{AfterReply, Event, Incoming, QmpHandler, Session};
use std::sync::{Arc, Mutex};
use virtio::MmioTransport;

/// The QMP server on the loop.
pub struct QmpOnLoop {
    /// The server, shared with the loop.
    pub server: Arc<Mutex<QmpServer>>,
    /// Its subscriber id, to change its sources between events.
    pub id: SubscriberId,
}

/// Everything the VMM thread owns once the guest runs.
pub struct RunningVm {
    /// The event loop, with the control, QMP and device subscribers on it.
    pub events: EventLoop,
    /// The control subscriber: how the VM ended.
    pub control: Arc<Mutex<ControlEvents>>,
    /// The QMP server, if asked for.
    pub qmp: Option<QmpOnLoop>,
    /// The vCPUs.
    pub vcpus: VcpuSet,
    /// The replaceable devices.
    pub hotplug: Hotplug,
    /// What only the monitor keeps.
    pub monitor: MonitorState,
    /// Whether the UART is connected to stdin/stdout.
    pub console: bool,
    /// The virtio devices, shut down (disks flushed) when the VM ends.
    pub virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// The seccomp filters: each vCPU thread installs its own, the VMM thread its own right
    /// before the event loop.
    pub seccomp: Seccomp,
}

impl RunningVm {
    /// Starts the vCPU threads and runs the event loop until the VM ends.
    pub fn run(mut self, vcpus: Vec<Vcpu>) -> Ending {
        let _raw_terminal = if self.console {
            RawTerminal::enable_stdin().map_err(MachineError::Terminal)?
        } else {
            None
        };
        for vcpu in vcpus {
            let id = vcpu.id();
            match vcpu.spawn(&self.seccomp) {
                Ok(handle) => self.vcpus.push(handle),
                Err(source) => {
                    self.vcpus.stop();
                    return Err(MachineError::SpawnVcpu { id, source });
                }
            }
        }
        // While the guest boots: off its path and off the exit's (pit.rs).
        let pit_setup = PitSetup::start(self.vcpus.vm_shared(), &self.seccomp);
        if let Some(pit_setup) = &pit_setup {
            self.events.add(pit_setup.clone());
        }
        let result = self.event_loop();
        self.vcpus.stop();
        if let Some(pit_setup) = &pit_setup {
            lock(pit_setup).join();
        }
        // No device runs on an iothread from here on: the disks are flushed below.
        self.events.stop_iothreads();
        for transport in &self.virtio {
            lock(transport).shutdown();
        }
        if let Some(qmp) = &self.qmp {
            let mut server = lock(&qmp.server);
            server.send_event(&Event::Shutdown(shutdown_info(&result)));
            server.flush_blocking();
        }
        result
    }

    fn event_loop(&mut self) -> Ending {
        crate::memory::release_free_heap();
        crate::memory::release_startup_code();
        // Last step of setup: from here on the VMM thread may only make the syscalls of
        // seccomp/lists.rs.
        self.seccomp
            .apply(ThreadKind::Vmm, 0)
            .map_err(MachineError::Seccomp)?;
        loop {
            if let Some(ending) = lock(&self.control).ended.take() {
                return ending;
            }
            self.events.run().map_err(MachineError::EventManager)?;
            self.send_balloon_event();
            if let Some(ending) = self.serve_qmp() {
                return ending;
            }
        }
    }

    /// `BALLOON_CHANGED` when the guest changed the balloon's size (its device woke the loop).
    fn send_balloon_event(&mut self) {
        let Some(event) = self.monitor.balloon.as_ref().and_then(|b| b.take_event()) else {
            return;
        };
        if let Some(qmp) = &self.qmp {
            lock(&qmp.server).send_event(&event);
        }
    }

    /// Runs what the QMP client sent since the last batch, queues the replies and events, and
    /// brings the server's sources in step. `Some` when a command ended the VM. Nothing to do
    /// (and no syscall) after a batch that brought no QMP input: the server's own handler has
    /// already synced its sources.
    fn serve_qmp(&mut self) -> Option<Ending> {
        let (server, id) = self.qmp.as_ref().map(|q| (q.server.clone(), q.id))?;
        let mut server = lock(&server);
        let bytes = server.take_input();
        if bytes.is_empty() {
            return None;
        }
        let ending = self.run_commands(&mut server, &bytes);
        match self.events.ops(id) {
            Ok(mut ops) => server.sync(&mut ops),
            Err(e) => log::warn!("QMP server is not on the loop: {e}"),
        }
        ending
    }

    fn run_commands(&mut self, server: &mut QmpServer, bytes: &[u8]) -> Option<Ending> {
        let incoming = server.client_mut()?.session.feed(bytes);
        for item in incoming {
            match item {
                Incoming::Reply(reply) => server.queue(&reply),
                Incoming::Overflow(reply) => {
                    server.queue(&reply);
                    server.disconnect();
                }
                Incoming::Request(request) => {
                    let mut received_fd = server.pending_fd().and_then(Option::take);
                    let machine = Machine {
                        vcpus: &mut self.vcpus,
                        hotplug: &mut self.hotplug,
                        events: &mut self.events,
                        state: &mut self.monitor,
                    };
                    let mut monitor = Monitor::new(machine, &mut received_fd);
                    let result = monitor.execute(request.command);
                    let events_out = monitor.take_events();
                    if let (Some(slot), Some(fd)) = (server.pending_fd(), received_fd) {
                        slot.get_or_insert(fd);
                    }
                    for event in &events_out {
                        server.send_event(event);
                    }
                    let after = result.as_ref().map_or(AfterReply::Nothing, |r| r.after);
                    server.queue(&Session::reply(request.id, result.map(|r| r.value)));
                    if let AfterReply::Shutdown(cause) = after {
                        return Some(Ok(ExitReason::HostRequest(cause)));
                    }
                }
            }
            if server.client_fd().is_none() {
                break;
            }
        }
        None
    }
}

/// The `SHUTDOWN` event data for how the VM ended.
fn shutdown_info(result: &Ending) -> ShutdownInfo {
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
