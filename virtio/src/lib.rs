//! Virtio devices and the virtio-mmio transport.
//!
//! Owns virtio register state, virtqueue handling and device models (block, net, ...). It must
//! not know about KVM: interrupts and notifications reach it as event file descriptors, and guest
//! memory as the `address_space` crate's RAM view.
#![deny(unsafe_code)]
