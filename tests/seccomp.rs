//! seccomp is on by default: every thread of a running VM is filtered, a syscall outside the
//! allow-lists kills the VMM with a line naming it, and `-disable-seccomp` turns it off. The
//! forbidden syscall comes from the documented self-test hook `NIMBUS_SECCOMP_SELFTEST`, which
//! makes the VMM thread (or vCPU 0 with `vcpu:`) call a harmless syscall once right after its
//! filter is installed. The rest of the suite, which runs with seccomp on, shows that normal
//! scenarios need nothing outside the lists.

mod common;

use common::{kvm_usable, Format, Vm, VmConfig, NIMBUS, VM_TIMEOUT};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// 128 + SIGSYS: the documented exit status after a forbidden syscall.
const SIGSYS_EXIT_STATUS: i32 = 159;

/// Runs a guest that halts forever with the self-test hook set to `selftest`; kills it after
/// `timeout` if it is still running (which is what a surviving VM does).
fn run_selftest(selftest: &str, extra: &[&str], timeout: Duration) -> Output {
    let mut args = VmConfig::new(Format::Elf, 64, "nimbus.test=hang").args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let child = Command::new(NIMBUS)
        .args(&args)
        .env("NIMBUS_SECCOMP_SELFTEST", selftest)
        .env("NIMBUS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nimbus");
    let mut child = child;
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("poll nimbus").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("poll nimbus").is_none() {
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        // SAFETY: kill(2) only sends a signal; the child is not reaped yet, so the pid is
        // still nimbus's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    child.wait_with_output().expect("wait for nimbus")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Nimbus died of SIGSYS (exit 159) and `report` (its stderr or log) holds `line`.
fn assert_killed_naming(out: &Output, report: &str, line: &str) {
    assert_eq!(
        out.status.code(),
        Some(SIGSYS_EXIT_STATUS),
        "{}",
        describe(out)
    );
    assert!(
        report.contains(line),
        "report:\n{report}\n{}",
        describe(out)
    );
}

#[test]
fn forbidden_syscall_on_the_vmm_thread_kills_nimbus_with_status_159_and_names_it() {
    if !kvm_usable() {
        return;
    }
    let out = run_selftest("getppid", &[], VM_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_killed_naming(
        &out,
        &stderr,
        "forbidden syscall getppid (110) on the VMM thread",
    );
}

#[test]
fn forbidden_syscall_is_also_reported_in_the_log_file() {
    if !kvm_usable() {
        return;
    }
    let log = common::scratch_dir().join(format!("seccomp-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let out = run_selftest("getpgrp", &["-D", &log.display().to_string()], VM_TIMEOUT);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_killed_naming(
        &out,
        &text,
        "forbidden syscall getpgrp (111) on the VMM thread",
    );
}

#[test]
fn forbidden_syscall_on_a_vcpu_thread_kills_nimbus_and_names_it() {
    if !kvm_usable() {
        return;
    }
    let out = run_selftest("vcpu:getuid", &[], VM_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_killed_naming(
        &out,
        &stderr,
        "forbidden syscall getuid (102) on the vCPU 0 thread",
    );
}

#[test]
fn disable_seccomp_lets_the_same_syscall_through() {
    if !kvm_usable() {
        return;
    }
    // The VM survives the hook and halts; SIGTERM then ends it with status 0.
    let out = run_selftest("getppid", &["-disable-seccomp"], Duration::from_secs(3));
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr.contains("syscall 110 returned"),
        "{}",
        describe(&out)
    );
    assert!(!stderr.contains("forbidden syscall"), "{}", describe(&out));
}

/// The `Seccomp:` mode of each thread of `pid` (2 = filter), keyed by thread name.
fn seccomp_modes(pid: i32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        modes.push((field("Name:"), field("Seccomp:")));
    }
    modes.sort();
    modes
}

#[test]
fn every_thread_of_a_running_vm_is_filtered() {
    if !kvm_usable() {
        return;
    }
    let mut config = VmConfig::new(Format::Elf, 64, "nimbus.test=hang");
    config.cpus = 2;
    let mut vm = Vm::spawn(&config.args());
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    // The VMM thread installs its filter right before its event loop, which may be a moment
    // after the guest printed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let modes = loop {
        let modes = seccomp_modes(vm.pid());
        if modes
            .iter()
            .any(|(name, mode)| name == "nimbus" && mode == "2")
            || Instant::now() >= deadline
        {
            break modes;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));

    // KVM and io_uring add kernel worker threads to the process (kvm-nx-lpage-recovery,
    // iou-wrk-*); every other thread is Nimbus's own.
    let own: Vec<&(String, String)> = modes
        .iter()
        .filter(|(name, _)| !name.starts_with("kvm-") && !name.starts_with("iou-"))
        .collect();
    // The PIT set-up thread (machine/src/pit.rs) may still be running: it is checked for its
    // filter with the others, but need not be there.
    let names: Vec<&str> = own
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| *name != "pit-setup")
        .collect();
    assert_eq!(names, ["nimbus", "vcpu0", "vcpu1"], "{modes:?}");
    assert!(
        own.iter().all(|(_, mode)| mode == "2"),
        "threads without a seccomp filter: {modes:?}"
    );
    out.assert_exit_code(0);
}
