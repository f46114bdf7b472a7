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
//! line, thread exit) and is joined on the exit path; a guest that ends before it is done waits
//! as before, no longer.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::kvm_reinject_control;
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

use crate::seccomp::{Seccomp, ThreadKind};

ioctl_io_nr!(KVM_REINJECT_CONTROL, kvm_bindings::KVMIO, 0x71);

/// The thread's name (`/proc/PID/task/TID/comm`).
const THREAD_NAME: &str = "pit-setup";
/// Its stack: it calls one ioctl and may log one line.
const STACK_SIZE: usize = 64 << 10;

/// Starts the thread that turns off lost-tick re-injection on `vm`'s PIT; `None` (logged) if
/// it cannot start, which leaves KVM's default and costs only the slower exit.
pub(crate) fn discard_lost_ticks(vm: Arc<VmFd>, seccomp: &Seccomp) -> Option<JoinHandle<()>> {
    let seccomp = seccomp.clone();
    let spawned = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            if let Err(e) = seccomp.apply(ThreadKind::PitSetup, 0) {
                log::warn!("PIT set-up thread: {e}; leaving KVM's lost-tick policy");
                return;
            }
            if let Err(e) = set_reinject(&vm, false) {
                log::warn!("cannot turn off the PIT's lost-tick re-injection: {e}");
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::warn!("cannot start the PIT set-up thread: {e}; the exit will wait for KVM");
            None
        }
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
