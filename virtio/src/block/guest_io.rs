//! Reads and writes straight between the image and guest RAM (`preadv`/`pwritev`, and the
//! iovecs io_uring's vectored operations take), without a bounce buffer.
//!
//! The device's data segments are guest addresses the request already checked against RAM;
//! [`GuestIovecs::new`] turns them into host addresses, one iovec per segment, and declines a
//! segment that crosses from one RAM range into another (the caller then bounces). The iovecs
//! point into the guest-RAM mapping, which the device's `GuestMemoryMmap` keeps mapped for as
//! long as the device (and so any request in flight) lives.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use address_space::vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::request::SECTOR_SIZE;

/// Host addresses of a request's data segments in guest RAM.
pub(crate) struct GuestIovecs {
    iov: Iovecs,
    /// Every segment's address and length is a multiple of a sector (what O_DIRECT needs).
    sector_aligned: bool,
}

// SAFETY: the iovecs are plain addresses into the guest-RAM mapping, which every thread of the
// process may access; moving them to another thread (an iothread) changes nothing about that.
unsafe impl Send for GuestIovecs {}

/// One iovec inline (the usual request: one data buffer), or several on the heap, where an
/// engine's vectored operation can point at them while the request moves.
enum Iovecs {
    One(libc::iovec),
    Many(Vec<libc::iovec>),
}

impl std::fmt::Debug for GuestIovecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuestIovecs({} segments)", self.as_slice().len())
    }
}

