//! bzImage kernels, booted through the 32-bit boot protocol of `Documentation/arch/x86/boot.rst`:
//! the protected-mode part is loaded at `code32_start` and entered there in 32-bit protected
//! mode, with the setup header copied into the zero page.

use std::path::Path;

use vm_memory::GuestMemoryMmap;

use crate::bytes::{read_u16, read_u32, read_u64, read_u8};
use crate::kernel::{BzSetup, LoadWindow, LoadedKernel};
use crate::zero_page::{SETUP_HEADER, SETUP_HEADER_END_MAX};
use crate::{guest, BootError, KernelFormat};

/// `hdr.setup_sects`: 512-byte setup sectors after the boot sector (0 means 4).
const SETUP_SECTS: usize = 0x1f1;
/// The displacement byte of the jump at 0x200; the header ends at 0x202 plus it.
const JUMP_DISPLACEMENT: usize = 0x201;
/// Where the setup header's jump lands from.
const JUMP_END: usize = 0x202;
/// `hdr.version` (u16).
const VERSION: usize = 0x206;
/// `hdr.loadflags` (u8).
const LOADFLAGS: usize = 0x211;
/// `hdr.code32_start` (u32).
const CODE32_START: usize = 0x214;
/// `hdr.initrd_addr_max` (u32).
const INITRD_ADDR_MAX: usize = 0x22c;
/// `hdr.kernel_alignment` (u32).
const KERNEL_ALIGNMENT: usize = 0x230;
/// `hdr.cmdline_size` (u32).
const CMDLINE_SIZE: usize = 0x238;
/// `hdr.pref_address` (u64, protocol 2.10).
const PREF_ADDRESS: usize = 0x258;
/// `hdr.init_size` (u32, protocol 2.10).
const INIT_SIZE: usize = 0x260;

/// `loadflags` bit: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// Oldest protocol accepted: 2.06 has `cmdline_size` and a 32-bit entry we can rely on.
const MIN_VERSION: u16 = 0x0206;
/// Protocol that added `pref_address` and `init_size`.
const VERSION_INIT_SIZE: u16 = 0x020a;
/// Setup sectors when `setup_sects` is 0.
const DEFAULT_SETUP_SECTS: usize = 4;
/// Sector size.
const SECTOR_SIZE: usize = 512;

/// The setup header fields the loader needs.
struct Header {
    version: u16,
    loadflags: u8,
    setup_sects: usize,
    code32_start: u64,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    cmdline_size: u32,
    pref_address: u64,
    init_size: u32,
    end: usize,
}

/// Reads the setup header; `None` when the image is too short to hold it.
fn read_header(image: &[u8]) -> Option<Header> {
    let sects = usize::from(read_u8(image, SETUP_SECTS)?);
    Some(Header {
        version: read_u16(image, VERSION)?,
        loadflags: read_u8(image, LOADFLAGS)?,
        setup_sects: if sects == 0 {
            DEFAULT_SETUP_SECTS
        } else {
            sects
        },
        code32_start: u64::from(read_u32(image, CODE32_START)?),
        initrd_addr_max: read_u32(image, INITRD_ADDR_MAX)?,
        kernel_alignment: read_u32(image, KERNEL_ALIGNMENT)?,
        cmdline_size: read_u32(image, CMDLINE_SIZE)?,
        pref_address: read_u64(image, PREF_ADDRESS)?,
        init_size: read_u32(image, INIT_SIZE)?,
        end: JUMP_END + usize::from(read_u8(image, JUMP_DISPLACEMENT)?),
    })
}

/// Parses and checks the setup header.
fn parse(path: &Path, image: &[u8]) -> Result<Header, BootError> {
    let header = read_header(image).ok_or_else(|| BootError::MalformedBzImage {
        path: path.to_path_buf(),
        reason: "the file ends inside the setup header",
    })?;
    if header.version < MIN_VERSION {
        return Err(BootError::BzImageTooOld {
            path: path.to_path_buf(),
            version: header.version,
        });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(BootError::BzImageNotLoadedHigh {
            path: path.to_path_buf(),
        });
    }
    Ok(header)
}

/// End of the memory the kernel needs while it decompresses itself: `init_size` bytes from
/// where it runs (its load address aligned up, but not below `pref_address`).
fn footprint_end(header: &Header, loaded_end: u64) -> u64 {
    if header.version < VERSION_INIT_SIZE || header.init_size == 0 {
        return loaded_end;
    }
    let align = u64::from(header.kernel_alignment);
    let aligned = if align.is_power_of_two() {
        header.code32_start.saturating_add(align - 1) & !(align - 1)
    } else {
        header.code32_start
    };
    let runtime_start = aligned.max(header.pref_address);
    loaded_end.max(runtime_start.saturating_add(u64::from(header.init_size)))
}

