//! The SIGSYS handler: a syscall outside the thread's allow-list trapped. It writes one line
//! naming the syscall and the thread to stderr and exits with [`SIGSYS_EXIT_STATUS`]. It runs
//! in signal context under the very filter that trapped, so it only formats into a stack
//! buffer and makes two syscalls both lists allow: `write` and `exit_group`.
#![allow(unsafe_code)]

use super::names::syscall_name;
use super::ThreadKind;
use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};
use vmm_sys_util::signal::register_signal_handler;

/// The exit status after a forbidden syscall: 128 + SIGSYS (31), what a shell reports for a
/// process killed by SIGSYS.
pub const SIGSYS_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: c_int = 1;

/// Offset of `_sigsys._syscall` in `siginfo_t` on 64-bit Linux: three ints, padding to 8,
/// then the `_call_addr` pointer.
const SI_SYSCALL_OFFSET: usize = 24;

/// A log file that gets the report too (`-D <file>`), or -1.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Also writes the report to `fd`, a log file that stays open until the process ends.
pub fn also_report_to(fd: i32) {
    LOG_FD.store(fd, Ordering::Relaxed);
}

thread_local! {
    /// Who this thread is: 0 unknown, 1 the VMM thread, 2 + n vCPU n. A const-initialised
    /// thread-local without Drop, so reading it in the handler is async-signal-safe.
    static THREAD: Cell<u16> = const { Cell::new(0) };
}

/// [`THREAD`]'s value for the vhost-user watchdog.
const WATCHDOG_THREAD: u16 = u16::MAX;
/// [`THREAD`]'s value for an iothread.
const IOTHREAD_THREAD: u16 = u16::MAX - 1;
/// [`THREAD`]'s value for the PIT set-up thread.
const PIT_SETUP_THREAD: u16 = u16::MAX - 2;

/// Records who the calling thread is, for the report.
pub(super) fn set_thread(kind: ThreadKind, vcpu: u8) {
    let value = match kind {
        ThreadKind::Vmm => 1,
        ThreadKind::Vcpu => 2 + u16::from(vcpu),
        ThreadKind::Watchdog => WATCHDOG_THREAD,
        ThreadKind::IoThread => IOTHREAD_THREAD,
        ThreadKind::PitSetup => PIT_SETUP_THREAD,
    };
    THREAD.with(|t| t.set(value));
}

/// Installs the handler for the whole process (idempotent).
pub(super) fn register_handler() -> std::io::Result<()> {
    register_signal_handler(libc::SIGSYS, handle_sigsys)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// A fixed-size line built without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// The report for syscall `nr` made by `thread` (see [`THREAD`]).
fn report(nr: i64, thread: u16) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"nimbus: seccomp: forbidden syscall ");
    line.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
    line.push(b" (");
    line.push_number(nr);
    line.push(b") on the ");
    match thread {
        0 => line.push(b"unknown"),
        1 => line.push(b"VMM"),
        WATCHDOG_THREAD => line.push(b"vhost-user watchdog"),
        IOTHREAD_THREAD => line.push(b"iothread"),
        PIT_SETUP_THREAD => line.push(b"PIT set-up"),
        n => {
            line.push(b"vCPU ");
            line.push_number(i64::from(n - 2));
        }
    }
    line.push(b" thread; exiting with status ");
    line.push_number(i64::from(SIGSYS_EXIT_STATUS));
    line.push(b" (-disable-seccomp turns the filter off)\n");
    line
}

extern "C" fn handle_sigsys(_num: c_int, info: *mut libc::siginfo_t, _unused: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler. For SIGSYS with
    // si_code SYS_SECCOMP the `_sigsys` member is filled, whose `_syscall` int sits at
    // SI_SYSCALL_OFFSET; siginfo_t is 128 bytes, so the read stays inside it.
    let nr = unsafe {
        if (*info).si_code == SYS_SECCOMP {
            i64::from(
                info.cast::<u8>()
                    .add(SI_SYSCALL_OFFSET)
                    .cast::<i32>()
                    .read_unaligned(),
            )
        } else {
            -1
        }
    };
    let thread = THREAD.try_with(Cell::get).unwrap_or(0);
    let line = report(nr, thread);
    let log_fd = LOG_FD.load(Ordering::Relaxed);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a live local of
    // `line.len` initialised bytes; a bad `log_fd` only makes that write fail.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        if log_fd >= 0 && log_fd != libc::STDERR_FILENO {
            libc::write(log_fd, line.buf.as_ptr().cast(), line.len);
        }
        libc::_exit(SIGSYS_EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &Line) -> &str {
        std::str::from_utf8(&line.buf[..line.len]).expect("ascii")
    }

    #[test]
    fn report_names_the_syscall_its_number_and_the_vcpu() {
        let line = report(libc::SYS_getppid, 2 + 3);
        assert_eq!(
            text(&line),
            "nimbus: seccomp: forbidden syscall getppid (110) on the vCPU 3 thread; exiting \
             with status 159 (-disable-seccomp turns the filter off)\n"
        );
    }

    #[test]
    fn report_of_an_unknown_number_on_the_vmm_thread() {
        let line = report(999, 1);
        assert!(
            text(&line).starts_with("nimbus: seccomp: forbidden syscall unknown (999) on the VMM"),
            "{}",
            text(&line)
        );
    }

    #[test]
    fn a_too_long_report_is_cut_not_overflowed() {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        for _ in 0..100 {
            line.push(b"0123456789");
        }
        assert_eq!(line.len, 256);
    }
}
