//! Faults, with nothing lost: what the guest and the VMM see when the host side of a device
//! fails under them.
//!
//! - Disk full: the image lives on a small tmpfs (`size=`) that a filler file has nearly
//!   filled; writes past the space fail with VIRTIO_BLK_S_IOERR while the VMM keeps answering
//!   QMP, succeed again once the filler is deleted, and every acknowledged write is on the image.
//! - I/O errors: the image is a FUSE file exported by qemu-storage-daemon over a `blkdebug`
//!   node that fails reads of one 4 KiB page with EIO; the guest's reads there get IOERR, the
//!   other reads get their bytes.
//! - Crash after flush: SIGKILL right after the guest saw its flush acknowledged; every write
//!   flushed before it is on the image (`FAULTS_CRASH_RUNS` runs, 5 by default;
//!   scripts/faults.sh runs 100).
//! - The tap disappears (`ip link del`): the device logs one line naming it, the guest sees
//!   its link go down, the VMM does not spin, and `device_del`, `netdev_del` and `quit` work.
//!
//! Mounts and taps need root: without it these tests are skipped loudly (failed under CI).
//! Every back end a test starts (mount, daemon, tap) is undone by a guard when it is dropped,
//! whatever the outcome.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::packet::{pong_frame, receive_ping, PacketSocket, PONG};
use common::tap::{root, TapGuard};
use common::{
    kvm_usable, proc_stat_fields, qmp_args, Format, Output, QmpClient, TempDir, Vm, VmConfig,
    VM_TIMEOUT,
};
use serde_json::json;

const PAGE: u64 = 4096;
const SECTOR: u64 = 512;

// ---- guards for the host side ----------------------------------------------------------------

/// A short directory under /tmp (Unix socket paths are at most 107 bytes; mount points are
/// kept out of the scratch tree, which other tests delete recursively).
struct ShortDir(PathBuf);

