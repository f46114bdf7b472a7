//! Giving guest RAM back to the host (virtio-balloon inflation, free page reporting).
//!
//! [`RamDiscard`] is a fixed table of the RAM ranges of a flat view, each with how its host
//! memory is released: private mappings (anonymous RAM, or a snapshot's memory file mapped
//! `MAP_PRIVATE`) with `madvise(MADV_DONTNEED)`, which drops the pages (the next touch reads
//! zeros, or the file's bytes); shared mappings (a memfd for `mem-share=on`, a hugetlbfs file
//! for `-mem-path`) with `fallocate(PUNCH_HOLE)` on the file, which frees the pages in every
//! process that maps them. A range that is not wholly inside one RAM range of the table is
//! refused, so nothing outside guest RAM is ever touched. On hugetlbfs the kernel only frees
//! whole huge pages: a 4 KiB hole there frees nothing.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::flat_view::{FlatTarget, FlatView};
use crate::ram::RamBlock;

/// How a RAM range's host memory is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardHow {
    /// `madvise(MADV_DONTNEED)` on the private mapping.
    DontNeed,
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` on the shared file.
    PunchHole,
}

/// Why a range could not be discarded.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// The range is not wholly inside one RAM range (or is empty or unaligned).
    #[error("{len:#x} bytes at {gpa:#x} are not inside guest RAM")]
    NotRam {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The kernel refused.
    #[error("cannot release {len:#x} bytes of guest RAM at {gpa:#x}")]
    Release {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// What madvise or fallocate said.
        #[source]
        source: io::Error,
    },
}

/// One RAM range of the view.
#[derive(Debug)]
struct Range {
    gpa: u64,
    len: u64,
    host_addr: u64,
    /// Where the range starts in the backing file (shared mappings only).
    file_offset: u64,
    how: DiscardHow,
    fd: Option<RawFd>,
    /// Keeps the mapping (and its file) alive as long as the table.
    _block: Arc<RamBlock>,
}

/// The RAM ranges of a flat view and how to release each.
#[derive(Debug, Default)]
pub struct RamDiscard {
    ranges: Vec<Range>,
}

/// Page granularity of the balloon protocol and of discards.
pub const DISCARD_PAGE: u64 = 4096;

impl RamDiscard {
    /// The RAM ranges of `view`.
    pub fn of(view: &FlatView) -> RamDiscard {
        let ranges = view
            .ranges()
            .iter()
            .filter_map(|range| {
                let FlatTarget::Ram {
                    host_addr,
                    region,
                    offset,
                } = &range.target
                else {
                    return None;
                };
                let mmap = region.mmap();
                let shared = mmap.flags() & libc::MAP_SHARED != 0;
                let file = mmap.file_offset().filter(|_| shared);
                Some(Range {
                    gpa: range.base,
                    len: range.size,
                    host_addr: *host_addr,
                    file_offset: file.map_or(0, |f| f.start() + offset),
                    how: if file.is_some() {
                        DiscardHow::PunchHole
                    } else {
                        DiscardHow::DontNeed
                    },
                    fd: file.map(|f| std::os::fd::AsRawFd::as_raw_fd(f.file())),
                    _block: Arc::clone(region),
                })
            })
            .collect();
        RamDiscard { ranges }
    }

    /// The end of the highest RAM range (0 without RAM).
    pub fn end(&self) -> u64 {
        self.ranges.iter().map(|r| r.gpa + r.len).max().unwrap_or(0)
    }

    /// Whether `[gpa, gpa + len)` is non-empty, page aligned and wholly inside one RAM range.
    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.find(gpa, len).is_some()
    }

    fn find(&self, gpa: u64, len: u64) -> Option<&Range> {
        if len == 0 || !gpa.is_multiple_of(DISCARD_PAGE) || !len.is_multiple_of(DISCARD_PAGE) {
            return None;
        }
        let end = gpa.checked_add(len)?;
        self.ranges
            .iter()
            .find(|r| gpa >= r.gpa && end <= r.gpa + r.len)
    }

    /// Releases the host memory of `[gpa, gpa + len)`, which must be page aligned and inside
    /// one RAM range; returns how.
    pub fn discard(&self, gpa: u64, len: u64) -> Result<DiscardHow, DiscardError> {
        let range = self
            .find(gpa, len)
            .ok_or(DiscardError::NotRam { gpa, len })?;
        let into = gpa - range.gpa;
        let release = |source| DiscardError::Release { gpa, len, source };
        match (range.how, range.fd) {
            (DiscardHow::PunchHole, Some(fd)) => {
                punch_hole(fd, range.file_offset + into, len).map_err(release)?
            }
            _ => dont_need(range.host_addr + into, len).map_err(release)?,
        }
        Ok(range.how)
    }
}

fn dont_need(host_addr: u64, len: u64) -> io::Result<()> {
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `RamDiscard::find` checked that the range lies inside one RAM range of the view,
    // whose mapping the table keeps alive (`_block`); MADV_DONTNEED on a private mapping only
    // drops its pages (the guest asked for that: they read as zeros or as the file afterwards)
    // and never touches memory outside the range.
    let rc = unsafe { libc::madvise(host_addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn punch_hole(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let bad = || io::Error::from(io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(|_| bad())?;
    let len = libc::off_t::try_from(len).map_err(|_| bad())?;
    // SAFETY: `fd` is the backing file of a RAM block the table keeps alive; fallocate only
    // frees blocks of that file inside the range, which belongs to the guest range asked for.
    let rc = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_backing::{RamBacking, RamOptions};
    use crate::region::Region;
    use crate::test_util::{device, smaps_line};

    fn rss_kib(addr: u64) -> u64 {
        smaps_line(addr, "Rss:")
            .split_whitespace()
            .nth(1)
            .expect("n")
            .parse()
            .expect("kib")
    }

    fn view_with(options: &RamOptions) -> (Region, FlatView) {
        let root = Region::container("root", 0x100_0000);
        let ram = Region::ram_with("ram", 0x40_0000, options).expect("ram");
        root.add_subregion(ram.clone(), 0x10_0000, 0).expect("add");
        root.add_subregion(device("io", 0x1000), 0x80_0000, 0)
            .expect("add");
        let view = FlatView::render(&root);
        (ram, view)
    }

    fn touch(ram: &Region, len: u64) {
        let block = ram.ram_block().expect("ram");
        for off in (0..len).step_by(4096) {
            assert!(block.write(off, &[1]));
        }
    }

    #[test]
    fn anonymous_ram_is_released_with_dontneed_and_reads_zero() {
        let (ram, view) = view_with(&RamOptions::default());
        touch(&ram, 0x40_0000);
        let host = ram.ram_block().expect("ram").host_addr();
        let before = rss_kib(host);
        let table = RamDiscard::of(&view);
        assert_eq!(table.end(), 0x50_0000);
        let how = table.discard(0x10_0000, 0x20_0000).expect("discard");
        assert_eq!(how, DiscardHow::DontNeed);
        assert!(before - rss_kib(host) >= 2048, "2 MiB fewer resident");
        let mut back = [9u8];
        assert!(ram.ram_block().expect("ram").read(0, &mut back));
        assert_eq!(back, [0]);
    }

    #[test]
    fn shared_memfd_ram_is_released_with_a_hole() {
        let options = RamOptions {
            backing: RamBacking::SharedMemfd,
            ..RamOptions::default()
        };
        let (ram, view) = view_with(&options);
        touch(&ram, 0x40_0000);
        let table = RamDiscard::of(&view);
        let how = table.discard(0x20_0000, 0x1000).expect("discard");
        assert_eq!(how, DiscardHow::PunchHole);
        let block = ram.ram_block().expect("ram");
        let mut back = [9u8];
        assert!(block.read(0x10_0000, &mut back));
        assert_eq!(back, [0], "the hole reads as zeros");
        assert!(block.read(0x10_1000, &mut back));
        assert_eq!(back, [1], "the next page is kept");
    }

    #[test]
    fn ranges_outside_ram_unaligned_or_across_the_end_are_refused() {
        let (_ram, view) = view_with(&RamOptions::default());
        let table = RamDiscard::of(&view);
        for (gpa, len) in [
            (0, 0x1000),
            (0x80_0000, 0x1000),
            (0x4f_f000, 0x2000),
            (0x10_0800, 0x1000),
            (0x10_0000, 0),
            (u64::MAX - 0xfff, 0x1000),
        ] {
            assert!(
                matches!(table.discard(gpa, len), Err(DiscardError::NotRam { .. })),
                "{gpa:#x}+{len:#x}"
            );
        }
        assert!(table.is_ram(0x4f_f000, 0x1000));
    }
}
