//! Snapshots of the guest kit's real Linux (issue 15): the kit boots to its shell
//! (`kit.mode=shell`) with root on a private copy of its virtio-blk disk, a virtio-rng device,
//! a virtio-net device on a tap and QMP; the test types commands on the serial console, then
//! QMP `stop` + `migrate` to `file:<dir>`, SIGKILLs nimbus and starts
//! `nimbus <the same flags> -incoming file:<dir>`. The restored shell must answer on the
//! console, keep what was written before (a file on tmpfs, a file on the disk), let guest time
//! go on without going back, and keep its devices working (a disk read after its page cache
//! was dropped and a synced write, 16 bytes from /dev/hwrng, a ping of the host over the tap).
//!
//! A second test does the same with the kit's agent (`kit.mode=agent`) behind the hybrid
//! virtio-vsock device, snapshotted while the host holds a connection to it: after restore the
//! device sends the guest TRANSPORT_RESET, the guest drops that connection, and the agent
//! accepts a new `CONNECT 1024` on the device's Unix socket.
//!
//! A third boots the shell with its disk on io_uring (`aio=io_uring,direct=on`) and takes
//! snapshots while the guest reads the disk in a loop: QMP `stop` must finish the disk's
//! requests in flight, so that every snapshot holds each virtio-blk queue with its used index
//! equal to its available index (read from the state and memory files), and the restored
//! guest's reads go on.
//!
//! On a kvm-pvm host the guest's clock is jiffies (guest-kit/cmdline.txt), and kvm-pvm neither
//! takes guest TSC writes nor scales the TSC, so guest time may jump forward by the time the
//! VM was down; it must never go back. One boot takes ~25-50 s under kvm-pvm.

mod common;
mod kit;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::tap::{root, TapGuard};
use common::{kvm_usable, qmp_args, QmpClient, TempDir, VmConfig};
use kit::{disk_args, kit, kit_cmdline, one_boot_at_a_time, KitVm, Line};

/// From spawning nimbus to the shell's first answer: ~25-50 s under kvm-pvm, more under load.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// For one shell command (each is a few busybox processes: seconds of emulated kernel time).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The banner kit-init prints before it starts the shell.
const SHELL_BANNER: &str = "guest-kit shell";
const MARKER: &str = "snapshot-marker";
const DISK_MARKER: &str = "written-to-disk-before-the-snapshot";

