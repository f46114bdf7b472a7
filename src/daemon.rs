//! `-daemonize` and `-pidfile`: detach from the launching shell (double fork, setsid), report
//! success to the launcher only once the VM is set up and its QMP socket listens, and keep a pid
//! file that disappears when Nimbus exits.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors of detaching or of the pid file.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A system call of the double fork failed.
    #[error("cannot daemonize: {step} failed")]
    Detach {
        /// The failing step.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The pid file exists or cannot be written.
    #[error("cannot create pid file {path:?}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn detach_err(step: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Detach { step, source }
}

/// The daemon's end of the pipe to the launcher.
pub struct ReadyNotifier {
    pipe: Option<File>,
}

impl ReadyNotifier {
    /// Tells the launcher the VM is up, then drops the terminal: stdio to /dev/null, cwd `/`.
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            if let Err(err) = pipe.write_all(b"R") {
                log::warn!("cannot tell the launcher the VM is up: {err}");
            }
        }
        if let Err(err) = detach_stdio() {
            log::warn!("cannot redirect stdio to /dev/null: {err}");
        }
        if let Err(err) = std::env::set_current_dir("/") {
            log::warn!("cannot change directory to /: {err}");
        }
    }
}

fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: called while the process has a single thread (before any VM thread starts), so
    // the child can keep running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Double-forks. The launcher waits for the daemon's verdict and exits with it; only the
/// daemon returns, with the notifier to call once the VM is set up.
///
/// Must be called before any thread is started.
pub fn daemonize() -> Result<ReadyNotifier, DaemonError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(detach_err("pipe")(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let first = fork().map_err(detach_err("fork"))?;
    if first > 0 {
        drop(write_end);
        wait_for_child(first);
        std::process::exit(launcher_verdict(File::from(read_end)));
    }
    drop(read_end);
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(detach_err("setsid")(io::Error::last_os_error()));
    }
    if fork().map_err(detach_err("second fork"))? > 0 {
        // The session leader leaves at once so the daemon can never regain a terminal.
        // SAFETY: _exit ends this intermediate process without running the parent's atexit
        // handlers or flushing stdio buffers shared with the launcher.
        unsafe { libc::_exit(0) };
    }
    Ok(ReadyNotifier {
        pipe: Some(File::from(write_end)),
    })
}

fn wait_for_child(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid place for the result.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// 0 when the daemon said it is up; 1 when it ended first (it printed its error itself).
fn launcher_verdict(mut pipe: File) -> i32 {
    let mut byte = [0u8; 1];
    match pipe.read(&mut byte) {
        Ok(1) if byte[0] == b'R' => 0,
        _ => {
            eprintln!("nimbus: the VM did not start");
            1
        }
    }
}

fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A pid file: created exclusively with mode 0600, removed when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path`; an existing file is an error.
    pub fn create(path: &Path) -> Result<PidFile, DaemonError> {
        let err = |source| DaemonError::PidFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove pid file {:?}: {err}", self.path);
        }
    }
}

/// Closes every inherited descriptor above stderr except `keep` (descriptors named on the
/// command line), so a container runtime's other descriptors do not leak into the VM's life.
/// One `close_range` per gap between kept descriptors (a single call without `-netdev fd=`)
/// instead of a walk of `/proc/self/fd` (5 system calls and one `close` per descriptor).
pub fn close_inherited_fds(keep: &[i32]) -> io::Result<()> {
    for_each_range_to_close(keep, close_range)
}

/// Calls `close` with each range of descriptors above stderr that holds none of `keep`, in
/// order, up to the largest number.
fn for_each_range_to_close(
    keep: &[i32],
    mut close: impl FnMut(u32, u32) -> io::Result<()>,
) -> io::Result<()> {
    let mut first = 3u32;
    loop {
        // The lowest kept descriptor at or above `first`: the current range ends below it.
        let next = keep
            .iter()
            .filter_map(|&fd| u32::try_from(fd).ok())
            .filter(|&fd| fd >= first)
            .min();
        let last = next.map_or(u32::MAX, |fd| fd - 1);
        if first <= last {
            close(first, last)?;
        }
        match next {
            // Kept descriptors come from an i32: no overflow.
            Some(fd) => first = fd + 1,
            None => return Ok(()),
        }
    }
}

/// `close_range(first, last, 0)` (Linux 5.9).
fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers only; it runs first thing in main, before anything in
    // this process opened a descriptor it still refers to.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn inherited_descriptors_are_closed_in_the_gaps_between_the_kept_ones() {
        let ranges = |keep: &[i32]| {
            let mut ranges = Vec::new();
            for_each_range_to_close(keep, |first, last| {
                ranges.push((first, last));
                Ok(())
            })
            .expect("no error");
            ranges
        };
        assert_eq!(ranges(&[]), [(3, u32::MAX)]);
        assert_eq!(ranges(&[3]), [(4, u32::MAX)]);
        assert_eq!(ranges(&[5, 3, 5]), [(4, 4), (6, u32::MAX)]);
        assert_eq!(ranges(&[7, 4]), [(3, 3), (5, 6), (8, u32::MAX)]);
        // stdin, stdout, stderr and nonsense are never closed or kept.
        assert_eq!(ranges(&[0, 2, -1]), [(3, u32::MAX)]);
    }

    #[test]
    fn pid_file_has_our_pid_mode_0600_and_goes_away() {
        let path = std::env::temp_dir().join(format!("nimbus-pid-{}", std::process::id()));
        let pid = PidFile::create(&path).expect("create");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim(), std::process::id().to_string());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(pid);
        assert!(!path.exists());
    }

    #[test]
    fn existing_pid_file_is_refused_and_kept() {
        let path = std::env::temp_dir().join(format!("nimbus-pid-exists-{}", std::process::id()));
        std::fs::write(&path, "123\n").expect("write");
        assert!(PidFile::create(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "123\n");
        let _ = std::fs::remove_file(&path);
    }
}
