//! Where a block device's sectors live: the [`DiskBackend`] trait and the raw image file.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

/// Bytes zeroed per write when the file cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// Synchronous storage for a block device. Offsets and lengths are in bytes and have been
/// checked against [`DiskBackend::size`] by the caller.
pub trait DiskBackend: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync); returns once it is.
    fn flush(&self) -> io::Result<()>;
    /// Whether [`DiskBackend::discard`] can deallocate ranges.
    fn supports_discard(&self) -> bool;
    /// Deallocates a range; it reads as zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes a range read as zeroes; `unmap` allows deallocating it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// A raw disk image: sector N of the disk is bytes `[N * 512, N * 512 + 512)` of the file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    punch_hole: bool,
    zero_range: AtomicBool,
}

impl RawFile {
    /// Opens the image at `path`, read-only or read-write.
    pub fn open(path: &Path, readonly: bool) -> io::Result<RawFile> {
        let mut file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        let kind = file.metadata()?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0))?;
        // Punching a hole past the end changes nothing but tells whether the file can do it.
        let punch_hole =
            !readonly && fallocate(&file, FallocateMode::PunchHole, true, size, 4096).is_ok();
        Ok(RawFile {
            file,
            size,
            punch_hole,
            zero_range: AtomicBool::new(!readonly),
        })
    }

    fn write_zero_chunks(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
        let mut done = 0u64;
        while done < len {
            let n = zeroes
                .len()
                .min(usize::try_from(len - done).unwrap_or(usize::MAX));
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn unsupported(e: &vmm_sys_util::errno::Error) -> bool {
    e.errno() == libc::EOPNOTSUPP
}

impl DiskBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn supports_discard(&self) -> bool {
        self.punch_hole
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(io::Error::from)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && self.punch_hole {
            return self.discard(offset, len);
        }
        if self.zero_range.load(Ordering::Relaxed) {
            match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => self.zero_range.store(false, Ordering::Relaxed),
                Err(e) => return Err(e.into()),
            }
        }
        self.write_zero_chunks(offset, len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn image(bytes: &[u8]) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().write_all_at(bytes, 0).unwrap();
        f
    }

    #[test]
    fn size_is_the_file_length() {
        let f = image(&[7u8; 3 * 512 + 100]);
        assert_eq!(
            RawFile::open(f.as_path(), true).unwrap().size(),
            3 * 512 + 100
        );
    }

    #[test]
    fn directory_is_not_an_image() {
        let dir = std::env::temp_dir();
        let err = RawFile::open(&dir, true).expect_err("a directory");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn read_only_image_refuses_writes() {
        let f = image(&[1u8; 512]);
        let disk = RawFile::open(f.as_path(), true).unwrap();
        assert!(disk.write_at(&[0u8; 512], 0).is_err());
        assert!(!disk.supports_discard());
    }

    #[test]
    fn write_zeroes_zeroes_the_range_whatever_the_file_supports() {
        let f = image(&[0xabu8; 4 * 4096]);
        let disk = RawFile::open(f.as_path(), false).unwrap();
        disk.write_zeroes(4096, 4096, false).unwrap();
        disk.zero_range.store(false, Ordering::Relaxed);
        disk.write_zeroes(3 * 4096, 512, false).unwrap();
        let mut buf = vec![0u8; 4 * 4096];
        disk.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0xab));
        assert!(buf[4096..8192].iter().all(|&b| b == 0));
        assert!(buf[8192..3 * 4096].iter().all(|&b| b == 0xab));
        assert!(buf[3 * 4096..3 * 4096 + 512].iter().all(|&b| b == 0));
        assert!(buf[3 * 4096 + 512..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn discard_leaves_zeroes_where_holes_can_be_punched() {
        let f = image(&[0xcdu8; 2 * 4096]);
        let disk = RawFile::open(f.as_path(), false).unwrap();
        if !disk.supports_discard() {
            return;
        }
        disk.discard(0, 4096).unwrap();
        let mut buf = vec![0u8; 2 * 4096];
        disk.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 0xcd));
        assert_eq!(disk.size(), 2 * 4096);
    }
}
