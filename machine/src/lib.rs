//! The microvm machine: the only crate that talks to KVM.
//!
//! It creates the VM with its in-kernel irqchip and PIT, builds the memory and port I/O address
//! spaces (KVM memory slots follow the memory space's flat view through a listener), places the
//! legacy devices, asks the boot loader to load the guest, starts one thread per vCPU and runs
//! the VMM thread's epoll loop until the guest resets, powers off or fails. Addresses and IRQ
//! lines live in [`layout`]. It knows nothing about the command line.

#![deny(unsafe_code)]

mod balloon;
mod block_slots;
mod chardev;
mod chardevs;
mod config;
mod control;
mod cpuid;
mod error;
mod event_loop;
mod iothread;
pub mod layout;
mod legacy;
mod memory;
mod monitor;
mod net_devices;
mod net_slots;
mod pit;
mod qmp_server;
mod running;
mod seccomp;
mod signals;
mod slots;
pub mod snapshot;
mod terminal;
mod vcpu;
mod virtio_devices;
mod vm;
mod vsock_devices;

pub use address_space::{RamBacking, RamOptions};
pub use block_slots::DEFAULT_BLK_SLOTS;
pub use config::{
    ChardevBackend, ChardevConfig, ConsoleConfig, DriveConfig, MachineConfig, NetConfig,
    SerialConfig, TapSource, VsockBackend, VsockConfig,
};
pub use error::MachineError;
pub use net_slots::DEFAULT_NET_SLOTS;
pub use qmp_server::QmpEndpoint;
pub use seccomp::{
    also_report_to as seccomp_also_report_to, SELFTEST_ENV as SECCOMP_SELFTEST_ENV,
    SIGSYS_EXIT_STATUS,
};
pub use vcpu::{StopReason, VcpuFault};
pub use virtio::vsock::GUEST_CIDS as VSOCK_GUEST_CIDS;
pub use virtio::MAX_QUEUES as MAX_BLK_QUEUES;
pub use virtio::{
    Aio, BalloonOptions, MacAddr, RngOptions, ThrottleLimits, VhostUserKind, VhostUserOptions,
};
pub use vm::{run, run_notifying, ExitReason};
