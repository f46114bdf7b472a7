//! vhost-user-blk against a real back end: `qemu-storage-daemon` (Debian's
//! qemu-system-common) exports an image over a vhost-user socket, and the project's test guest
//! drives the disk with its polled virtio-blk driver (`nimbus.test=blk`), which cannot tell it
//! from Nimbus's own virtio-blk. The daemon is started by each test and always stopped and
//! cleaned up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{disk_image, kvm_usable, qmp_args, run, Format, QmpClient, Vm, VmConfig};

const MARKER: &str = "NIMBUS-VHOST-USER-MARKER";
const DAEMON: &str = "qemu-storage-daemon";

/// A qemu-storage-daemon exporting `image` on `socket`; killed and its socket removed on drop.
struct StorageDaemon {
    child: Child,
    socket: PathBuf,
}

impl StorageDaemon {
    fn start(image: &Path, socket: &Path) -> StorageDaemon {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(DAEMON)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={}",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{DAEMON}: {e} (scripts/test.sh installs qemu-system-common)"));
        let daemon = StorageDaemon {
            child,
            socket: socket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{DAEMON} never made {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn marked_image(name: &str) -> PathBuf {
    let path = disk_image(name, 2048);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, MARKER.as_bytes(), 0))
        .expect("write the marker");
    path
}

fn vhost_user_args(socket: &Path, machine: &str) -> Vec<String> {
    vec![
        "-machine".into(),
        machine.into(),
        "-chardev".into(),
        format!("socket,id=c1,path={}", socket.display()),
        "-device".into(),
        "vhost-user-blk-device,id=vub0,chardev=c1".into(),
    ]
}

#[test]
fn test_guest_blk_checks_pass_against_qemu_storage_daemon() {
    if !kvm_usable() {
        return;
    }
    let image = marked_image("vhost-user-blk.img");
    let socket = image.with_extension("sock");
    let _daemon = StorageDaemon::start(&image, &socket);
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=blk");
    config.extra_args = vhost_user_args(&socket, "microvm,mem-share=on");
    let out = run(&config.args());
    out.assert_exit_code(0);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("blk: "))
        .collect();
    assert_eq!(
        lines,
        [
            "blk: status=0xf flush=1",
            "blk: capacity=2048",
            // qemu-storage-daemon's serial for an export.
            "blk: id status=0 text=vhost_user_blk",
            "blk: interrupt status=1",
            &format!("blk: marker status=0 text={MARKER}"),
            "blk: write status=0",
            "blk: flush status=0",
            "blk: read status=0 same",
            "blk: beyond-end status=1",
            "blk: reset status=0",
        ],
        "{}",
        out.describe()
    );
    let bytes = std::fs::read(&image).expect("read the image back");
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(
        &bytes[1024..2048],
        pattern.as_slice(),
        "sectors 2-3 of the image"
    );
    let _ = std::fs::remove_file(&image);
}

#[test]
fn private_guest_ram_is_one_line_naming_mem_share() {
    let image = marked_image("vhost-user-private.img");
    let socket = image.with_extension("sock");
    let _daemon = StorageDaemon::start(&image, &socket);
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vhost_user_args(&socket, "microvm");
    run(&config.args()).assert_one_error_line(&["mem-share=on"]);
    let _ = std::fs::remove_file(&image);
}

#[test]
fn missing_back_end_socket_is_refused_naming_it() {
    let socket = common::scratch_dir().join(format!("no-back-end-{}.sock", std::process::id()));
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vhost_user_args(&socket, "microvm,mem-share=on");
    run(&config.args()).assert_one_error_line(&[&socket.display().to_string(), "vub0"]);
}

/// Waits until stdout has a line starting with `prefix` and returns it; fails the test (with
/// the daemon's side too) if none comes within `timeout`.
fn wait_for_prefix(vm: &Vm, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = vm.stdout_text();
        let complete = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
        if let Some(line) = complete.into_iter().find(|l| l.starts_with(prefix)) {
            return line.trim_end().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line {prefix:?} within {timeout:?}\nstdout:\n{text}\nstderr:\n{}",
            vm.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `blkloop` writes the guest reported, as (index, status).
fn loop_writes(stdout: &str) -> Vec<(usize, u32)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("blkloop: write "))
        .filter_map(|rest| {
            let (index, status) = rest.split_once(" status=")?;
            Some((index.parse().ok()?, status.parse().ok()?))
        })
        .collect()
}

/// Nimbus with the vhost-user disk as its only device (slot 0 for `blkloop`), the chardev
/// options `chardev_extra` appended, and QMP.
fn blkloop_vm(socket: &Path, chardev_extra: &str, writes: u32, qmp_path: &Path) -> Vm {
    let mut config = VmConfig::new(
        Format::Elf,
        128,
        &format!(
            "console=ttyS0 nimbus.test=blkloop nimbus.blkwrites={writes} nimbus.blkpause=100000"
        ),
    );
    config.extra_args = vec![
        "-machine".into(),
        "microvm,mem-share=on,blk-slots=0,net-slots=0".into(),
        "-chardev".into(),
        format!("socket,id=c1,path={}{chardev_extra}", socket.display()),
        "-device".into(),
        "vhost-user-blk-device,id=vub0,chardev=c1".into(),
    ];
    config.extra_args.extend(qmp_args(qmp_path));
    Vm::spawn(&config.args())
}

