//! The initial ramdisk, copied to the top of the RAM it may use.

use std::fs::File;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::INITRD_ALIGN;
use crate::BootError;

/// Where an initrd of `size` bytes goes: as high as possible below `limit`, its start aligned
/// down to [`INITRD_ALIGN`], and not below `floor` (the end of the kernel).
pub(crate) fn place(size: u64, floor: u64, limit: u64) -> Result<u64, BootError> {
    match limit.checked_sub(size) {
        Some(top) if top & !(INITRD_ALIGN - 1) >= floor => Ok(top & !(INITRD_ALIGN - 1)),
        _ => Err(BootError::InitrdTooLarge { size, floor, limit }),
    }
}

/// The initrd's file and size; refuses an empty one.
fn open(path: &Path) -> Result<(File, u64), BootError> {
    let read_error = |source| BootError::ReadInitrd {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(std::io::Error::other("not a regular file")));
    }
    if meta.len() == 0 {
        return Err(BootError::EmptyInitrd {
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta.len()))
}

/// Copies the initrd at `path` into guest memory between `floor` and `limit`; returns its
/// `(addr, size)`.
pub(crate) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    floor: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let (mut file, size) = open(path)?;
    let addr = place(size, floor, limit)?;
    // `place` bounded `size` by a guest address below 4 GiB, so it fits usize on x86_64.
    let count =
        usize::try_from(size).map_err(|_| BootError::InitrdTooLarge { size, floor, limit })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|source| BootError::LoadInitrd {
            path: path.to_path_buf(),
            addr,
            source,
        })?;
    log::debug!("initrd {path:?}: {size:#x} bytes at {addr:#x}");
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, read_guest, TempFile, RAM};

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let addr = place(0x1800, 0x20_0000, RAM).unwrap();
        assert_eq!(addr, RAM - 0x2000);
        assert_eq!(addr % 0x1000, 0);
    }

    #[test]
    fn initrd_that_would_reach_into_the_kernel_is_refused() {
        let err = place(RAM - 0x20_0000 + 1, 0x20_0000, RAM).unwrap_err();
        assert!(matches!(
            err,
            BootError::InitrdTooLarge {
                floor: 0x20_0000,
                ..
            }
        ));
    }

    #[test]
    fn initrd_larger_than_the_limit_is_refused() {
        assert!(matches!(
            place(RAM + 1, 0, RAM),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn initrd_bytes_are_copied_to_the_placed_address() {
        let mem = guest_memory(RAM);
        let contents: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let file = TempFile::new("initrd", &contents);
        let (addr, size) = load(&mem, file.path(), 0x20_0000, RAM).unwrap();
        assert_eq!((addr, size), (RAM - 0x2000, 5000));
        assert_eq!(read_guest(&mem, addr, 5000), contents);
    }

    #[test]
    fn empty_initrd_is_refused() {
        let mem = guest_memory(RAM);
        let file = TempFile::new("empty-initrd", &[]);
        let err = load(&mem, file.path(), 0x20_0000, RAM).unwrap_err();
        assert!(matches!(err, BootError::EmptyInitrd { .. }));
    }

    #[test]
    fn missing_initrd_is_a_read_error_naming_the_file() {
        let mem = guest_memory(RAM);
        let path = std::env::temp_dir().join("nimbus-boot-loader-no-such-initrd");
        let err = load(&mem, &path, 0x20_0000, RAM).unwrap_err();
        assert!(matches!(err, BootError::ReadInitrd { .. }));
        assert!(err.to_string().contains("no-such-initrd"));
    }
}
