//! virtio-balloon with the test guest (`nimbus.test=balloon`, `balloon-bad`): inflated pages
//! leave the host's resident memory of guest RAM (measured in /proc/PID/smaps), `query-balloon`
//! and `BALLOON_CHANGED` agree with the guest's `actual`, deflated pages come back, and page
//! numbers a hostile driver sends outside RAM, twice or in malformed requests are ignored and
//! counted while the device carries on.

mod common;

use common::{kvm_usable, qmp_args, Format, QmpClient, Vm, VmConfig, VM_TIMEOUT};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const RAM_MIB: u64 = 256;
const MIB: u64 = 1 << 20;

/// A short directory under /tmp for the QMP socket (Unix socket paths are limited to 107
/// bytes), removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(name: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("nimbus-bln-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        SocketDir(dir)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The resident KiB of the guest-RAM mapping (the one of exactly `RAM_MIB`) of process `pid`.
fn ram_rss_kib(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let size_line = format!("{}", RAM_MIB << 10);
    let mut in_ram = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(kib)) => in_ram = kib == size_line,
            (Some("Rss:"), Some(kib)) if in_ram => return kib.parse().expect("Rss KiB"),
            _ => {}
        }
    }
    panic!("no {RAM_MIB} MiB mapping in nimbus's smaps:\n{smaps}");
}

fn start(append: &str, name: &str) -> (Vm, QmpClient, SocketDir) {
    start_with(append, name, &[])
}

fn start_with(append: &str, name: &str, extra: &[&str]) -> (Vm, QmpClient, SocketDir) {
    let dir = SocketDir::new(name);
    let socket = dir.0.join("qmp.sock");
    let mut config = VmConfig::new(Format::Elf, RAM_MIB, append);
    config.extra_args = vec!["-device".into(), "virtio-balloon-device,id=balloon0".into()];
    config.extra_args.extend(qmp_args(&socket));
    config
        .extra_args
        .extend(extra.iter().map(|s| s.to_string()));
    let vm = Vm::spawn(&config.args());
    let qmp = QmpClient::connect(&socket);
    (vm, qmp, dir)
}

