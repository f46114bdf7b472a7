//! QMP end to end: the real nimbus with a test guest, driven by QEMU's own Python client
//! library (`qemu.qmp`, which scripts/test.sh installs) and by raw sockets for the abuse
//! cases: garbage, a burst of 10 000 commands, a client that never reads.

mod common;

use common::{
    kvm_usable, qmp_args, require_qemu_qmp, run_qmp_client, scratch_dir, Format, Vm, VmConfig,
    VM_TIMEOUT,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qmp/client.py");

fn socket_path(name: &str) -> PathBuf {
    scratch_dir().join(format!("qmp-{name}-{}.sock", std::process::id()))
}

/// Starts a 2-vCPU VM whose guest runs `action` with a QMP socket, and waits for the socket.
fn vm_with_qmp(name: &str, action: &str) -> (Vm, PathBuf) {
    let path = socket_path(name);
    let mut config = VmConfig::new(Format::Elf, 128, &format!("nimbus.test={action}"));
    config.cpus = 2;
    let mut args = config.args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line(
        &format!("{action}: now").replace("echo: now", "echo: ready"),
        VM_TIMEOUT,
    );
    (vm, path)
}

/// Runs client.py's `scenario` against the VM `pid` behind `path`.
fn run_client(path: &Path, pid: i32, scenario: &str) {
    let pid = pid.to_string();
    run_qmp_client(CLIENT, &[path.as_os_str(), pid.as_ref(), scenario.as_ref()]);
}

/// A raw client: connects, reads the greeting and negotiates capabilities.
fn raw_client(path: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let stream = UnixStream::connect(path).expect("connect to the QMP socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let greeting = read_line(&mut reader);
    assert!(
        greeting.starts_with(r#"{"QMP":{"version":{"qemu":"#),
        "{greeting}"
    );
    let mut writer = stream;
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}")
        .expect("send");
    assert_eq!(read_line(&mut reader), r#"{"return":{}}"#);
    (writer, reader)
}

fn read_line(reader: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a QMP line");
    assert!(line.ends_with("\r\n"), "QMP lines end in CRLF: {line:?}");
    line.trim_end().to_string()
}

#[test]
fn qemu_client_drives_stop_cont_cpus_and_quit() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("lifecycle", "hang");
    run_client(&path, vm.pid(), "lifecycle");
    let nimbus = vm.wait(VM_TIMEOUT);
    nimbus.assert_exit_code(0);
    assert!(!path.exists(), "the QMP socket is removed on exit");
}

#[test]
fn system_reset_ends_the_microvm_with_status_0() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("reset", "hang");
    run_client(&path, vm.pid(), "system_reset");
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn getfd_takes_a_descriptor_passed_with_scm_rights() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("getfd", "hang");
    run_client(&path, vm.pid(), "getfd");
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

/// Starts the waiting client, lets `end` finish the VM, and returns the client's SHUTDOWN line.
fn shutdown_seen_by_client(vm: &mut Vm, path: &Path, end: impl FnOnce(&mut Vm)) -> String {
    require_qemu_qmp();
    let mut child = Command::new("timeout")
        .args([
            "60",
            "python3",
            CLIENT,
            &path.display().to_string(),
            &vm.pid().to_string(),
            "wait_for_shutdown",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the qemu.qmp client");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client output");
    assert_eq!(line.trim(), "ready");
    end(vm);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("client output");
    assert!(
        child.wait().expect("client").success(),
        "client failed: {rest}"
    );
    rest.lines()
        .find(|l| l.starts_with("SHUTDOWN"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn sigterm_sends_shutdown_host_signal_and_exits_0() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, path) = vm_with_qmp("sigterm", "hang");
    let line = shutdown_seen_by_client(&mut vm, &path, |vm| vm.signal(libc::SIGTERM));
    assert_eq!(line, "SHUTDOWN False host-signal");
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    assert!(!path.exists(), "the QMP socket is removed on exit");
}

#[test]
fn guest_reset_sends_shutdown_guest_reset() {
    if !kvm_usable() {
        return;
    }
    let (mut vm, path) = vm_with_qmp("guest-reset", "echo");
    let line = shutdown_seen_by_client(&mut vm, &path, |vm| vm.write_stdin(b"bye\n"));
    assert_eq!(line, "SHUTDOWN True guest-reset");
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn garbage_and_non_objects_get_errors_and_the_connection_stays_usable() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("garbage", "hang");
    let (mut w, mut r) = raw_client(&path);
    w.write_all(b"@#$%junk\n").expect("send");
    let err = read_line(&mut r);
    assert!(
        err.starts_with(r#"{"error":{"class":"GenericError","desc":"JSON parse error"#),
        "{err}"
    );
    w.write_all(b"[1,2]").expect("send");
    assert_eq!(
        read_line(&mut r),
        r#"{"error":{"class":"GenericError","desc":"QMP input must be a JSON object"}}"#
    );
    w.write_all(b"{\"execute\":\"query-status\",\"arguments\":{\"x\":1},\"id\":7}")
        .expect("send");
    let err = read_line(&mut r);
    assert!(
        err.contains(r#""class":"GenericError""#) && err.ends_with(r#""id":7}"#),
        "{err}"
    );
    // A command split across writes, then two in one write.
    w.write_all(b"{\"execute\":\"query-st").expect("send");
    std::thread::sleep(Duration::from_millis(50));
    w.write_all(b"atus\",\"id\":{\"a\":[1]}}").expect("send");
    assert_eq!(
        read_line(&mut r),
        r#"{"return":{"running":true,"singlestep":false,"status":"running"},"id":{"a":[1]}}"#
    );
    w.write_all(b"{\"execute\":\"query-kvm\",\"id\":1}{\"execute\":\"query-target\",\"id\":2}")
        .expect("send");
    assert_eq!(
        read_line(&mut r),
        r#"{"return":{"enabled":true,"present":true},"id":1}"#
    );
    assert_eq!(read_line(&mut r), r#"{"return":{"arch":"x86_64"},"id":2}"#);
    w.write_all(b"{\"execute\":\"quit\"}").expect("send");
    assert_eq!(read_line(&mut r), r#"{"return":{}}"#);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn ten_thousand_commands_in_one_burst_all_get_replies() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("burst", "hang");
    let (mut w, mut r) = raw_client(&path);
    let burst: Vec<u8> = (0..10_000)
        .flat_map(|i| format!("{{\"execute\":\"query-status\",\"id\":{i}}}").into_bytes())
        .collect();
    let writer = std::thread::spawn(move || {
        w.write_all(&burst).expect("send the burst");
        w
    });
    for i in 0..10_000 {
        let line = read_line(&mut r);
        assert!(
            line.ends_with(&format!(r#","id":{i}}}"#)),
            "reply {i}: {line}"
        );
    }
    let mut w = writer.join().expect("writer");
    w.write_all(b"{\"execute\":\"quit\"}").expect("send");
    assert_eq!(read_line(&mut r), r#"{"return":{}}"#);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn client_that_never_reads_is_dropped_and_the_next_one_is_served() {
    if !kvm_usable() {
        return;
    }
    let (vm, path) = vm_with_qmp("never-reads", "hang");
    let (mut w, _r) = raw_client(&path);
    w.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = b"{\"execute\":\"query-cpus-fast\"}";
    let started = Instant::now();
    // Replies pile up unread until Nimbus drops the client; then our writes fail.
    while started.elapsed() < Duration::from_secs(30) {
        if w.write_all(&request.repeat(1000)).is_err() {
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the flooding client was never dropped"
    );
    let (mut w2, mut r2) = raw_client(&path);
    w2.write_all(b"{\"execute\":\"query-status\"}")
        .expect("send");
    assert!(read_line(&mut r2).contains(r#""status":"running""#));
    w2.write_all(b"{\"execute\":\"quit\"}").expect("send");
    assert_eq!(read_line(&mut r2), r#"{"return":{}}"#);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
}

#[test]
fn stale_socket_file_is_replaced_at_start() {
    if !kvm_usable() {
        return;
    }
    let path = socket_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("leave a stale socket"));
    assert!(path.exists());
    let mut config = VmConfig::new(Format::Elf, 128, "nimbus.test=hang");
    config.cpus = 1;
    let mut args = config.args();
    args.extend(qmp_args(&path));
    let mut vm = Vm::spawn(&args);
    vm.wait_for_line("hang: now", VM_TIMEOUT);
    let (mut w, mut r) = raw_client(&path);
    w.write_all(b"{\"execute\":\"quit\"}").expect("send");
    assert_eq!(read_line(&mut r), r#"{"return":{}}"#);
    vm.wait(VM_TIMEOUT).assert_exit_code(0);
    assert!(!path.exists());
}
