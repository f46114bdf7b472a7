//! A real virtiofsd for the tests: Debian's C virtiofsd (`/usr/lib/qemu/virtiofsd`, package
//! qemu-system-common) serving a directory on a vhost-user socket. The guard kills it, and the
//! sandbox child it forks, and removes the socket whatever happens.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Debian 12's C virtiofsd, from qemu-system-common 7.2.
pub const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// For virtiofsd to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Fails the test, naming the package, when virtiofsd is missing: tests install nothing
/// themselves.
pub fn require_virtiofsd() {
    assert!(
        Path::new(VIRTIOFSD).exists(),
        "{VIRTIOFSD} is missing: install Debian's qemu-system-common (scripts/test.sh does)"
    );
}

/// A running virtiofsd serving `source` on `socket`; killed, with the sandbox child it forks,
/// when dropped. Its stderr goes to a file beside the socket.
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    command: String,
}

impl Virtiofsd {
    /// Starts virtiofsd and waits until it listens (it logs `Waiting for vhost-user socket
    /// connection...` after listen(2)); fails the test with its output if it exits first or
    /// does not get there within [`LISTEN_TIMEOUT`]. It accepts one connection, so the test
    /// never probes the socket itself.
    pub fn start(source: &Path, socket: &Path, log: &Path) -> Virtiofsd {
        require_virtiofsd();
        let args = [
            format!("--socket-path={}", socket.display()),
            "-o".to_string(),
            format!("source={}", source.display()),
            "-o".to_string(),
            "cache=none".to_string(),
        ];
        let command = format!("{VIRTIOFSD} {}", super::shell_words(&args));
        let stderr = File::create(log).expect("create virtiofsd's log");
        let child = Command::new(VIRTIOFSD)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone the log file"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {VIRTIOFSD}: {e}"));
        let mut daemon = Virtiofsd {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            command,
        };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if daemon
                .stderr()
                .contains("Waiting for vhost-user socket connection")
            {
                assert!(
                    daemon.socket.exists(),
                    "virtiofsd listens but {} does not exist\n{}",
                    daemon.socket.display(),
                    daemon.describe()
                );
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().expect("poll virtiofsd") {
                panic!(
                    "virtiofsd exited ({status}) before it listened\n{}",
                    daemon.describe()
                );
            }
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not listen within {LISTEN_TIMEOUT:?}\n{}",
                daemon.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How it was started and what it printed, for assertion messages.
    pub fn describe(&self) -> String {
        format!("--- {} ---\n{}", self.command, self.stderr().trim_end())
    }

    /// Waits up to `timeout` for virtiofsd to exit by itself (it does when its vhost-user
    /// connection closes); None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll virtiofsd") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(") ")?.1.to_string();
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The namespace sandbox runs the file server in a forked child (which also gets
            // SIGTERM through PR_SET_PDEATHSIG when its parent dies): kill it by its pid too.
            let children = children_of(self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in children {
                // SAFETY: kill(2) only sends a signal, to virtiofsd's own child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
