//! What Nimbus's own process start (src/main.rs, `#![no_main]`: Rust's runtime start is
//! skipped) must still guarantee: a console reader that goes away is an EPIPE, not a SIGPIPE
//! that kills the VMM; closed descriptors 0-2 are reopened on /dev/null before anything else
//! can take their numbers.

mod common;

use common::{kvm_usable, Format, Vm, VmConfig};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VM_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn console_reader_gone_early_ends_in_a_clean_exit_not_sigpipe() {
    if !kvm_usable() {
        return;
    }
    let config = VmConfig::new(Format::Pvh, 128, "console=ttyS0 reboot=t");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nimbus");
    let mut stdout = child.stdout.take().expect("piped");
    let mut first = [0u8; 1];
    stdout
        .read_exact(&mut first)
        .expect("the guest's first byte");
    // The guest goes on writing into a pipe without a reader.
    drop(stdout);
    let deadline = Instant::now() + VM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nimbus did not exit after its console reader went away");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "{status:?} (killed by SIGPIPE?)");
}

#[test]
fn closed_stdin_is_reopened_on_dev_null() {
    if !kvm_usable() {
        return;
    }
    let config = VmConfig::new(Format::Pvh, 128, "console=ttyS0 reboot=t nimbus.test=hang");
    let mut vm = Vm::spawn_with(&config.args(), |command| {
        // SAFETY: close is async-signal-safe; between fork and exec it only closes the
        // child's stdin, which is what the test is about.
        unsafe {
            command.pre_exec(|| {
                libc::close(0);
                Ok(())
            });
        }
    });
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", vm.pid()));
    vm.signal(libc::SIGTERM);
    let out = vm.wait(VM_TIMEOUT);
    assert_eq!(
        stdin.expect("nimbus has a descriptor 0").to_str(),
        Some("/dev/null"),
        "{}",
        out.describe()
    );
}

/// The names of the process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// machine/src/pit.rs: the thread that sets the PIT's lost-tick policy while the guest boots
/// runs under its own seccomp list (a forbidden syscall would end the VM with status 159),
/// and ends on its own while the VM idles.
#[test]
fn pit_setup_thread_ends_on_its_own_under_its_filter() {
    if !kvm_usable() {
        return;
    }
    let config = VmConfig::new(Format::Pvh, 128, "console=ttyS0 reboot=t nimbus.test=hang");
    let mut vm = Vm::spawn(&config.args());
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut names = thread_names(vm.pid());
    while names.iter().any(|n| n == "pit-setup") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        names = thread_names(vm.pid());
    }
    vm.signal(libc::SIGTERM);
    let out = vm.wait(VM_TIMEOUT);
    assert!(
        !names.iter().any(|n| n == "pit-setup"),
        "still running after 5 s: {names:?}\n{}",
        out.describe()
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
}
