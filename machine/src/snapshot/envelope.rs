//! The state file's envelope: a magic number, a format version, the payload's length and its
//! CRC-32, then the payload. A file that is truncated, corrupt, not a snapshot or from a newer
//! Nimbus is refused before anything in it is believed.

/// The first bytes of a state file.
pub const MAGIC: &[u8; 8] = b"NIMBUSVM";
/// The format this Nimbus writes and reads.
pub const VERSION: u32 = 1;
/// Magic, version, payload length, CRC-32.
const HEADER: usize = 8 + 4 + 8 + 4;

/// Why a state file cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than its header, or than the length the header gives.
    #[error("it is truncated ({found} bytes, {expected} expected)")]
    Truncated {
        /// Bytes expected at least.
        expected: u64,
        /// Bytes there.
        found: u64,
    },
    /// Not a Nimbus state file.
    #[error("it is not a Nimbus snapshot")]
    NotASnapshot,
    /// Written by a newer Nimbus.
    #[error("it has format version {0}; this Nimbus reads version {VERSION}")]
    Version(u32),
    /// Bytes after the payload.
    #[error("it has {0} bytes after its end")]
    Trailing(u64),
    /// The payload does not match its checksum.
    #[error("its checksum does not match: the file is corrupt")]
    Checksum,
}

/// `payload` in its envelope.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of `file`, checked.
pub fn open(file: &[u8]) -> Result<&[u8], EnvelopeError> {
    let found = file.len() as u64;
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::NotASnapshot);
    }
    let header = file.get(..HEADER).ok_or(EnvelopeError::Truncated {
        expected: HEADER as u64,
        found,
    })?;
    let word = |at: usize, n: usize| {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&header[at..at + n]);
        u64::from_le_bytes(bytes)
    };
    let version = word(8, 4) as u32;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let len = word(12, 8);
    let checksum = word(20, 4) as u32;
    let expected = (HEADER as u64).saturating_add(len);
    if found < expected {
        return Err(EnvelopeError::Truncated { expected, found });
    }
    if found > expected {
        return Err(EnvelopeError::Trailing(found - expected));
    }
    let payload = &file[HEADER..];
    if crc32(payload) != checksum {
        return Err(EnvelopeError::Checksum);
    }
    Ok(payload)
}

/// CRC-32 (IEEE 802.3, reflected), table-driven.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn a_sealed_payload_opens_to_itself() {
        let sealed = seal(b"{\"cpus\":1}");
        assert_eq!(open(&sealed), Ok(&b"{\"cpus\":1}"[..]));
    }

    #[test]
    fn every_damage_is_named() {
        let sealed = seal(b"payload");
        let mut flipped = sealed.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert_eq!(open(&flipped), Err(EnvelopeError::Checksum));
        assert!(matches!(
            open(&sealed[..sealed.len() - 1]),
            Err(EnvelopeError::Truncated { .. })
        ));
        assert!(matches!(
            open(&sealed[..10]),
            Err(EnvelopeError::Truncated { .. })
        ));
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open(&longer), Err(EnvelopeError::Trailing(1)));
        let mut newer = sealed.clone();
        newer[8] = 2;
        assert_eq!(open(&newer), Err(EnvelopeError::Version(2)));
        assert_eq!(open(b"ELF\x7f"), Err(EnvelopeError::NotASnapshot));
        assert_eq!(open(b""), Err(EnvelopeError::NotASnapshot));
    }

    #[test]
    fn a_huge_claimed_length_is_truncation_not_an_allocation() {
        let mut sealed = seal(b"x");
        sealed[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            open(&sealed),
            Err(EnvelopeError::Truncated { .. })
        ));
    }
}
