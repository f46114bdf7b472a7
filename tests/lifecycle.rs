//! How a VM ends, driven by the test guest's `nimbus.test=` actions: a triple fault, a fault
//! the guest handles itself, an instruction KVM cannot run, a console round trip through
//! stdin, and SIGTERM to a VM whose vCPU sits in `hlt` forever.

mod common;

use std::time::Duration;

use common::{
    expected_report, host_is_kvm_pvm, kvm_usable, lines, run, Format, Vm, VmConfig, VM_TIMEOUT,
};

#[test]
fn triple_fault_ends_the_vm_with_status_0_and_says_so() {
    if !kvm_usable() {
        return;
    }
    let out = run(&VmConfig::new(Format::Elf, 128, "nimbus.test=triple").args());

    out.assert_exit_code(0);
    let guest = out.guest_lines();
    let now = guest.iter().position(|l| *l == "triple: now");
    let now = now.unwrap_or_else(|| panic!("no `triple: now` line\n{}", out.describe()));
    assert!(
        !guest[now..]
            .iter()
            .any(|l| l.starts_with("GUEST EXCEPTION") || l.starts_with("NIMBUS-GUEST done")),
        "the guest went on after the triple fault\n{}",
        out.describe()
    );
    let says_triple = |l: &&str| l.to_ascii_lowercase().contains("triple");
    assert!(
        lines(&out.stderr).iter().any(says_triple) || guest[now + 1..].iter().any(says_triple),
        "nothing on stderr or stdout mentions the triple fault\n{}",
        out.describe()
    );
}

#[test]
fn guest_exception_reaches_the_guests_own_handler() {
    if !kvm_usable() {
        return;
    }
    let out = run(&VmConfig::new(Format::Pvh, 128, "nimbus.test=ud2").args());

    let guest = out.guest_lines();
    let now = guest.iter().position(|l| *l == "ud2: now");
    let now = now.unwrap_or_else(|| panic!("no `ud2: now` line\n{}", out.describe()));
    assert!(
        guest
            .get(now + 1)
            .is_some_and(|l| l.starts_with("GUEST EXCEPTION 6 rip=0x")),
        "no invalid-opcode report after `ud2: now`\n{}",
        out.describe()
    );
    out.assert_exit_code(0);
}

#[test]
fn instruction_kvm_cannot_emulate_fails_the_vm_and_names_the_emulation_failure() {
    if !kvm_usable() {
        return;
    }
    let config = VmConfig::new(Format::Elf, 128, "nimbus.test=popcnt");
    if !host_is_kvm_pvm() {
        // Hardware KVM runs popcnt natively: the guest carries on.
        let out = run(&config.args());
        assert!(
            out.guest_lines()
                .ends_with(&["popcnt: survived", "NIMBUS-GUEST done"]),
            "{}",
            out.describe()
        );
        out.assert_exit_code(0);
        return;
    }

    let out = Vm::spawn(&config.args()).wait(Duration::from_secs(10));

    assert!(
        matches!(out.status.code(), Some(code) if code != 0),
        "expected a non-zero exit status (not a signal)\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("popcnt: survived") && !out.stdout.contains("NIMBUS-GUEST done"),
        "the guest went on after popcnt\n{}",
        out.describe()
    );
    let first = out.first_stderr_line().to_ascii_lowercase();
    assert!(
        first.contains("internal") || first.contains("emulat"),
        "stderr's first line does not name the emulation failure\n{}",
        out.describe()
    );
}

#[test]
fn stdin_reaches_the_guest_uart_and_its_reply_reaches_stdout() {
    if !kvm_usable() {
        return;
    }
    let append = "console=ttyS0 nimbus.test=echo";
    let mut vm = Vm::spawn(&VmConfig::new(Format::Elf, 128, append).args());
    vm.wait_for_line("echo: ready", VM_TIMEOUT);
    vm.write_stdin(b"hello nimbus\n");
    let out = vm.wait(VM_TIMEOUT);

    let mut expected = expected_report(Format::Elf, append, 128, None);
    expected.extend(["echo: ready", "echo: hello nimbus", "NIMBUS-GUEST done"].map(String::from));
    out.assert_guest_output(&expected, 1);
    out.assert_exit_code(0);
}

#[test]
fn sigterm_ends_a_halted_vm_with_status_0() {
    if !kvm_usable() {
        return;
    }
    let mut config = VmConfig::new(Format::Elf, 128, "nimbus.test=hang");
    config.cpus = 2;
    let mut vm = Vm::spawn(&config.args());
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    vm.signal(libc::SIGTERM);
    let out = vm.wait(Duration::from_secs(10));

    out.assert_exit_code(0);
    assert!(
        !out.stdout.contains("NIMBUS-GUEST done"),
        "the guest did not hang\n{}",
        out.describe()
    );
}
