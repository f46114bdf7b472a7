//! virtio-net devices: opens each device's tap (by name, or the inherited descriptor as it is)
//! and keeps the tap watched by the VMM thread's loop only while the guest has receive buffers.
//!
//! Each device has two event sources: the tap ([`TAP`]) and the device's receive-resume eventfd
//! ([`RESUME`]). When [`Net::rx_ready`] says the guest has no buffers (or the device needs a
//! reset, or the tap failed), the loop stops watching the tap, so a busy tap neither spins the
//! loop nor drops frames; the device writes the resume eventfd once the guest posted buffers,
//! and the tap is watched again.
//!
//! [`Net::rx_ready`]: virtio::Net::rx_ready

use crate::config::{NetConfig, TapSource};
use crate::device_events::{DeviceEvents, EventHandler, SharedHandler, WatchChange};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio::net::{check_vhost, VhostError, VhostMode};
use virtio::{MacAddr, Net, NetError, NetOptions, RxOutcome, SharedNet, Tap, TapError};

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
}

/// Opens the tap of `config` and creates its device. Runs before the guest does: a bad
/// netdev stops Nimbus at start.
pub fn create_net(config: &NetConfig) -> Result<SharedNet, NetdevError> {
    let vhost = if config.vhost {
        VhostMode::On { fd: config.vhostfd }
    } else {
        VhostMode::Off
    };
    check_vhost(vhost).map_err(NetdevError::Vhost)?;
    let tap = match &config.tap {
        TapSource::Name(name) => Tap::open(name),
        TapSource::Fd(fd) => Tap::from_inherited_fd(*fd),
    }
    .map_err(NetdevError::Tap)?;
    let options = NetOptions {
        id: config.id.clone(),
        mac: config.mac.map(MacAddr),
        mtu: None,
    };
    let net = Net::new(&options, Box::new(tap)).map_err(NetdevError::Device)?;
    Ok(SharedNet::new(net))
}

/// Adds the tap and the receive-resume eventfd of `net` to `events`.
pub fn watch_net(net: &SharedNet, id: &str, events: &mut DeviceEvents) {
    let (tap_fd, resume_fd) = {
        let device = net.lock();
        (device.tap_fd(), device.rx_resume_event().as_raw_fd())
    };
    let handler: SharedHandler = Arc::new(Mutex::new(NetEvents {
        net: net.clone(),
        id: id.to_string(),
        changes: Vec::new(),
    }));
    events.add(tap_fd, handler.clone(), TAP);
    events.add(resume_fd, handler, RESUME);
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
        let Err(err) = create_net(&config(name, true)) else {
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
        let Err(err) = create_net(&config(TapSource::Fd(read.as_raw_fd()), false)) else {
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
