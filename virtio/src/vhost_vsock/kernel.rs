//! The kernel's vhost-vsock driver: `/dev/vhost-vsock` opened by path, or a descriptor of it
//! inherited from whoever started Nimbus (`vhostfd=N`, as Kata Containers passes it).
//!
//! The generic vhost ioctls come from the `vhost` crate: [`KernelVsock`] implements its
//! `VhostKernBackend`, which gives `VhostBackend` (owner, features, memory table, vrings). The
//! crate's own `Vsock` type can only open `/dev/vhost-vsock` by path, so the two vhost-vsock
//! ioctls (VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING) are issued here, with the crate's
//! ioctl numbers; they are this module's `unsafe`. The descriptor itself (opened, or inherited
//! and checked) is `vhost_kernel`'s [`VhostFd`], shared with vhost-net.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use vhost::vhost_kern::vhost_binding::{VHOST_VSOCK_SET_GUEST_CID, VHOST_VSOCK_SET_RUNNING};
use vhost::vhost_kern::VhostKernBackend;
use vhost::vsock::VhostVsock as VsockOps;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::VhostVsockError;
use crate::vhost_kernel::{ioctl_result, InheritError, VhostFd};

/// The misc device number of `/dev/vhost-vsock` (MISC_MAJOR, VHOST_VSOCK_MINOR in
/// linux/miscdevice.h): an inherited descriptor must be this character device.
const VHOST_VSOCK_DEVICE: (u32, u32) = (10, 241);

/// An open vhost-vsock instance and the guest memory its rings are translated in.
#[derive(Debug)]
pub struct KernelVsock {
    fd: VhostFd,
    mem: Arc<GuestMemoryMmap>,
}

impl KernelVsock {
    /// Opens the vhost-vsock device node at `path` (normally
    /// [`VHOST_VSOCK_PATH`](super::VHOST_VSOCK_PATH)); a clear error when it is absent.
    pub fn open(path: &Path, mem: Arc<GuestMemoryMmap>) -> Result<KernelVsock, VhostVsockError> {
        let fd = VhostFd::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => VhostVsockError::NotPresent {
                path: path.to_owned(),
            },
            _ => VhostVsockError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        Ok(KernelVsock { fd, mem })
    }

    /// Uses `fd`, inherited from the process that started Nimbus, as it is: it is checked to be
    /// an open `/dev/vhost-vsock` descriptor and never closed (it stays its owner's).
    pub fn from_inherited_fd(
        fd: RawFd,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<KernelVsock, VhostVsockError> {
        let fd = VhostFd::inherited(fd, VHOST_VSOCK_DEVICE).map_err(|err| match err {
            InheritError::NotOpen(source) => VhostVsockError::BadFd { fd, source },
            InheritError::WrongDevice => VhostVsockError::NotVhostVsock { fd },
        })?;
        Ok(KernelVsock { fd, mem })
    }

    fn set_running(&self, running: bool) -> vhost::Result<()> {
        let on = libc::c_int::from(running);
        // SAFETY: VHOST_VSOCK_SET_RUNNING reads one int through the pointer; `on` lives across
        // the call. The descriptor is /dev/vhost-vsock (opened by path or checked by fstat).
        let ret = unsafe { ioctl_with_ref(self, VHOST_VSOCK_SET_RUNNING(), &on) };
        ioctl_result(ret)
    }
}

impl AsRawFd for KernelVsock {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl VhostKernBackend for KernelVsock {
    type AS = Arc<GuestMemoryMmap>;

    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl VsockOps for KernelVsock {
    fn set_guest_cid(&self, cid: u64) -> vhost::Result<()> {
        // SAFETY: VHOST_VSOCK_SET_GUEST_CID reads one u64 through the pointer; `cid` lives
        // across the call. The descriptor is /dev/vhost-vsock (opened by path or checked).
        let ret = unsafe { ioctl_with_ref(self, VHOST_VSOCK_SET_GUEST_CID(), &cid) };
        ioctl_result(ret)
    }

    fn start(&self) -> vhost::Result<()> {
        self.set_running(true)
    }

    fn stop(&self) -> vhost::Result<()> {
        self.set_running(false)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::IntoRawFd;

    use super::*;
    use crate::testing::memory;

    #[test]
    fn absent_device_node_is_named_with_the_module_to_load() {
        let err = KernelVsock::open(Path::new("/nonexistent/vhost-vsock"), memory())
            .expect_err("refused");
        assert!(matches!(err, VhostVsockError::NotPresent { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "vhost-vsock-device needs /nonexistent/vhost-vsock, which does not exist \
             (is the vhost_vsock module loaded?)"
        );
    }

    #[test]
    fn inherited_descriptor_that_is_not_vhost_vsock_is_refused_and_left_open() {
        let fd = File::open("/dev/null").expect("open").into_raw_fd();
        let err = KernelVsock::from_inherited_fd(fd, memory()).expect_err("refused");
        assert!(matches!(err, VhostVsockError::NotVhostVsock { fd: f } if f == fd));
        assert!(err.to_string().contains(&format!("vhostfd={fd}")), "{err}");
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`, which this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "fd was closed");
        // SAFETY: `fd` came from into_raw_fd above and nothing else closes it.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }

    #[test]
    fn inherited_descriptor_that_is_not_open_is_refused() {
        let err = KernelVsock::from_inherited_fd(1 << 20, memory()).expect_err("refused");
        assert!(
            matches!(err, VhostVsockError::BadFd { fd: 0x10_0000, .. }),
            "{err:?}"
        );
    }
}
