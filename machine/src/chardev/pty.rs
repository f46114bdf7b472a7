//! Pseudo-terminal allocation: `posix_openpt`, `grantpt`, `unlockpt`, `ptsname_r`, and raw mode
//! (no echo, no line editing) as QEMU's pty chardev sets it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// A new pty master (non-blocking, close-on-exec) and the path of its other end.
pub fn open() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by posix_openpt and nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    check(
        // SAFETY: `fd` is an open pty master (owned by `master` for this whole function).
        unsafe { libc::grantpt(fd) },
    )?;
    check(
        // SAFETY: as above.
        unsafe { libc::unlockpt(fd) },
    )?;
    let path = slave_path(fd)?;
    make_raw(fd)?;
    set_nonblocking(fd)?;
    Ok((File::from(master), path))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn slave_path(fd: RawFd) -> io::Result<PathBuf> {
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is writable for its whole length, which is passed; `fd` is an open master.
    let ret = unsafe { libc::ptsname_r(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..len]).map_err(|_| io::Error::other("pty name"))?;
    Ok(PathBuf::from(name))
}

fn make_raw(fd: RawFd) -> io::Result<()> {
    let mut tio = std::mem::MaybeUninit::<libc::termios>::zeroed();
    // SAFETY: tcgetattr fills the termios `tio` points to; `fd` is an open pty master.
    check(unsafe { libc::tcgetattr(fd, tio.as_mut_ptr()) })?;
    // SAFETY: tcgetattr succeeded, so `tio` is initialised (and it was zeroed before).
    let mut tio = unsafe { tio.assume_init() };
    // SAFETY: cfmakeraw only edits the termios struct it is given.
    unsafe { libc::cfmakeraw(&mut tio) };
    // SAFETY: `tio` is a valid termios; `fd` is an open pty master.
    check(unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &tio) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an open descriptor reads its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(flags)?;
    // SAFETY: F_SETFL with the flags read plus O_NONBLOCK on the same open descriptor.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}
