//! The Linux zero page (`struct boot_params`), for the 64-bit and the 32-bit boot protocols.
//!
//! Offsets follow `arch/x86/include/uapi/asm/bootparam.h` and `Documentation/arch/x86/boot.rst`.

use vm_memory::GuestMemoryMmap;

use crate::bytes::{put, put_u16, put_u32, put_u64};
use crate::layout::{CMDLINE_ADDR, KERNEL_ALIGNMENT, ZERO_PAGE_ADDR, ZERO_PAGE_SIZE};
use crate::{guest, BootError, E820Entry};

/// `ext_ramdisk_image`: bits 32..64 of the initrd address.
pub(crate) const EXT_RAMDISK_IMAGE: usize = 0x0c0;
/// `ext_ramdisk_size`: bits 32..64 of the initrd size.
pub(crate) const EXT_RAMDISK_SIZE: usize = 0x0c4;
/// `ext_cmd_line_ptr`: bits 32..64 of the command line address.
pub(crate) const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// `e820_entries`: number of valid entries in `e820_table` (u8).
pub(crate) const E820_ENTRIES: usize = 0x1e8;
/// Start of `struct setup_header` (`hdr.setup_sects`).
pub(crate) const SETUP_HEADER: usize = 0x1f1;
/// `hdr.boot_flag`: 0xAA55.
pub(crate) const BOOT_FLAG: usize = 0x1fe;
/// `hdr.header`: "HdrS".
pub(crate) const HEADER: usize = 0x202;
/// `hdr.type_of_loader` (u8).
pub(crate) const TYPE_OF_LOADER: usize = 0x210;
/// `hdr.loadflags` (u8).
pub(crate) const LOADFLAGS: usize = 0x211;
/// `hdr.ramdisk_image`: bits 0..32 of the initrd address.
pub(crate) const RAMDISK_IMAGE: usize = 0x218;
/// `hdr.ramdisk_size`: bits 0..32 of the initrd size.
pub(crate) const RAMDISK_SIZE: usize = 0x21c;
/// `hdr.heap_end_ptr` (u16).
pub(crate) const HEAP_END_PTR: usize = 0x224;
/// `hdr.cmd_line_ptr`: bits 0..32 of the command line address.
pub(crate) const CMD_LINE_PTR: usize = 0x228;
/// `hdr.kernel_alignment` (u32).
pub(crate) const KERNEL_ALIGNMENT_OFF: usize = 0x230;
/// `hdr.cmdline_size` (u32).
pub(crate) const CMDLINE_SIZE: usize = 0x238;
/// End (exclusive) of the room `struct boot_params` gives the setup header.
pub(crate) const SETUP_HEADER_END_MAX: usize = 0x290;
/// `e820_table`: 20-byte entries (u64 addr, u64 size, u32 type).
pub(crate) const E820_TABLE: usize = 0x2d0;
/// Room in `e820_table`.
pub(crate) const E820_MAX_ENTRIES: usize = 128;
/// Size of one `e820_table` entry.
const E820_ENTRY_SIZE: usize = 20;

/// `hdr.type_of_loader` for a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `hdr.loadflags` bit: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// `hdr.heap_end_ptr` value: the setup heap ends at 0xfe00 + 0x200 into the setup segment.
const HEAP_END: u16 = 0xfe00;
/// The boot sector signature in `hdr.boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;

/// What goes into the zero page.
pub(crate) struct ZeroPage<'a> {
    /// The bzImage's setup header (file bytes from 0x1f1 to its end), or `None` for a kernel
    /// without one, in which case a minimal header is made up.
    pub(crate) setup_header: Option<&'a [u8]>,
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

/// Fills in the header fields a loader owns, on top of the kernel's own header if it has one.
fn put_header(page: &mut [u8], zp: &ZeroPage) {
    match zp.setup_header {
        Some(header) => {
            put(page, SETUP_HEADER, header);
            page[LOADFLAGS] |= CAN_USE_HEAP;
            put_u16(page, HEAP_END_PTR, HEAP_END);
        }
        None => {
            put_u16(page, BOOT_FLAG, BOOT_FLAG_MAGIC);
            put(page, HEADER, b"HdrS");
            put_u32(page, KERNEL_ALIGNMENT_OFF, KERNEL_ALIGNMENT);
            // The line's own length: it is all the room this kernel gets.
            put_u32(page, CMDLINE_SIZE, zp.cmdline_len as u32);
        }
    }
    page[TYPE_OF_LOADER] = LOADER_UNDEFINED;
}

/// The pointers to the command line and the initrd.
fn put_pointers(page: &mut [u8], zp: &ZeroPage) {
    let (cmdline_lo, cmdline_hi) = split(CMDLINE_ADDR);
    put_u32(page, CMD_LINE_PTR, cmdline_lo);
    put_u32(page, EXT_CMD_LINE_PTR, cmdline_hi);
    if let Some((addr, size)) = zp.initrd {
        let (addr_lo, addr_hi) = split(addr);
        let (size_lo, size_hi) = split(size);
        put_u32(page, RAMDISK_IMAGE, addr_lo);
        put_u32(page, RAMDISK_SIZE, size_lo);
        put_u32(page, EXT_RAMDISK_IMAGE, addr_hi);
        put_u32(page, EXT_RAMDISK_SIZE, size_hi);
    }
}

/// The memory map (at most [`E820_MAX_ENTRIES`] entries; ours has five at most).
fn put_e820(page: &mut [u8], e820: &[E820Entry]) {
    let entries = &e820[..e820.len().min(E820_MAX_ENTRIES)];
    for (i, entry) in entries.iter().enumerate() {
        let off = E820_TABLE + i * E820_ENTRY_SIZE;
        put_u64(page, off, entry.addr);
        put_u64(page, off + 8, entry.size);
        put_u32(page, off + 16, entry.kind);
    }
    // At most 128, so it fits the u8 field.
    page[E820_ENTRIES] = entries.len() as u8;
}

/// The zero page's bytes.
pub(crate) fn build(zp: &ZeroPage) -> Vec<u8> {
    let mut page = vec![0u8; ZERO_PAGE_SIZE];
    put_header(&mut page, zp);
    put_pointers(&mut page, zp);
    put_e820(&mut page, zp.e820);
    page
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub(crate) fn write(mem: &GuestMemoryMmap, zp: &ZeroPage) -> Result<(), BootError> {
    guest::write(mem, ZERO_PAGE_ADDR, &build(zp), "zero page")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::{read_u16, read_u32, read_u64};
    use crate::e820_map;
    use crate::test_util::{HOLE, RAM};

    fn page_for(setup_header: Option<&[u8]>, initrd: Option<(u64, u64)>) -> Vec<u8> {
        let e820 = e820_map(RAM, HOLE);
        build(&ZeroPage {
            setup_header,
            cmdline_len: 22,
            initrd,
            e820: &e820,
        })
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
        let mut header = vec![0u8; 0x268 - 0x1f1];
        header[0] = 27; // setup_sects
        header[0x1fe - 0x1f1..0x200 - 0x1f1].copy_from_slice(&0xaa55u16.to_le_bytes());
        header[0x202 - 0x1f1..0x206 - 0x1f1].copy_from_slice(b"HdrS");
        header[0x211 - 0x1f1] = 0x01; // LOADED_HIGH
        header[0x238 - 0x1f1..0x23c - 0x1f1].copy_from_slice(&2048u32.to_le_bytes());
        header[0x230 - 0x1f1..0x234 - 0x1f1].copy_from_slice(&0x20_0000u32.to_le_bytes());
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
