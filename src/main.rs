//! `nimbus`: a lightweight KVM microVM monitor with a QEMU/StratoVirt-style command line.
//!
//! This crate only reads the command line, sets up logging and hands a `MachineConfig` to the
//! `machine` crate. Exit status: 0 when the guest reset, triple-faulted or powered off; 1 when
//! the command line or the guest images are wrong or the VM cannot be built; 2 when a vCPU hit
//! a fatal error while the guest ran; 159 (128 + SIGSYS) when a thread made a syscall outside
//! its seccomp allow-list (`machine`'s SIGSYS handler exits with it, see docs/security.md).
#![deny(unsafe_code)]

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
use std::process::ExitCode;

/// Exit status for a fatal error while the guest ran.
const EXIT_GUEST_FAILED: u8 = 2;
/// Exit status for errors before the guest ran.
const EXIT_SETUP_FAILED: u8 = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Held here so that, with -daemonize, the launcher sees the pipe close only after the
    // error below reached its terminal.
    let mut notifier = None;
    match run(&args, &mut notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err((err, status)) => {
            print_error_chain(err.as_ref());
            drop(notifier);
            ExitCode::from(status)
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
