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
//! With `vhost=on` the kernel's vhost-net moves the frames ([`create_vhost_net`]): the device
//! has no subscriber of its own here, the tap is not watched, and the device joins the loop as
//! any device with event sources (vhost's call eventfds).
//!
//! [`Net::rx_ready`]: virtio::Net::rx_ready

use crate::config::{NetConfig, TapSource};
use crate::error::MachineError;
use crate::event_loop::{input, unwatch, watch, DeviceId, EventLoop};
use address_space::vm_memory::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio::net::{KernelNet, VhostError};
use virtio::{MacAddr, Net, NetError, NetOptions, RxOutcome, SharedNet, Tap, TapError, VhostNet};

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

/// The machine's error for netdev `netdev`: a vhost-net that is absent or a `vhostfd=` that is
/// not one is a single line naming it; anything else names the netdev, then its causes.
pub fn netdev_error(netdev: &str, err: NetdevError) -> MachineError {
    match err {
        NetdevError::Vhost(
            error @ (VhostError::NotPresent { .. } | VhostError::NotVhostNet { .. }),
        ) => MachineError::NetdevVhost {
            netdev: netdev.to_owned(),
            error,
        },
        source => MachineError::Netdev {
            netdev: netdev.to_owned(),
            source,
        },
    }
}

/// Opens the kernel's vhost-net for `config` if it asks for it (`vhost=on`, or a `vhostfd=`):
/// `/dev/vhost-net`, or the inherited descriptor checked to be one. Runs before the tap is
/// opened: a host without vhost-net stops Nimbus at start with one line naming the device.
pub fn open_vhost(
    config: &NetConfig,
    mem: &Arc<GuestMemoryMmap>,
) -> Result<Option<KernelNet>, NetdevError> {
    if !config.vhost && config.vhostfd.is_none() {
        return Ok(None);
    }
    KernelNet::open_for(config.vhostfd, Arc::clone(mem))
        .map(Some)
        .map_err(NetdevError::Vhost)
}

/// Opens the tap of `config`. Runs before the guest does: a bad netdev stops Nimbus at start.
pub fn open_tap(config: &NetConfig) -> Result<Tap, NetdevError> {
    match &config.tap {
        TapSource::Name(name) => Tap::open(name),
        TapSource::Fd(fd) => Tap::from_inherited_fd(*fd),
    }
    .map_err(NetdevError::Tap)
}

/// A net device with id `id` whose frames vhost-net (`backend`) moves through `tap`.
pub fn create_vhost_net(
    id: &str,
    mac: Option<[u8; 6]>,
    backend: KernelNet,
    tap: Tap,
) -> Result<VhostNet, NetdevError> {
    let options = NetOptions {
        id: id.to_owned(),
        mac: mac.map(MacAddr),
        mtu: None,
    };
    VhostNet::from_kernel(&options, backend, tap).map_err(NetdevError::Vhost)
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

/// Adds `net` to `events` as a device subscriber, served by `iothread` when given; the
/// returned id makes it rejoin its loop when its tap changes.
pub fn watch_net(
    net: &SharedNet,
    id: &str,
    iothread: Option<&str>,
    events: &mut EventLoop,
) -> Result<DeviceId, MachineError> {
    let subscriber = Arc::new(Mutex::new(NetEvents {
        net: net.clone(),
        id: id.to_string(),
        tap: None,
    }));
    crate::virtio_devices::add_device_on(events, subscriber, iothread, id)
}

/// The event loop's side of one network device (the VMM thread's or its iothread's).
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
            RxOutcome::NeedBuffers | RxOutcome::NeedsReset | RxOutcome::TapLost => false,
            RxOutcome::TapFailed(e) => {
                log::warn!(
                    "netdev '{}': reading the tap failed: {e}; link down, no longer polled",
                    self.id
                );
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
            iothread: None,
        }
    }

    fn memory() -> Arc<GuestMemoryMmap> {
        let ranges = [(address_space::vm_memory::GuestAddress(0), 0x1000)];
        Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("memory"))
    }

    #[test]
    fn vhost_off_opens_no_vhost_net() {
        let name = TapSource::Name("nbt-never".into());
        assert!(open_vhost(&config(name, false), &memory())
            .expect("off")
            .is_none());
    }

    #[test]
    fn vhost_on_without_dev_vhost_net_is_one_line_naming_it() {
        if std::path::Path::new(virtio::net::VHOST_NET_PATH).exists() {
            eprintln!("skipped: this host has /dev/vhost-net");
            return;
        }
        let name = TapSource::Name("nbt-never".into());
        let Err(err) = open_vhost(&config(name, true), &memory()) else {
            panic!("no /dev/vhost-net here")
        };
        assert!(
            matches!(err, NetdevError::Vhost(VhostError::NotPresent { .. })),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "vhost=on needs \"/dev/vhost-net\", which does not exist (is the vhost_net module loaded?)"
        );
    }

    #[test]
    fn a_vhostfd_that_is_not_vhost_net_is_refused_naming_vhostfd() {
        let null = std::fs::File::open("/dev/null").expect("open");
        let mut config = config(TapSource::Name("nbt-never".into()), true);
        config.vhostfd = Some(null.as_raw_fd());
        let Err(err) = open_vhost(&config, &memory()) else {
            panic!("/dev/null is no vhost-net")
        };
        assert_eq!(
            err.to_string(),
            format!(
                "vhostfd={} is not a /dev/vhost-net descriptor",
                null.as_raw_fd()
            )
        );
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
