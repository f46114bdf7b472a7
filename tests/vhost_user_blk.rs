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
    let out = run(&config.args());
    out.assert_exit_code(1);
    assert!(
        out.first_stderr_line().contains("mem-share=on"),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{}",
        out.describe()
    );
    let _ = std::fs::remove_file(&image);
}

#[test]
fn missing_back_end_socket_is_refused_naming_it() {
    let socket = common::scratch_dir().join(format!("no-back-end-{}.sock", std::process::id()));
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vhost_user_args(&socket, "microvm,mem-share=on");
    let out = run(&config.args());
    out.assert_exit_code(1);
    let first = out.first_stderr_line();
    assert!(
        first.contains(&socket.display().to_string()) && first.contains("vub0"),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{}",
        out.describe()
    );
}

/// The back end dies while the guest uses the disk: Nimbus says so once, naming the device,
/// keeps running and answering QMP, and ends cleanly on `quit`.
#[test]
fn back_end_that_dies_leaves_nimbus_running_and_answering() {
    if !kvm_usable() {
        return;
    }
    let image = marked_image("vhost-user-dies.img");
    let socket = image.with_extension("sock");
    let local = disk_image("vhost-user-dies-local.img", 64);
    let qmp_path = image.with_extension("qmp");
    let daemon = StorageDaemon::start(&image, &socket);
    // A local disk first and no empty hot-plug slots, so that the vhost-user disk is
    // virtio-mmio slot 1 for `blkwatch`.
    let mut config = VmConfig::new(
        Format::Elf,
        128,
        "console=ttyS0 nimbus.test=blkwatch nimbus.blkslot=1",
    );
    config.extra_args = vec![
        "-drive".into(),
        format!("id=local,file={}", local.display()),
        "-device".into(),
        "virtio-blk-device,drive=local".into(),
    ];
    config.extra_args.extend(vhost_user_args(
        &socket,
        "microvm,mem-share=on,blk-slots=1,net-slots=0",
    ));
    config.extra_args.extend(qmp_args(&qmp_path));
    let mut vm = Vm::spawn(&config.args());
    vm.wait_for_line("blkwatch: capacity=2048", Duration::from_secs(30));
    let mut qmp = QmpClient::connect(&qmp_path);
    drop(daemon);
    std::thread::sleep(Duration::from_millis(300));
    let status = qmp.execute("query-status", serde_json::json!({}));
    assert_eq!(status["return"]["status"], "running", "{status}");
    qmp.ok("quit", serde_json::json!({}));
    let out = vm.wait(Duration::from_secs(30));
    out.assert_exit_code(0);
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
    let _ = std::fs::remove_file(&local);
}
