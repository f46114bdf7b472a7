//! Guest RAM backing options as container runtimes pass them: `-machine mem-share=on` (memfd,
//! shared), `-machine dump-guest-core=off` (MADV_DONTDUMP), `-mem-prealloc`, `-mem-path`.

mod common;

use common::{kvm_usable, run, Format, Vm, VmConfig, VM_TIMEOUT};

const RAM_KIB: u64 = 128 << 10;

/// The smaps block (header, fields, VmFlags) of the guest-RAM mapping, the one of exactly
/// 128 MiB, of a running VM.
fn ram_mapping(pid: i32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let is_header = |line: &str| {
        line.split_whitespace().next().is_some_and(|range| {
            range.split_once('-').is_some_and(|(lo, hi)| {
                u64::from_str_radix(lo, 16).is_ok() && u64::from_str_radix(hi, 16).is_ok()
            })
        })
    };
    let mut blocks: Vec<String> = Vec::new();
    for line in smaps.lines() {
        if is_header(line) || blocks.is_empty() {
            blocks.push(String::new());
        }
        let block = blocks.last_mut().expect("a block");
        block.push_str(line);
        block.push('\n');
    }
    let is_ram_size = |l: &str| {
        l.starts_with("Size:") && l.split_whitespace().nth(1) == Some(&RAM_KIB.to_string())
    };
    blocks
        .into_iter()
        .find(|b| b.lines().any(is_ram_size))
        .unwrap_or_else(|| panic!("no {RAM_KIB} KiB mapping in nimbus's smaps:\n{smaps}"))
}

fn running_vm(extra: &[&str]) -> Vm {
    let mut args = VmConfig::new(Format::Elf, 128, "nimbus.test=hang").args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    vm
}

fn stop(vm: Vm) {
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn mem_share_backs_ram_with_a_shared_memfd() {
    if !kvm_usable() {
        return;
    }
    let vm = running_vm(&["-machine", "microvm,mem-share=on"]);
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", vm.pid()))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        fds.iter().any(|f| f.contains("memfd:nimbus-guest-ram")),
        "{fds:?}"
    );
    assert!(
        ram_mapping(vm.pid()).contains(" sh "),
        "{}",
        ram_mapping(vm.pid())
    );
    stop(vm);
}

#[test]
fn dump_guest_core_off_excludes_ram_from_core_dumps() {
    if !kvm_usable() {
        return;
    }
    let vm = running_vm(&["-machine", "type=microvm,dump-guest-core=off"]);
    let mapping = ram_mapping(vm.pid());
    assert!(mapping.contains(" dd"), "{mapping}");
    stop(vm);
}

#[test]
fn ram_is_dumpable_and_private_by_default() {
    if !kvm_usable() {
        return;
    }
    let vm = running_vm(&[]);
    let mapping = ram_mapping(vm.pid());
    assert!(
        !mapping.contains(" dd") && !mapping.contains(" sh "),
        "{mapping}"
    );
    stop(vm);
}

#[test]
fn mem_prealloc_makes_all_guest_ram_resident() {
    if !kvm_usable() {
        return;
    }
    let vm = running_vm(&["-mem-prealloc"]);
    let mapping = ram_mapping(vm.pid());
    let rss_line = mapping
        .lines()
        .find(|l| l.starts_with("Rss:"))
        .expect("Rss");
    assert_eq!(
        rss_line.split_whitespace().nth(1),
        Some(RAM_KIB.to_string().as_str()),
        "{mapping}"
    );
    stop(vm);
}

#[test]
fn mem_path_outside_hugetlbfs_is_refused_with_the_reason() {
    if !kvm_usable() {
        return;
    }
    let mut args = VmConfig::new(Format::Elf, 128, "x").args();
    args.extend(["-mem-path".to_string(), "/tmp".to_string()]);
    let out = run(&args);
    out.assert_exit_code(1);
    assert!(
        out.stderr.contains("\"/tmp\" is not a hugetlbfs mount"),
        "{}",
        out.describe()
    );
}
