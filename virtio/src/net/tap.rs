//! The tap backend: a `/dev/net/tun` queue opened by interface name, or a descriptor inherited
//! from whoever started Nimbus (a container runtime), configured for virtio-net headers.
//!
//! This is the virtio crate's one module with `unsafe`: the TUN ioctls, fcntl, read and write
//! have no safe wrapper in our dependencies.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::header::VNET_HDR_LEN;

/// The TUN/TAP control device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Interface names are at most this many bytes, with the terminating NUL.
const IFNAMSIZ: usize = 16;

/// What the device needs from its backend: whole frames, each with its virtio-net header in
/// front, through a non-blocking descriptor the event loop can poll. Tests use a socketpair.
pub trait TapIo: Send {
    /// Reads one frame, header first, into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame, header first.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Sets the offloads (`TUN_F_*`) of frames the guest can receive.
    fn set_offload(&mut self, flags: u32) -> Result<(), TapError>;
    /// The descriptor to poll for readability.
    fn raw_fd(&self) -> RawFd;
    /// The interface name, for messages.
    fn name(&self) -> &str;
}

/// Why a tap could not be opened or configured. Each names the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or holds a NUL.
    #[error("tap name {0:?} is not a valid interface name (1-15 bytes)")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_PATH} for tap {name:?}")]
    OpenTun {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF was refused for lack of privilege.
    #[error("cannot create or attach tap {name:?}: needs CAP_NET_ADMIN or ownership of the tap")]
    PermissionDenied {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF found the tap attached elsewhere or created with other flags.
    #[error("tap {name:?} is busy (attached by another process, or created with other flags)")]
    Busy {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed for another reason (an interface of that name that is no tap, ...).
    #[error("cannot create or attach tap {name:?} (does an interface that is not a tap have that name?)")]
    Attach {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor is not a tap at all.
    #[error("fd {fd} is not a tap device")]
    NotTap {
        /// The descriptor.
        fd: RawFd,
        /// What TUNGETIFF said.
        #[source]
        source: io::Error,
    },
    /// An inherited descriptor is a tun, or a tap opened without the flags the device needs.
    #[error("tap {name:?} (fd {fd}) was not opened as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (flags {flags:#x})")]
    WrongFlags {
        /// The descriptor.
        fd: RawFd,
        /// Its interface name.
        name: String,
        /// The flags it has.
        flags: u16,
    },
    /// TUNSETVNETHDRSZ failed.
    #[error("tap {name:?}: cannot set the virtio-net header size")]
    VnetHdrSize {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// TUNSETOFFLOAD failed.
    #[error("tap {name:?}: cannot set offloads {flags:#x}")]
    Offload {
        /// The tap.
        name: String,
        /// The TUN_F_* flags asked for.
        flags: u32,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// fcntl(O_NONBLOCK) failed.
    #[error("tap {name:?}: cannot make it non-blocking")]
    NonBlocking {
        /// The tap.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// struct ifreq as TUNSETIFF and TUNGETIFF use it: the name and the flags.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// The kernel reads and writes all of struct ifreq (40 bytes on 64-bit Linux).
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// The descriptor: ours to close, or inherited and left open for its owner.
#[derive(Debug)]
enum TapFd {
    Owned(OwnedFd),
    Inherited(RawFd),
}

impl AsRawFd for TapFd {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            TapFd::Owned(fd) => fd.as_raw_fd(),
            TapFd::Inherited(fd) => *fd,
        }
    }
}

/// An open, configured tap queue.
#[derive(Debug)]
pub struct Tap {
    fd: TapFd,
    name: String,
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

impl Tap {
    /// Opens `/dev/net/tun` and attaches to (or creates) tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let mut req = IfReq::default();
        req.name[..bytes.len()].copy_from_slice(bytes);
        req.flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one struct ifreq; `req` is a live, exclusively
        // borrowed `IfReq` laid out as ifreq (16-byte name, flags, padding to 40 bytes).
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as libc::c_ulong, &mut req) };
        if ret < 0 {
            return Err(attach_error(name, io::Error::last_os_error()));
        }
        let tap = Tap {
            fd: TapFd::Owned(file.into()),
            name: req.name(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Uses `fd`, inherited from the process that started Nimbus, as it is: it is checked to be
    /// a tap with virtio-net headers, configured, and never closed (it stays its owner's).
    pub fn from_inherited_fd(fd: RawFd) -> Result<Tap, TapError> {
        Tap::checked(TapFd::Inherited(fd))
    }

    /// Like [`Tap::from_inherited_fd`], but the tap owns `fd` and closes it when dropped.
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        Tap::checked(TapFd::Owned(fd))
    }

    fn checked(fd: TapFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq::default();
        // SAFETY: TUNGETIFF writes one struct ifreq into `req`, a live `IfReq` laid out as
        // ifreq. On a descriptor that is no tun the kernel fails the call and writes nothing.
        let ret = unsafe { ioctl_with_mut_ref(&fd, libc::TUNGETIFF as libc::c_ulong, &mut req) };
        if ret < 0 {
            return Err(TapError::NotTap {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        let flags = req.flags as u16;
        let name = req.name();
        let is_tap = i32::from(req.flags) & 0xf == libc::IFF_TAP;
        if !is_tap || i32::from(req.flags) & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::WrongFlags {
                fd: raw,
                name,
                flags,
            });
        }
        let tap = Tap { fd, name };
        tap.configure()?;
        Ok(tap)
    }

    /// Header size, no offloads until the guest accepts some, non-blocking.
    fn configure(&self) -> Result<(), TapError> {
        self.set_vnet_hdr_len(VNET_HDR_LEN)?;
        self.offload(0)?;
        let raw = self.fd.as_raw_fd();
        // SAFETY: F_GETFL takes no argument and only reads the descriptor's status flags.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: F_SETFL takes an int of status flags; it changes no memory of ours.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::NonBlocking {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory of ours.
        let ret = unsafe {
            ioctl_with_val(
                &self.fd,
                libc::TUNSETOFFLOAD as libc::c_ulong,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets the virtio-net header size of every frame (TUNSETVNETHDRSZ): vhost-net needs the
    /// size the guest's features imply.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<(), TapError> {
        let size = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `size` lives across the call.
        let ret =
            unsafe { ioctl_with_ref(&self.fd, libc::TUNSETVNETHDRSZ as libc::c_ulong, &size) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A second descriptor of this tap queue (the same open file, close-on-exec), to hand to
    /// vhost-net, which keeps its own reference to the queue.
    pub fn try_clone_file(&self) -> io::Result<File> {
        let fd = match &self.fd {
            TapFd::Owned(fd) => fd.try_clone()?,
            // SAFETY: an inherited tap descriptor stays open for the tap's life (it is never
            // closed by Nimbus and was checked open by TUNGETIFF), and the borrow ends here.
            TapFd::Inherited(fd) => unsafe { BorrowedFd::borrow_raw(*fd) }.try_clone_to_owned()?,
        };
        Ok(File::from(fd))
    }

    /// The interface name.
    pub fn if_name(&self) -> &str {
        &self.name
    }
}

fn attach_error(name: &str, source: io::Error) -> TapError {
    let name = name.to_owned();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name, source },
        Some(libc::EBUSY) => TapError::Busy { name, source },
        _ => TapError::Attach { name, source },
    }
}

/// Retries `op` while it is interrupted by a signal.
fn retry(mut op: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = op();
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl TapIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`, which is valid and
        // exclusively borrowed for the call.
        retry(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: write(2) reads at most `frame.len()` bytes from `frame`, valid for the call.
        retry(|| unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) })
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        self.offload(flags)
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::IntoRawFd;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and nothing else owns them.
        unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        }
    }

    #[test]
    fn pipe_is_refused_as_not_a_tap() {
        let (read, write) = pipe();
        let fd = read.as_raw_fd();
        let err = Tap::from_inherited_fd(fd).unwrap_err();
        assert!(matches!(err, TapError::NotTap { fd: f, .. } if f == fd));
        assert_eq!(err.to_string(), format!("fd {fd} is not a tap device"));
        drop((read, write));
    }

    #[test]
    fn refused_inherited_fd_is_left_open() {
        let (read, _write) = pipe();
        let fd = read.into_raw_fd();
        assert!(Tap::from_inherited_fd(fd).is_err());
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`, which this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "fd was closed");
        // SAFETY: `fd` came from into_raw_fd above and nothing else closes it.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }

    #[test]
    fn invalid_names_are_refused_before_opening() {
        for name in ["", "a-name-of-16-byt", "nul\0"] {
            assert!(matches!(Tap::open(name), Err(TapError::InvalidName(_))));
        }
    }

    #[test]
    fn eperm_and_ebusy_name_the_tap_and_the_cause() {
        let e = attach_error("tap7", io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("\"tap7\"") && e.to_string().contains("CAP_NET_ADMIN"));
        let e = attach_error("tap7", io::Error::from_raw_os_error(libc::EBUSY));
        assert!(matches!(e, TapError::Busy { .. }) && e.to_string().contains("busy"));
    }

    /// A real tap, when the test runs as root with /dev/net/tun; skipped otherwise.
    fn real_tap() -> Option<Tap> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new(TUN_PATH).exists() {
            eprintln!("skipped: needs root and {TUN_PATH}");
            return None;
        }
        let name = format!("nbt{}", std::process::id() % 1_000_000);
        match Tap::open(&name) {
            Ok(tap) => Some(tap),
            Err(TapError::PermissionDenied { .. }) => {
                eprintln!("skipped: no CAP_NET_ADMIN");
                None
            }
            Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
        }
    }

    #[test]
    fn real_tap_opens_by_name_and_takes_offloads() {
        let Some(mut tap) = real_tap() else {
            return;
        };
        assert!(tap.if_name().starts_with("nbt"));
        let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
        tap.set_offload(flags).unwrap();
        tap.set_offload(0).unwrap();
        let mut buf = [0u8; 128];
        let e = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The same queue, seen as an inherited descriptor, passes the checks and stays open.
        let fd = tap.raw_fd();
        let inherited = Tap::from_inherited_fd(fd).unwrap();
        assert_eq!(inherited.if_name(), tap.if_name());
        drop(inherited);
        // SAFETY: F_GETFD only reads the descriptor flags of `fd`, owned by `tap`.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    }
}