/// The kit's command line for this host with root on `/dev/vda` (read-write) and a shell.
fn shell_cmdline() -> String {
    kit_cmdline(true)
        .split(' ')
        .map(|w| {
            if w == "kit.mode=boot" {
                "kit.mode=shell"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tap's /24 for this test process: 10.231.<n>.0, host .1, guest .2.
fn subnet() -> String {
    format!("10.231.{}", 20 + std::process::id() % 200)
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The console of a kit shell, driven one command at a time. Each command is framed by two
/// markers the shell computes (`echo KS$((7+0))B` prints `KS7B`), so that the tty's echo of
/// the typed line never passes for the command's output.
struct Shell {
    vm: KitVm,
    next: u32,
}

/// One console line as the shell printed it: without a trailing carriage return, and only
/// what follows the last one inside the line (line editing redraws).
fn clean(line: &Line) -> &str {
    let text = line.text.trim_end_matches('\r');
    text.rsplit('\r').next().unwrap_or(text).trim_end()
}

impl Shell {
    /// Types `command` and returns its output lines once the shell has run it.
    fn run(&mut self, command: &str, timeout: Duration) -> Result<Vec<String>, String> {
        let n = self.next;
        self.next += 1;
        let (begin, end) = (format!("KS{n}B"), format!("KS{n}E"));
        let from = self.vm.lines().len();
        self.vm
            .type_text(&format!(
                "echo KS$(({n}+0))B; {command}; echo KS$(({n}+0))E\n"
            ))
            .map_err(|e| format!("type {command:?}: {e}"))?;
        let framed = |lines: &[Line]| -> Option<Vec<String>> {
            let lines = &lines[from.min(lines.len())..];
            let start = lines.iter().position(|l| clean(l) == begin)?;
            let len = lines[start + 1..].iter().position(|l| clean(l) == end)?;
            Some(
                lines[start + 1..start + 1 + len]
                    .iter()
                    .map(|l| clean(l).to_string())
                    .collect(),
            )
        };
        if !self.vm.wait_until(timeout, |lines| framed(lines).is_some()) {
            return Err(format!(
                "the shell did not run {command:?} within {timeout:?}"
            ));
        }
        Ok(framed(&self.vm.lines()).expect("framed output"))
    }

    /// Runs `command` and checks that its output holds the line `wanted`.
    fn expect_line(&mut self, command: &str, wanted: &str) -> Result<Vec<String>, String> {
        let out = self.run(command, COMMAND_TIMEOUT)?;
        if out.iter().any(|l| l == wanted) {
            Ok(out)
        } else {
            Err(format!(
                "{command:?} printed {out:?}, without the line {wanted:?}"
            ))
        }
    }

    /// Guest time: (seconds of /proc/uptime, `date +%s`).
    fn clock(&mut self) -> Result<(f64, u64), String> {
        let out = self.run("cat /proc/uptime; date +%s", COMMAND_TIMEOUT)?;
        let parsed = (|| {
            let uptime = out.first()?.split(' ').next()?.parse::<f64>().ok()?;
            let date = out.get(1)?.parse::<u64>().ok()?;
            Some((uptime, date))
        })();
        parsed.ok_or_else(|| format!("no uptime and date in {out:?}"))
    }
}

/// The machine both runs share: 256 MiB, 2 vCPUs, root on `disk`, rng, net on `tap`, QMP on
/// `qmp`.
fn machine(disk: &Path, tap: &str, qmp: &Path) -> Vec<String> {
    let kit = kit();
    let mut extra_args = disk_args("rootfs", disk, false);
    extra_args.extend([
        "-object".to_string(),
        "rng-random,id=rng0,filename=/dev/urandom".to_string(),
        "-device".to_string(),
        "virtio-rng-device,rng=rng0,id=rng0dev".to_string(),
        "-netdev".to_string(),
        format!("tap,id=net0,ifname={tap}"),
        "-device".to_string(),
        "virtio-net-device,netdev=net0,id=net0,mac=52:54:00:15:15:02".to_string(),
    ]);
    extra_args.extend(qmp_args(qmp));
    VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 2,
        append: shell_cmdline(),
        initrd: None,
        extra_args,
    }
    .args()
}

/// What the first run leaves for the second.
struct Before {
    clock: (f64, u64),
    /// From spawn to the shell's first answer.
    boot: Duration,
    snapshot_ms: u64,
}

/// Boots the kit to its shell, sets up the guest's side, snapshots it into `snap` and
/// leaves the VM running for the caller to kill.
fn boot_and_snapshot(shell: &mut Shell, qmp: &Path, snap: &Path) -> Result<Before, String> {
    let spawned = Instant::now();
    if !shell.vm.wait_until(BOOT_TIMEOUT, |lines| {
        lines.iter().any(|l| l.text.contains(SHELL_BANNER))
    }) {
        return Err(format!("no {SHELL_BANNER:?} within {BOOT_TIMEOUT:?}"));
    }
    shell.expect_line("echo ready", "ready")?;
    let boot = spawned.elapsed();
    let net = subnet();
    shell.expect_line(
        &format!(
            "echo {MARKER} > /tmp/marker; echo {DISK_MARKER} > /root/before; sync; \
             ip addr add {net}.2/24 dev eth0 && ip link set eth0 up && echo net-up"
        ),
        "net-up",
    )?;
    shell.expect_line(
        &format!("ping -c 1 -W 10 {net}.1 >/dev/null && echo ping-ok"),
        "ping-ok",
    )?;
    let clock = shell.clock()?;

    let mut client = QmpClient::connect(qmp);
    let reply = client.execute("stop", serde_json::json!({}));
    if reply.get("return").is_none() {
        return Err(format!("stop: {reply}"));
    }
    let uri = format!("file:{}", snap.display());
    let reply = client.execute("migrate", serde_json::json!({ "uri": uri }));
    if reply.get("return").is_none() {
        return Err(format!("migrate: {reply}"));
    }
    let info = client.execute("query-migrate", serde_json::json!({}));
    if info["return"]["status"] != "completed" {
        return Err(format!("query-migrate: {info}"));
    }
    Ok(Before {
        clock,
        boot,
        snapshot_ms: info["return"]["total-time"].as_u64().unwrap_or(0),
    })
}

/// What the restored kit must do; returns notes for the closing line.
fn check_restored(shell: &mut Shell, before: &Before) -> Result<String, String> {
    let spawned = Instant::now();
    // The first command proves the console, the UART's interrupt and the shell are back.
    let first = shell.run("cat /tmp/marker", BOOT_TIMEOUT)?;
    let answer = spawned.elapsed();
    if first != [MARKER] {
        return Err(format!("cat /tmp/marker printed {first:?}, not {MARKER:?}"));
    }
    let after = shell.clock()?;
    if after.0 < before.clock.0 || after.1 < before.clock.1 {
        return Err(format!(
            "guest time went back: uptime {} s and date {} before the snapshot, {} s and {} after",
            before.clock.0, before.clock.1, after.0, after.1
        ));
    }
    // Disk: a read from the device (page cache dropped), then a write that must reach it.
    shell.expect_line(
        "echo 3 > /proc/sys/vm/drop_caches; cat /root/before",
        DISK_MARKER,
    )?;
    shell.expect_line(
        "echo after > /root/after && sync && cat /root/after",
        "after",
    )?;
    shell.expect_line("head -c 16 /dev/hwrng | wc -c", "16")?;
    shell.expect_line(
        &format!("ping -c 1 -W 10 {}.1 >/dev/null && echo ping-ok", subnet()),
        "ping-ok",
    )?;
    // Time goes on in the restored guest.
    let later = shell.run("sleep 1; cat /proc/uptime", COMMAND_TIMEOUT)?;
    let uptime = later
        .first()
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| format!("no uptime in {later:?}"))?;
    if uptime < after.0 + 1.0 {
        return Err(format!(
            "guest time does not go on: uptime {} s, then {uptime} s after a 1 s sleep",
            after.0
        ));
    }
    Ok(format!(
        "first answer {:.0} ms after spawn; guest uptime {:.2} s before, {:.2} s after \
         (date {} -> {})",
        answer.as_secs_f64() * 1000.0,
        before.clock.0,
        after.0,
        before.clock.1,
        after.1
    ))
}

/// The kit Linux at its shell is snapshotted, killed and restored: its shell answers on the
/// console, the files written before are there, guest time did not go back, and its disk,
/// rng and net devices work; the restored guest restarts itself and nimbus exits 0.
#[test]
fn kit_shell_answers_after_snapshot_kill_and_restore() {
    if !kvm_usable() || !root() {
        return;
    }
    let _one = one_boot_at_a_time();
    let kit = kit();
    let dir = TempDir::new("kit-snapshot-shell");
    let disk = dir.path("rootfs.ext4");
    std::fs::copy(kit.rootfs(), &disk).expect("copy the kit's root file system");
    let tap = TapGuard::create();
    ip(&[
        "addr",
        "add",
        &format!("{}.1/24", subnet()),
        "dev",
        &tap.name,
    ]);
    let snap = dir.path("snap");

    let qmp = dir.path("first.qmp");
    let mut shell = Shell {
        vm: KitVm::spawn_with(&machine(&disk, &tap.name, &qmp), |_| {}),
        next: 0,
    };
    let result = boot_and_snapshot(&mut shell, &qmp, &snap);
    let first = shell.vm.kill();
    let before = result.unwrap_or_else(|e| panic!("{e}\n{}", first.describe()));
    let memory = std::fs::metadata(snap.join("memory")).expect("the memory file");
    eprintln!(
        "kit booted to its shell in {:.1} s; snapshot in {} ms, memory file {} MiB on disk",
        before.boot.as_secs_f64(),
        before.snapshot_ms,
        (std::os::unix::fs::MetadataExt::blocks(&memory) * 512) >> 20
    );

    let qmp = dir.path("second.qmp");
    let mut args = machine(&disk, &tap.name, &qmp);
    args.extend(["-incoming".to_string(), format!("file:{}", snap.display())]);
    let mut shell = Shell {
        vm: KitVm::spawn_with(&args, |_| {}),
        next: 1000,
    };
    let result = check_restored(&mut shell, &before).and_then(|notes| {
        shell
            .vm
            .type_text("reboot -f\n")
            .map_err(|e| format!("type reboot -f: {e}"))?;
        Ok(notes)
    });
    let second = match result {
        Ok(_) => shell.vm.wait_exit(COMMAND_TIMEOUT),
        Err(_) => shell.vm.kill(),
    };
    let describe = format!(
        "--- first run ---\n{}\n--- restored run ---\n{}",
        first.describe(),
        second.describe()
    );
    let notes = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!("restored kit: {notes}");
    assert_eq!(
        second.status.and_then(|s| s.code()),
        Some(0),
        "the restored guest restarts itself and nimbus exits 0\n{describe}"
    );
    drop(tap);
}

// ---- the agent over hybrid vsock ----------------------------------------------------------

/// Between two dial attempts while the agent is not listening yet.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
const LISTENING: &str = "KIT agent listening on vsock port 1024";

/// The kit's command line for this host with root read-only on `/dev/vda` and the agent.
fn agent_cmdline() -> String {
    kit_cmdline(true)
        .split(' ')
        .map(|w| match w {
            "rw" => "ro",
            "kit.mode=boot" => "kit.mode=agent",
            w => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The agent's machine: 256 MiB, 2 vCPUs, the kit's root file system read-only, the hybrid
/// vsock device on `uds`, QMP on `qmp`.
fn agent_machine(uds: &Path, qmp: &Path) -> Vec<String> {
    let kit = kit();
    let mut extra_args = disk_args("rootfs", &kit.rootfs(), true);
    extra_args.extend([
        "-device".to_string(),
        format!(
            "virtio-vsock-device,id=vsock0,guest-cid=3,uds-path={}",
            uds.display()
        ),
    ]);
    extra_args.extend(qmp_args(qmp));
    VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 2,
        append: agent_cmdline(),
        initrd: None,
        extra_args,
    }
    .args()
}

/// A connection to the agent after `OK <port>`.
struct AgentConn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AgentConn {
    /// Sends `line` and checks that the reply is `expected`.
    fn expect(&mut self, line: &str, expected: &str) -> Result<(), String> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("send {line:?}: {e}"))?;
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(_) if reply == format!("{expected}\n") => Ok(()),
            Ok(_) => Err(format!("{line:?} was answered {reply:?}, not {expected:?}")),
            Err(e) => Err(format!("reply to {line:?}: {e} (got {reply:?})")),
        }
    }
}

/// Dials the agent as Kata's hybrid-vsock dialer does until `OK` or `deadline`: connect to
/// `uds`, write `CONNECT 1024\n`, read `OK <port>\n`; a socket closed without an answer means
/// the agent is not listening yet: try again.
fn dial(uds: &Path, vm: &mut KitVm, deadline: Instant) -> Result<AgentConn, String> {
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        if !vm.running() {
            return Err(format!("nimbus exited while the test dialled ({last})"));
        }
        match try_dial(uds) {
            Ok(conn) => return Ok(conn),
            Err(why) => last = why,
        }
        std::thread::sleep(RETRY_INTERVAL);
    }
    Err(format!(
        "no OK from the agent in time; last attempt: {last}"
    ))
}

fn try_dial(uds: &Path) -> Result<AgentConn, String> {
    let stream = UnixStream::connect(uds).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("read timeout: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"CONNECT 1024\n")
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("closed without an answer".into()),
        Ok(_) if line.starts_with("OK ") => {
            writer
                .set_read_timeout(Some(COMMAND_TIMEOUT))
                .map_err(|e| format!("read timeout: {e}"))?;
            Ok(AgentConn { reader, writer })
        }
        Ok(_) => Err(format!("the answer to CONNECT is {line:?}")),
        Err(e) => Err(format!("read the answer to CONNECT: {e}")),
    }
}

fn wait_console(vm: &KitVm, wanted: &str, timeout: Duration) -> Result<(), String> {
    if vm.wait_until(timeout, |lines| {
        lines.iter().any(|l| l.text.contains(wanted))
    }) {
        Ok(())
    } else {
        Err(format!("no console line {wanted:?} within {timeout:?}"))
    }
}

/// Snapshots the VM through QMP (`stop`, `migrate` to `snap`); the reply of `query-migrate`.
fn snapshot(qmp: &Path, snap: &Path) -> Result<serde_json::Value, String> {
    let mut client = QmpClient::connect(qmp);
    for (command, arguments) in [
        ("stop", serde_json::json!({})),
        (
            "migrate",
            serde_json::json!({ "uri": format!("file:{}", snap.display()) }),
        ),
    ] {
        let reply = client.execute(command, arguments);
        if reply.get("return").is_none() {
            return Err(format!("{command}: {reply}"));
        }
    }
    let info = client.execute("query-migrate", serde_json::json!({}));
    if info["return"]["status"] != "completed" {
        return Err(format!("query-migrate: {info}"));
    }
    Ok(info)
}

/// The kit's agent behind the hybrid vsock device, snapshotted while the host holds a
/// connection to it, is killed and restored: the guest drops that connection (TRANSPORT_RESET),
/// the agent accepts a new `CONNECT 1024` and answers on it, and restarts the guest when asked
/// (nimbus exits 0).
#[test]
fn kit_agent_accepts_a_new_vsock_connection_after_restore() {
    if !kvm_usable() {
        return;
    }
    let _one = one_boot_at_a_time();
    let dir = TempDir::new("kit-snapshot-agent");
    let uds = dir.path("v.sock");
    // Where Nimbus forwards the agent's log connection to the host's port 1025; connecting
    // needs no accept.
    let _log = UnixListener::bind(format!("{}_1025", uds.display())).expect("bind the log socket");
    let snap = dir.path("snap");

    let qmp = dir.path("first.qmp");
    let mut vm = KitVm::spawn_with(&agent_machine(&uds, &qmp), |_| {});
    let spawned = Instant::now();
    let result = (|| -> Result<(AgentConn, u64), String> {
        let mut conn = dial(&uds, &mut vm, spawned + BOOT_TIMEOUT)?;
        conn.expect("ping", "pong")?;
        conn.expect("echo before the snapshot", "before the snapshot")?;
        wait_console(&vm, "KIT agent connection 1 from cid 2", COMMAND_TIMEOUT)?;
        let info = snapshot(&qmp, &snap)?;
        Ok((conn, info["return"]["total-time"].as_u64().unwrap_or(0)))
    })();
    let first = vm.kill();
    let (mut old, snapshot_ms) = result.unwrap_or_else(|e| panic!("{e}\n{}", first.describe()));
    eprintln!(
        "agent answered {:.1} s after spawn; snapshot with a connection open in {snapshot_ms} ms",
        first.seconds_to(LISTENING).unwrap_or(f64::NAN)
    );
    // Nimbus is gone: the host's end of the old connection sees EOF, not a reply.
    assert!(
        old.expect("ping", "pong").is_err(),
        "the old connection answered after nimbus was killed"
    );

    let qmp = dir.path("second.qmp");
    let mut args = agent_machine(&uds, &qmp);
    args.extend(["-incoming".to_string(), format!("file:{}", snap.display())]);
    let mut vm = KitVm::spawn_with(&args, |_| {});
    let spawned = Instant::now();
    let result = (|| -> Result<Duration, String> {
        // The reset reaches the agent, which was reading the connection of before.
        wait_console(&vm, "KIT agent connection 1 closed", COMMAND_TIMEOUT)?;
        let mut conn = dial(&uds, &mut vm, spawned + COMMAND_TIMEOUT)?;
        let connected = spawned.elapsed();
        conn.expect("ping", "pong")?;
        conn.expect("echo after the restore", "after the restore")?;
        wait_console(&vm, "KIT agent connection 2 from cid 2", COMMAND_TIMEOUT)?;
        conn.expect("reboot", "bye")?;
        Ok(connected)
    })();
    let second = match result {
        Ok(_) => vm.wait_exit(COMMAND_TIMEOUT),
        Err(_) => vm.kill(),
    };
    let describe = format!(
        "--- first run ---\n{}\n--- restored run ---\n{}",
        first.describe(),
        second.describe()
    );
    let connected = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!(
        "restored agent: new connection OK {} ms after spawn",
        connected.as_millis()
    );
    assert_eq!(
        second.status.and_then(|s| s.code()),
        Some(0),
        "the restored agent restarts the guest and nimbus exits 0\n{describe}"
    );
}

// ---- snapshots under disk load ------------------------------------------------------------

/// Snapshots taken one after another while the guest reads its disk.
const SNAPSHOTS_UNDER_LOAD: usize = 30;

/// The virtio-blk queues of the snapshot in `snap` whose available index is not their used
/// index (requests left outside the rings), as `slot S queue Q: avail A used U`. Reads the
/// state file's JSON (after its 24-byte envelope header) for each activated transport's ready
/// queues and the two indices from the memory file (guest RAM below 3 GiB is at its own
/// address there).
fn blk_requests_outside_the_rings(snap: &Path) -> Vec<String> {
    let state = std::fs::read(snap.join("state")).expect("read the state file");
    let state: serde_json::Value =
        serde_json::from_slice(&state[24..]).expect("the state file's JSON");
    let memory = std::fs::File::open(snap.join("memory")).expect("open the memory file");
    let index_at = |address: u64| {
        let mut bytes = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&memory, &mut bytes, address + 2)
            .expect("read a ring index");
        u16::from_le_bytes(bytes)
    };
    let transports = state["transports"].as_array().expect("transports");
    let mut outside = Vec::new();
    for (slot, transport) in transports.iter().enumerate() {
        if transport["device_type"] != 2 || transport["activated"] != true {
            continue;
        }
        let queues = transport["queues"].as_array().expect("queues");
        for (q, queue) in queues.iter().enumerate() {
            if queue["ready"] != true {
                continue;
            }
            let avail = index_at(queue["driver"].as_u64().expect("driver area"));
            let used = index_at(queue["device"].as_u64().expect("device area"));
            if avail != used {
                outside.push(format!("slot {slot} queue {q}: avail {avail} used {used}"));
            }
        }
    }
    outside
}

