//! The frames of the test guest's `nimbus.test=net` exchange, and an AF_PACKET socket bound to
//! one test tap that sees and sends them (moved here from virtio_net.rs for tests/iothread.rs).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::{Vm, VM_TIMEOUT};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const HOST_MAC: [u8; 6] = [0x02, 0x4e, 0x42, 0x00, 0x00, 0x01];
pub const ETHERTYPE: u16 = 0x88b5;
pub const PING: &[u8] = b"NIMBUS-GUEST-PING";
pub const PONG: &str = "NIMBUS-HOST-PONG-0123";

/// An AF_PACKET socket that sees and sends every frame of one interface only.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cname = CString::new(ifname).expect("no NUL in the tap name");
        // SAFETY: if_nametoindex reads the NUL-terminated string, valid for the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(
            ifindex != 0,
            "if_nametoindex({ifname}): {}",
            io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads `size_of::<sockaddr_ll>()` bytes from `addr`, which lives across
        // the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind to {ifname}: {}", io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt reads one timeval from `timeout`, which lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        PacketSocket { fd }
    }

    /// One frame, or `None` after the receive timeout.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, valid for the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes from `frame`, valid for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }
}

pub fn is_ping(frame: &[u8]) -> bool {
    frame.len() >= 14 + PING.len()
        && frame[6..12] == GUEST_MAC
        && frame[12..14] == ETHERTYPE.to_be_bytes()
        && frame[14..].starts_with(PING)
}

/// Waits for the guest's frame on `socket` and checks it; fails the test with the VM's output
/// if it does not come.
pub fn receive_ping(socket: &PacketSocket, vm: &mut Vm) -> Vec<u8> {
    let deadline = Instant::now() + VM_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(frame) = socket.recv() {
            if is_ping(&frame) {
                return frame;
            }
        }
    }
    vm.fail("the guest's frame never reached the tap")
}

pub fn pong_frame() -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(PONG.as_bytes());
    frame.resize(60, 0);
    frame
}