/// Loads a bzImage's protected-mode kernel at `code32_start` inside `window`.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    image: &[u8],
    window: &LoadWindow,
) -> Result<LoadedKernel, BootError> {
    let malformed = |reason| BootError::MalformedBzImage {
        path: path.to_path_buf(),
        reason,
    };
    let header = parse(path, image)?;
    let setup_bytes = image
        .get(SETUP_HEADER..header.end.min(SETUP_HEADER_END_MAX))
        .ok_or_else(|| malformed("the file ends inside the setup header"))?;
    let pm = image
        .get((header.setup_sects + 1) * SECTOR_SIZE..)
        .filter(|pm| !pm.is_empty())
        .ok_or_else(|| malformed("no protected-mode kernel follows the setup sectors"))?;
    let pm_len = pm.len() as u64;
    window.check(path, header.code32_start, pm_len)?;
    guest::write(
        mem,
        header.code32_start,
        pm,
        "bzImage protected-mode kernel",
    )?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: header.code32_start,
        start: header.code32_start,
        end: footprint_end(&header, header.code32_start + pm_len),
        setup: Some(BzSetup {
            header: setup_bytes.to_vec(),
            initrd_addr_max: header.initrd_addr_max,
            cmdline_size: header.cmdline_size,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HIGH_MEMORY_START;
    use crate::test_util::{bzimage, guest_memory, read_guest, TempFile, RAM};

    const WINDOW: LoadWindow = LoadWindow {
        start: HIGH_MEMORY_START,
        end: RAM,
    };

    fn load_image(image: &[u8]) -> Result<LoadedKernel, BootError> {
        let mem = guest_memory(RAM);
        load(&mem, Path::new("bzImage"), image, &WINDOW)
    }

    #[test]
    fn protected_mode_part_is_loaded_at_code32_start() {
        let mem = guest_memory(RAM);
        let pm: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let image = bzimage(0x020f, LOADED_HIGH, 27, &pm);
        let kernel = load(&mem, Path::new("bzImage"), &image, &WINDOW).unwrap();
        assert_eq!(read_guest(&mem, 0x10_0000, 4096), pm);
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(
            (kernel.entry, kernel.start, kernel.end),
            (0x10_0000, 0x10_0000, 0x10_1000)
        );
        assert_eq!(kernel.mode(), crate::CpuMode::Protected32);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let image = bzimage(0x020f, LOADED_HIGH, 0, &[0xaa; 16]);
        assert_eq!(image.len(), 5 * 512 + 16);
        let kernel = load_image(&image).unwrap();
        assert_eq!(kernel.end, 0x10_0010);
    }

    #[test]
    fn setup_header_bytes_up_to_the_jump_target_are_kept() {
        let image = bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]);
        let kernel = load_image(&image).unwrap();
        assert_eq!(kernel.cmdline_limit(), Some(2048));
        let setup = kernel.setup.unwrap();
        assert_eq!(setup.header, image[0x1f1..0x268]);
        assert_eq!(
            (setup.cmdline_size, setup.initrd_addr_max),
            (2048, 0x37ff_ffff)
        );
    }

    #[test]
    fn init_size_extends_the_kernel_footprint_from_pref_address() {
        let mut image = bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]);
        image[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes());
        assert_eq!(load_image(&image).unwrap().end, 0x180_0000);
    }

    #[test]
    fn protocol_older_than_2_06_is_refused() {
        let image = bzimage(0x0205, LOADED_HIGH, 4, &[0xaa; 16]);
        let err = load_image(&image).err().unwrap();
        assert!(matches!(
            err,
            BootError::BzImageTooOld {
                version: 0x0205,
                ..
            }
        ));
        assert!(err.to_string().contains("2.05"), "{err}");
    }

    #[test]
    fn image_without_loaded_high_is_refused() {
        let image = bzimage(0x020f, 0, 4, &[0xaa; 16]);
        assert!(matches!(
            load_image(&image),
            Err(BootError::BzImageNotLoadedHigh { .. })
        ));
    }

    #[test]
    fn image_ending_after_the_setup_sectors_is_refused() {
        let image = bzimage(0x020f, LOADED_HIGH, 4, &[]);
        assert!(matches!(
            load_image(&image),
            Err(BootError::MalformedBzImage { .. })
        ));
    }

    #[test]
    fn image_cut_inside_the_header_is_refused() {
        let image = bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]);
        assert!(matches!(
            load_image(&image[..0x240]),
            Err(BootError::MalformedBzImage { .. })
        ));
    }

    #[test]
    fn code32_start_outside_ram_is_refused() {
        let mut image = bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]);
        image[0x214..0x218].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            load_image(&image),
            Err(BootError::KernelOutsideRam { .. })
        ));
    }

    #[test]
    fn bzimage_file_is_detected_by_the_kernel_loader() {
        let mem = guest_memory(RAM);
        let file = TempFile::new("bzImage", &bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]));
        let kernel = crate::kernel::load(&mem, file.path(), &WINDOW).unwrap();
        assert_eq!(kernel.format, KernelFormat::BzImage);
    }
}
