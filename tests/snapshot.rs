//! Snapshots with the project's test guest: QMP `stop` + `migrate` to `file:<dir>`, the VM
//! killed, then `-incoming file:<dir>` with the same machine. The guest counts on its console
//! (`nimbus.test=count`): a restored guest goes on from where it was, with no number repeated
//! or missing. Bad snapshots and a different machine are one line each, exit 1.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{kvm_usable, qmp_args, run, Format, QmpClient, TempDir, Vm, VmConfig};

/// A test's directory: the snapshot in `snap/`, QMP sockets beside it.
struct SnapshotDir(TempDir);

impl SnapshotDir {
    fn new(name: &str) -> SnapshotDir {
        SnapshotDir(TempDir::new(&format!("snapshot-{name}")))
    }

    fn uri(&self) -> String {
        format!("file:{}", self.0.path("snap").display())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.path("snap").join(name)
    }

    fn qmp(&self, name: &str) -> PathBuf {
        self.0.path(name)
    }
}

/// The counting guest's machine: `cpus` vCPUs, 128 MiB, QMP on `qmp`.
fn counting(cpus: u32, with_ap: bool, qmp: &Path) -> VmConfig {
    let ap = if with_ap { " nimbus.countap=1" } else { "" };
    let mut config = VmConfig::new(
        Format::Elf,
        128,
        &format!("console=ttyS0 nimbus.test=count{ap}"),
    );
    config.cpus = cpus;
    config.extra_args = qmp_args(qmp).to_vec();
    config
}

/// The restore command line of `config`: the same machine with `-incoming`, no kernel.
fn restore_args(config: &VmConfig, uri: &str) -> Vec<String> {
    let mut args = config.args();
    if let Some(at) = args.iter().position(|a| a == "-kernel") {
        args.drain(at..at + 2);
    }
    args.extend(["-incoming".to_string(), uri.to_string()]);
    args
}

/// Waits until stdout has at least `n` complete `count:` lines.
fn wait_counts(vm: &Vm, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counts(&vm.stdout_text()).len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} counts within {timeout:?}:\n{}\n{}",
            vm.stdout_text(),
            vm.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The (count, ap count) of each complete `count: N[ ap=M]` line.
fn counts(stdout: &str) -> Vec<(u64, Option<u64>)> {
    stdout
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim_end().strip_prefix("count: "))
        .filter_map(|rest| {
            let mut words = rest.split(' ');
            let n = words.next()?.parse().ok()?;
            let ap = words
                .next()
                .and_then(|w| w.strip_prefix("ap="))
                .and_then(|w| w.parse().ok());
            Some((n, ap))
        })
        .collect()
}

/// Boots `config`, lets it count to `to`, stops it, snapshots it into `dir` and kills it.
/// Returns its stdout.
fn count_and_snapshot(config: &VmConfig, qmp: &Path, dir: &SnapshotDir, to: usize) -> String {
    let vm = Vm::spawn(&config.args());
    wait_counts(&vm, to, Duration::from_secs(60));
    let mut client = QmpClient::connect(qmp);
    client.ok("stop", serde_json::json!({}));
    client.ok("migrate", serde_json::json!({ "uri": dir.uri() }));
    let info = client.execute("query-migrate", serde_json::json!({}));
    assert_eq!(info["return"]["status"], "completed", "{info}");
    vm.signal(libc::SIGKILL);
    let out = vm.wait(Duration::from_secs(10));
    out.stdout
}

#[test]
fn counting_guest_goes_on_after_restore_with_no_repeat_and_no_gap() {
    if !kvm_usable() {
        return;
    }
    let dir = SnapshotDir::new("count");
    let qmp = dir.qmp("first.qmp");
    let config = counting(1, false, &qmp);
    let before = count_and_snapshot(&config, &qmp, &dir, 5);
    let memory = std::fs::metadata(dir.file("memory")).expect("memory file");
    assert_eq!(
        memory.len(),
        128 << 20,
        "the memory file is guest RAM's size"
    );
    assert!(
        memory.blocks() * 512 < 8 << 20,
        "zero pages are holes: {} bytes on disk",
        memory.blocks() * 512
    );
    let restored = counting(1, false, &dir.qmp("second.qmp"));
    let vm = Vm::spawn(&restore_args(&restored, &dir.uri()));
    wait_counts(&vm, 3, Duration::from_secs(30));
    vm.signal(libc::SIGKILL);
    let after = vm.wait(Duration::from_secs(10));
    // A line cut by the stop goes on in the restored VM's first bytes.
    let all = counts(&format!("{before}{}", after.stdout));
    let numbers: Vec<u64> = all.iter().map(|c| c.0).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "before:\n{before}\nafter:\n{}",
        after.stdout
    );
    assert!(
        counts(&after.stdout).len() >= 3,
        "the restored guest counts: {}",
        after.describe()
    );
}

#[test]
fn both_vcpus_go_on_after_restore_with_smp_2() {
    if !kvm_usable() {
        return;
    }
    let dir = SnapshotDir::new("smp");
    let qmp = dir.qmp("first.qmp");
    let config = counting(2, true, &qmp);
    let before = count_and_snapshot(&config, &qmp, &dir, 4);
    assert!(before.contains("count: ap counting"), "{before}");
    let vm = Vm::spawn(&restore_args(
        &counting(2, true, &dir.qmp("second.qmp")),
        &dir.uri(),
    ));
    wait_counts(&vm, 3, Duration::from_secs(30));
    vm.signal(libc::SIGKILL);
    let after = vm.wait(Duration::from_secs(10));
    let all = counts(&format!("{before}{}", after.stdout));
    let numbers: Vec<u64> = all.iter().map(|c| c.0).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "{}", after.describe());
    let aps: Vec<u64> = all.iter().filter_map(|c| c.1).collect();
    assert!(
        aps.windows(2).all(|w| w[0] <= w[1]),
        "the AP's count never goes back: {aps:?}"
    );
    let last_before = counts(&before).last().and_then(|c| c.1).unwrap_or(0);
    let last_after = counts(&after.stdout).last().and_then(|c| c.1).unwrap_or(0);
    assert!(
        last_after > last_before,
        "the AP counts after restore: {last_before} -> {last_after}"
    );
}

