//! virtio-console with the kit's real Linux: `console=hvc0` on a `-device virtconsole` whose
//! chardev is a Unix socket Nimbus listens on. The test connects, waits for the kit's shell
//! banner on hvc0, types a command there and reads its answer back. One boot takes ~25-60 s
//! under kvm-pvm.

mod common;
mod kit;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kvm_usable, VmConfig};
use kit::{kit, kit_cmdline, one_boot_at_a_time, KitVm};

/// From spawning nimbus to the shell's banner: ~25-60 s under kvm-pvm, more under load.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A short directory under /tmp for the socket (Unix socket paths end at 107 bytes).
struct SockDir(PathBuf);

impl SockDir {
    fn new() -> SockDir {
        let dir = PathBuf::from(format!("/tmp/nimbus-kcon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        SockDir(dir)
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kit's command line with its console on hvc0 and a shell.
fn hvc_shell_cmdline() -> String {
    kit_cmdline(false)
        .split(' ')
        .map(|w| match w {
            "console=ttyS0" => "console=hvc0",
            "kit.mode=boot" => "kit.mode=shell",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What came from the socket so far, collected by a reader thread.
fn collect(mut stream: UnixStream) -> Arc<Mutex<Vec<u8>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    got
}

fn wait_for(got: &Mutex<Vec<u8>>, needle: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if String::from_utf8_lossy(&got.lock().expect("lock")).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn hvc0_over_a_socket_chardev_reaches_the_shell_and_answers() {
    if !kvm_usable() {
        return;
    }
    let kit = kit();
    let _turn = one_boot_at_a_time();
    let dir = SockDir::new();
    let sock = dir.0.join("hvc.sock");
    let config = VmConfig {
        kernel: kit.vmlinux(),
        mem_mib: 256,
        cpus: 1,
        append: hvc_shell_cmdline(),
        initrd: Some(kit.initramfs()),
        extra_args: vec![
            "-chardev".into(),
            format!("socket,id=c0,path={},server,nowait", sock.display()),
            "-device".into(),
            "virtio-serial-device,id=vs0".into(),
            "-device".into(),
            "virtconsole,id=con0,chardev=c0".into(),
        ],
    };
    let vm = KitVm::spawn(&config);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "connect to {}: {e}\n{}",
                    sock.display(),
                    vm.kill().describe()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut typing = stream.try_clone().expect("clone");
    let got = collect(stream);
    let text =
        |got: &Mutex<Vec<u8>>| String::from_utf8_lossy(&got.lock().expect("lock")).into_owned();
    if !wait_for(&got, "guest-kit shell", BOOT_TIMEOUT) {
        panic!(
            "no shell banner on hvc0; hvc0 said:\n{}\n{}",
            text(&got),
            vm.kill().describe()
        );
    }
    // Let the shell start and print its prompt before typing.
    std::thread::sleep(Duration::from_secs(2));
    typing
        .write_all(b"echo hvc-$((6*7))-ok\n")
        .expect("type on hvc0");
    let answered = wait_for(&got, "hvc-42-ok", COMMAND_TIMEOUT);
    let console = text(&got);
    let transcript = vm.kill();
    assert!(
        answered,
        "the shell did not answer on hvc0:\n{console}\n{}",
        transcript.describe()
    );
    assert!(
        console
            .lines()
            .any(|l| l.trim_end_matches('\r') == "hvc-42-ok"),
        "the computed answer is its own line (not only the echo of what was typed):\n{console}"
    );
}