/// The back end is killed while the guest writes, and no reconnect was asked for: Nimbus says
/// so once, naming the device; the request in flight and every later one end with
/// VIRTIO_BLK_S_IOERR (1), not a hang (256 is the guest's "no answer"); the device shows
/// DEVICE_NEEDS_RESET; QMP still answers while the guest goes on, and Nimbus ends cleanly
/// when the guest is done.
#[test]
fn back_end_killed_mid_run_gives_the_guest_io_errors_and_leaves_nimbus_answering() {
    if !kvm_usable() {
        return;
    }
    let image = marked_image("vhost-user-dies.img");
    let socket = image.with_extension("sock");
    let qmp_path = image.with_extension("qmp");
    let daemon = StorageDaemon::start(&image, &socket);
    let vm = blkloop_vm(&socket, "", 24, &qmp_path);
    wait_for_prefix(&vm, "blkloop: write 3 ", Duration::from_secs(30));
    let mut qmp = QmpClient::connect(&qmp_path);
    drop(daemon);
    // The guest has writes left for seconds: QMP is asked while it runs.
    std::thread::sleep(Duration::from_millis(500));
    let status = qmp.execute("query-status", serde_json::json!({}));
    assert_eq!(status["return"]["status"], "running", "{status}");
    let done = wait_for_prefix(&vm, "blkloop: done", Duration::from_secs(60));
    let out = vm.wait(Duration::from_secs(30));
    out.assert_exit_code(0);
    let writes = loop_writes(&out.stdout);
    assert_eq!(writes.len(), 24, "{}", out.describe());
    assert!(
        writes.iter().all(|&(_, s)| s == 0 || s == 1),
        "every write answered, OK or IOERR, none left hanging: {writes:?}\n{}",
        out.describe()
    );
    let first_error = writes.iter().position(|&(_, s)| s == 1);
    assert!(
        first_error.is_some_and(|at| writes[at..].iter().all(|&(_, s)| s == 1)),
        "errors from the kill on: {writes:?}"
    );
    let device_status = done
        .split("status=")
        .nth(1)
        .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("{done}"));
    assert_ne!(device_status & 0x40, 0, "DEVICE_NEEDS_RESET: {done}");
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("the back end closed its socket"))
        .collect();
    assert_eq!(said.len(), 1, "{}", out.describe());
    assert!(
        said[0].contains("vhost-user-blk-device 'vub0'"),
        "{}",
        out.describe()
    );
    let _ = std::fs::remove_file(&image);
}

/// With `reconnect=1` the back end is killed while the guest writes and started again on the
/// same image: Nimbus reconnects, the guest's writes all succeed (the one in flight at the
/// kill is done again from the used index), and every write the guest saw acknowledged is on
/// the image afterwards.
#[test]
fn reconnect_resumes_io_and_keeps_every_acknowledged_write() {
    if !kvm_usable() {
        return;
    }
    let image = marked_image("vhost-user-reconnect.img");
    let socket = image.with_extension("sock");
    let qmp_path = image.with_extension("qmp");
    let daemon = StorageDaemon::start(&image, &socket);
    let writes = 24;
    let vm = blkloop_vm(&socket, ",reconnect=1", writes, &qmp_path);
    wait_for_prefix(&vm, "blkloop: write 3 ", Duration::from_secs(30));
    let mut qmp = QmpClient::connect(&qmp_path);
    drop(daemon);
    std::thread::sleep(Duration::from_millis(300));
    let status = qmp.execute("query-status", serde_json::json!({}));
    assert_eq!(status["return"]["status"], "running", "{status}");
    let _daemon = StorageDaemon::start(&image, &socket);
    let done = wait_for_prefix(&vm, "blkloop: done", Duration::from_secs(90));
    let out = vm.wait(Duration::from_secs(30));
    out.assert_exit_code(0);
    assert!(done.contains(" errors=0 "), "{done}\n{}", out.describe());
    for needle in ["reconnecting every 1 s", "reconnected to the back end"] {
        assert_eq!(
            out.stderr.lines().filter(|l| l.contains(needle)).count(),
            1,
            "{needle}: {}",
            out.describe()
        );
    }
    let bytes = std::fs::read(&image).expect("read the image back");
    for (index, status) in loop_writes(&out.stdout) {
        assert_eq!(status, 0, "{}", out.describe());
        let sector = &bytes[(8 + index) * 512..(9 + index) * 512];
        assert!(
            sector.iter().all(|&b| b == (index + 1) as u8),
            "write {index} was acknowledged but sector {} does not hold it",
            8 + index
        );
    }
    let _ = std::fs::remove_file(&image);
}

/// A back end that accepts the connection and never answers: Nimbus does not wait for ever.
/// The request's deadline ends it (the watchdog thread, under its own seccomp filter, shuts
/// the socket down) and Nimbus exits 1 with one line naming the device and the request.
#[test]
fn back_end_that_never_answers_is_one_line_after_the_deadline() {
    let socket = common::scratch_dir().join(format!("silent-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let holder = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        std::thread::sleep(Duration::from_secs(15));
        drop(conn);
    });
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vhost_user_args(&socket, "microvm,mem-share=on");
    let out = run(&config.args());
    out.assert_one_error_line(&["vub0", "did not answer GET_FEATURES within 5 s"]);
    assert!(out.elapsed < Duration::from_secs(12), "{}", out.describe());
    let _ = std::fs::remove_file(&socket);
    drop(holder);
}

/// A socket file nobody listens on any more (a back end that died and left it): one line
/// with the system's reason, exit 1, and nothing left behind (no QMP socket).
#[test]
fn back_end_socket_that_refuses_is_one_line_and_leaves_nothing_behind() {
    let dir = common::scratch_dir().join(format!("refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let socket = dir.join("back-end.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vhost_user_args(&socket, "microvm,mem-share=on");
    config.extra_args.extend(qmp_args(&dir.join("qmp.sock")));
    let out = run(&config.args());
    out.assert_one_error_line(&["vub0", "Connection refused"]);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the scratch dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["back-end.sock"], "{}", out.describe());
    let _ = std::fs::remove_dir_all(&dir);
}
