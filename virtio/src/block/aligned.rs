//! Buffers whose start is aligned for O_DIRECT, without unsafe code: a `Vec` a little larger
//! than needed, used from its first aligned byte.

/// Alignment of every buffer: a page, which satisfies any logical block size up to 4 KiB.
pub const ALIGN: usize = 4096;

/// A zeroed byte buffer whose first byte is `ALIGN`-aligned. Its heap allocation never moves,
/// so its address can be handed to the kernel for as long as the buffer lives.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        // `align_offset` on a byte pointer always succeeds and is below ALIGN.
        let start = if start < ALIGN { start } else { 0 };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_starts_on_a_page_boundary_and_has_the_asked_length() {
        for len in [0, 1, 512, 4096, 12345] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.as_mut_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