/// Restoring from `dir` with `args` is one line containing `needle`, exit 1, and leaves no QMP
/// socket behind.
fn refused(args: &[String], needle: &str, qmp: &Path) {
    let out = run(args);
    out.assert_one_error_line(&[needle]);
    assert!(!qmp.exists(), "QMP socket left behind: {}", out.describe());
}

#[test]
fn bad_snapshots_and_other_machines_are_one_line_each() {
    if !kvm_usable() {
        return;
    }
    let dir = SnapshotDir::new("bad");
    let qmp = dir.qmp("first.qmp");
    let config = counting(1, false, &qmp);
    count_and_snapshot(&config, &qmp, &dir, 2);
    let second = dir.qmp("second.qmp");
    let same = counting(1, false, &second);

    let mut bigger = counting(1, false, &second);
    bigger.mem_mib = 256;
    refused(&restore_args(&bigger, &dir.uri()), "-m is 256 MiB", &second);
    let two = counting(2, false, &second);
    refused(&restore_args(&two, &dir.uri()), "-smp is 2", &second);
    // Without a monitor the machine has no hot-plug slots: other virtio devices.
    let mut no_monitor = counting(1, false, &second);
    no_monitor.extra_args.clear();
    refused(
        &restore_args(&no_monitor, &dir.uri()),
        "virtio devices",
        &second,
    );

    let state = dir.file("state");
    let good = std::fs::read(&state).expect("state file");
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    std::fs::write(&state, &flipped).expect("flip");
    refused(&restore_args(&same, &dir.uri()), "checksum", &second);
    std::fs::write(&state, &good[..good.len() / 2]).expect("truncate");
    refused(&restore_args(&same, &dir.uri()), "truncated", &second);
    std::fs::write(&state, &good).expect("put back");

    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file("memory"))
        .expect("memory file");
    memory.set_len(64 << 20).expect("truncate");
    refused(&restore_args(&same, &dir.uri()), "memory file", &second);
}

/// Private memory (kB) of process `pid`, from `/proc/PID/smaps_rollup`.
fn private_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps");
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

#[test]
fn four_vms_from_one_template_each_count_on_with_little_private_memory() {
    if !kvm_usable() {
        return;
    }
    let dir = SnapshotDir::new("template");
    let qmp = dir.qmp("first.qmp");
    let config = counting(1, false, &qmp);
    count_and_snapshot(&config, &qmp, &dir, 3);
    let vms: Vec<Vm> = (0..4)
        .map(|i| {
            Vm::spawn(&restore_args(
                &counting(1, false, &dir.qmp(&format!("clone{i}.qmp"))),
                &dir.uri(),
            ))
        })
        .collect();
    for vm in &vms {
        wait_counts(vm, 2, Duration::from_secs(30));
        let private = private_kib(vm.pid());
        assert!(
            private < 16 << 10,
            "a clone of a 128 MiB guest keeps {private} KiB private"
        );
    }
    for vm in vms {
        vm.signal(libc::SIGKILL);
        let out = vm.wait(Duration::from_secs(10));
        let first = counts(&out.stdout).first().map(|c| c.0);
        assert!(
            first.is_some_and(|n| n >= 3),
            "each clone goes on from the template: {}",
            out.describe()
        );
    }
}

#[test]
fn migrate_of_a_running_vm_or_after_hot_plug_is_refused_naming_why() {
    if !kvm_usable() {
        return;
    }
    let dir = SnapshotDir::new("refused");
    let qmp = dir.qmp("first.qmp");
    let vm = Vm::spawn(&counting(1, false, &qmp).args());
    wait_counts(&vm, 1, Duration::from_secs(30));
    let mut client = QmpClient::connect(&qmp);
    let uri = serde_json::json!({ "uri": dir.uri() });
    let err = client.error("migrate", uri.clone(), "GenericError");
    assert!(err.contains("must be stopped first"), "{err}");
    let err = client.error(
        "migrate",
        serde_json::json!({"uri": "tcp:127.0.0.1:4444"}),
        "GenericError",
    );
    assert!(err.contains("file:<directory>"), "{err}");
    let image = common::disk_image("snapshot-hotplug.img", 64);
    client.ok(
        "blockdev-add",
        serde_json::json!({"node-name": "d1", "driver": "raw",
                           "file": {"driver": "file", "filename": image}}),
    );
    client.ok(
        "device_add",
        serde_json::json!({"driver": "virtio-blk-mmio", "id": "hp", "drive": "d1"}),
    );
    client.ok("stop", serde_json::json!({}));
    let err = client.error("migrate", uri, "GenericError");
    assert!(err.contains("hot-plugged"), "{err}");
    let info = client.execute("query-migrate", serde_json::json!({}));
    assert_eq!(info["return"]["status"], "failed", "{info}");
    assert!(!dir.file("state").exists(), "no state file after a refusal");
    client.ok("quit", serde_json::json!({}));
    vm.wait(Duration::from_secs(10)).assert_exit_code(0);
    let _ = std::fs::remove_file(&image);
}
