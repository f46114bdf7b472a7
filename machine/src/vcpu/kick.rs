//! Kicking a vCPU thread out of `KVM_RUN` without races: a real-time signal whose handler sets
//! the thread's `kvm_run.immediate_exit`, so a kick that lands just before `KVM_RUN` makes the
//! ioctl return at once with EINTR instead of being lost.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::Once;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, or null when the thread runs no vCPU.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_num: c_int, _info: *mut libc::siginfo_t, _unused: *mut c_void) {
    // `try_with` never panics; a const-initialised thread-local without Drop needs no lazy
    // initialisation, so reading it is async-signal-safe.
    let _ = IMMEDIATE_EXIT.try_with(|ptr| {
        let ptr = ptr.get();
        if !ptr.is_null() {
            // SAFETY: `ptr` was set by `install` on this very thread to the `immediate_exit`
            // byte of the kvm_run mapping of the vCPU this thread runs, and is cleared by
            // `uninstall` before that mapping can go away. A volatile byte store is what
            // KVM's API documents for this field.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
}

/// Installs the kick handler (once per process).
pub fn register_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Points this thread's kick at `immediate_exit`; call `uninstall` before the vCPU is dropped.
pub fn install(immediate_exit: *mut u8) {
    IMMEDIATE_EXIT.with(|ptr| ptr.set(immediate_exit));
}

/// Makes kicks of this thread harmless again.
pub fn uninstall() {
    IMMEDIATE_EXIT.with(|ptr| ptr.set(std::ptr::null_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::signal::Killable;

    #[test]
    fn kick_sets_the_installed_flag_of_the_target_thread() {
        register_handler().expect("handler");
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut flag: u8 = 0;
            install(&mut flag);
            tx.send(()).expect("ready");
            go_rx.recv().expect("go");
            uninstall();
            // SAFETY: plain read of a local the signal handler may have written.
            unsafe { std::ptr::read_volatile(&flag) }
        });
        rx.recv().expect("ready");
        thread.kill(kick_signal()).expect("kick");
        std::thread::sleep(std::time::Duration::from_millis(50));
        go_tx.send(()).expect("go");
        assert_eq!(thread.join().expect("join"), 1);
    }
}
