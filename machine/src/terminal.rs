//! Raw mode for the controlling terminal while the guest owns the console, restored on drop.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// Puts a terminal in raw mode and restores its original settings when dropped.
pub struct RawTerminal {
    fd: RawFd,
    original: libc::termios,
}

impl RawTerminal {
    /// Switches `fd` to raw mode if it is a terminal; `Ok(None)` when it is not one.
    pub fn enable(fd: RawFd) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the descriptor number; any value is acceptable.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        let mut original = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: `original` points to writable storage for one termios, which tcgetattr
        // fills completely when it returns 0.
        if unsafe { libc::tcgetattr(fd, original.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr returned 0 above, so the struct is initialised.
        let original = unsafe { original.assume_init() };
        let mut raw = original;
        // SAFETY: cfmakeraw only rewrites the flag fields of the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so host-side logs still start at column 0.
        raw.c_oflag = original.c_oflag;
        // SAFETY: `raw` is a fully initialised termios; fd is a terminal.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { fd, original }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: `original` is the termios read from this same terminal in `enable`.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.original) } != 0 {
            log::warn!(
                "cannot restore the terminal: {}",
                io::Error::last_os_error()
            );
        }
    }
}
