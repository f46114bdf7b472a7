//! Virtio devices and the virtio-mmio transport.
//!
//! Owns virtio register state ([`MmioTransport`]), virtqueue handling (through the rust-vmm
//! `virtio-queue` crate) and device models ([`Block`], [`Net`] over a tap, [`Rng`],
//! [`VhostVsock`] over the kernel's vhost-vsock through the rust-vmm `vhost` crate). A device
//! implements the small [`VirtioDevice`] trait; the transport negotiates features, sets up
//! queues and hands them to the device at DRIVER_OK. It must not know about KVM nor where a
//! device is mapped: interrupts leave it through an event file descriptor ([`Interrupt`]),
//! notifications reach it as register writes or [`MmioTransport::queue_notify`] (an ioeventfd
//! the machine watches), and guest memory is the `address_space` crate's vm-memory view of RAM.
#![deny(unsafe_code)]

pub mod balloon;
pub mod block;
pub mod console;
mod device;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
mod testing;
mod vhost_kernel;
pub mod vhost_user;
pub mod vhost_vsock;
pub mod vsock;

pub use balloon::{
    Balloon, BalloonCounters, BalloonError, BalloonOptions, Discard, GuestStats,
    DEVICE_TYPE_BALLOON,
};
pub use block::{
    Aio, Block, BlockError, BlockHandle, BlockOptions, SlotError, ThrottleLimits, MAX_QUEUES,
};
pub use console::{Console, ConsoleCounters, DEVICE_TYPE_CONSOLE};
pub use device::{
    feature, ActivateError, FdChange, Interrupt, QueueError, Readiness, Shared, VirtioDevice,
    INT_CONFIG_CHANGE, INT_USED_BUFFER,
};
pub use mmio::{
    MmioTransport, QueueRegsState, RestoreError as TransportRestoreError, TransportState,
    MMIO_WINDOW_SIZE,
};
pub use net::{
    MacAddr, MacError, Net, NetCounters, NetError, NetOptions, NetSlotError, NoTap, RxOutcome,
    SharedNet, Tap, TapError, TapIo, VhostNet, DEVICE_TYPE_NET,
};
pub use rng::{Rng, RngError, RngOptions, DEVICE_TYPE_RNG};
pub use vhost_user::{
    VhostUser, VhostUserError, VhostUserKind, VhostUserOptions, Watchdog as VhostUserWatchdog,
};
pub use vhost_vsock::{
    KernelVsock, VhostVsock, VhostVsockBackend, VhostVsockError, VHOST_VSOCK_PATH,
};
pub use vsock::{Vsock, VsockCounters, VsockError, VsockOptions, DEVICE_TYPE_VSOCK};

/// The Linux virtio headers the devices follow (feature bits, request types, status values).
pub use virtio_bindings;

/// Virtio device ID of a block device.
pub use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK as DEVICE_TYPE_BLOCK;
