//! A non-blocking connect to a Unix stream socket: std's `UnixStream::connect` blocks while
//! the listener's backlog is full, which would let a guest that opens connections faster than
//! a host program accepts them stall the VMM thread.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the Unix stream socket at `path` without blocking: a listener whose backlog
/// is full gives `WouldBlock` at once. The stream returned is non-blocking and close-on-exec.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un that lives across the call, and `len` is its size;
    // `fd` is the open socket `owned` holds.
    let ret = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// Raises the soft limit on open descriptors to at least `wanted` (within the hard limit), so
/// that a device serving that many sockets never hits EMFILE first. Returns the soft limit now.
pub(crate) fn raise_fd_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: setrlimit reads one rlimit from `limit`, which is valid for reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn connects_to_a_listener_and_carries_bytes() {
        let dir = std::env::temp_dir().join(format!("nbvs-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let mut stream = connect_nonblocking(&path).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        stream.write_all(b"hi").expect("write");
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
        assert!(matches!(
            stream.read(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let err = connect_nonblocking(Path::new("/nonexistent/nimbus.sock")).expect_err("none");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let long = "x".repeat(200);
        let err = connect_nonblocking(Path::new(&long)).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
