//! How the host memory of a RAM region is made: anonymous private memory (the default), a shared
//! memfd (`-machine mem-share=on`, so vhost-user back ends can map guest RAM), or a file on a
//! hugetlbfs mount (`-mem-path`); touched up front (`-mem-prealloc`); left out of core dumps
//! (`-machine dump-guest-core=off`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, MmapRegion};

/// `statfs` f_type of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `madvise` advice that populates writable page tables (Linux 5.14).
const MADV_POPULATE_WRITE: i32 = 23;

/// Where RAM comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RamBacking {
    /// Anonymous private memory, populated on first touch.
    #[default]
    Anonymous,
    /// A memfd mapped shared, so another process can map the same guest memory.
    SharedMemfd,
    /// An unlinked file in this hugetlbfs directory, mapped shared.
    Hugetlbfs(PathBuf),
    /// A snapshot's memory file, mapped private: nothing is read up front, pages come in on
    /// first touch, writes stay in this process, and VMs mapping one file share its clean pages.
    SnapshotFile(PathBuf),
}

/// How a RAM region's host memory is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamOptions {
    /// The backing.
    pub backing: RamBacking,
    /// Touch every page at start so the guest never waits for (or lacks) host memory.
    pub prealloc: bool,
    /// Include guest RAM in core dumps of the VMM.
    pub dump: bool,
}

impl Default for RamOptions {
    fn default() -> Self {
        RamOptions {
            backing: RamBacking::Anonymous,
            prealloc: false,
            dump: true,
        }
    }
}

