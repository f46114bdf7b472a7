//! The memory file: guest RAM as one file, the RAM block's bytes at their offsets. Pages of
//! zeros are not written, so the file is sparse and a small guest's snapshot takes what it
//! used. Restore maps it `MAP_PRIVATE` (`address_space::RamBacking::SnapshotFile`): nothing is
//! read up front, pages come in on first touch, and VMs restored from one file share its
//! clean pages.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use address_space::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use address_space::vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const PAGE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;

/// Writes guest RAM (`mem`'s regions in guest-address order, one after the other) to `file`,
/// which is `total` bytes long afterwards. Returns the bytes written (non-zero pages).
pub fn write_ram(mem: &GuestMemoryMmap, file: &File) -> io::Result<u64> {
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(start + done))
                .map_err(|e| io::Error::other(e.to_string()))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    file.write_all_at(page, offset + done + (i * PAGE) as u64)?;
                    written += page.len() as u64;
                }
            }
            done += n as u64;
        }
        offset += len;
    }
    file.set_len(offset)?;
    Ok(written)
}

/// The RAM size `mem` holds (what the memory file must be).
pub fn ram_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_pages_are_holes_and_the_rest_is_in_place() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x10_0000),
        ])
        .unwrap();
        mem.write_obj(0xabu8, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0xcdu8, GuestAddress(0x1_0000_0010)).unwrap();
        let path = std::env::temp_dir().join(format!("ram-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(write_ram(&mem, &file).unwrap(), 2 * PAGE as u64);
        assert_eq!(file.metadata().unwrap().len(), 0x20_0000);
        assert!(
            file.metadata().unwrap().blocks() * 512 <= 4 * PAGE as u64,
            "sparse"
        );
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 0x3000).unwrap();
        assert_eq!(byte[0], 0xab);
        file.read_exact_at(&mut byte, 0x10_0010).unwrap();
        assert_eq!(byte[0], 0xcd);
    }
}
