//! virtio-net devices: opens each device's tap (by name, or the inherited descriptor as it is)
//! and keeps the tap watched by the VMM thread's loop only while the guest has receive buffers.
//!
//! Each device has two event sources: its tap poller ([`TAP`], a [`TapPoll`]: an epoll
//! descriptor holding the tap the device has now, so that QMP can swap taps without touching
//! the loop) and the device's receive-resume eventfd ([`RESUME`]). When [`Net::rx_ready`] says
//! the guest has no buffers (or the device needs a reset, or the tap failed), the loop stops
//! watching the tap, so a busy tap neither spins the loop nor drops frames; the device writes
//! the resume eventfd once the guest posted buffers, and the tap is watched again.
//!
//! [`Net::rx_ready`]: virtio::Net::rx_ready

use crate::config::{NetConfig, TapSource};
use crate::device_events::{DeviceEvents, EventHandler, SharedHandler, WatchChange};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio::net::{check_vhost, VhostError, VhostMode};
use virtio::{MacAddr, Net, NetError, NetOptions, RxOutcome, SharedNet, Tap, TapError};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Event source number of the tap.
const TAP: u32 = 0;
/// Event source number of the receive-resume eventfd.
const RESUME: u32 = 1;

/// Why a network device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// `vhost=on` cannot be served.
    #[error(transparent)]
    Vhost(VhostError),
    /// The tap cannot be opened, or the inherited descriptor is no usable tap.
    #[error(transparent)]
    Tap(TapError),
    /// The device model refused its options.
    #[error(transparent)]
    Device(NetError),
    /// The tap poller could not be set up.
    #[error("cannot set up the tap poller")]
    Poll(#[source] io::Error),
}

/// An epoll descriptor holding at most one tap: readable whenever that tap is. The VMM
/// thread's loop watches this descriptor, never the tap itself, so the tap behind a device can
/// change (QMP hot-plug) while the loop's sources stay the same.
pub struct TapPoll {
    epoll: Epoll,
    tap: Option<RawFd>,
}

impl TapPoll {
    /// A poller holding no tap (never readable).
    pub fn new() -> io::Result<TapPoll> {
        Ok(TapPoll {
            epoll: Epoll::new()?,
            tap: None,
        })
    }

    /// The descriptor for the loop to watch.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Holds `tap` (instead of the tap held so far).
    pub fn hold(&mut self, tap: RawFd) -> io::Result<()> {
        self.release()?;
        let event = EpollEvent::new(EventSet::IN, 0);
        self.epoll.ctl(ControlOperation::Add, tap, event)?;
        self.tap = Some(tap);
        Ok(())
    }

    /// Holds no tap any more.
    pub fn release(&mut self) -> io::Result<()> {
        if let Some(tap) = self.tap.take() {
            self.epoll
                .ctl(ControlOperation::Delete, tap, EpollEvent::default())?;
        }
        Ok(())
    }
}

/// Opens the tap of `config` (after checking that its vhost setting can be served). Runs
/// before the guest does: a bad netdev stops Nimbus at start.
pub fn open_tap(config: &NetConfig) -> Result<Tap, NetdevError> {
    let vhost = if config.vhost {
        VhostMode::On { fd: config.vhostfd }
    } else {
        VhostMode::Off
    };
    check_vhost(vhost).map_err(NetdevError::Vhost)?;
    match &config.tap {
        TapSource::Name(name) => Tap::open(name),
        TapSource::Fd(fd) => Tap::from_inherited_fd(*fd),
    }
    .map_err(NetdevError::Tap)
}

/// A net device with id `id` over `tap` (an empty slot without one), shared with the loop.
pub fn create_net(
    id: &str,
    mac: Option<[u8; 6]>,
    tap: Option<Tap>,
) -> Result<SharedNet, NetdevError> {
    let options = NetOptions {
        id: id.to_owned(),
        mac: mac.map(MacAddr),
        mtu: None,
    };
    let net = match tap {
        Some(tap) => Net::new(&options, Box::new(tap)),
        None => Net::empty(&options),
    }
    .map_err(NetdevError::Device)?;
    Ok(SharedNet::new(net))
}

