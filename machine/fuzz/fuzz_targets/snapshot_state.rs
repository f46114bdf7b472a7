//! Fuzzes the snapshot state decoder (`machine::snapshot::decode`): the input is a whole state
//! file (envelope and payload). Any input must give an error or a state, never a panic, a hang
//! or an allocation out of proportion to the input. The input's first byte chooses whether the
//! rest is used as the file (0) or sealed first (other values), so that the fuzzer reaches the
//! JSON decoder past the checksum.
//!
//! Run from `machine/fuzz`: `cargo +nightly fuzz run snapshot_state corpus seeds/snapshot_state`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use machine::snapshot::{decode, envelope};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode == 0 {
        rest.to_vec()
    } else {
        envelope::seal(rest)
    };
    let _ = decode(&file, Path::new("state"));
});
