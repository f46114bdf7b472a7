//! Soak and load, short versions of scripts/soak.sh (issue #17): many start-to-exit cycles that
//! leave nothing behind, one VM under QMP and hot-plug churn whose descriptors and memory stay
//! flat, and several VMs at once, each with a disk and a tap, all answering QMP and quitting
//! cleanly. The full sizes (1,000 cycles, 10,000 QMP sessions, 1,000 hot-plug cycles, 50 VMs)
//! run from scripts/soak.sh; docs/performance.md has their figures.

mod common;

use common::tap::{root, TapGuard};
use common::{kvm_usable, qmp_args, Format, QmpClient, TempDir, Vm, VmConfig, VM_TIMEOUT};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// RSS the churned VMM may gain between the two measurements (KiB): the allocator keeps a few
/// freed pages around and the kernel counts page-table pages of the heap it grew. A leak of
/// one small allocation per QMP session or hot-plug cycle exceeds it (300 sessions x 1 KiB).
const RSS_SLACK_KIB: u64 = 256;

/// A short directory under /tmp for the tests' Unix sockets (paths are limited to 107 bytes),
/// removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(name: &str) -> SocketDir {
        let dir = PathBuf::from(format!("/tmp/nimbus-soak-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        SocketDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The running processes whose command line mentions `needle` (pid and command line).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

/// The number of open descriptors of process `pid`.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .count()
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// The descriptor count once the VMM has handled the last client's hang-up: polls until it
/// equals `want` (when given) or stays the same for 200 ms.
fn settled_fd_count(pid: i32, want: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = fd_count(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = fd_count(pid);
        if want == Some(now) || (want.is_none() && now == last) || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Every DAEMON_EVERY-th cycle runs as a daemon with a pid file, as iSulad/Kuasar start Nimbus.
const DAEMON_EVERY: usize = 8;

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// One cycle of `args` as `-daemonize -pidfile P -D L`, its console to a file: the launcher
/// exits 0 once the VM is up; the daemon exits after the guest's reset, removing its pid file
/// and socket. Removes the console and log files, which are the caller's.
fn daemon_cycle(args: Vec<String>, dir: &SocketDir, n: usize) {
    let (pidfile, log, console) = (
        dir.path(&format!("vm{n}.pid")),
        dir.path(&format!("vm{n}.log")),
        dir.path(&format!("vm{n}.out")),
    );
    let args = common::replace_arg(args, "-serial", &format!("file,path={}", console.display()));
    let out = std::process::Command::new(common::NIMBUS)
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(&pidfile)
        .arg("-D")
        .arg(&log)
        .args(&args)
        .output()
        .expect("run the launcher");
    assert!(
        out.status.success(),
        "daemon launcher {n}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The guest may have reset before the pid file could be read.
    let pid: Option<i32> = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let deadline = Instant::now() + VM_TIMEOUT;
    while pidfile.exists() || pid.is_some_and(alive) {
        assert!(
            Instant::now() < deadline,
            "daemon {n} (pid {pid:?}): pid file {} or process still there after {VM_TIMEOUT:?}",
            pidfile.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&console).expect("the daemon's console");
    let logged = std::fs::read_to_string(&log).expect("the daemon's log");
    assert!(
        text.contains("NIMBUS-GUEST done") && !logged.to_uppercase().contains("ERROR"),
        "daemon {n}: console {text}\nlog {logged}"
    );
    std::fs::remove_file(console).expect("remove the console file");
    std::fs::remove_file(log).expect("remove the log");
}

/// 40 runs of the test guest to its reset, 8 at a time, each with a QMP socket, one in
/// [`DAEMON_EVERY`] daemonized with a pid file: all exit 0, and afterwards no nimbus process,
/// socket, pid file or other file of theirs is left.
#[test]
fn start_to_exit_cycles_all_exit_0_and_leave_nothing_behind() {
    if !kvm_usable() {
        return;
    }
    const CYCLES: usize = 40;
    const AT_ONCE: usize = 8;
    let sockets = SocketDir::new("cyc");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..AT_ONCE {
            let sockets = &sockets;
            scope.spawn(move || {
                for n in (worker..CYCLES).step_by(AT_ONCE) {
                    let mut args = VmConfig::new(Format::Elf, 32, "console=ttyS0").args();
                    args.extend(qmp_args(&sockets.path(&format!("vm{n}.sock"))));
                    if n % DAEMON_EVERY == DAEMON_EVERY - 1 {
                        daemon_cycle(args, sockets, n);
                        continue;
                    }
                    let out = Vm::spawn(&args).wait(VM_TIMEOUT);
                    out.assert_exit_code(0);
                    assert!(
                        out.stdout.contains("NIMBUS-GUEST done"),
                        "{}",
                        out.describe()
                    );
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{CYCLES} VMs, {AT_ONCE} at a time: {elapsed:.2} s, {:.1} VMs/s",
        CYCLES as f64 / elapsed
    );
    assert_eq!(
        entries(&sockets.0),
        Vec::<String>::new(),
        "sockets left behind"
    );
    assert_eq!(
        processes_mentioning(&sockets.0.display().to_string()),
        Vec::<String>::new(),
        "processes left behind"
    );
}

fn raw_node(name: &str, image: &Path) -> serde_json::Value {
    json!({"node-name": name, "driver": "raw", "read-only": false,
           "file": {"driver": "file", "filename": image}})
}

/// One blk hot-plug cycle through slot 0x1: blockdev-add, device_add, device_del, blockdev-del.
fn blk_cycle(c: &mut QmpClient, image: &Path) {
    c.ok("blockdev-add", raw_node("churn", image));
    c.ok(
        "device_add",
        json!({"driver": "virtio-blk-mmio", "id": "vdb", "drive": "churn", "addr": "0x1"}),
    );
    c.ok("device_del", json!({"id": "vdb"}));
    c.ok("blockdev-del", json!({"node-name": "churn"}));
}

/// One net hot-plug cycle through net slot 0x0: netdev_add of `tap` by name, device_add,
/// device_del, netdev_del.
fn net_cycle(c: &mut QmpClient, tap: &str) {
    c.ok(
        "netdev_add",
        json!({"type": "tap", "id": "churn", "ifname": tap}),
    );
    c.ok(
        "device_add",
        json!({"driver": "virtio-net-device", "id": "eth0", "netdev": "churn", "addr": "0x0"}),
    );
    c.ok("device_del", json!({"id": "eth0"}));
    c.ok("netdev_del", json!({"id": "churn"}));
}

/// One QMP session: connect, greeting, qmp_capabilities, query-status, disconnect.
fn qmp_session(path: &Path) {
    let mut c = QmpClient::connect(path);
    let reply = c.execute("query-status", json!({}));
    assert_eq!(reply["return"]["status"], "running", "{reply}");
}

/// One VM under churn: 300 QMP sessions, then 30 blk and 30 net hot-plug cycles. After a
/// warm-up of each, the VMM's descriptor count comes back exactly and its RSS within
/// [`RSS_SLACK_KIB`].
#[test]
fn qmp_and_hotplug_churn_leaks_no_descriptor_and_no_memory() {
    if !kvm_usable() || !root() {
        return;
    }
    const QMP_SESSIONS: usize = 300;
    const HOTPLUG_CYCLES: usize = 30;
    let sockets = SocketDir::new("churn");
    let files = TempDir::new("soak-churn");
    let image = files.path("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create the disk image");
    let tap = TapGuard::create();
    let qmp = sockets.path("qmp.sock");
    let mut args = VmConfig::new(Format::Elf, 32, "console=ttyS0 nimbus.test=hang").args();
    args.extend(qmp_args(&qmp));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let pid = vm.pid();

    // Warm-up: whatever is allocated lazily on the first session or hot-plug exists now.
    qmp_session(&qmp);
    {
        let mut c = QmpClient::connect(&qmp);
        blk_cycle(&mut c, &image);
        net_cycle(&mut c, &tap.name);
    }
    let (fds_before, rss_before) = (settled_fd_count(pid, None), rss_kib(pid));

    for _ in 0..QMP_SESSIONS {
        qmp_session(&qmp);
    }
    let mut c = QmpClient::connect(&qmp);
    for _ in 0..HOTPLUG_CYCLES {
        blk_cycle(&mut c, &image);
        net_cycle(&mut c, &tap.name);
        c.events.clear();
    }
    drop(c);
    let (fds_after, rss_after) = (settled_fd_count(pid, Some(fds_before)), rss_kib(pid));
    eprintln!(
        "churn: fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB \
         ({QMP_SESSIONS} QMP sessions, {HOTPLUG_CYCLES} blk and net hot-plug cycles)"
    );
    if fds_after != fds_before || rss_after > rss_before + RSS_SLACK_KIB {
        vm.fail(&format!(
            "after churn: {fds_before} -> {fds_after} descriptors, \
             {rss_before} -> {rss_after} KiB RSS (slack {RSS_SLACK_KIB} KiB)"
        ));
    }
    QmpClient::connect(&qmp).ok("quit", json!({}));
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

/// 8 VMs at once, each with a disk and a tap, idle in `hang` (a `cli; hlt` loop, no host CPU):
/// all answer query-status and exit 0 after `quit`; their sockets are gone afterwards and
/// their taps are left as they were made (Nimbus creates none).
#[test]
fn many_vms_with_a_disk_and_a_tap_answer_qmp_and_quit() {
    if !kvm_usable() || !root() {
        return;
    }
    const VMS: usize = 8;
    let sockets = SocketDir::new("many");
    let files = TempDir::new("soak-many");
    let taps: Vec<TapGuard> = (0..VMS).map(|_| TapGuard::create()).collect();
    let mut vms: Vec<(Vm, PathBuf)> = taps
        .iter()
        .enumerate()
        .map(|(n, tap)| {
            let image = files.path(&format!("disk{n}.img"));
            std::fs::File::create(&image)
                .and_then(|f| f.set_len(1 << 20))
                .expect("create the disk image");
            let qmp = sockets.path(&format!("vm{n}.sock"));
            let mut args = VmConfig::new(Format::Elf, 32, "console=ttyS0 nimbus.test=hang").args();
            args.extend([
                "-drive".into(),
                format!("file={},id=d0,readonly=off", image.display()),
                "-device".into(),
                "virtio-blk-device,drive=d0,id=d0".into(),
                "-netdev".into(),
                format!("tap,id=n0,ifname={}", tap.name),
                "-device".into(),
                "virtio-net-device,netdev=n0,id=n0".into(),
            ]);
            args.extend(qmp_args(&qmp));
            (Vm::spawn(&args), qmp)
        })
        .collect();
    for (vm, _) in &mut vms {
        vm.wait_for_line("hang: now", VM_TIMEOUT);
    }
    for (_, qmp) in &vms {
        qmp_session(qmp);
    }
    for (_, qmp) in &vms {
        QmpClient::connect(qmp).ok("quit", json!({}));
    }
    for (vm, _) in vms {
        vm.wait(VM_TIMEOUT).assert_exit_code(0);
    }
    assert_eq!(
        entries(&sockets.0),
        Vec::<String>::new(),
        "sockets left behind"
    );
    assert_eq!(
        processes_mentioning(&sockets.0.display().to_string()),
        Vec::<String>::new()
    );
    let names: Vec<String> = taps.iter().map(|t| t.name.clone()).collect();
    drop(taps);
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("run ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    for name in names {
        assert!(
            !links.contains(&format!(": {name}:")) && !links.contains(&format!(": {name}@")),
            "tap {name} is still there"
        );
    }
}