/// Queries the balloon until a `BALLOON_CHANGED` with `actual` came (the event leaves the loop
/// right after the guest's write; the query gives the loop a turn); returns the query's answer.
fn wait_balloon_changed(qmp: &mut QmpClient, actual: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = qmp.execute("query-balloon", json!({}));
        let seen = qmp
            .events
            .iter()
            .any(|e| e["event"] == "BALLOON_CHANGED" && e["data"]["actual"] == json!(actual));
        if seen {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "no BALLOON_CHANGED {actual}: {:?}",
            qmp.events
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn inflating_touched_pages_lowers_host_rss_and_deflate_brings_them_back() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, mut qmp, _dir) = start(
        "nimbus.test=balloon nimbus.balloon-mib=32 nimbus.test=hang",
        "infl",
    );
    vm.wait_for_line("balloon: touched 32 MiB", VM_TIMEOUT);
    let touched = ram_rss_kib(vm.pid());
    qmp.ok("balloon", json!({"value": (RAM_MIB - 32) * MIB}));
    vm.wait_for_line("balloon: inflated 8192 pages", VM_TIMEOUT);
    let inflated = ram_rss_kib(vm.pid());
    eprintln!("guest RAM Rss: {touched} KiB touched, {inflated} KiB after inflating 32 MiB");
    assert!(
        touched >= inflated + 30 * 1024,
        "Rss {touched} KiB -> {inflated} KiB: 32 MiB inflated should leave the host"
    );
    let reply = wait_balloon_changed(&mut qmp, (RAM_MIB - 32) * MIB);
    assert_eq!(reply, json!({"return": {"actual": (RAM_MIB - 32) * MIB}}));

    qmp.ok("balloon", json!({"value": RAM_MIB * MIB}));
    vm.wait_for_line("balloon: deflated 8192 pages zeroed=8192", VM_TIMEOUT);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let retouched = ram_rss_kib(vm.pid());
    eprintln!("guest RAM Rss: {retouched} KiB after deflating and touching again");
    assert!(
        retouched >= inflated + 30 * 1024,
        "deflated pages come back when touched: {inflated} KiB -> {retouched} KiB"
    );
    let reply = wait_balloon_changed(&mut qmp, RAM_MIB * MIB);
    assert_eq!(reply, json!({"return": {"actual": RAM_MIB * MIB}}));
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn inflating_shared_memfd_ram_punches_holes_that_lower_host_rss() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, mut qmp, _dir) = start_with(
        "nimbus.test=balloon nimbus.balloon-mib=16 nimbus.test=hang",
        "shm",
        &["-machine", "microvm,mem-share=on"],
    );
    vm.wait_for_line("balloon: touched 16 MiB", VM_TIMEOUT);
    let touched = ram_rss_kib(vm.pid());
    qmp.ok("balloon", json!({"value": (RAM_MIB - 16) * MIB}));
    vm.wait_for_line("balloon: inflated 4096 pages", VM_TIMEOUT);
    let inflated = ram_rss_kib(vm.pid());
    eprintln!("shared guest RAM Rss: {touched} KiB touched, {inflated} KiB after inflating 16 MiB");
    assert!(
        touched >= inflated + 14 * 1024,
        "Rss {touched} KiB -> {inflated} KiB: 16 MiB inflated should leave the memfd"
    );
    qmp.ok("balloon", json!({"value": RAM_MIB * MIB}));
    vm.wait_for_line("balloon: deflated 4096 pages zeroed=4096", VM_TIMEOUT);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn hostile_page_numbers_are_ignored_and_counted_and_the_device_carries_on() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, mut qmp, _dir) = start("nimbus.test=balloon-bad nimbus.test=hang", "bad");
    vm.wait_for_line("balloon-bad: sent", VM_TIMEOUT);
    vm.wait_for_line("balloon-bad: device still serves", VM_TIMEOUT);
    let reply = qmp.execute(
        "qom-get",
        json!({"path": "/machine/peripheral/balloon0", "property": "x-counters"}),
    );
    let counters = &reply["return"];
    assert_eq!(counters["inflated-pages"], 2, "{reply}");
    assert_eq!(counters["ignored-outside-ram"], 2, "{reply}");
    assert_eq!(counters["ignored-repeated"], 1, "{reply}");
    assert_eq!(counters["ignored-not-inflated"], 1, "{reply}");
    assert_eq!(counters["dropped-requests"], 2, "{reply}");
    // The guest never wrote `actual`: the balloon holds nothing by its count.
    let reply = qmp.execute("query-balloon", json!({}));
    assert_eq!(reply, json!({"return": {"actual": RAM_MIB * MIB}}));
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn guest_stats_and_polling_interval_read_as_qemu_shows_them() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, mut qmp, _dir) = start("nimbus.test=hang", "stats");
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    qmp.ok(
        "qom-set",
        json!({"path": "/machine/peripheral/balloon0",
               "property": "guest-stats-polling-interval", "value": 2}),
    );
    let reply = qmp.execute(
        "qom-get",
        json!({"path": "balloon0", "property": "guest-stats-polling-interval"}),
    );
    assert_eq!(reply, json!({"return": 2}));
    // The test guest does not drive the stats queue: every stat is -1 and no update came.
    let reply = qmp.execute(
        "qom-get",
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats"}),
    );
    assert_eq!(reply["return"]["last-update"], 0, "{reply}");
    assert_eq!(reply["return"]["stats"]["stat-free-memory"], -1, "{reply}");
    assert_eq!(reply["return"]["stats"]["stat-swap-in"], -1, "{reply}");
    let desc = qmp.error(
        "qom-get",
        json!({"path": "/machine/peripheral/nope", "property": "guest-stats"}),
        "DeviceNotFound",
    );
    assert_eq!(desc, "Device '/machine/peripheral/nope' not found");
    let desc = qmp.error("balloon", json!({"value": 0}), "GenericError");
    assert_eq!(desc, "Parameter 'target' expects a size");
    // Its state is not saved yet: a snapshot is refused rather than restored without it.
    qmp.ok("stop", json!({}));
    let desc = qmp.error(
        "migrate",
        json!({"uri": "file:/tmp/nimbus-bln-nosnap"}),
        "GenericError",
    );
    assert!(desc.contains("virtio-balloon"), "{desc}");
    qmp.ok("cont", json!({}));
    vm.signal(libc::SIGTERM);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}
