//! Taps for tests: created with `ip tuntap` for one test and deleted when dropped, and opened
//! through /dev/net/tun to be handed to nimbus as an inherited descriptor (`fds=3`), as a
//! container runtime does. Creating taps needs root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether taps can be created. Without root the test returns after a loud SKIP message,
/// except under CI (env `CI` set), where it fails.
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root to create taps, and CI is set"
    );
    eprintln!("\n*** SKIP: not root; this tap test did not run ***\n");
    false
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A tap created for one test and deleted when dropped, whatever the test's outcome.
pub struct TapGuard {
    pub name: String,
}

impl TapGuard {
    pub fn create() -> TapGuard {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nbt{}{n}", std::process::id());
        assert!(name.len() < 16, "tap name {name} too long");
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]).expect("create the test tap");
        let guard = TapGuard { name };
        // Fewer frames of the host's own (IPv6 router solicitations, ...) on the tap; best effort.
        let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", guard.name);
        let _ = std::fs::write(sysctl, "1");
        ip(&["link", "set", "dev", &guard.name, "up"]).expect("bring the test tap up");
        guard
    }

    /// How many frames the tap's reader (nimbus) has taken from the tap's queue: the tap's
    /// `tx_packets`, which it counts as a frame is read, not as the host queues it.
    pub fn frames_taken(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_packets", self.name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path} holds {text:?}: {e}"))
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Err(e) = ip(&["tuntap", "del", "dev", &self.name, "mode", "tap"]) {
            eprintln!("cannot delete test tap {}: {e}", self.name);
        }
    }
}

/// Opens `name` through /dev/net/tun as a container runtime would hand it over.
pub fn open_tap(name: &str) -> OwnedFd {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open reads the NUL-terminated path, valid for the call.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        raw >= 0,
        "open /dev/net/tun: {}",
        io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes, name then flags); `req`
    // has that layout and lives across the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF as _,
            std::ptr::addr_of_mut!(req),
        )
    };
    assert_eq!(rc, 0, "TUNSETIFF {name}: {}", io::Error::last_os_error());
    fd
}

/// Makes `command` hand `fd` to its child as descriptor 3, inheritable (as a container runtime
/// passes a tap with `fds=3`). The caller keeps `fd` open until the child has been spawned.
pub fn inherit_as_fd3(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec and only calls dup2 and
    // fcntl, which are async-signal-safe; `fd` stays open in the parent until the child has
    // exec'd (the caller keeps it).
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
