//! iothreads (`-object iothread,id=io1` and `iothread=io1` on a disk or net device): the
//! device's queues and back end are served on that thread, which QMP `query-iothreads` names
//! with its thread id; `stop` freezes it as it freezes the VMM thread's devices; a device that
//! names an unknown iothread is refused with one line; the thread runs under its own seccomp
//! filter.
//!
//! Which thread did the work is read from `/proc/PID/task/TID/io`: a disk write served with
//! `pwrite64` counts its bytes in that thread's `wchar`, a tap frame read in its `syscr`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::packet::{pong_frame, receive_ping, PacketSocket, PONG};
use common::tap::{root, TapGuard};
use common::{
    disk_image, kvm_usable, lines, qmp_args, run, Format, QmpClient, Vm, VmConfig, VM_TIMEOUT,
};
use serde_json::json;

/// The I/O counters of one thread (`/proc/PID/task/TID/io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreadIo {
    /// Bytes passed to read-like syscalls.
    rchar: u64,
    /// Bytes passed to write-like syscalls.
    wchar: u64,
    /// Read-like syscalls.
    syscr: u64,
    /// Write-like syscalls.
    syscw: u64,
}

fn thread_io(pid: i32, tid: i64) -> ThreadIo {
    let path = format!("/proc/{pid}/task/{tid}/io");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path} has no {name}:\n{text}"))
    };
    ThreadIo {
        rchar: field("rchar"),
        wchar: field("wchar"),
        syscr: field("syscr"),
        syscw: field("syscw"),
    }
}

fn thread_name(pid: i32, tid: i64) -> String {
    let path = format!("/proc/{pid}/task/{tid}/comm");
    let name = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    name.trim_end().to_owned()
}

/// A short directory under /tmp for the QMP socket (Unix socket paths are at most 107 bytes).
struct SocketDir(std::path::PathBuf);