/// Creates the tap poller of `net` holding its tap, and adds the poller and the device's
/// receive-resume eventfd to `events`.
pub fn watch_net(
    net: &SharedNet,
    id: &str,
    events: &mut DeviceEvents,
) -> Result<TapPoll, NetdevError> {
    let (tap_fd, resume_fd) = {
        let device = net.lock();
        (device.tap_fd(), device.rx_resume_event().as_raw_fd())
    };
    let mut poll = TapPoll::new().map_err(NetdevError::Poll)?;
    if let Some(fd) = tap_fd {
        poll.hold(fd).map_err(NetdevError::Poll)?;
    }
    let handler: SharedHandler = Arc::new(Mutex::new(NetEvents {
        net: net.clone(),
        id: id.to_string(),
        changes: Vec::new(),
    }));
    events.add(poll.fd(), handler.clone(), TAP);
    events.add(resume_fd, handler, RESUME);
    Ok(poll)
}

/// The VMM thread's side of one network device.
struct NetEvents {
    net: SharedNet,
    id: String,
    changes: Vec<WatchChange>,
}

impl EventHandler for NetEvents {
    fn handle_event(&mut self, source: u32) {
        let mut net = self.net.lock();
        if source == RESUME {
            // The count only says that receive may go on; the device knows the rest.
            let _ = net.rx_resume_event().read();
        }
        let watch = match net.rx_ready() {
            RxOutcome::KeepPolling => true,
            RxOutcome::NeedBuffers | RxOutcome::NeedsReset => false,
            RxOutcome::TapFailed(e) => {
                log::warn!("netdev '{}': reading the tap failed: {e}", self.id);
                false
            }
        };
        self.changes.push(WatchChange { source: TAP, watch });
    }

    fn watch_changes(&mut self) -> Vec<WatchChange> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn config(tap: TapSource, vhost: bool) -> NetConfig {
        NetConfig {
            id: "net0".into(),
            netdev: "n0".into(),
            tap,
            mac: None,
            vhost,
            vhostfd: None,
        }
    }

    #[test]
    fn vhost_is_checked_before_any_tap_is_opened() {
        // With vhost=on refused, the named tap is never opened (nor created, under root).
        let name = TapSource::Name("nbt-never".into());
        let Err(err) = open_tap(&config(name, true)) else {
            panic!("vhost=on is refused")
        };
        assert!(matches!(err, NetdevError::Vhost(_)), "{err}");
        assert!(err.to_string().contains("vhost=on"), "{err}");
    }

    #[test]
    fn inherited_descriptor_that_is_no_tap_is_refused_and_left_open() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (read, _write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let Err(err) = open_tap(&config(TapSource::Fd(read.as_raw_fd()), false)) else {
            panic!("a pipe is no tap")
        };
        assert!(
            matches!(err, NetdevError::Tap(TapError::NotTap { .. })),
            "{err}"
        );
        // SAFETY: F_GETFD only reads the descriptor flags of `read`, which this test owns.
        assert!(unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETFD) } >= 0);
    }

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, `pfd`, which lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn tap_poll_is_readable_exactly_when_the_tap_it_holds_is() {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let first = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let second = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut poll = TapPoll::new().expect("epoll");
        assert!(!readable(poll.fd()), "holding nothing");
        poll.hold(first.as_raw_fd()).expect("hold");
        assert!(!readable(poll.fd()));
        first.write(1).expect("write");
        assert!(readable(poll.fd()), "the held tap is readable");
        let _ = first.read();
        assert!(!readable(poll.fd()), "drained");
        // Swapping: the old one no longer counts, the new one does.
        poll.hold(second.as_raw_fd()).expect("swap");
        first.write(1).expect("write");
        assert!(!readable(poll.fd()), "the released tap does not count");
        second.write(1).expect("write");
        assert!(readable(poll.fd()));
        poll.release().expect("release");
        assert!(!readable(poll.fd()));
    }
}
