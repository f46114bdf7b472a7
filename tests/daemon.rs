//! Running as a daemon the way iSulad/Kuasar start Nimbus: `-daemonize -pidfile <p> -D <log>`,
//! the launcher's exit status, the pid file's life, and inherited descriptors being closed.

mod common;

use common::{
    guest, kvm_usable, proc_stat_fields, qmp_args, scratch_dir, Format, Vm, VmConfig, NIMBUS,
    VM_TIMEOUT,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Kills the daemon if the test fails half way, so no VM outlives its test.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: kill(2) only sends a signal to the daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn daemon_reports_ready_keeps_a_pid_file_and_quits_cleanly_over_qmp() {
    if !kvm_usable() {
        return;
    }
    let (pidfile, sock, log, console) = (
        scratch("pid"),
        scratch("qmp.sock"),
        scratch("log"),
        scratch("console"),
    );
    let started = Instant::now();
    let out = Command::new(NIMBUS)
        .args([
            "-daemonize",
            "-pidfile",
            pidfile.to_str().expect("utf-8"),
            "-D",
            log.to_str().expect("utf-8"),
        ])
        .args([
            "-machine",
            "microvm",
            "-m",
            "128",
            "-kernel",
            guest("hello.elf").to_str().expect("utf-8"),
        ])
        .args([
            "-append",
            "nimbus.test=hang",
            "-serial",
            &format!("file,path={}", console.display()),
        ])
        .args(qmp_args(&sock))
        .output()
        .expect("run the launcher");
    assert!(
        out.status.success(),
        "launcher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        sock.exists(),
        "the QMP socket listens when the launcher returns"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let _guard = KillOnDrop(pid);
    let mode = std::fs::metadata(&pidfile)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(alive(pid), "the daemon runs");
    let fields = proc_stat_fields(&pid.to_string());
    // After ") ": state, ppid, pgrp, session.
    assert_eq!(
        fields[2], fields[3],
        "setsid: the daemon is in its own session's process group"
    );
    assert_ne!(
        fields[3],
        pid.to_string(),
        "double fork: the daemon is not the session leader"
    );

    let deadline = Instant::now() + VM_TIMEOUT;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("hang: now")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never reached its idle loop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stream = UnixStream::connect(&sock).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    stream
        .write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"quit\"}")
        .expect("send");
    assert!(wait_gone(pid), "the daemon exits after quit");
    assert!(!pidfile.exists(), "the pid file is removed");
    assert!(!sock.exists(), "the socket is removed");
}

#[test]
fn daemon_that_cannot_start_fails_the_launcher_with_the_reason() {
    let pidfile = scratch("pid-fail");
    let out = Command::new(NIMBUS)
        .args([
            "-daemonize",
            "-pidfile",
            pidfile.to_str().expect("utf-8"),
            "-m",
            "128",
        ])
        .args([
            "-kernel",
            guest("empty").to_str().expect("utf-8"),
            "-serial",
            "none",
        ])
        .output()
        .expect("run the launcher");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().unwrap_or("").contains("empty"),
        "{stderr}"
    );
    assert!(!pidfile.exists());
}

fn refused(args: &[&str], names: &str) {
    let out = Command::new(NIMBUS).args(args).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().unwrap_or("").contains(names),
        "{args:?}: {stderr}"
    );
}

#[test]
fn pid_file_rules_are_enforced() {
    let kernel = guest("hello.elf");
    let kernel = kernel.to_str().expect("utf-8");
    let existing = scratch("pid-existing");
    std::fs::write(&existing, "1\n").expect("write");
    refused(
        &["-pidfile", "/tmp/x.pid", "-kernel", kernel],
        "-pidfile needs -daemonize",
    );
    refused(
        &["-daemonize", "-kernel", kernel, "-serial", "stdio"],
        "-serial stdio",
    );
    refused(&["-daemonize", "-kernel", kernel, "-D"], "-D");
    let existing_str = existing.to_str().expect("utf-8");
    refused(
        &[
            "-daemonize",
            "-pidfile",
            existing_str,
            "-kernel",
            kernel,
            "-serial",
            "none",
        ],
        existing_str,
    );
    assert_eq!(std::fs::read_to_string(&existing).expect("kept"), "1\n");
}

#[test]
fn inherited_descriptors_not_named_on_the_command_line_are_closed() {
    if !kvm_usable() {
        return;
    }
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into `fds`; without O_CLOEXEC they are inherited.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pipe = std::fs::read_link(format!("/proc/self/fd/{}", fds[0])).expect("our pipe");
    let mut vm = Vm::spawn(&VmConfig::new(Format::Elf, 128, "nimbus.test=hang").args());
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let theirs: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .expect("nimbus's fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !theirs.contains(&pipe),
        "the inherited pipe {pipe:?} is still open in nimbus: {theirs:?}"
    );
    for fd in fds {
        // SAFETY: our own descriptors from pipe() above.
        unsafe { libc::close(fd) };
    }
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}