impl GuestIovecs {
    /// The host addresses of `segments`, or `None` if one of them is not inside one RAM range.
    pub(crate) fn new(mem: &GuestMemoryMmap, segments: &[(GuestAddress, usize)]) -> Option<Self> {
        let mut sector_aligned = true;
        let mut host = |&(addr, len): &(GuestAddress, usize)| {
            let slice = mem.get_slice(addr, len).ok()?;
            let base = slice.ptr_guard_mut().as_ptr();
            sector_aligned &= (base as usize | len) as u64 & (SECTOR_SIZE - 1) == 0;
            Some(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            })
        };
        let iov = match segments {
            [one] => Iovecs::One(host(one)?),
            _ => Iovecs::Many(segments.iter().map(host).collect::<Option<Vec<_>>>()?),
        };
        Some(GuestIovecs {
            iov,
            sector_aligned,
        })
    }

    /// Whether every segment's address and length is a multiple of 512 (O_DIRECT can take it).
    pub(crate) fn sector_aligned(&self) -> bool {
        self.sector_aligned
    }

    /// The iovecs, for an engine that submits them.
    /// The iovecs, for an engine that submits them (one inline iovec moves with `self`: an
    /// engine copies it rather than pointing at it).
    pub(crate) fn as_slice(&self) -> &[libc::iovec] {
        match &self.iov {
            Iovecs::One(v) => std::slice::from_ref(v),
            Iovecs::Many(v) => v,
        }
    }

    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.as_slice().iter().map(|v| v.iov_len).sum()
    }

    /// Fills the segments from `fd` at `offset`; a read that ends early (the image shrank) is
    /// `UnexpectedEof`, as `read_exact_at`.
    pub(crate) fn read_from(&self, fd: RawFd, offset: u64) -> io::Result<()> {
        self.transfer(fd, offset, Direction::Read)
    }

    /// Writes the segments to `fd` at `offset`.
    pub(crate) fn write_to(&self, fd: RawFd, offset: u64) -> io::Result<()> {
        self.transfer(fd, offset, Direction::Write)
    }

    /// `preadv`/`pwritev` until every byte moved, resuming after a short transfer (the iovecs
    /// are copied only then).
    fn transfer(&self, fd: RawFd, offset: u64, dir: Direction) -> io::Result<()> {
        let total = self.len();
        let n = vectored(fd, self.as_slice(), offset, dir)?;
        if n == total {
            return Ok(());
        }
        let mut iov = self.as_slice().to_vec();
        let (mut first, mut done) = (0, 0);
        let mut n = n;
        loop {
            if n == 0 {
                return Err(match dir {
                    Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                    Direction::Write => io::ErrorKind::WriteZero.into(),
                });
            }
            done += n;
            while n > 0 && first < iov.len() {
                let v = &mut iov[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `n < iov_len`, so the new base stays inside the same segment.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
            if done >= total {
                return Ok(());
            }
            n = vectored(fd, &iov[first..], offset + done as u64, dir)?;
        }
    }
}

/// One `preadv`/`pwritev` of at most 1024 iovecs, retried when interrupted; the bytes moved.
fn vectored(fd: RawFd, iov: &[libc::iovec], offset: u64, dir: Direction) -> io::Result<usize> {
    let count = libc::c_int::try_from(iov.len().min(1024)).unwrap_or(1024);
    let at =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    loop {
        // SAFETY: `iov` holds at least `count` valid iovecs; each one is a range inside the
        // guest-RAM mapping (checked by `get_slice` in `GuestIovecs::new`), which stays mapped
        // while the device lives. The kernel reads or writes only those ranges; no Rust
        // reference to guest RAM exists (it is accessed as volatile memory everywhere).
        let n = unsafe {
            match (dir, iov) {
                // One buffer: pread/pwrite spare the kernel importing an iovec. Made as raw
                // syscalls: glibc's wrappers add thread-cancellation bookkeeping per call,
                // which no thread of the VMM uses.
                (Direction::Read, [one]) => {
                    libc::syscall(libc::SYS_pread64, fd, one.iov_base, one.iov_len, at) as isize
                }
                (Direction::Write, [one]) => {
                    libc::syscall(libc::SYS_pwrite64, fd, one.iov_base, one.iov_len, at) as isize
                }
                (Direction::Read, _) => libc::preadv(fd, iov.as_ptr(), count, at),
                (Direction::Write, _) => libc::pwritev(fd, iov.as_ptr(), count, at),
            }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use address_space::vm_memory::Bytes;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn two_ranges() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000), (GuestAddress(0x4000), 0x4000)])
            .unwrap()
    }

    #[test]
    fn segments_are_read_and_written_in_order() {
        let mem = two_ranges();
        let f = TempFile::new().unwrap();
        let data: Vec<u8> = (0..1536).map(|i| (i % 251) as u8).collect();
        f.as_file().write_all_at(&data, 512).unwrap();
        let segs = [(GuestAddress(0x1000), 512), (GuestAddress(0x5000), 1024)];
        let iov = GuestIovecs::new(&mem, &segs).unwrap();
        assert_eq!(iov.len(), 1536);
        assert!(iov.sector_aligned());
        iov.read_from(f.as_file().as_raw_fd(), 512).unwrap();
        let mut got = vec![0u8; 1536];
        mem.read_slice(&mut got[..512], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(0x5000))
            .unwrap();
        assert_eq!(got, data);
        iov.write_to(f.as_file().as_raw_fd(), 4096).unwrap();
        let mut back = vec![0u8; 1536];
        f.as_file().read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_segment_across_two_ram_ranges_or_outside_ram_is_declined() {
        let mem = two_ranges();
        assert!(GuestIovecs::new(&mem, &[(GuestAddress(0x3f00), 0x200)]).is_none());
        assert!(GuestIovecs::new(&mem, &[(GuestAddress(0x7f00), 0x200)]).is_none());
        assert!(!GuestIovecs::new(&mem, &[(GuestAddress(0x10), 0x200)])
            .unwrap()
            .sector_aligned());
    }

    #[test]
    fn a_read_past_the_end_of_the_image_is_unexpected_eof() {
        let mem = two_ranges();
        let f = TempFile::new().unwrap();
        f.as_file().set_len(1024).unwrap();
        let iov = GuestIovecs::new(&mem, &[(GuestAddress(0), 2048)]).unwrap();
        let e = iov.read_from(f.as_file().as_raw_fd(), 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