impl SocketDir {
    fn new(name: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("nimbus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        SocketDir(dir)
    }

    fn qmp(&self) -> std::path::PathBuf {
        self.0.join("qmp.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `query-iothreads`, checked to hold exactly iothread `id` in QEMU's shape; its thread id.
fn iothread_tid(qmp: &mut QmpClient, id: &str) -> i64 {
    let reply = qmp.execute("query-iothreads", json!({}));
    let tid = reply["return"][0]["thread-id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no thread-id in {reply}"));
    assert_eq!(
        reply,
        json!({"return": [{"id": id, "thread-id": tid, "poll-max-ns": 0, "poll-grow": 0,
                           "poll-shrink": 0, "aio-max-batch": 0}]})
    );
    tid
}

const WRITES: u64 = 20;

fn blkloop_args(image: &Path, qmp_path: &Path) -> Vec<String> {
    let append = format!(
        "console=ttyS0 nimbus.test=blkloop nimbus.blkwrites={WRITES} nimbus.blkpause=100000"
    );
    let mut args = VmConfig::new(Format::Elf, 128, &append).args();
    args.extend([
        "-object".to_owned(),
        "iothread,id=io1".to_owned(),
        "-drive".to_owned(),
        format!("id=d0,file={}", image.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0,id=blk0,iothread=io1".to_owned(),
    ]);
    args.extend(qmp_args(qmp_path));
    args
}

/// The guest writes one sector at a time through a disk on iothread io1: the thread that
/// `query-iothreads` names (and that is called `iothread-io1`) makes the image writes, the VMM
/// thread does not; after `stop` the iothread makes no more syscalls, after `cont` it writes
/// again, and the VM ends with status 0 with every sector written.
#[test]
fn disk_writes_run_on_the_iothread_and_stop_freezes_it() {
    if !kvm_usable() {
        return;
    }
    let image = disk_image("iothread-blk.img", 256);
    let sockets = SocketDir::new("io-blk");
    let mut vm = Vm::spawn(&blkloop_args(&image, &sockets.qmp()));
    let mut qmp = QmpClient::connect(&sockets.qmp());
    let pid = vm.pid();
    let tid = iothread_tid(&mut qmp, "io1");
    assert_ne!(tid, i64::from(pid), "the iothread is not the VMM thread");
    assert_eq!(thread_name(pid, tid), "iothread-io1");
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).expect("status");
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the iothread runs without a filter:\n{status}"
    );
    let refused = qmp.error(
        "device_add",
        json!({"driver": "virtio-blk-device", "drive": "d0", "iothread": "io1"}),
        "GenericError",
    );
    assert!(refused.contains("'iothread'"), "{refused}");

    vm.wait_for_line("blkloop: write 1 status=0", VM_TIMEOUT);
    let (io_before, vmm_before) = (thread_io(pid, tid), thread_io(pid, pid.into()));
    vm.wait_for_line("blkloop: write 9 status=0", VM_TIMEOUT);
    let (io_after, vmm_after) = (thread_io(pid, tid), thread_io(pid, pid.into()));
    // Writes 2..=9 at least: 8 sectors of 512 bytes, each its own pwrite64.
    let written = io_after.wchar - io_before.wchar;
    assert!(
        written >= 8 * 512 && io_after.syscw - io_before.syscw >= 8,
        "the iothread did not write the sectors: {io_before:?} -> {io_after:?}"
    );
    assert!(
        vmm_after.wchar - vmm_before.wchar < 8 * 512,
        "the VMM thread wrote as much as the disk got: {vmm_before:?} -> {vmm_after:?}"
    );

    qmp.ok("stop", json!({}));
    let stopped = thread_io(pid, tid);
    std::thread::sleep(Duration::from_millis(800));
    let still = thread_io(pid, tid);
    if (still.syscr, still.syscw) != (stopped.syscr, stopped.syscw) {
        vm.fail(&format!(
            "the iothread kept working while stopped: {stopped:?} -> {still:?}"
        ));
    }
    qmp.ok("cont", json!({}));
    vm.wait_for_line("blkloop: write 16 status=0", VM_TIMEOUT);
    let resumed = thread_io(pid, tid);
    assert!(
        resumed.wchar >= still.wchar + 2 * 512,
        "the iothread did not write after cont: {still:?} -> {resumed:?}"
    );

    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    let done = format!("blkloop: done writes={WRITES} errors=0 ");
    assert!(
        out.guest_lines().iter().any(|l| l.starts_with(&done)),
        "{}",
        out.describe()
    );
    let disk = std::fs::read(&image).expect("read the image");
    for i in 0..WRITES as usize {
        let sector = &disk[(8 + i) * 512..(9 + i) * 512];
        assert!(
            sector.iter().all(|&b| usize::from(b) == i + 1),
            "sector {}",
            8 + i
        );
    }
}

/// A net device on iothread io1: the guest's frame goes out and the answer comes back through
/// the tap, which the iothread reads. While the VM is stopped, a frame sent to the tap stays
/// there (the tap's `tx_packets` counts frames as its reader takes them) and the iothread
/// makes no read; after `cont` the guest gets it.
#[test]
fn net_on_an_iothread_exchanges_frames_and_stop_freezes_its_tap() {
    if !kvm_usable() || !root() {
        return;
    }
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let sockets = SocketDir::new("io-net");
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=net").args();
    args.extend([
        "-object".to_owned(),
        "iothread,id=io1".to_owned(),
        "-netdev".to_owned(),
        format!("tap,id=n0,ifname={}", tap.name),
        "-device".to_owned(),
        "virtio-net-device,netdev=n0,id=n0,mac=52:54:00:12:34:56,iothread=io1".to_owned(),
    ]);
    args.extend(qmp_args(&sockets.qmp()));
    let mut vm = Vm::spawn(&args);
    let mut qmp = QmpClient::connect(&sockets.qmp());
    let pid = vm.pid();
    let tid = iothread_tid(&mut qmp, "io1");
    vm.wait_for_line("net: mac=52:54:00:12:34:56", VM_TIMEOUT);
    receive_ping(&socket, &mut vm);
    let sent = thread_io(pid, tid);
    // The 60-byte frame behind its virtio-net header, written to the tap by the iothread.
    assert!(sent.wchar >= 60, "the iothread wrote no frame: {sent:?}");

    qmp.ok("stop", json!({}));
    let (taken, stopped) = (tap.frames_taken(), thread_io(pid, tid));
    socket.send(&pong_frame());
    std::thread::sleep(Duration::from_secs(1));
    let still = thread_io(pid, tid);
    if tap.frames_taken() != taken || still.syscr != stopped.syscr {
        vm.fail(&format!(
            "the iothread read the tap while stopped: {stopped:?} -> {still:?}"
        ));
    }
    let got = format!("net: got {PONG}");
    assert!(!lines(&vm.stdout_text()).contains(&got.as_str()));
    qmp.ok("cont", json!({}));
    let out = vm.wait(VM_TIMEOUT);
    assert!(
        out.guest_lines().contains(&got.as_str()),
        "the guest did not get the answer after cont\n{}",
        out.describe()
    );
    assert!(tap.frames_taken() > taken, "{}", out.describe());
    out.assert_exit_code(0);
}

#[test]
fn a_device_naming_an_unknown_iothread_is_one_error_line() {
    let image = disk_image("iothread-unknown.img", 64);
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0").args();
    args.extend([
        "-object".to_owned(),
        "iothread,id=io1".to_owned(),
        "-drive".to_owned(),
        format!("id=d0,file={}", image.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0,iothread=io9".to_owned(),
    ]);
    let out = run(&args);
    out.assert_one_error_line(&[
        "-device",
        "iothread=io9",
        "no -object iothread with id 'io9'",
    ]);
}

/// The iothread installs its own filter: the self-test hook's syscall, which no list allows,
/// made on the iothread ends nimbus with the SIGSYS line naming that thread.
#[test]
fn the_iothread_runs_under_its_own_seccomp_filter() {
    if !kvm_usable() {
        return;
    }
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0").args();
    args.extend(["-object".to_owned(), "iothread,id=io1".to_owned()]);
    let vm = Vm::spawn_with(&args, |command| {
        command.env("NIMBUS_SECCOMP_SELFTEST", "iothread:getppid");
    });
    let out = vm.wait(VM_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGSYS),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr
            .contains("forbidden syscall getppid (110) on the iothread thread"),
        "{}",
        out.describe()
    );
}

/// A disk with everything the device offers on an iothread: two queues, io_uring, and an iops
/// limit whose waiting requests are resumed by a timerfd on the iothread's loop. The guest's
/// reads through indirect tables on both queues all complete, and nothing the iothread calls
/// for them is outside its seccomp list (a missing syscall would end nimbus with SIGSYS).
#[test]
fn a_throttled_two_queue_disk_on_an_iothread_serves_every_request() {
    if !kvm_usable() {
        return;
    }
    const READS: u32 = 400;
    let image = disk_image("iothread-throttle.img", 64);
    let append = format!(
        "console=ttyS0 nimbus.test=blkbench nimbus.blkreads={READS} nimbus.blkqueues=2 \
         nimbus.blkindirect=1 nimbus.blkdepth=4"
    );
    let mut args = VmConfig::new(Format::Elf, 128, &append).args();
    args.extend([
        "-object".to_owned(),
        "iothread,id=io1".to_owned(),
        "-drive".to_owned(),
        format!("id=d0,file={},aio=io_uring,iops=200", image.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0,num-queues=2,iothread=io1".to_owned(),
    ]);
    let out = Vm::spawn(&args).wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    assert!(
        lines(&out.stdout)
            .iter()
            .any(|l| l.contains(&format!("blkbench: reads={READS} errors=0"))),
        "{}",
        out.describe()
    );
}
