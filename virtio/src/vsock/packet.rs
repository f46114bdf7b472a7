//! The virtio-vsock packet header (virtio spec 5.10.6, `struct virtio_vsock_hdr` in
//! linux/virtio_vsock.h) and the checks a packet from the guest must pass before it reaches a
//! connection.

/// Bytes of a packet header.
pub const HEADER_SIZE: usize = 44;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The only socket type served: a stream (VIRTIO_VSOCK_TYPE_STREAM).
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet, both ways (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// SHUTDOWN flag: the sender will receive nothing more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send nothing more.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags: the sender is done with the connection.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A packet operation (VIRTIO_VSOCK_OP_*).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused, or aborted).
    Rst = 3,
    /// The sender will not send and/or receive any more (flags).
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// The sender's `buf_alloc` and `fwd_cnt` changed.
    CreditUpdate = 6,
    /// The sender asks for a CREDIT_UPDATE.
    CreditRequest = 7,
}

impl Op {
    /// The operation numbered `op`, if it is one.
    pub fn from_u16(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, fields in host order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type (`type` in the spec).
    pub kind: u16,
    /// Operation (an [`Op`] when valid).
    pub op: u16,
    /// Operation flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian header in `bytes`.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Header {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header, little-endian.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A host-to-guest header from host port `local` to guest `cid`:`peer`, with no payload
    /// and no credit fields yet.
    pub fn to_guest(cid: u64, local: u32, peer: u32, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: cid,
            src_port: local,
            dst_port: peer,
            kind: TYPE_STREAM,
            op: op as u16,
            ..Header::default()
        }
    }
}

/// What to do with a packet the guest sent, before any connection state is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A well-formed stream packet: hand it to its connection.
    Accept(Op),
    /// Not addressed from this guest to the host: drop it (and count it), with no reply.
    DropWrongCid,
    /// Malformed (unknown type or operation, a length past the limit or past the buffer):
    /// reset the connection it names.
    Reset(Malformed),
}

/// Why a packet was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not a stream packet.
    Type,
    /// No such operation.
    Op,
    /// `len` above [`MAX_PAYLOAD`].
    TooLong,
    /// `len` above the bytes the descriptor chain holds after the header.
    PastBuffer,
}

/// Checks a header from the guest whose id is `guest_cid`, when the chain holds `payload_room`
/// bytes after the header.
pub fn check(hdr: &Header, guest_cid: u64, payload_room: usize) -> Verdict {
    if hdr.src_cid != guest_cid || hdr.dst_cid != HOST_CID {
        return Verdict::DropWrongCid;
    }
    if hdr.kind != TYPE_STREAM {
        return Verdict::Reset(Malformed::Type);
    }
    let Some(op) = Op::from_u16(hdr.op) else {
        return Verdict::Reset(Malformed::Op);
    };
    if hdr.len > MAX_PAYLOAD {
        return Verdict::Reset(Malformed::TooLong);
    }
    if hdr.len as usize > payload_room {
        return Verdict::Reset(Malformed::PastBuffer);
    }
    Verdict::Accept(op)
}

/// Decodes and checks one packet from the guest given as the bytes of its descriptor chain
/// (the fuzzing entry point): the header, the verdict and the payload it carries.
pub fn parse(bytes: &[u8], guest_cid: u64) -> Option<(Header, Verdict, &[u8])> {
    let head: &[u8; HEADER_SIZE] = bytes.get(..HEADER_SIZE)?.try_into().ok()?;
    let hdr = Header::from_bytes(head);
    let rest = &bytes[HEADER_SIZE..];
    let verdict = check(&hdr, guest_cid, rest.len());
    let payload = match verdict {
        Verdict::Accept(_) => &rest[..hdr.len as usize],
        _ => &[],
    };
    Some((hdr, verdict, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_guest(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 1024,
            len,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }

    #[test]
    fn header_round_trips_through_its_wire_form() {
        let hdr = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 1024,
            len: 17,
            kind: 1,
            op: 5,
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 0xffff_fff0,
        };
        let bytes = hdr.to_bytes();
        assert_eq!(
            &bytes[0..8],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            "little-endian src_cid"
        );
        assert_eq!(&bytes[30..32], &[5, 0], "op at offset 30");
        assert_eq!(Header::from_bytes(&bytes), hdr);
    }

    #[test]
    fn wrong_source_or_destination_cid_is_dropped_without_reply() {
        let mut hdr = from_guest(Op::Rw as u16, 0);
        hdr.src_cid = 4;
        assert_eq!(check(&hdr, 3, 0), Verdict::DropWrongCid);
        let mut hdr = from_guest(Op::Rw as u16, 0);
        hdr.dst_cid = 7;
        assert_eq!(check(&hdr, 3, 0), Verdict::DropWrongCid);
    }

    #[test]
    fn malformed_packets_reset_their_connection() {
        let mut hdr = from_guest(Op::Rw as u16, 0);
        hdr.kind = 2;
        assert_eq!(check(&hdr, 3, 0), Verdict::Reset(Malformed::Type));
        assert_eq!(
            check(&from_guest(99, 0), 3, 0),
            Verdict::Reset(Malformed::Op)
        );
        assert_eq!(
            check(&from_guest(0, 0), 3, 0),
            Verdict::Reset(Malformed::Op)
        );
        assert_eq!(
            check(&from_guest(5, MAX_PAYLOAD + 1), 3, 1 << 20),
            Verdict::Reset(Malformed::TooLong)
        );
        assert_eq!(
            check(&from_guest(5, 60000), 3, 100),
            Verdict::Reset(Malformed::PastBuffer)
        );
        assert_eq!(
            check(&from_guest(5, MAX_PAYLOAD), 3, MAX_PAYLOAD as usize),
            Verdict::Accept(Op::Rw)
        );
    }

    #[test]
    fn parse_returns_exactly_the_payload_the_header_names() {
        let mut bytes = from_guest(Op::Rw as u16, 3).to_bytes().to_vec();
        bytes.extend_from_slice(b"abcdef");
        let (hdr, verdict, payload) = parse(&bytes, 3).expect("a header");
        assert_eq!(
            (hdr.len, verdict, payload),
            (3, Verdict::Accept(Op::Rw), &b"abc"[..])
        );
        assert!(parse(&bytes[..HEADER_SIZE - 1], 3).is_none());
    }
}
