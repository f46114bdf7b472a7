//! virtio-net devices: opens each device's tap (by name, or the inherited descriptor as it is)
//! and keeps the tap watched by the VMM thread's loop only while the guest has receive buffers.
//!
//! Each device is a device subscriber with two sources: its tap ([`Token::Tap`]) and the
//! device's receive-resume eventfd ([`Token::Resume`]). When [`Net::rx_ready`] says the guest
//! has no buffers (or the device needs a reset, or the tap failed), the subscriber stops
//! watching the tap from inside its handler, so a busy tap neither spins the loop nor drops
//! frames; the device writes the resume eventfd once the guest posted buffers, and the tap is
//! watched again. When QMP puts another tap behind the device, the device rejoins the loop.
//!
//! [`Net::rx_ready`]: virtio::Net::rx_ready

use crate::config::{NetConfig, TapSource};
use crate::event_loop::{input, unwatch, watch, DeviceId, EventLoop};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio::net::{check_vhost, VhostError, VhostMode};
use virtio::{MacAddr, Net, NetError, NetOptions, RxOutcome, SharedNet, Tap, TapError};

/// A net device's sources, as their events' data.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The tap has a frame.
    Tap,
    /// The guest posted receive buffers (or the tap changed): receive may go on.
    Resume,
}

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

/// Adds `net` to `events` as a device subscriber; the returned id makes it rejoin the loop
/// when its tap changes.
pub fn watch_net(net: &SharedNet, id: &str, events: &mut EventLoop) -> DeviceId {
    events.add_device(Arc::new(Mutex::new(NetEvents {
        net: net.clone(),
        id: id.to_string(),
        tap: None,
    })))
}

/// The VMM thread's side of one network device.
struct NetEvents {
    net: SharedNet,
    id: String,
    /// The tap while the loop watches it.
    tap: Option<RawFd>,
}

impl NetEvents {
    /// Watches the device's tap while the guest can take frames, and stops watching it when
    /// it cannot.
    fn follow_rx(&mut self, ops: &mut EventOps) {
        let mut net = self.net.lock();
        let want = match net.rx_ready() {
            RxOutcome::KeepPolling => true,
            RxOutcome::NeedBuffers | RxOutcome::NeedsReset => false,
            RxOutcome::TapFailed(e) => {
                log::warn!("netdev '{}': reading the tap failed: {e}", self.id);
                false
            }
        };
        let tap = net.tap_fd();
        drop(net);
        match (self.tap, want.then_some(tap).flatten()) {
            (None, Some(fd)) => {
                watch(ops, input(fd, Token::Tap as u32), "a tap");
                self.tap = Some(fd);
            }
            (Some(fd), None) => {
                unwatch(ops, input(fd, Token::Tap as u32), "a tap");
                self.tap = None;
            }
            _ => {}
        }
    }
}

impl MutEventSubscriber for NetEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == Token::Resume as u32 {
            // The count only says that receive may go on; the device knows the rest.
            let _ = self.net.lock().rx_resume_event().read();
        }
        self.follow_rx(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let (tap, resume) = {
            let net = self.net.lock();
            (net.tap_fd(), net.rx_resume_event().as_raw_fd())
        };
        watch(
            ops,
            input(resume, Token::Resume as u32),
            "a receive-resume event",
        );
        // Watched from the start: the first event tells whether the guest can take frames.
        self.tap = tap;
        if let Some(fd) = tap {
            watch(ops, input(fd, Token::Tap as u32), "a tap");
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
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
}
