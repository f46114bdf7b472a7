//! Replaceable backends: the machine swaps the tap behind a net device (QMP `device_add` /
//! `device_del` on virtio-mmio, which has no hot-plug signalling). A device without a tap has
//! [`NoTap`]: its link is down (VIRTIO_NET_S_LINK_UP clear in the status field), nothing is
//! received and every frame the guest sends is dropped. Attaching or detaching a tap flips the
//! link bit and raises a configuration-change interrupt, so the guest's driver sees the carrier
//! come and go.

use std::io;
use std::os::fd::RawFd;

use log::{info, warn};
use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;

use super::tap::{TapError, TapIo};
use super::{tap_offloads, MacAddr, Net, NetError, NetOptions};
use crate::device::to_u16;

/// The backend of a device without a tap: nothing to read, every write refused.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTap;

impl TapIo for NoTap {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    fn write_frame(&mut self, _frame: &[u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::ENETDOWN))
    }

    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        -1
    }

    fn name(&self) -> &str {
        "(no tap)"
    }
}

/// Why a tap could not be attached or detached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetSlotError {
    /// `attach_tap` on a device that already has a tap.
    #[error("the net device already has a backend")]
    Busy,
    /// `detach_tap` on a device without one.
    #[error("the net device has no backend")]
    Empty,
}

impl Net {
    /// An empty slot: a net device with its link down until [`Net::attach_tap`].
    pub fn empty(options: &NetOptions) -> Result<Net, NetError> {
        let mut net = Net::new(options, Box::new(NoTap))?;
        net.attached = false;
        net.set_link(false);
        Ok(net)
    }

    /// Whether a tap is behind the device.
    pub fn has_tap(&self) -> bool {
        self.attached
    }

    /// Puts `tap` behind the device (with `mac` in configuration space if given), with the
    /// offloads the driver accepted if it is running; the link comes up and the driver gets a
    /// configuration-change interrupt. A device that has a tap gives `tap` back.
    pub fn attach_tap(
        &mut self,
        mut tap: Box<dyn TapIo>,
        mac: Option<MacAddr>,
    ) -> Result<(), Box<dyn TapIo>> {
        if self.attached {
            return Err(tap);
        }
        if let Some(active) = &self.active {
            if let Err(e) = tap.set_offload(tap_offloads(active.acked)) {
                warn!("virtio-net: {e}; the guest gets no receive offloads");
                let _ = tap.set_offload(0);
            }
        }
        if let Some(mac) = mac {
            self.config[0..6].copy_from_slice(&mac.0);
        }
        info!("virtio-net: tap {} attached", tap.name());
        self.tap = tap;
        self.attached = true;
        self.tap_lost = false;
        self.set_link(true);
        if self.active.is_some() && self.broken.is_none() {
            // Have the event loop read the new tap (rx_ready pauses again without buffers).
            self.resume_rx();
        }
        Ok(())
    }

    /// Takes the tap away: a frame read from it but not yet delivered is dropped, the link
    /// goes down and the driver gets a configuration-change interrupt.
    pub fn detach_tap(&mut self) -> Result<Box<dyn TapIo>, NetSlotError> {
        if !self.attached {
            return Err(NetSlotError::Empty);
        }
        if self.frame.is_pending() {
            self.counters.rx_dropped_reset += 1;
            self.frame.clear();
        }
        let tap = std::mem::replace(&mut self.tap, Box::new(NoTap));
        info!("virtio-net: tap {} detached", tap.name());
        self.attached = false;
        self.tap_lost = false;
        self.set_link(false);
        Ok(tap)
    }

    /// Writes the link bit of the status field and tells a running driver.
    pub(super) fn set_link(&mut self, up: bool) {
        let mut status = u16::from_le_bytes([self.config[6], self.config[7]]);
        if up {
            status |= to_u16(VIRTIO_NET_S_LINK_UP);
        } else {
            status &= !to_u16(VIRTIO_NET_S_LINK_UP);
        }
        self.config[6..8].copy_from_slice(&status.to_le_bytes());
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_config_change() {
                warn!("virtio-net: cannot raise the configuration-change interrupt: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> NetOptions {
        NetOptions {
            id: "slot0".into(),
            mac: None,
            mtu: None,
        }
    }

    fn link_up(net: &Net) -> bool {
        u16::from_le_bytes([net.config[6], net.config[7]]) & to_u16(VIRTIO_NET_S_LINK_UP) != 0
    }

    #[test]
    fn empty_slot_has_its_link_down_and_no_tap_to_poll() {
        let net = Net::empty(&options()).expect("empty");
        assert!(!net.has_tap());
        assert!(!link_up(&net));
        assert_eq!(net.tap_fd(), None);
    }

    #[test]
    fn attach_brings_the_link_up_with_the_mac_and_detach_takes_it_down() {
        let mut net = Net::empty(&options()).expect("empty");
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().expect("mac");
        assert!(net.attach_tap(Box::new(NoTap), Some(mac)).is_ok());
        assert!(net.has_tap() && link_up(&net));
        assert_eq!(net.mac(), mac);
        assert!(
            net.attach_tap(Box::new(NoTap), None).is_err(),
            "a second tap is refused"
        );
        assert!(net.detach_tap().is_ok());
        assert!(!net.has_tap() && !link_up(&net));
        assert_eq!(net.detach_tap().err(), Some(NetSlotError::Empty));
    }

    #[test]
    fn no_tap_reads_nothing_and_refuses_writes() {
        let mut tap = NoTap;
        let mut buf = [0u8; 64];
        let read = tap.read_frame(&mut buf).expect_err("nothing to read");
        assert_eq!(read.kind(), io::ErrorKind::WouldBlock);
        assert!(tap.write_frame(&buf).is_err());
    }
}
