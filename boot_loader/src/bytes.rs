//! Fields in byte buffers.
//!
//! Reads come from untrusted images and are bounds-checked (`None` when the field does not lie
//! inside the buffer); they fill `ByteValued` layouts (x86 byte order) without unsafe code.
//! Writes are little-endian and go into buffers this crate sized itself, at constant offsets.

use vm_memory::ByteValued;

/// The `T` whose bytes start at `off`, or `None` when they do not all lie inside `buf`.
pub(crate) fn read_obj<T: ByteValued + Default>(buf: &[u8], off: usize) -> Option<T> {
    let bytes = buf.get(off..off.checked_add(std::mem::size_of::<T>())?)?;
    let mut obj = T::default();
    obj.as_mut_slice().copy_from_slice(bytes);
    Some(obj)
}

/// The little-endian `u16` at `off`.
#[cfg(test)]
pub(crate) fn read_u16(buf: &[u8], off: usize) -> Option<u16> {
    read_obj(buf, off)
}

/// The little-endian `u32` at `off`.
#[cfg(test)]
pub(crate) fn read_u32(buf: &[u8], off: usize) -> Option<u32> {
    read_obj(buf, off)
}

/// The little-endian `u64` at `off`.
#[cfg(test)]
pub(crate) fn read_u64(buf: &[u8], off: usize) -> Option<u64> {
    read_obj(buf, off)
}

/// Copies `bytes` into `buf` at `off`; the caller sized `buf` to hold them.
pub(crate) fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Writes a little-endian `u16` at `off`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, value: u16) {
    put(buf, off, &value.to_le_bytes());
}

/// Writes a little-endian `u32` at `off`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, value: u32) {
    put(buf, off, &value.to_le_bytes());
}

/// The byte that makes the sum of `bytes` plus itself zero (modulo 256).
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_little_endian() {
        let mut buf = [0u8; 16];
        put_u16(&mut buf, 0, 0x1234);
        put_u32(&mut buf, 2, 0x5678_9abc);
        put(&mut buf, 6, &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[..4], &[0x34, 0x12, 0xbc, 0x9a]);
        assert_eq!(read_u16(&buf, 0), Some(0x1234));
        assert_eq!(read_u32(&buf, 2), Some(0x5678_9abc));
        assert_eq!(read_u64(&buf, 6), Some(0x0102_0304_0506_0708));
    }

    #[test]
    fn reads_past_the_end_are_none() {
        let buf = [0u8; 8];
        assert_eq!(read_u64(&buf, 1), None);
        assert_eq!(read_u32(&buf, usize::MAX - 1), None);
        assert_eq!(read_obj::<u8>(&buf, 8), None);
    }

    #[test]
    fn checksum_makes_the_sum_zero() {
        let bytes = [1u8, 2, 250, 7];
        let sum = bytes
            .iter()
            .fold(checksum(&bytes), |acc, b| acc.wrapping_add(*b));
        assert_eq!(sum, 0);
    }
}
