//! Where everything of the microvm machine lives: guest-physical addresses, ports and IRQ lines.
//!
//! Low-memory boot structures (zero page, page tables, MP table, ...) are the boot loader's
//! business and live in `boot_loader::layout`; this module holds what the machine places.

/// Start of the MMIO hole below 4 GiB: guest RAM beyond this goes above 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// The IOAPIC's MMIO base (handled in the kernel).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO base (handled in the kernel).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Three pages KVM needs for the TSS of real-mode emulation, just below the BIOS area at 4 GiB.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// The one page KVM needs for its identity map, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// COM1: the 16550 UART's ports.
pub const SERIAL_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const SERIAL_PORT_COUNT: u64 = 8;
/// COM1's ISA interrupt line.
pub const SERIAL_IRQ: u32 = 4;
/// The i8042's data port; its command port is 4 above.
pub const I8042_PORT: u64 = 0x60;
/// Ports 0x60..0x65 (0x61 is answered by KVM's PIT speaker stub before it reaches us).
pub const I8042_PORT_COUNT: u64 = 5;
/// CMOS/RTC index and data ports.
pub const CMOS_PORT: u64 = 0x70;
/// Number of CMOS ports.
pub const CMOS_PORT_COUNT: u64 = 2;
/// The POST-code port Linux writes to for I/O delays.
pub const POST_PORT: u64 = 0x80;

/// Guest-physical base of the first virtio-mmio device window, in the MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Distance between two virtio-mmio windows (each is one 4 KiB page).
pub const VIRTIO_MMIO_STRIDE: u64 = 0x1000;
/// IOAPIC lines of the virtio-mmio devices, in device order: pins 16-23, which no ISA device
/// uses and which the MP table describes (edge-triggered, as irqfds raise them).
pub const VIRTIO_IRQS: [u32; 8] = [16, 17, 18, 19, 20, 21, 22, 23];

/// Size of the port I/O space.
pub const PIO_SPACE_SIZE: u64 = 0x1_0000;
/// Size of the guest-physical address space we describe (1 TiB).
pub const MMIO_SPACE_SIZE: u64 = 1 << 40;
/// The most guest RAM accepted.
pub const MAX_RAM: u64 = 512 << 30;
/// The least guest RAM accepted.
pub const MIN_RAM: u64 = 16 << 20;
/// The most vCPUs (bounded by the MP table's room in the EBDA).
pub const MAX_VCPUS: u8 = 32;
