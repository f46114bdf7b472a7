//! Fuzzes the `nimbus` command line: `cli::parse` (QEMU-style single-dash flags through clap)
//! and `settings::from_parsed` (every `-drive`, `-netdev`, `-device`, `-chardev`, `-object`, `-m`,
//! `-smp`, ... value). Any argument list must give settings or an error, never a panic.
//!
//! The binary's parsing modules are included here by `#[path]` (the binary has no library
//! target); `crate::cli` and friends resolve to these copies, so the code fuzzed is the code built.
//!
//! Input: the arguments (without the program name), separated by NUL bytes. Bytes that are not
//! UTF-8 are replaced, as a command line is. `seeds/cli` holds the command lines the README and
//! the tests use. Paths in the input are looked up (kernel, initrd, drives: `metadata` and
//! `open` for reading only); nothing is created.
//!
//! Run from the repository root: `cargo +nightly fuzz run cli corpus fuzz/seeds/cli`.
#![no_main]
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/backends.rs"]
mod backends;
#[path = "../../src/balloon_opts.rs"]
mod balloon_opts;
#[path = "../../src/chardev_opts.rs"]
mod chardev_opts;
#[path = "../../src/cli.rs"]
mod cli;
#[path = "../../src/drives.rs"]
mod drives;
#[path = "../../src/iothread_opts.rs"]
mod iothread_opts;
#[path = "../../src/monitor_opts.rs"]
mod monitor_opts;
#[path = "../../src/netdevs.rs"]
mod netdevs;
#[path = "../../src/opts.rs"]
mod opts;
#[path = "../../src/rng_opts.rs"]
mod rng_opts;
#[path = "../../src/settings.rs"]
mod settings;
#[path = "../../src/vhost_user_opts.rs"]
mod vhost_user_opts;
#[path = "../../src/vsock_opts.rs"]
mod vsock_opts;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(parsed) = cli::parse(&args) {
        let _ = settings::from_parsed(&parsed);
        let _ = cli::help_text();
    }
});
