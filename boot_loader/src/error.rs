//! The one error type of the boot loader.

use std::path::PathBuf;

use vm_memory::GuestMemoryError;

/// Why the guest could not be prepared for boot. Each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The number of vCPUs is zero.
    #[error("at least one vCPU is needed")]
    NoCpus,
    /// The MP table for this many vCPUs does not fit in the EBDA.
    #[error(
        "the MP table for {cpus} vCPUs does not fit in [{start:#x}, {end:#x}); at most {max} vCPUs \
         are supported"
    )]
    MpTableTooLarge {
        /// vCPUs asked for.
        cpus: u8,
        /// vCPUs that fit.
        max: u8,
        /// Start of the MP table's room.
        start: u64,
        /// End of the MP table's room.
        end: u64,
    },
    /// The MMIO hole is not a range between the low RAM minimum and 4 GiB.
    #[error("MMIO hole [{start:#x}, {end:#x}) must be a range between {min:#x} and 4 GiB")]
    InvalidMmioHole {
        /// Start of the hole.
        start: u64,
        /// End of the hole.
        end: u64,
        /// Lowest acceptable start.
        min: u64,
    },
    /// The guest has too little RAM to boot.
    #[error("{ram_size:#x} bytes of guest RAM is too little; at least {min:#x} are needed")]
    RamTooSmall {
        /// RAM configured.
        ram_size: u64,
        /// RAM needed.
        min: u64,
    },
    /// The kernel image could not be read.
    #[error("cannot read kernel image {path:?}")]
    ReadKernel {
        /// The image.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is not something we can boot (empty, or text).
    #[error("{path:?} is not a kernel image: {reason}")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// What it looks like instead.
        reason: &'static str,
    },
    /// The ELF image is not a 64-bit little-endian x86_64 image.
    #[error("ELF kernel {path:?} is not a 64-bit little-endian x86_64 image: {found}")]
    UnsupportedElf {
        /// The image.
        path: PathBuf,
        /// The class, byte order or machine found.
        found: String,
    },
    /// The ELF image's headers are inconsistent or point outside the file.
    #[error("ELF kernel {path:?} is malformed: {reason}")]
    MalformedElf {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The bzImage's setup header is truncated or inconsistent.
    #[error("bzImage {path:?} is malformed: {reason}")]
    MalformedBzImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The bzImage speaks a boot protocol older than 2.06.
    #[error(
        "bzImage {path:?} uses boot protocol {}.{:02}; at least 2.06 is needed",
        .version >> 8,
        .version & 0xff
    )]
    BzImageTooOld {
        /// The image.
        path: PathBuf,
        /// The protocol version from the header (major << 8 | minor).
        version: u16,
    },
    /// The bzImage cannot be loaded at 1 MiB.
    #[error("bzImage {path:?} does not set LOADED_HIGH, so it cannot be loaded at 1 MiB")]
    BzImageNotLoadedHigh {
        /// The image.
        path: PathBuf,
    },
    /// linux-loader could not load the kernel image into guest memory.
    #[error("cannot load kernel image {path:?} into guest memory")]
    LoadKernel {
        /// The image.
        path: PathBuf,
        /// linux-loader's failure.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel would land outside the usable RAM.
    #[error(
        "kernel image {path:?} needs [{start:#x}, {end:#x}), outside the usable guest RAM \
         [{ram_start:#x}, {ram_end:#x})"
    )]
    KernelOutsideRam {
        /// The image.
        path: PathBuf,
        /// First byte the kernel needs.
        start: u64,
        /// End of what the kernel needs (saturated at `u64::MAX`).
        end: u64,
        /// Start of the usable RAM.
        ram_start: u64,
        /// End of the usable RAM.
        ram_end: u64,
    },
    /// The kernel's entry point is not inside the kernel.
    #[error(
        "entry point {entry:#x} of {path:?} is outside the loaded kernel [{start:#x}, {end:#x})"
    )]
    EntryOutsideKernel {
        /// The image.
        path: PathBuf,
        /// The entry point.
        entry: u64,
        /// Start of the loaded kernel.
        start: u64,
        /// End of the loaded kernel.
        end: u64,
    },
    /// The command line is too long for the room it has.
    #[error("the kernel command line is {len} bytes long; at most {max} fit")]
    CmdlineTooLong {
        /// Its length without the NUL.
        len: usize,
        /// The most bytes allowed without the NUL.
        max: usize,
    },
    /// The command line holds a NUL byte, which would cut it short.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineContainsNul,
    /// The initrd could not be opened or inspected.
    #[error("cannot read initrd {path:?}")]
    ReadInitrd {
        /// The initrd.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The initrd is empty.
    #[error("initrd {path:?} is empty")]
    EmptyInitrd {
        /// The initrd.
        path: PathBuf,
    },
    /// The initrd does not fit between the kernel and its upper limit.
    #[error(
        "initrd of {size:#x} bytes does not fit between the kernel end {floor:#x} and {limit:#x}"
    )]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// The lowest address it may use (end of the kernel).
        floor: u64,
        /// The address it must end below.
        limit: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path:?} into guest memory at {addr:#x}")]
    LoadInitrd {
        /// The initrd.
        path: PathBuf,
        /// Where it was going.
        addr: u64,
        /// The failure.
        #[source]
        source: GuestMemoryError,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} to guest memory at {addr:#x}")]
    WriteGuest {
        /// The structure.
        what: &'static str,
        /// Where it was going.
        addr: u64,
        /// The failure.
        #[source]
        source: GuestMemoryError,
    },
}
