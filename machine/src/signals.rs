//! Host signals that end the VM on purpose (SIGTERM, SIGINT, SIGHUP), delivered to the event
//! loop through a signalfd instead of asynchronous handlers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use vmm_sys_util::signal::create_sigset;

/// The signals that stop the VM and make Nimbus exit with status 0.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A signalfd for [`STOP_SIGNALS`], which stay blocked for normal delivery in every thread
/// started after [`StopSignals::new`] (threads inherit the mask).
pub struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    /// Blocks the stop signals in the calling thread and opens a signalfd for them.
    pub fn new() -> io::Result<Self> {
        let mask =
            create_sigset(&STOP_SIGNALS).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: `mask` is an initialised sigset; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new signalfd; `mask` is an initialised sigset; the flags are
        // valid signalfd flags.
        let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Reads one pending signal number, if any.
    pub fn read(&self) -> Option<libc::c_int> {
        let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable storage of exactly `size` bytes owned by this frame, and
        // the descriptor is our signalfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n as usize != size {
            return None;
        }
        // SAFETY: the kernel wrote a whole signalfd_siginfo (checked above); it was zeroed before.
        let info = unsafe { info.assume_init() };
        libc::c_int::try_from(info.ssi_signo).ok()
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