impl ShortDir {
    fn new(name: &str) -> ShortDir {
        let dir = std::env::temp_dir().join(format!("nimbus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the short directory");
        ShortDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of `bytes` mounted on a fresh directory; unmounted and removed when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "nimbus-faults",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {dir:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(&self.dir).status() {
            Ok(s) if s.success() => {}
            _ => {
                eprintln!("cannot unmount {:?}; detaching it", self.dir);
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// qemu-storage-daemon exporting `image` over FUSE on `mountpoint` through a blkdebug node
/// configured by `rules`; on drop the export is unmounted, the daemon killed and reaped.
struct StorageDaemon {
    child: Child,
    mountpoint: PathBuf,
}

impl StorageDaemon {
    fn start(image: &Path, rules: &Path, mountpoint: &Path) -> StorageDaemon {
        File::create(mountpoint).expect("create the FUSE mount point file");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                image.display()
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver=blkdebug,node-name=d,image=f,config={}",
                rules.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=e,node-name=d,mountpoint={},writable=on",
                mountpoint.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run qemu-storage-daemon");
        let daemon = StorageDaemon {
            child,
            mountpoint: mountpoint.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.mounted() {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not mount its FUSE export on {mountpoint:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let target = self.mountpoint.display().to_string();
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(target.as_str()))
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if self.mounted() {
            let _ = Command::new("umount").arg(&self.mountpoint).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.mounted() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_file(&self.mountpoint);
    }
}

// ---- helpers ----------------------------------------------------------------------------------

/// `-drive`/`-device` for one virtio-blk disk on `image` (with extra drive `options`), then QMP.
fn disk_vm_args(append: &str, image: &Path, options: &str, qmp: &Path) -> Vec<String> {
    let mut args = VmConfig::new(Format::Elf, 128, append).args();
    args.extend([
        "-drive".to_owned(),
        format!("id=d0,file={}{options}", image.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=d0,id=blk0".to_owned(),
    ]);
    args.extend(qmp_args(qmp));
    args
}

/// The statuses `blkloop` printed for request `i` (`what`: "write" or "read"), in order.
fn statuses(stdout: &str, what: &str, i: u64) -> Vec<String> {
    let prefix = format!("blkloop: {what} {i} status=");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Whether `len` bytes at `offset` of `image` all hold `byte`.
fn holds(image: &[u8], offset: u64, len: u64, byte: u8) -> bool {
    let (at, end) = (offset as usize, (offset + len) as usize);
    image.len() >= end && image[at..end].iter().all(|&b| b == byte)
}

/// A pseudo-random number from the clock and the pid (xorshift), enough to pick crash points.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        Rng(u64::from(nanos) ^ (u64::from(std::process::id()) << 32) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn root_for(what: &str) -> bool {
    let ok = root();
    if !ok {
        eprintln!("*** SKIP: {what} needs root ***");
    }
    ok
}

// ---- disk full --------------------------------------------------------------------------------

/// Pages left free on the tmpfs: writes 0..FREE_PAGES fit, the next one does not.
const FREE_PAGES: u64 = 4;
const FULL_WRITES: u64 = 10;

/// The image (1 MiB, sparse) lives on a 256 KiB tmpfs that a filler leaves FREE_PAGES pages
/// free. The guest writes one sector into each of FULL_WRITES pages, retrying a failed write:
/// write FREE_PAGES gets IOERR (ENOSPC on the host), QMP still answers, the disk is not marked
/// broken; once the filler is deleted the retry succeeds and so do the rest; every write
/// acknowledged before the fault was on the image already, and all are at the end.
/// With the synchronous back end and with io_uring.
#[test]
fn disk_full_fails_writes_with_ioerr_until_space_is_freed_and_loses_nothing() {
    if !kvm_usable() || !root_for("mounting a tmpfs") {
        return;
    }
    disk_full("full", "");
    disk_full("fullu", ",aio=io_uring");
}

fn disk_full(name: &str, options: &str) {
    let dir = ShortDir::new(name);
    let fs = Tmpfs::mount(dir.path("fs"), 64 * PAGE);
    let image = fs.path("disk.img");
    File::create(&image)
        .and_then(|f| f.set_len(256 * PAGE))
        .expect("create the sparse image");
    let filler = fs.path("filler");
    fill(&filler);
    let len = std::fs::metadata(&filler).expect("filler").len();
    File::options()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(len - FREE_PAGES * PAGE))
        .expect("free FREE_PAGES pages");

    let append = format!(
        "console=ttyS0 nimbus.test=blkloop nimbus.blkwrites={FULL_WRITES} nimbus.blkstride=8 \
         nimbus.blkretry=100000 nimbus.blkpause=20000"
    );
    let qmp_path = dir.path("qmp.sock");
    let mut vm = Vm::spawn(&disk_vm_args(&append, &image, options, &qmp_path));
    let mut qmp = QmpClient::connect(&qmp_path);
    // Two failed attempts of the first write that does not fit.
    let full = format!("blkloop: write {FREE_PAGES} status=1");
    vm.wait_for_line(&full, VM_TIMEOUT);
    wait_until(&mut vm, "a second failed attempt", |out| {
        statuses(out, "write", FREE_PAGES).len() >= 2
    });
    let reply = qmp.execute("query-status", json!({}));
    assert_eq!(reply["return"]["status"], "running", "{reply}");
    let reply = qmp.execute("query-block", json!({}));
    assert!(reply["return"].is_array(), "{reply}");
    let out = vm.stdout_text();
    for i in 0..FREE_PAGES {
        assert_eq!(statuses(&out, "write", i), ["0"], "write {i}\n{out}");
    }
    // What was acknowledged is on the image now, before anything was freed.
    let disk = std::fs::read(&image).expect("read the image");
    for i in 0..FREE_PAGES {
        assert!(
            holds(&disk, (8 + i * 8) * SECTOR, SECTOR, (i + 1) as u8),
            "acknowledged write {i} is not on the image"
        );
    }

    std::fs::remove_file(&filler).expect("free the space");
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    let done = format!("blkloop: done writes={FULL_WRITES} errors=0 status=0xf");
    assert!(
        out.guest_lines().contains(&done.as_str()),
        "writes did not all succeed after space was freed (or the device broke)\n{}",
        out.describe()
    );
    let failed = statuses(&out.stdout, "write", FREE_PAGES);
    assert_eq!(failed.last().map(String::as_str), Some("0"), "{failed:?}");
    assert!(
        failed[..failed.len() - 1].iter().all(|s| s == "1"),
        "{failed:?}"
    );
    assert_host_errors_logged_once(&out, "No space left on device", failed.len() - 1);
    let disk = std::fs::read(&image).expect("read the image");
    for i in 0..FULL_WRITES {
        assert!(
            holds(&disk, (8 + i * 8) * SECTOR, SECTOR, (i + 1) as u8),
            "write {i} is not on the image"
        );
    }
}

/// Writes `path` in pages until the file system is full.
fn fill(path: &Path) {
    let mut file = File::create(path).expect("create the filler");
    let page = [0x5au8; PAGE as usize];
    loop {
        match file.write(&page) {
            Ok(n) if n == page.len() => {}
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {path:?}: {e}"),
        }
    }
    // tmpfs charges whole pages: a partial last page would leave less room than counted.
    let len = file.metadata().expect("filler").len();
    file.set_len(len - len % PAGE).expect("trim the filler");
}

/// Waits until the VM's stdout satisfies `ready`, or fails the test after VM_TIMEOUT.
fn wait_until(vm: &mut Vm, what: &str, ready: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + VM_TIMEOUT;
    while !ready(&vm.stdout_text()) {
        if Instant::now() >= deadline {
            vm.fail(&format!("waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- I/O errors -------------------------------------------------------------------------------

const SCAN_READS: u64 = 8;
/// The read whose page fails.
const BAD_READ: u64 = 3;

/// Reads of one failing page get IOERR; the other reads, before and after it, get their bytes,
/// and the device keeps its status (not broken).
#[test]
fn reads_of_a_failing_region_get_ioerr_and_the_rest_of_the_disk_still_reads() {
    if !kvm_usable() || !root_for("a FUSE export") {
        return;
    }
    if Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-storage-daemon is missing"
        );
        eprintln!("*** SKIP: qemu-storage-daemon is missing ***");
        return;
    }
    let work = TempDir::new("faults-eio");
    let dir = ShortDir::new("eio");
    let image = work.path("backing.img");
    let backing = File::create(&image).expect("create the image");
    backing.set_len(256 * PAGE).expect("size the image");
    for i in 0..SCAN_READS {
        let sector = vec![(i + 1) as u8; SECTOR as usize];
        backing
            .write_all_at(&sector, (8 + i * 8) * SECTOR)
            .expect("fill the image");
    }
    // blkdebug: once any write has happened ("pwritev"), every read touching the bad sector
    // fails with EIO.
    let bad_sector = 8 + BAD_READ * 8;
    let rules = work.path("rules.conf");
    std::fs::write(
        &rules,
        format!(
            "[inject-error]\nevent = \"pwritev\"\niotype = \"read\"\nerrno = \"5\"\n\
             sector = \"{bad_sector}\"\nonce = \"off\"\nimmediately = \"off\"\n"
        ),
    )
    .expect("write the blkdebug rules");
    let export = dir.path("disk");
    let _daemon = StorageDaemon::start(&image, &rules, &export);
    // Arm the rule with one write to sector 0, which the guest never reads.
    OpenOptions::new()
        .write(true)
        .open(&export)
        .and_then(|f| f.write_all_at(&[0; SECTOR as usize], 0))
        .expect("write to the FUSE export");

    let append = format!(
        "console=ttyS0 nimbus.test=blkloop nimbus.blkread=1 nimbus.blkwrites={SCAN_READS} \
         nimbus.blkstride=8 nimbus.blkpause=1000"
    );
    let qmp_path = dir.path("qmp.sock");
    let mut vm = Vm::spawn(&disk_vm_args(&append, &export, "", &qmp_path));
    let mut qmp = QmpClient::connect(&qmp_path);
    vm.wait_for_line(
        &format!("blkloop: read {BAD_READ} status=1 byte=0"),
        VM_TIMEOUT,
    );
    let reply = qmp.execute("query-status", json!({}));
    assert_eq!(reply["return"]["status"], "running", "{reply}");
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    for i in 0..SCAN_READS {
        let want = if i == BAD_READ {
            "1 byte=0".to_owned()
        } else {
            format!("0 byte={}", i + 1)
        };
        assert_eq!(
            statuses(&out.stdout, "read", i),
            [want],
            "{}",
            out.describe()
        );
    }
    let done = format!("blkloop: done writes={SCAN_READS} errors=1 status=0xf");
    assert!(
        out.guest_lines().contains(&done.as_str()),
        "{}",
        out.describe()
    );
    assert_host_errors_logged_once(&out, "Input/output error", 1);
}

/// The VMM logged one line, naming `why`, when the host errors started, and one when a request
/// succeeded after `failed` of them: not one line per failed request.
fn assert_host_errors_logged_once(out: &Output, why: &str, failed: usize) {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("virtio-blk"))
        .collect();
    let recovered = format!("a request succeeded after {failed} failed on the host");
    assert!(
        lines.len() == 2 && lines[0].contains(why) && lines[1].contains(&recovered),
        "want one line naming {why:?}, then one with {recovered:?}\n{}",
        out.describe()
    );
}

// ---- crash after flush ------------------------------------------------------------------------

const FLUSH_WRITES: u64 = 16;
/// Bytes of each write: one page, eight sectors.
const FLUSH_BYTES: u64 = 4096;

/// One run: the guest writes FLUSH_WRITES pages, flushing after each; nimbus gets SIGKILL as
/// soon as the flush of write `kill_after` is acknowledged; then every write up to it must be
/// on the image. Returns what went wrong, if anything.
fn crash_after_flush(run: u64, kill_after: u64, options: &str) -> Result<(), String> {
    let work = TempDir::new(&format!("faults-crash-{run}"));
    let image = work.path("disk.img");
    File::create(&image)
        .and_then(|f| f.set_len(256 * PAGE))
        .expect("create the image");
    let dir = ShortDir::new(&format!("crash{run}"));
    let append = format!(
        "console=ttyS0 nimbus.test=blkloop nimbus.blkwrites={FLUSH_WRITES} nimbus.blkstride=8 \
         nimbus.blkbytes={FLUSH_BYTES} nimbus.blkflush=1 nimbus.blkpause=100"
    );
    let mut vm = Vm::spawn(&disk_vm_args(
        &append,
        &image,
        options,
        &dir.path("qmp.sock"),
    ));
    vm.wait_for_line(&format!("blkloop: flush {kill_after} status=0"), VM_TIMEOUT);
    vm.signal(libc::SIGKILL);
    let out: Output = vm.wait(VM_TIMEOUT);
    if out.status.code().is_some() {
        return Err(format!("nimbus exited before the kill\n{}", out.describe()));
    }
    let disk = std::fs::read(&image).expect("read the image");
    for i in 0..=kill_after {
        if !holds(&disk, (8 + i * 8) * SECTOR, FLUSH_BYTES, (i + 1) as u8) {
            return Err(format!(
                "run {run} ({options:?}): write {i} was flushed before the kill after flush \
                 {kill_after} but is not on the image"
            ));
        }
    }
    Ok(())
}

/// SIGKILL right after a flush completes loses no flushed byte; at random flush points, with
/// the synchronous back end and with io_uring in turn. FAULTS_CRASH_RUNS sets the number of
/// runs (scripts/faults.sh --runs N).
#[test]
fn sigkill_right_after_a_flush_loses_no_flushed_write() {
    if !kvm_usable() {
        return;
    }
    let runs: u64 = std::env::var("FAULTS_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rng = Rng::new();
    let mut failures = Vec::new();
    for run in 0..runs {
        let kill_after = rng.below(FLUSH_WRITES);
        let options = if run % 2 == 0 { "" } else { ",aio=io_uring" };
        if let Err(e) = crash_after_flush(run, kill_after, options) {
            failures.push(e);
        }
    }
    eprintln!(
        "crash after flush: {runs} runs, {} lost a flushed write",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- the tap disappears -----------------------------------------------------------------------

/// CPU time (user + system, in clock ticks) thread `tid` of process `pid` has used.
fn thread_ticks(pid: i32, tid: i64) -> u64 {
    let fields = proc_stat_fields(&format!("{pid}/task/{tid}"));
    let field = |n: usize| fields[n].parse::<u64>().expect("a number");
    field(11) + field(12)
}

/// The tap's link is deleted under a running VM: the device logs one line naming it, the
/// guest sees its link go down (with a configuration-change interrupt), the thread serving the
/// device does not spin on the dead tap, QMP answers, `device_del` and `netdev_del` work,
/// `quit` exits 0. On the VMM thread, then on an iothread.
#[test]
fn deleted_tap_takes_the_link_down_with_one_log_line_and_the_vmm_goes_on() {
    if !kvm_usable() || !root() {
        return;
    }
    tap_deleted(None);
    tap_deleted(Some("io1"));
}

fn tap_deleted(iothread: Option<&str>) {
    let tap = TapGuard::create();
    let socket = PacketSocket::bind(&tap.name);
    let dir = ShortDir::new(if iothread.is_some() {
        "tapdelio"
    } else {
        "tapdel"
    });
    let qmp_path = dir.path("qmp.sock");
    let mut args = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=netwatch").args();
    args.extend([
        "-netdev".to_owned(),
        format!("tap,id=n0,ifname={}", tap.name),
        "-device".to_owned(),
        format!(
            "virtio-net-device,netdev=n0,id=net0,mac=52:54:00:12:34:56{}",
            iothread
                .map(|t| format!(",iothread={t}"))
                .unwrap_or_default()
        ),
    ]);
    if let Some(t) = iothread {
        args.extend(["-object".to_owned(), format!("iothread,id={t}")]);
    }
    args.extend(qmp_args(&qmp_path));
    let mut vm = Vm::spawn(&args);
    let mut qmp = QmpClient::connect(&qmp_path);
    vm.wait_for_line("netwatch: link up mac=52:54:00:12:34:56", VM_TIMEOUT);
    receive_ping(&socket, &mut vm);
    socket.send(&pong_frame());
    vm.wait_for_line(&format!("net: got {PONG}"), VM_TIMEOUT);
    drop(socket);

    let out = Command::new("ip")
        .args(["link", "del", &tap.name])
        .output()
        .expect("run ip link del");
    assert!(out.status.success(), "ip link del {}: {out:?}", tap.name);
    vm.wait_for_line(
        "netwatch: link down config-change mac=52:54:00:12:34:56",
        VM_TIMEOUT,
    );
    // The thread that serves the device: the VMM thread, or the iothread QMP names.
    let tid = match iothread {
        None => i64::from(vm.pid()),
        Some(_) => qmp.execute("query-iothreads", json!({}))["return"][0]["thread-id"]
            .as_i64()
            .expect("the iothread's thread-id"),
    };
    let before = thread_ticks(vm.pid(), tid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = thread_ticks(vm.pid(), tid) - before;
    let reply = qmp.execute("query-status", json!({}));
    assert_eq!(reply["return"]["status"], "running", "{reply}");
    assert!(
        spent < 30,
        "thread {tid} spun on the dead tap: {spent} ticks in 1 s"
    );
    let errors = vm.stderr_text();
    let about_tap: Vec<&str> = errors.lines().filter(|l| l.contains("tap")).collect();
    assert_eq!(about_tap.len(), 1, "one line about the tap:\n{errors}");
    assert!(about_tap[0].contains("'net0'"), "{}", about_tap[0]);

    qmp.ok("device_del", json!({"id": "net0"}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !qmp.events.iter().any(|e| e["event"] == "DEVICE_DELETED") {
        assert!(
            Instant::now() < deadline,
            "no DEVICE_DELETED: {:?}",
            qmp.events
        );
        std::thread::sleep(Duration::from_millis(50));
        qmp.execute("query-status", json!({}));
    }
    qmp.ok("netdev_del", json!({"id": "n0"}));
    qmp.ok("quit", json!({}));
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
}
