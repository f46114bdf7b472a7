//! virtio-balloon with the guest kit's Linux (`CONFIG_VIRTIO_BALLOON`, `CONFIG_PAGE_REPORTING`):
//! with `free-page-reporting=true`, the guest writes 64 MiB to a tmpfs file and removes it;
//! Linux reports the freed blocks on the reporting queue and the host's resident memory of
//! guest RAM (its mapping in /proc/PID/smaps) drops again. The same boot checks that Linux's
//! statistics reach QMP's `guest-stats` once polling is on.
//!
//! The kit boots from its initramfs to a shell (`kit.mode=shell`) in ~25-60 s under kvm-pvm.

mod common;
mod kit;

use std::time::{Duration, Instant};

use common::{kvm_usable, qmp_args, QmpClient, VmConfig};
use kit::{kit, kit_cmdline, one_boot_at_a_time, KitVm, Line};
use serde_json::json;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
const SHELL_BANNER: &str = "guest-kit shell";
const RAM_MIB: u64 = 256;
const BIG_MIB: u64 = 32;

/// One console line without carriage returns (line editing redraws).
fn clean(line: &Line) -> &str {
    let text = line.text.trim_end_matches('\r');
    text.rsplit('\r').next().unwrap_or(text).trim_end()
}

/// Types `command` framed by markers the shell computes (so the tty's echo of the typed line
/// never matches) and waits for the end marker.
fn run(vm: &mut KitVm, n: u32, command: &str) {
    let end = format!("KB{n}E");
    vm.type_text(&format!("{command}; echo KB$(({n}+0))E\n"))
        .expect("type on the console");
    let done = vm.wait_until(COMMAND_TIMEOUT, |lines| {
        lines.iter().any(|l| clean(l) == end)
    });
    if !done {
        let lines = vm.lines();
        let tail: Vec<&str> = lines.iter().rev().take(30).rev().map(clean).collect();
        panic!(
            "the shell did not run {command:?}; console ends with:\n{}",
            tail.join("\n")
        );
    }
}

/// The resident KiB of the guest-RAM mapping (the one of exactly `RAM_MIB`) of `pid`.
fn ram_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let size = (RAM_MIB << 10).to_string();
    let mut in_ram = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(kib)) => in_ram = kib == size,
            (Some("Rss:"), Some(kib)) if in_ram => return kib.parse().expect("Rss KiB"),
            _ => {}
        }
    }
    panic!("no {RAM_MIB} MiB mapping in nimbus's smaps");
}

/// Waits up to `timeout` for the guest-RAM Rss to fall to `at_most` KiB; the last reading.
fn wait_rss_at_most(pid: u32, at_most: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let rss = ram_rss_kib(pid);
        if rss <= at_most || Instant::now() >= deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn free_page_reporting_gives_freed_guest_memory_back_and_stats_reach_qmp() {
    if !kvm_usable() {
        return;
    }
    let _one = one_boot_at_a_time();
    let dir = std::env::temp_dir().join(format!("nimbus-kbl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("socket dir");
    let socket = dir.join("qmp.sock");
    let cmdline = kit_cmdline(false).replace("kit.mode=boot", "kit.mode=shell");
    let mut config = VmConfig {
        kernel: kit().vmlinux(),
        mem_mib: RAM_MIB,
        cpus: 1,
        append: cmdline,
        initrd: Some(kit().initramfs()),
        extra_args: vec![
            "-device".into(),
            "virtio-balloon-device,id=balloon0,free-page-reporting=true".into(),
        ],
    };
    config.extra_args.extend(qmp_args(&socket));
    let mut vm = KitVm::spawn(&config);
    let mut qmp = QmpClient::connect(&socket);
    let up = vm.wait_until(BOOT_TIMEOUT, |lines| {
        lines.iter().any(|l| l.text.contains(SHELL_BANNER))
    });
    assert!(up, "no shell: {}", vm.kill().describe());
    run(&mut vm, 1, "echo ready");
    qmp.ok(
        "qom-set",
        json!({"path": "/machine/peripheral/balloon0",
               "property": "guest-stats-polling-interval", "value": 1}),
    );
    let pid = vm.pid();
    // Let the reporting of what boot freed settle (Linux reports 2 s after pages are freed).
    std::thread::sleep(Duration::from_secs(6));
    let before = ram_rss_kib(pid);
    run(
        &mut vm,
        2,
        &format!("dd if=/dev/zero of=/tmp/big bs=1M count={BIG_MIB}"),
    );
    let filled = ram_rss_kib(pid);
    run(&mut vm, 3, "rm /tmp/big");
    let freed = wait_rss_at_most(
        pid,
        filled.saturating_sub((BIG_MIB - 16) << 10),
        Duration::from_secs(60),
    );
    eprintln!(
        "guest RAM Rss: {before} KiB at the shell, {filled} KiB with a {BIG_MIB} MiB tmpfs \
         file, {freed} KiB after removing it"
    );
    let stats = qmp.execute(
        "qom-get",
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats"}),
    );
    let counters = qmp.execute(
        "qom-get",
        json!({"path": "balloon0", "property": "x-counters"}),
    );
    let transcript = vm.kill();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        filled >= before + ((BIG_MIB - 8) << 10),
        "the tmpfs file should make guest RAM resident: {before} -> {filled} KiB"
    );
    assert!(
        freed + ((BIG_MIB - 16) << 10) <= filled,
        "reported free pages should leave the host: {filled} -> {freed} KiB\n{counters}\n{}",
        transcript.describe()
    );
    assert!(
        counters["return"]["reported-bytes"].as_u64() >= Some((BIG_MIB - 16) << 20),
        "{counters}"
    );
    let total = stats["return"]["stats"]["stat-total-memory"].as_i64();
    assert!(total.is_some_and(|t| t > 0), "{stats}");
    assert!(stats["return"]["last-update"].as_u64() > Some(0), "{stats}");
}