/// (reads completed, requests in flight) from the guest's `/sys/block/vda/stat`.
fn disk_stat(shell: &mut Shell) -> Result<(u64, u64), String> {
    let out = shell.run("cat /sys/block/vda/stat", COMMAND_TIMEOUT)?;
    let fields: Vec<u64> = out
        .iter()
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.parse().ok())
        .collect();
    match (fields.first(), fields.get(8)) {
        (Some(&reads), Some(&in_flight)) => Ok((reads, in_flight)),
        _ => Err(format!("no disk statistics in {out:?}")),
    }
}

/// The kit's shell reading its io_uring disk in a loop is snapshotted again and again (QMP
/// `stop`, `migrate`, `cont`): no snapshot holds a disk request outside the rings, and the
/// guest restored from the last one goes on reading.
#[test]
fn kit_snapshots_under_disk_load_hold_no_request_in_flight() {
    if !kvm_usable() {
        return;
    }
    let _one = one_boot_at_a_time();
    let kit = kit();
    let dir = TempDir::new("kit-snapshot-load");
    let disk = dir.path("rootfs.ext4");
    std::fs::copy(kit.rootfs(), &disk).expect("copy the kit's root file system");
    let snap = dir.path("snap");
    let machine = |qmp: &Path| {
        let mut extra_args = vec![
            "-drive".to_string(),
            format!(
                "id=rootfs,file={},readonly=off,aio=io_uring,direct=on",
                disk.display()
            ),
            "-device".to_string(),
            "virtio-blk-device,drive=rootfs,id=rootfs".to_string(),
        ];
        extra_args.extend(qmp_args(qmp));
        VmConfig {
            kernel: kit.vmlinux(),
            mem_mib: 256,
            cpus: 2,
            append: shell_cmdline(),
            initrd: None,
            extra_args,
        }
        .args()
    };

    let qmp = dir.path("first.qmp");
    let mut shell = Shell {
        vm: KitVm::spawn_with(&machine(&qmp), |_| {}),
        next: 0,
    };
    let result = (|| -> Result<(), String> {
        if !shell.vm.wait_until(BOOT_TIMEOUT, |lines| {
            lines.iter().any(|l| l.text.contains(SHELL_BANNER))
        }) {
            return Err(format!("no {SHELL_BANNER:?} within {BOOT_TIMEOUT:?}"));
        }
        shell.expect_line(
            "(while :; do dd if=/dev/vda of=/dev/null bs=64k iflag=direct 2>/dev/null; done) & \
             echo loading",
            "loading",
        )?;
        let mut client = QmpClient::connect(&qmp);
        for n in 0..SNAPSHOTS_UNDER_LOAD {
            // 100-600 ms apart, so that the stops fall at different points of the loop.
            std::thread::sleep(Duration::from_millis(100 + (n as u64 * 137) % 500));
            for (command, arguments) in [
                ("stop", serde_json::json!({})),
                (
                    "migrate",
                    serde_json::json!({ "uri": format!("file:{}", snap.display()) }),
                ),
            ] {
                let reply = client.execute(command, arguments);
                if reply.get("return").is_none() {
                    return Err(format!("snapshot {n}: {command}: {reply}"));
                }
            }
            let outside = blk_requests_outside_the_rings(&snap);
            if !outside.is_empty() {
                return Err(format!(
                    "snapshot {n} holds disk requests outside the rings: {outside:?}"
                ));
            }
            if n + 1 < SNAPSHOTS_UNDER_LOAD {
                let reply = client.execute("cont", serde_json::json!({}));
                if reply.get("return").is_none() {
                    return Err(format!("snapshot {n}: cont: {reply}"));
                }
            }
        }
        Ok(())
    })();
    let first = shell.vm.kill();
    result.unwrap_or_else(|e| panic!("{e}\n{}", first.describe()));

    let qmp = dir.path("second.qmp");
    let mut args = machine(&qmp);
    args.extend(["-incoming".to_string(), format!("file:{}", snap.display())]);
    let mut shell = Shell {
        vm: KitVm::spawn_with(&args, |_| {}),
        next: 1000,
    };
    let result = (|| -> Result<String, String> {
        let before = disk_stat(&mut shell)?;
        shell.run("sleep 2", COMMAND_TIMEOUT)?;
        let after = disk_stat(&mut shell)?;
        if after.0 <= before.0 {
            return Err(format!(
                "the restored guest's reads do not go on: {} reads completed, then {} \
                 ({} in flight)",
                before.0, after.0, after.1
            ));
        }
        // (Not after: a guest restarting with a read in flight reports an I/O error for it,
        // snapshot or not.)
        let errors: Vec<String> = shell
            .vm
            .lines()
            .into_iter()
            .filter(|l| l.text.contains("I/O error") || l.text.contains("not a head"))
            .map(|l| l.text)
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "the restored guest reports disk errors: {errors:?}"
            ));
        }
        shell
            .vm
            .type_text("reboot -f\n")
            .map_err(|e| format!("type reboot -f: {e}"))?;
        Ok(format!("{} -> {} reads", before.0, after.0))
    })();
    let second = match result {
        Ok(_) => shell.vm.wait_exit(COMMAND_TIMEOUT),
        Err(_) => shell.vm.kill(),
    };
    let describe = format!(
        "--- first run ---\n{}\n--- restored run ---\n{}",
        first.describe(),
        second.describe()
    );
    let notes = result.unwrap_or_else(|e| panic!("{e}\n{describe}"));
    eprintln!("{SNAPSHOTS_UNDER_LOAD} snapshots under disk load; restored guest: {notes}");
    assert_eq!(
        second.status.and_then(|s| s.code()),
        Some(0),
        "the restored guest restarts itself and nimbus exits 0\n{describe}"
    );
}
