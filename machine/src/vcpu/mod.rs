//! vCPU threads: each runs `KVM_RUN` in a loop, dispatches port and MMIO exits through the
//! address spaces, and reports why it stopped. Pause, resume and exit requests reach a running
//! vCPU through [`VcpuControl`] plus a kick signal.

mod control;
mod dispatch;
mod kick;
mod set;
mod setup;

pub use control::{Request, SavedVcpu, VcpuControl};
pub use dispatch::{handle_exit, ExitOutcome};
pub(crate) use kick::kick_signal;
pub use set::VcpuSet;
pub use setup::{
    configure_boot_state, configure_cpuid, configure_fpu, configure_lapic, configure_msrs,
    supported_msrs, VcpuSetupError,
};

use crate::seccomp::{Seccomp, ThreadKind};
use address_space::AddressSpace;
use kvm_ioctls::VcpuFd;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// Why a vCPU stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 or a KVM reset event).
    Reset,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// The guest powered off (KVM shutdown system event).
    PowerOff,
    /// The vCPU cannot go on.
    Fault(VcpuFault),
}

/// A vCPU exit the machine cannot continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VcpuFault {
    /// `KVM_EXIT_INTERNAL_ERROR`: usually an instruction KVM cannot emulate.
    #[error(
        "KVM internal error: {} (suberror {suberror}) at rip {rip:#x}; the guest ran \
         something this host's KVM cannot handle",
        internal_error_name(*suberror)
    )]
    InternalError {
        /// KVM's suberror code.
        suberror: u32,
        /// The guest's instruction pointer when it happened.
        rip: u64,
    },
    /// `KVM_EXIT_FAIL_ENTRY`.
    #[error("KVM could not enter the guest (hardware entry failure reason {reason:#x})")]
    FailEntry {
        /// The hardware reason.
        reason: u64,
    },
    /// The guest reported a crash through a KVM system event.
    #[error("the guest reported a crash (KVM system event)")]
    GuestCrash,
    /// An exit Nimbus does not expect.
    #[error("unexpected KVM exit: {0}")]
    UnexpectedExit(String),
    /// `KVM_RUN` itself failed.
    #[error("KVM_RUN failed with errno {0}")]
    RunFailed(i32),
}

/// The calling thread's OS thread id.
#[allow(unsafe_code)]
pub(crate) fn current_thread_id() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failure",
        kvm_bindings::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown internal error",
    }
}

/// What a vCPU thread reports when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuStopped {
    /// The vCPU index.
    pub id: u8,
    /// Why.
    pub reason: StopReason,
}

/// Everything a vCPU thread owns.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<AddressSpace>,
    mmio: Arc<AddressSpace>,
    control: Arc<VcpuControl>,
    stopped: Sender<VcpuStopped>,
    stopped_evt: EventFd,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    /// The vCPU index.
    pub id: u8,
    /// The host thread id (what `query-cpus` reports and runtimes pin).
    pub thread_id: i32,
    thread: std::thread::JoinHandle<()>,
}

impl VcpuHandle {
    /// Interrupts `KVM_RUN` so the thread looks at its control state.
    pub fn kick(&self) {
        if let Err(err) = self.thread.kill(kick::kick_signal()) {
            log::debug!("cannot kick vCPU {}: {err}", self.id);
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

impl Vcpu {
    /// A vCPU ready to run; `stopped_evt` is written after a report is sent on `stopped`.
    pub fn new(
        id: u8,
        fd: VcpuFd,
        spaces: (Arc<AddressSpace>, Arc<AddressSpace>),
        control: Arc<VcpuControl>,
        stopped: Sender<VcpuStopped>,
        stopped_evt: EventFd,
    ) -> Self {
        let (pio, mmio) = spaces;
        Self {
            id,
            fd,
            pio,
            mmio,
            control,
            stopped,
            stopped_evt,
        }
    }

    /// The vCPU index (also its APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The KVM vCPU, for setup before the thread starts.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Starts the vCPU thread, which installs its seccomp filter before anything else.
    pub fn spawn(self, seccomp: &Seccomp) -> std::io::Result<VcpuHandle> {
        kick::register_handler()?;
        let id = self.id;
        let seccomp = seccomp.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let thread_id = current_thread_id();
                let started = seccomp
                    .apply(ThreadKind::Vcpu, id)
                    .map(|()| thread_id)
                    .map_err(std::io::Error::other);
                let ok = started.is_ok();
                // The receiver waits in `spawn` below, so this send cannot fail.
                let _ = tid_tx.send(started);
                if ok {
                    self.run();
                }
            })?;
        let thread_id = tid_rx.recv().map_err(|_| {
            std::io::Error::other(format!("vCPU {id} thread ended before it started"))
        })??;
        Ok(VcpuHandle {
            id,
            thread_id,
            thread,
        })
    }

    fn run(mut self) {
        kick::install(&mut self.fd.get_kvm_run().immediate_exit);
        let reason = self.run_until_stopped();
        kick::uninstall();
        if let Some(reason) = reason {
            if self
                .stopped
                .send(VcpuStopped {
                    id: self.id,
                    reason,
                })
                .is_ok()
            {
                if let Err(err) = self.stopped_evt.write(1) {
                    log::error!("vCPU {}: cannot signal that it stopped: {err}", self.id);
                }
            }
        }
    }

    fn run_until_stopped(&mut self) -> Option<StopReason> {
        loop {
            let (id, fd, control) = (self.id, &mut self.fd, &self.control);
            let mut save = |msrs: &[u32]| {
                Some(crate::snapshot::VcpuState::save(fd, id, msrs).map_err(|e| (id, e)))
            };
            if control.wait_until_runnable_saving(&mut save) == Request::Exit {
                return None;
            }
            let outcome = match self.fd.run() {
                Ok(exit) => handle_exit(exit, &self.pio, &self.mmio),
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    ExitOutcome::Continue
                }
                Err(err) => ExitOutcome::Stop(StopReason::Fault(VcpuFault::RunFailed(err.errno()))),
            };
            match outcome {
                ExitOutcome::Continue => {}
                ExitOutcome::Stop(reason) => return Some(reason),
                ExitOutcome::InternalError => return Some(self.internal_error()),
            }
        }
    }

    #[allow(unsafe_code)]
    fn internal_error(&mut self) -> StopReason {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union: this is only called
        // right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, and the union holds plain
        // integers, so every bit pattern is a valid value.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().map_or(0, |regs| regs.rip);
        StopReason::Fault(VcpuFault::InternalError { suberror, rip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_message_names_the_problem_and_rip() {
        let fault = VcpuFault::InternalError {
            suberror: 1,
            rip: 0x100_0abc,
        };
        let msg = fault.to_string();
        assert!(
            msg.starts_with("KVM internal error: emulation failure"),
            "{msg}"
        );
        assert!(msg.contains("0x1000abc"), "{msg}");
    }
}
