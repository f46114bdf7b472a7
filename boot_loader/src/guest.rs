//! Writing into guest memory, with errors that say what was being written.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::BootError;

/// Size of the zero buffer used to clear guest memory.
const ZERO_CHUNK: usize = 64 * 1024;

/// Writes `bytes` at guest-physical `addr`; `what` names the structure in the error.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::WriteGuest { what, addr, source })
}

/// Zeroes `len` bytes of guest memory from `addr`.
pub(crate) fn zero(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    what: &'static str,
) -> Result<(), BootError> {
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(ZERO_CHUNK as u64);
        // `chunk` is at most ZERO_CHUNK, so the cast and the slice are in range.
        write(mem, addr + done, &zeros[..chunk as usize], what)?;
        done += chunk;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{guest_memory, read_guest};

    #[test]
    fn zero_clears_more_than_one_chunk() {
        let mem = guest_memory(4 << 20);
        let len = ZERO_CHUNK as u64 * 2 + 3;
        write(&mem, 0x10_0000, &vec![0xaa; len as usize + 1], "test").unwrap();
        zero(&mem, 0x10_0000, len, "test").unwrap();
        let back = read_guest(&mem, 0x10_0000, len as usize + 1);
        assert!(back[..len as usize].iter().all(|b| *b == 0));
        assert_eq!(back[len as usize], 0xaa);
    }

    #[test]
    fn write_outside_memory_names_the_structure() {
        let mem = guest_memory(4 << 20);
        let err = write(&mem, 8 << 20, &[1], "zero page").unwrap_err();
        assert!(err.to_string().contains("zero page"));
    }
}
