//! bzImage kernels, booted through the 32-bit boot protocol of `Documentation/arch/x86/boot.rst`:
//! the protected-mode part is loaded at `code32_start` and entered there in 32-bit protected
//! mode, with the setup header copied into the zero page.
//!
//! linux-loader's `BzImage` copies the protected-mode part. Before it runs, this module refuses
//! what linux-loader would accept but we cannot boot: a protocol older than 2.06, no
//! LOADED_HIGH, no protected-mode part, or a kernel outside the load window. It also works out
//! how much memory the kernel needs while it decompresses itself.

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Address, ByteValued, GuestMemoryMmap};

use crate::bytes::read_obj;
use crate::kernel::{LoadWindow, LoadedKernel};
use crate::{BootError, KernelFormat};

/// File offset of `struct setup_header` (`hdr.setup_sects`).
const SETUP_HEADER: usize = 0x1f1;
/// Where the setup header's jump lands from; the header ends at this plus its displacement.
const JUMP_END: usize = 0x202;
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

/// Reads and checks the setup header.
fn parse(path: &Path, image: &[u8]) -> Result<setup_header, BootError> {
    let header: setup_header =
        read_obj(image, SETUP_HEADER).ok_or_else(|| BootError::MalformedBzImage {
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

/// Length of the protected-mode part after the setup sectors; `None` when there is none.
fn protected_mode_len(header: &setup_header, image: &[u8]) -> Option<u64> {
    let sects = match usize::from(header.setup_sects) {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let len = image.len().checked_sub((sects + 1) * SECTOR_SIZE)?;
    (len > 0).then_some(len as u64)
}

/// The header as the zero page gets it: the bytes past the end its jump gives (code of a kernel
/// with an older, shorter header) are cleared.
fn trimmed_to_jump(mut header: setup_header) -> setup_header {
    let end = JUMP_END + usize::from(header.jump >> 8);
    if let Some(tail) = header
        .as_mut_slice()
        .get_mut(end.saturating_sub(SETUP_HEADER)..)
    {
        tail.fill(0);
    }
    header
}

/// End of the memory the kernel needs while it decompresses itself: `init_size` bytes from
/// where it runs (its load address aligned up, but not below `pref_address`).
fn footprint_end(header: &setup_header, loaded_end: u64) -> u64 {
    if header.version < VERSION_INIT_SIZE || header.init_size == 0 {
        return loaded_end;
    }
    let code32_start = u64::from(header.code32_start);
    let align = u64::from(header.kernel_alignment);
    let aligned = if align.is_power_of_two() {
        code32_start.saturating_add(align - 1) & !(align - 1)
    } else {
        code32_start
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
    let header = parse(path, image)?;
    let pm_len = protected_mode_len(&header, image).ok_or_else(|| BootError::MalformedBzImage {
        path: path.to_path_buf(),
        reason: "no protected-mode kernel follows the setup sectors",
    })?;
    window.check(path, u64::from(header.code32_start), pm_len)?;
    let loaded = BzImage::load(mem, None, &mut Cursor::new(image), None).map_err(|source| {
        BootError::LoadKernel {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let start = loaded.kernel_load.raw_value();
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: start,
        start,
        end: footprint_end(&header, loaded.kernel_end),
        setup: Some(trimmed_to_jump(header)),
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
        assert_eq!(setup.as_slice()[..0x268 - 0x1f1], image[0x1f1..0x268]);
        assert_eq!(
            ({ setup.cmdline_size }, { setup.initrd_addr_max }),
            (2048, 0x37ff_ffff)
        );
    }

    #[test]
    fn setup_header_bytes_past_the_jump_target_are_cleared() {
        let mut image = bzimage(0x020f, LOADED_HIGH, 4, &[0xaa; 16]);
        image[0x268..0x26c].copy_from_slice(&[0xcc; 4]);
        let setup = load_image(&image).unwrap().setup.unwrap();
        assert_eq!(setup.as_slice()[0x268 - 0x1f1..], [0; 4]);
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
