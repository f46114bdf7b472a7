//! `nimbus-jailer`: sets up a jail for one VM and runs `nimbus` inside it, as Firecracker's
//! `jailer` and StratoVirt's `ozone` do.
//!
//! The jailer (root, in the host's namespaces) validates the command line, makes the jail
//! directory (`jail`) and the cgroups (`cgroup`), joins `--netns`, enters a new PID namespace
//! and forks once. The child is PID 1 of that namespace: it confines itself (`sandbox`) and
//! execs nimbus, so nimbus is PID 1 (nimbus forks nothing, so no init is needed to reap).
//! The jailer stays as a small monitor outside the jail: it forwards SIGTERM, SIGINT and
//! SIGHUP (which nimbus handles, as PID 1 must), waits, removes the jail and the cgroups, and
//! exits with nimbus's status (128 + N when a signal N killed it).
//!
//! Every failure is one line, `nimbus-jailer: cannot <step> <path>: <cause>`, exit status 1,
//! and whatever the jailer made (jail directory, cgroups) removed. The child reports a failed
//! step through a close-on-exec pipe: an exec that succeeds closes it empty.
//!
//! This crate never links the `machine` crate: it only needs libc.

mod cgroup;
mod cli;
mod error;
mod jail;
mod sandbox;

use cgroup::Cgroups;
use error::{check, JailError};
use jail::Jail;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

/// Exit status of the jailer when it fails.
const EXIT_FAILED: u8 = 1;
/// The signals the monitor passes on to nimbus.
const FORWARDED_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// The child's pid, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

fn main() -> ExitCode {
    match run() {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("nimbus-jailer: {}", err.one_line());
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Everything up to nimbus's exit; the exit status to pass on.
fn run() -> Result<u8, JailError> {
    let config = cli::parse(std::env::args_os().skip(1).collect())?;
    for &fd in &config.keep_fds {
        keep_open(fd)?;
    }
    let jail = Jail::create(
        &config.chroot_base,
        &config.id,
        &config.exec_file,
        &config.sources,
        config.uid,
        config.gid,
    )?;
    let mut cgroups = match Cgroups::create(&config.id, &config.cgroups) {
        Ok(c) => c,
        Err(e) => {
            jail.remove();
            return Err(e);
        }
    };
    let result = launch(&config, &jail, &cgroups);
    cgroups.remove();
    jail.remove();
    result
}

/// A `--keep-fd` must be open; nimbus inherits it, so close-on-exec is cleared.
fn keep_open(fd: RawFd) -> Result<(), JailError> {
    // SAFETY: fcntl on a descriptor number only reads and sets its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    let flags = check(flags, || format!("keep descriptor {fd}"))?;
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
    check(rc, || format!("keep descriptor {fd}"))?;
    Ok(())
}

/// Joins `--netns`, enters a new PID namespace, forks the jailed child and waits for it.
fn launch(config: &cli::Config, jail: &Jail, cgroups: &Cgroups) -> Result<u8, JailError> {
    if let Some(netns) = &config.netns {
        let file =
            File::open(netns).map_err(|e| JailError::path("open network namespace", netns, e))?;
        // SAFETY: setns on a descriptor we own; it only changes this process's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == -1 {
            let cause = std::io::Error::last_os_error();
            return Err(JailError::path("join network namespace", netns, cause));
        }
    }
    let (read_end, write_end) = error_pipe()?;
    // SAFETY: unshare only changes the namespace this process's next children are born in.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
        "enter a new PID namespace".into()
    })?;
    let plan = sandbox::Plan {
        root: &jail.root,
        exec_name: &jail.exec_name,
        binds: &jail.binds,
        cgroups: &cgroups.groups,
        keep_fds: &config.keep_fds,
        error_fd: write_end.as_raw_fd(),
        rlimits: &config.rlimits,
        uid: config.uid,
        gid: config.gid,
        daemonize: config.daemonize,
        nimbus_args: &config.nimbus_args,
    };
    // SAFETY: the jailer is single-threaded, so the child may allocate and run Rust code.
    let pid = check(unsafe { libc::fork() }, || "fork the jailed process".into())?;
    if pid == 0 {
        let err = sandbox::enter_and_exec(&plan);
        let line = err.one_line();
        // SAFETY: writes our own buffer to the pipe, then ends the child without running the
        // parent's destructors (which would remove the jail).
        unsafe {
            libc::write(plan.error_fd, line.as_ptr().cast(), line.len());
            libc::_exit(i32::from(EXIT_FAILED));
        }
    }
    drop(write_end);
    CHILD.store(pid, Ordering::SeqCst);
    forward_signals()?;
    let mut report = String::new();
    let _ = File::from(read_end).read_to_string(&mut report);
    let status = wait_for(pid)?;
    if !report.is_empty() {
        return Err(JailError::Usage(report));
    }
    Ok(status)
}

/// A close-on-exec pipe: (read end, write end).
fn error_pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(rc, || "create the error pipe".into())?;
    // SAFETY: pipe2 just made these descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and only sends a signal.
        unsafe { libc::kill(pid, signal) };
    }
}

fn forward_signals() -> Result<(), JailError> {
    for signal in FORWARDED_SIGNALS {
        // SAFETY: a zeroed sigaction with our handler; `pass_on` is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = pass_on as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        check(rc, || format!("forward signal {signal}"))?;
    }
    Ok(())
}

/// Waits for the child; its exit status, or 128 + the signal that killed it.
fn wait_for(pid: libc::pid_t) -> Result<u8, JailError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into our integer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(JailError::last_os("wait for nimbus"));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(u8::try_from(code).unwrap_or(u8::MAX))
}
