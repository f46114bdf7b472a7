//! Fuzzes a QMP session with arbitrary client bytes, split into feeds at input-chosen points:
//! the JSON streamer, the parser, negotiation and argument checking must never panic, every
//! reply must be one JSON object ending in CRLF, and the buffered input must stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp::{Incoming, Session, VersionInfo};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut session = Session::with_input_limit(VersionInfo::nimbus("fuzz"), LIMIT);
    let chunk = usize::from(split).max(1);
    for piece in rest.chunks(chunk) {
        for incoming in session.feed(piece) {
            let reply = match incoming {
                Incoming::Request(request) => Session::reply(request.id, Ok(serde_json::Value::Null)),
                Incoming::Reply(bytes) | Incoming::Overflow(bytes) => bytes,
            };
            assert!(reply.ends_with(b"\r\n"), "reply without CRLF");
            assert!(reply.starts_with(b"{"), "reply is not an object");
        }
        assert!(session.buffered() <= 2 * LIMIT, "input buffer grew past its limit");
    }
});