/// Why RAM could not be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum RamBackingError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create a shared memory file for guest RAM")]
    Memfd(#[source] io::Error),
    /// The -mem-path directory is not on hugetlbfs.
    #[error("{0:?} is not a hugetlbfs mount")]
    NotHugetlbfs(PathBuf),
    /// The hugetlbfs file could not be made.
    #[error("cannot create a guest RAM file in {dir:?}")]
    HugetlbfsFile {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The snapshot's memory file could not be opened.
    #[error("cannot open the memory file {path:?}")]
    SnapshotOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The snapshot's memory file is not the size of guest RAM.
    #[error("the memory file {path:?} has {found} bytes, guest RAM is {expected}: it is truncated or from another machine")]
    SnapshotSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// Guest RAM.
        expected: u64,
    },
    /// mmap failed (for hugetlbfs, usually not enough free huge pages).
    #[error("cannot map guest RAM")]
    Map(#[source] MmapRegionError),
    /// Touching RAM up front failed: the host does not have that much memory to give.
    #[error("cannot preallocate guest RAM")]
    Prealloc(#[source] io::Error),
    /// madvise(MADV_DONTDUMP) failed.
    #[error("cannot exclude guest RAM from core dumps")]
    DontDump(#[source] io::Error),
}

/// Maps `size` bytes as `options` ask.
pub(crate) fn map(size: usize, options: &RamOptions) -> Result<MmapRegion, RamBackingError> {
    let region = match &options.backing {
        RamBacking::Anonymous => MmapRegion::new(size).map_err(RamBackingError::Map)?,
        RamBacking::SharedMemfd => map_shared(memfd(size)?, size)?,
        RamBacking::Hugetlbfs(dir) => map_shared(hugetlbfs_file(dir, size)?, size)?,
        RamBacking::SnapshotFile(path) => map_private_file(path, size)?,
    };
    if !options.dump {
        advise(&region, libc::MADV_DONTDUMP).map_err(RamBackingError::DontDump)?;
    }
    if options.prealloc {
        advise(&region, MADV_POPULATE_WRITE).map_err(RamBackingError::Prealloc)?;
    }
    Ok(region)
}

fn map_private_file(path: &Path, size: usize) -> Result<MmapRegion, RamBackingError> {
    let open_err = |source| RamBackingError::SnapshotOpen {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let found = file.metadata().map_err(open_err)?.len();
    if found != size as u64 {
        return Err(RamBackingError::SnapshotSize {
            path: path.to_owned(),
            found,
            expected: size as u64,
        });
    }
    MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(RamBackingError::Map)
}

fn map_shared(file: File, size: usize) -> Result<MmapRegion, RamBackingError> {
    // No MAP_NORESERVE: hugetlbfs then reserves the huge pages at mmap time and fails cleanly
    // when there are not enough, instead of the guest dying of SIGBUS later.
    MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(RamBackingError::Map)
}

fn memfd(size: usize) -> Result<File, RamBackingError> {
    let name = c"nimbus-guest-ram";
    // SAFETY: `name` is a NUL-terminated string that outlives the call; the flag is valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(RamBackingError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).map_err(RamBackingError::Memfd)?;
    Ok(file)
}

fn is_hugetlbfs(dir: &Path) -> io::Result<bool> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is NUL-terminated and `stat` is writable storage for one statfs.
    if unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the struct (which was zeroed before anyway).
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_type == HUGETLBFS_MAGIC)
}

fn hugetlbfs_file(dir: &Path, size: usize) -> Result<File, RamBackingError> {
    let err = |source| RamBackingError::HugetlbfsFile {
        dir: dir.to_path_buf(),
        source,
    };
    if !is_hugetlbfs(dir).map_err(err)? {
        return Err(RamBackingError::NotHugetlbfs(dir.to_path_buf()));
    }
    let path = dir.join(format!("nimbus-ram-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(err)?;
    // Unlinked at once: the memory goes away with the last mapping, whatever way Nimbus exits.
    std::fs::remove_file(&path).map_err(err)?;
    file.set_len(size as u64).map_err(err)?;
    Ok(file)
}

fn advise(region: &MmapRegion, advice: i32) -> io::Result<()> {
    // SAFETY: the range is exactly the mapping `region` owns and keeps mapped for this call;
    // MADV_DONTDUMP and MADV_POPULATE_WRITE change no contents, only dump and residency.
    let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.size(), advice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The file descriptor behind a shared mapping, if any (for vhost-user later).
pub(crate) fn backing_fd(region: &MmapRegion) -> Option<i32> {
    region.file_offset().map(|f| f.file().as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_flags_of(addr: usize) -> String {
        crate::test_util::smaps_line(addr as u64, "VmFlags:")
    }

    #[test]
    fn default_is_anonymous_private_and_dumpable() {
        let region = map(1 << 20, &RamOptions::default()).expect("map");
        assert!(backing_fd(&region).is_none());
        assert!(!vm_flags_of(region.as_ptr() as usize).contains(" dd"));
    }

    #[test]
    fn dump_off_marks_the_mapping_dontdump() {
        let options = RamOptions {
            dump: false,
            ..RamOptions::default()
        };
        let region = map(1 << 20, &options).expect("map");
        assert!(vm_flags_of(region.as_ptr() as usize).contains(" dd"));
    }

    #[test]
    fn shared_memfd_backing_is_a_shared_file_mapping() {
        let options = RamOptions {
            backing: RamBacking::SharedMemfd,
            ..RamOptions::default()
        };
        let region = map(1 << 20, &options).expect("map");
        let fd = backing_fd(&region).expect("a file behind it");
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("link");
        assert!(
            link.to_string_lossy().contains("memfd:nimbus-guest-ram"),
            "{link:?}"
        );
        assert!(vm_flags_of(region.as_ptr() as usize).contains(" sh"));
    }

    #[test]
    fn prealloc_makes_every_page_resident() {
        let options = RamOptions {
            prealloc: true,
            ..RamOptions::default()
        };
        let region = map(4 << 20, &options).expect("map");
        // Counted page by page in /proc/self/pagemap (bit 63: present), not from the Rss of
        // the mapping in smaps: the kernel may merge the mapping with a neighbouring one.
        let pages = (4 << 20) / 4096;
        let mut entries = vec![0u8; pages * 8];
        let pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        let offset = (region.as_ptr() as u64 / 4096) * 8;
        std::os::unix::fs::FileExt::read_exact_at(&pagemap, &mut entries, offset)
            .expect("read pagemap");
        let resident = entries
            .chunks_exact(8)
            .filter(|e| u64::from_le_bytes((*e).try_into().expect("8 bytes")) >> 63 == 1)
            .count();
        assert_eq!(resident * 4, 4 << 10, "KiB resident of the 4 MiB mapping");
    }

    #[test]
    fn mem_path_outside_hugetlbfs_is_refused_by_name() {
        let dir = std::env::temp_dir();
        let options = RamOptions {
            backing: RamBacking::Hugetlbfs(dir.clone()),
            ..RamOptions::default()
        };
        let err = map(2 << 20, &options).expect_err("tmp is not hugetlbfs");
        assert_eq!(err.to_string(), format!("{dir:?} is not a hugetlbfs mount"));
    }

    #[test]
    fn missing_mem_path_is_an_error_naming_it() {
        let dir = PathBuf::from("/nonexistent/nimbus-hugepages");
        let options = RamOptions {
            backing: RamBacking::Hugetlbfs(dir.clone()),
            ..RamOptions::default()
        };
        let err = map(2 << 20, &options).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/nimbus-hugepages"),
            "{err}"
        );
    }
}
