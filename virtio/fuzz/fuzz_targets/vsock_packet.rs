//! Fuzzes the vsock packet decoder and its checks: any bytes a guest puts in a transmit chain
//! decode to a header and a verdict without panicking, an accepted packet's payload is exactly
//! its `len` bytes, and the header round-trips through its wire form.
//!
//! Run from `virtio/fuzz`: `cargo +nightly fuzz run vsock_packet corpus seeds/vsock_packet`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio::vsock::packet::{parse, Header, Verdict, HEADER_SIZE, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Some((hdr, verdict, payload)) = parse(data, 3) else {
        assert!(data.len() < HEADER_SIZE);
        return;
    };
    let wire: &[u8; HEADER_SIZE] = data[..HEADER_SIZE].try_into().expect("a header");
    assert_eq!(&hdr.to_bytes(), wire);
    assert_eq!(Header::from_bytes(wire), hdr);
    match verdict {
        Verdict::Accept(_) => {
            assert_eq!(payload.len(), hdr.len as usize);
            assert!(hdr.len <= MAX_PAYLOAD);
            assert_eq!((hdr.src_cid, hdr.dst_cid), (3, 2));
        }
        _ => assert!(payload.is_empty()),
    }
});
