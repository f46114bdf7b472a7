//! The kernel's vhost-net driver: `/dev/vhost-net` opened by path, or a descriptor of it
//! inherited from whoever started Nimbus (`vhostfd=N`, as Kata Containers passes it).
//!
//! The generic vhost ioctls come from the `vhost` crate: [`KernelNet`] implements its
//! `VhostKernBackend`, which gives `VhostBackend` (owner, features, memory table, vrings). The
//! crate's own `Net` type can only open `/dev/vhost-net` by path, so VHOST_NET_SET_BACKEND is
//! issued here, with the crate's ioctl number and struct; it is this module's `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use address_space::vm_memory::GuestMemoryMmap;
use vhost::net::VhostNet as NetOps;
use vhost::vhost_kern::vhost_binding::{vhost_vring_file, VHOST_NET_SET_BACKEND};
use vhost::vhost_kern::VhostKernBackend;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::{VhostError, VHOST_NET_PATH};
use crate::vhost_kernel::{ioctl_result, InheritError, VhostFd};

/// The misc device number of `/dev/vhost-net` (MISC_MAJOR, VHOST_NET_MINOR in
/// linux/miscdevice.h): an inherited descriptor must be this character device.
const VHOST_NET_DEVICE: (u32, u32) = (10, 238);

/// An open vhost-net instance and the guest memory its rings are translated in.
#[derive(Debug)]
pub struct KernelNet {
    fd: VhostFd,
    mem: Arc<GuestMemoryMmap>,
}

impl KernelNet {
    /// The inherited descriptor `vhostfd` if given ([`KernelNet::from_inherited_fd`]), else
    /// [`VHOST_NET_PATH`] ([`KernelNet::open`]).
    pub fn open_for(
        vhostfd: Option<RawFd>,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<KernelNet, VhostError> {
        match vhostfd {
            Some(fd) => KernelNet::from_inherited_fd(fd, mem),
            None => KernelNet::open(Path::new(VHOST_NET_PATH), mem),
        }
    }

    /// Opens the vhost-net device node at `path`; a clear error naming it when it is absent.
    pub fn open(path: &Path, mem: Arc<GuestMemoryMmap>) -> Result<KernelNet, VhostError> {
        let fd = VhostFd::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => VhostError::NotPresent {
                path: path.to_owned(),
            },
            _ => VhostError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        Ok(KernelNet { fd, mem })
    }

    /// Uses `fd`, inherited from the process that started Nimbus, as it is: it is checked to be
    /// an open `/dev/vhost-net` descriptor and never closed (it stays its owner's).
    pub fn from_inherited_fd(
        fd: RawFd,
        mem: Arc<GuestMemoryMmap>,
    ) -> Result<KernelNet, VhostError> {
        let fd = VhostFd::inherited(fd, VHOST_NET_DEVICE).map_err(|err| match err {
            InheritError::NotOpen(source) => VhostError::BadFd { fd, source },
            InheritError::WrongDevice => VhostError::NotVhostNet { fd },
        })?;
        Ok(KernelNet { fd, mem })
    }
}

impl AsRawFd for KernelNet {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl VhostKernBackend for KernelNet {
    type AS = Arc<GuestMemoryMmap>;

    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl NetOps for KernelNet {
    fn set_backend(&self, queue_index: usize, fd: Option<&File>) -> vhost::Result<()> {
        let file = vhost_vring_file {
            index: u32::try_from(queue_index).map_err(|_| vhost::Error::InvalidQueue)?,
            fd: fd.map_or(-1, AsRawFd::as_raw_fd),
        };
        // SAFETY: VHOST_NET_SET_BACKEND reads one struct vhost_vring_file through the pointer;
        // `file` lives across the call. The descriptor is /dev/vhost-net (opened by path or
        // checked by fstat); the tap descriptor in `file` is open while `fd` is borrowed, and
        // the kernel takes its own reference to it.
        let ret = unsafe { ioctl_with_ref(self, VHOST_NET_SET_BACKEND(), &file) };
        ioctl_result(ret)
    }
}
