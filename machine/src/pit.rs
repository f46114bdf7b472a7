//! The in-kernel PIT's lost-tick policy, set while the guest boots.
//!
//! KVM creates the PIT re-injecting the ticks a guest did not acknowledge in time (QEMU's
//! `lost_tick_policy=delay`). Nimbus turns that off (`KVM_REINJECT_CONTROL`, QEMU's
//! `lost_tick_policy=discard`, what a tickless Linux guest on a TSC or kvm-clock clocksource
//! wants). Turning it off unregisters two KVM notifiers, and each waits for an SRCU grace
//! period: about 10 ms of sleep on this host. KVM turns it off anyway when the VM is destroyed,
//! so every VM used to spend that time in the `close` of its VM descriptor, after the guest
//! was done (12.6 of that close's 18 ms; docs/performance.md, "Lifecycle"). Done on a short
//! thread of its own right after the vCPUs start, the wait overlaps the guest's boot and the
//! exit path skips it.
//!
//! The thread runs under its own allow list ([`ThreadKind::PitSetup`]: this one `ioctl`, a log
//! line, an eventfd write, thread exit). When it is done it writes an eventfd on the VMM's
//! loop, which joins it and then releases the binary's pages once more
//! ([`crate::memory::release_startup_code`]): the thread ran after the first release, and the
//! code it faulted back in would otherwise stay resident. A guest that ends before the thread
//! is done waits for it on the exit path, as it waited for KVM before, no longer.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_bindings::kvm_reinject_control;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

use crate::event_loop::{input, unwatch, watch};
use crate::seccomp::{Seccomp, ThreadKind};

ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// The thread's name (`/proc/PID/task/TID/comm`).
const THREAD_NAME: &str = "pit-setup";
/// Its stack: it calls one ioctl and may log one line.
const STACK_SIZE: usize = 64 << 10;

/// The PIT set-up thread, as a source on the VMM's loop: it fires once the thread is done.
pub(crate) struct PitSetup {
    done: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl PitSetup {
    /// Starts the thread that turns off lost-tick re-injection on `vm`'s PIT; `None` (logged)
    /// if it cannot start, which leaves KVM's default and costs only the slower exit.
    pub(crate) fn start(vm: Arc<VmFd>, seccomp: &Seccomp) -> Option<Arc<Mutex<PitSetup>>> {
        let done = match EventFd::new(EFD_NONBLOCK) {
            Ok(done) => done,
            Err(e) => {
                log::warn!("PIT set-up: no eventfd ({e}); leaving KVM's lost-tick policy");
                return None;
            }
        };
        let signal = done.try_clone().ok()?;
        let seccomp = seccomp.clone();
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                match seccomp.apply(ThreadKind::PitSetup, 0) {
                    Ok(()) => {
                        if let Err(e) = set_reinject(&vm, false) {
                            log::warn!("cannot turn off the PIT's lost-tick re-injection: {e}");
                        }
                    }
                    Err(e) => log::warn!("PIT set-up thread: {e}; leaving KVM's lost-tick policy"),
                }
                // Nothing waits on a failed write: the exit path joins the thread anyway.
                let _ = signal.write(1);
            });
        match spawned {
            Ok(thread) => Some(Arc::new(Mutex::new(PitSetup {
                done,
                thread: Some(thread),
            }))),
            Err(e) => {
                log::warn!("cannot start the PIT set-up thread: {e}; the exit will wait for KVM");
                None
            }
        }
    }

    /// Waits for the thread if it has not been joined yet.
    pub(crate) fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::warn!("the PIT set-up thread panicked");
            }
        }
    }
}

impl MutEventSubscriber for PitSetup {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let _ = self.done.read();
        unwatch(ops, events, "the PIT set-up thread");
        self.join();
        // The thread ran after the VMM released the binary's pages: release what it touched.
        crate::memory::release_startup_code();
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(
            ops,
            input(self.done.as_raw_fd(), 0),
            "the PIT set-up thread",
        );
    }
}

/// `KVM_REINJECT_CONTROL`: whether the PIT re-injects lost ticks.
fn set_reinject(vm: &VmFd, reinject: bool) -> std::io::Result<()> {
    let control = kvm_reinject_control {
        pit_reinject: u8::from(reinject),
        ..Default::default()
    };
    // SAFETY: `vm` is an open KVM VM descriptor, and KVM_REINJECT_CONTROL reads exactly one
    // `struct kvm_reinject_control`, which `control` is and which outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe { ioctl_with_ref(&vm.as_raw_fd(), KVM_REINJECT_CONTROL(), &control) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The request number, for the seccomp allow list.
pub(crate) fn reinject_control_request() -> u64 {
    KVM_REINJECT_CONTROL()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn request_number_is_kvms() {
        // _IO(KVMIO, 0x71) from linux/kvm.h.
        assert_eq!(reinject_control_request(), 0xae71);
    }

    #[test]
    fn reinjection_can_be_turned_off_on_a_vm_with_a_pit() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: /dev/kvm: {e}");
                return;
            }
            Err(e) => panic!("/dev/kvm: {e} (CI is set)"),
        };
        let vm = kvm.create_vm().unwrap();
        // Without a PIT KVM refuses.
        assert!(set_reinject(&vm, false).is_err());
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_bindings::kvm_pit_config::default())
            .unwrap();
        set_reinject(&vm, false).unwrap();
        set_reinject(&vm, true).unwrap();
    }
}
