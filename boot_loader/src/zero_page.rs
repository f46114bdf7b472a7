//! The Linux zero page (linux-loader's `struct boot_params`), for the 64-bit and the 32-bit boot
//! protocols.
//!
//! Fields follow `arch/x86/include/uapi/asm/bootparam.h` and `Documentation/arch/x86/boot.rst`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, GuestMemoryMmap};

use crate::layout::{CMDLINE_ADDR, KERNEL_ALIGNMENT, ZERO_PAGE_ADDR, ZERO_PAGE_SIZE};
use crate::{guest, BootError, E820Entry};

/// `hdr.type_of_loader` for a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `hdr.loadflags` bit: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// `hdr.heap_end_ptr` value: the setup heap ends at 0xfe00 + 0x200 into the setup segment.
const HEAP_END: u16 = 0xfe00;
/// The boot sector signature in `hdr.boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `hdr.header`: "HdrS" read as a little-endian `u32`.
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");

const _: () = assert!(std::mem::size_of::<boot_params>() == ZERO_PAGE_SIZE);

/// What goes into the zero page.
pub(crate) struct ZeroPage<'a> {
    /// The bzImage's setup header, or `None` for a kernel without one, in which case a minimal
    /// header is made up.
    pub(crate) setup_header: Option<&'a setup_header>,
    /// Length of the command line without its NUL.
    pub(crate) cmdline_len: usize,
    /// The initrd's `(addr, size)`.
    pub(crate) initrd: Option<(u64, u64)>,
    /// The memory map.
    pub(crate) e820: &'a [E820Entry],
}

/// Low and high 32 bits of `value`.
fn split(value: u64) -> (u32, u32) {
    // Truncation to the low half is the point.
    (value as u32, (value >> 32) as u32)
}

/// The kernel's own header if it has one, with the fields a loader owns set on top.
fn header(zp: &ZeroPage) -> setup_header {
    let hdr = match zp.setup_header {
        Some(&kernel) => setup_header {
            loadflags: kernel.loadflags | CAN_USE_HEAP,
            heap_end_ptr: HEAP_END,
            ..kernel
        },
        None => setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HEADER_MAGIC,
            kernel_alignment: KERNEL_ALIGNMENT,
            // The line's own length: it is all the room this kernel gets.
            cmdline_size: zp.cmdline_len as u32,
            ..Default::default()
        },
    };
    setup_header {
        type_of_loader: LOADER_UNDEFINED,
        ..hdr
    }
}

/// The pointers to the command line and the initrd.
fn put_pointers(params: &mut boot_params, zp: &ZeroPage) {
    let (cmdline_lo, cmdline_hi) = split(CMDLINE_ADDR);
    params.hdr.cmd_line_ptr = cmdline_lo;
    params.ext_cmd_line_ptr = cmdline_hi;
    if let Some((addr, size)) = zp.initrd {
        let (addr_lo, addr_hi) = split(addr);
        let (size_lo, size_hi) = split(size);
        params.hdr.ramdisk_image = addr_lo;
        params.hdr.ramdisk_size = size_lo;
        params.ext_ramdisk_image = addr_hi;
        params.ext_ramdisk_size = size_hi;
    }
}

/// The memory map (as much as `e820_table` holds; ours has four entries at most).
fn put_e820(params: &mut boot_params, e820: &[E820Entry]) {
    let mut entries = 0u8;
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
        // The table has 128 slots, so this stays within u8.
        entries += 1;
    }
    params.e820_entries = entries;
}

/// The zero page.
pub(crate) fn build(zp: &ZeroPage) -> boot_params {
    let mut params = boot_params {
        hdr: header(zp),
        ..Default::default()
    };
    put_pointers(&mut params, zp);
    put_e820(&mut params, zp.e820);
    params
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub(crate) fn write(mem: &GuestMemoryMmap, zp: &ZeroPage) -> Result<(), BootError> {
    guest::write(mem, ZERO_PAGE_ADDR, build(zp).as_slice(), "zero page")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{read_u16, read_u32, read_u64};
    use crate::e820_map;
    use crate::test_util::{HOLE, RAM};

    fn page_for(setup_header: Option<&setup_header>, initrd: Option<(u64, u64)>) -> Vec<u8> {
        let e820 = e820_map(RAM, HOLE);
        let params = build(&ZeroPage {
            setup_header,
            cmdline_len: 22,
            initrd,
            e820: &e820,
        });
        params.as_slice().to_vec()
    }

    #[test]
    fn made_up_header_has_magic_loader_alignment_and_cmdline() {
        let page = page_for(None, None);
        assert_eq!(read_u16(&page, 0x1fe), Some(0xaa55));
        assert_eq!(&page[0x202..0x206], b"HdrS");
        assert_eq!(page[0x210], 0xff);
        assert_eq!(read_u32(&page, 0x230), Some(0x100_0000));
        assert_eq!(read_u32(&page, 0x228), Some(0x20000));
        assert_eq!(read_u32(&page, 0xc8), Some(0));
        assert_eq!(read_u32(&page, 0x238), Some(22));
    }

    #[test]
    fn initrd_address_and_size_are_split_into_low_and_ext_fields() {
        let page = page_for(None, Some((0x1_2345_6000, 0x2_0000_1000)));
        assert_eq!(read_u32(&page, 0x218), Some(0x2345_6000));
        assert_eq!(read_u32(&page, 0x21c), Some(0x1000));
        assert_eq!(read_u32(&page, 0xc0), Some(1));
        assert_eq!(read_u32(&page, 0xc4), Some(2));
    }

    #[test]
    fn no_initrd_leaves_the_ramdisk_fields_zero() {
        let page = page_for(None, None);
        assert_eq!(read_u64(&page, 0x218), Some(0));
        assert_eq!(read_u64(&page, 0xc0), Some(0));
    }

    #[test]
    fn e820_table_holds_the_memory_map() {
        let page = page_for(None, None);
        assert_eq!(page[0x1e8], 3);
        let entry = |i: usize| {
            let off = 0x2d0 + i * 20;
            (
                read_u64(&page, off).unwrap(),
                read_u64(&page, off + 8).unwrap(),
                read_u32(&page, off + 16).unwrap(),
            )
        };
        assert_eq!(entry(0), (0, 0x9fc00, 1));
        assert_eq!(entry(1), (0x9fc00, 0x60400, 2));
        assert_eq!(entry(2), (0x10_0000, RAM - 0x10_0000, 1));
        assert_eq!(read_u64(&page, 0x2d0 + 3 * 20), Some(0));
    }

    #[test]
    fn kernel_header_is_copied_and_loader_fields_set_on_top() {
        let header = setup_header {
            setup_sects: 27,
            boot_flag: 0xaa55,
            header: u32::from_le_bytes(*b"HdrS"),
            loadflags: 0x01, // LOADED_HIGH
            cmdline_size: 2048,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let page = page_for(Some(&header), None);
        assert_eq!(page[0x1f1], 27);
        assert_eq!(&page[0x202..0x206], b"HdrS");
        assert_eq!(page[0x211], 0x81);
        assert_eq!(read_u16(&page, 0x224), Some(0xfe00));
        assert_eq!(page[0x210], 0xff);
        assert_eq!(
            read_u32(&page, 0x238),
            Some(2048),
            "the kernel's own limit stays"
        );
        assert_eq!(
            read_u32(&page, 0x230),
            Some(0x20_0000),
            "the kernel's own alignment stays"
        );
        assert_eq!(read_u32(&page, 0x228), Some(0x20000));
    }
}
