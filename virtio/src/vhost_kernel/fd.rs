//! The descriptor of a vhost device node: opened by path, or inherited from whoever started
//! Nimbus (`vhostfd=N`, as Kata Containers passes it) and checked with `fstat` to be the
//! expected character device; this `fstat` is the module's `unsafe`.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Who closes the descriptor.
#[derive(Debug)]
pub(crate) enum VhostFd {
    /// Opened by Nimbus; closed with the device.
    Owned(File),
    /// Inherited (`vhostfd=N`): used as it is and never closed, it stays its owner's.
    Inherited(RawFd),
}

/// Why an inherited descriptor cannot be used.
#[derive(Debug)]
pub(crate) enum InheritError {
    /// It is not an open descriptor.
    NotOpen(io::Error),
    /// It is open but not the expected device.
    WrongDevice,
}

impl VhostFd {
    /// Opens the device node at `path`, close-on-exec and non-blocking.
    pub(crate) fn open(path: &Path) -> io::Result<VhostFd> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        Ok(VhostFd::Owned(file))
    }

    /// Uses `fd` as it is once it is checked to be the character device `device` (major,
    /// minor); it is never closed.
    pub(crate) fn inherited(fd: RawFd, device: (u32, u32)) -> Result<VhostFd, InheritError> {
        match char_device(fd).map_err(InheritError::NotOpen)? {
            Some(found) if found == device => Ok(VhostFd::Inherited(fd)),
            _ => Err(InheritError::WrongDevice),
        }
    }
}

impl AsRawFd for VhostFd {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            VhostFd::Owned(file) => file.as_raw_fd(),
            VhostFd::Inherited(fd) => *fd,
        }
    }
}

/// The (major, minor) numbers of `fd` if it is a character device, `None` for anything else;
/// an error when `fd` is not an open descriptor.
fn char_device(fd: RawFd) -> io::Result<Option<(u32, u32)>> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one struct stat through the pointer, which points to a live,
    // exclusively borrowed `libc::stat`; on a descriptor that is not open it fails with EBADF
    // and writes nothing. It reads no memory of ours.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer was zeroed (a valid `libc::stat`: plain integers) and fstat succeeded,
    // so it holds the descriptor's status.
    let stat = unsafe { stat.assume_init() };
    if stat.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Ok(None);
    }
    Ok(Some((libc::major(stat.st_rdev), libc::minor(stat.st_rdev))))
}

/// An ioctl's return value as the `vhost` crate's result.
pub(crate) fn ioctl_result(ret: libc::c_int) -> vhost::Result<()> {
    if ret < 0 {
        Err(vhost::Error::IoctlError(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_a_character_device_other_than_vhost() {
        let null = File::open("/dev/null").expect("open");
        assert_eq!(char_device(null.as_raw_fd()).expect("fstat"), Some((1, 3)));
        let err = VhostFd::inherited(null.as_raw_fd(), (10, 238)).expect_err("refused");
        assert!(matches!(err, InheritError::WrongDevice));
    }
}
