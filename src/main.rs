//! `nimbus`: a lightweight KVM microVM monitor with a QEMU/StratoVirt-style command line.
//!
//! This crate only reads the command line, sets up logging and hands a `MachineConfig` to the
//! `machine` crate. Exit status: 0 when the guest reset, triple-faulted or powered off; 1 when
//! the command line or the guest images are wrong or the VM cannot be built; 2 when a vCPU hit
//! a fatal error while the guest ran; 159 (128 + SIGSYS) when a thread made a syscall outside
//! its seccomp allow-list (`machine`'s SIGSYS handler exits with it, see docs/security.md).
//!
//! `main` is the C entry point (`#![no_main]`, see [`main`]): Rust's own start-up code is
//! skipped, which takes a dozen system calls off the start of every VM and 110 KB off the
//! binary (docs/performance.md, "Start-up, round two").
#![deny(unsafe_code)]
// The unit tests keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

mod backends;
mod balloon_opts;
mod chardev_opts;
mod cli;
mod daemon;
mod drives;
mod iothread_opts;
mod logger;
mod monitor_opts;
mod netdevs;
mod opts;
mod rng_opts;
mod settings;
mod vhost_user_opts;
mod vsock_opts;

use std::error::Error;

/// Exit status for a fatal error while the guest ran.
const EXIT_GUEST_FAILED: u8 = 2;
/// Exit status for errors before the guest ran.
const EXIT_SETUP_FAILED: u8 = 1;

/// The process entry point, called by the C library. Rust's runtime start (`lang_start`) is
/// not used: it reads `/proc/self/maps` to place a guard page under the main stack and gives
/// the main thread and every thread spawned after it a signal stack and SIGSEGV/SIGBUS handlers,
/// only to print "has overflowed its stack" before aborting (without them a stack overflow
/// still ends the process, by SIGSEGV on the guard page glibc puts under every thread stack).
/// Of what it does, Nimbus needs two things, done here: SIGPIPE ignored (a console or socket
/// peer that went away is an EPIPE, not the end of the VMM), and descriptors 0-2 open (else
/// the first file Nimbus opens could become its "stdin"). Arguments still reach
/// `std::env::args`, which glibc hands to Rust's own initialiser. Stdout is flushed before
/// returning, which `lang_start` would do.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    if !std_fds_open() {
        return libc::c_int::from(EXIT_SETUP_FAILED);
    }
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = run_main();
    let _ = std::io::Write::flush(&mut std::io::stdout());
    libc::c_int::from(status)
}

/// Opens /dev/null on whichever of descriptors 0-2 is closed, as Rust's runtime start does:
/// one `poll`, and an `open` per closed descriptor (the lowest free number is the one that was
/// closed). False when that fails.
#[cfg(not(test))]
#[allow(unsafe_code)]
fn std_fds_open() -> bool {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of 3 pollfd for the call; a 0 timeout does not block.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return false;
    }
    for pollfd in fds {
        if pollfd.revents & libc::POLLNVAL != 0 {
            // SAFETY: the path is a NUL-terminated string; the descriptor is deliberately
            // left open for the life of the process.
            let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if fd != pollfd.fd {
                return false;
            }
        }
    }
    true
}

/// Runs Nimbus; the exit status.
#[cfg_attr(test, allow(dead_code))]
fn run_main() -> u8 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Held here so that, with -daemonize, the launcher sees the pipe close only after the
    // error below reached its terminal.
    let mut notifier = None;
    match run(&args, &mut notifier) {
        Ok(()) => 0,
        Err((err, status)) => {
            print_error_chain(err.as_ref());
            drop(notifier);
            status
        }
    }
}

type Failure = (Box<dyn Error>, u8);

fn run(args: &[String], notifier: &mut Option<daemon::ReadyNotifier>) -> Result<(), Failure> {
    let setup = |err: Box<dyn Error>| (err, EXIT_SETUP_FAILED);
    let parsed = cli::parse(args).map_err(|e| setup(e.into()))?;
    if parsed.has("help") || parsed.has("h") {
        print!("{}", cli::help_text());
        return Ok(());
    }
    if parsed.has("version") {
        println!("nimbus version {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let settings = settings::from_parsed(&parsed).map_err(|e| setup(e.into()))?;
    daemon::close_inherited_fds(&settings.inherited_fds)
        .map_err(|e| setup(format!("cannot close inherited descriptors: {e}").into()))?;
    if settings.daemonize {
        *notifier = Some(daemon::daemonize().map_err(|e| setup(e.into()))?);
    }
    logger::init(&settings.log).map_err(|e| setup(e.into()))?;
    let _pidfile = match &settings.pidfile {
        Some(path) => Some(daemon::PidFile::create(path).map_err(|e| setup(e.into()))?),
        None => None,
    };
    let on_ready = || {
        if let Some(notifier) = notifier.as_mut() {
            notifier.ready();
        }
    };
    match machine::run_notifying(&settings.machine, on_ready) {
        Ok(reason) => {
            log::info!("VM ended: {reason:?}");
            Ok(())
        }
        Err(err @ machine::MachineError::VcpuFault { .. }) => Err((err.into(), EXIT_GUEST_FAILED)),
        Err(err) => Err(setup(err.into())),
    }
}

/// Prints the error's own message first, then each cause on its own line.
fn print_error_chain(err: &dyn Error) {
    eprintln!("nimbus: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}
