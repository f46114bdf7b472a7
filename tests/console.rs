//! Where the guest console and the logs go: `-serial file,path=`, no `-serial` at all (the UART
//! exists, its output is dropped), and `-D <file>` with the level from `NIMBUS_LOG`; chardevs
//! behind the 16550: `-serial pty` read and typed on through the path Nimbus prints, a socket
//! chardev that serves a second client after the first left, and `query-chardev`.

mod common;

use common::{
    kvm_usable, qmp_args, replace_arg, run, scratch_dir, Format, QmpClient, Vm, VmConfig,
    VM_TIMEOUT,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn without_serial(args: Vec<String>) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == "-serial")
        .expect("-serial is in the arguments");
    let mut args = args;
    args.drain(i..i + 2);
    args
}

#[test]
fn serial_file_backend_receives_the_whole_console() {
    if !kvm_usable() {
        return;
    }
    let path = scratch_dir().join("console-file.txt");
    let _ = std::fs::remove_file(&path);
    let args = VmConfig::new(Format::Elf, 128, "to-file").args();
    let out = run(&replace_arg(
        args,
        "-serial",
        &format!("file,path={}", path.display()),
    ));

    out.assert_exit_code(0);
    assert_eq!(
        out.stdout,
        "",
        "console output leaked to stdout\n{}",
        out.describe()
    );
    let console = std::fs::read_to_string(&path).expect("the console file exists");
    let lines: Vec<&str> = console.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"NIMBUS-GUEST hello format=elf"),
        "{console}"
    );
    assert!(lines.contains(&"cmdline: to-file"), "{console}");
    assert_eq!(lines.last(), Some(&"NIMBUS-GUEST done"), "{console}");
}

#[test]
fn without_serial_the_guest_runs_and_its_output_is_dropped() {
    if !kvm_usable() {
        return;
    }
    let out = run(&without_serial(
        VmConfig::new(Format::Elf, 128, "quiet").args(),
    ));

    out.assert_exit_code(0);
    assert_eq!(out.stdout, "", "{}", out.describe());
}

#[test]
fn log_file_gets_timestamped_lines_at_the_level_asked() {
    if !kvm_usable() {
        return;
    }
    let log = scratch_dir().join("nimbus-log.txt");
    let _ = std::fs::remove_file(&log);
    let mut args = VmConfig::new(Format::Elf, 128, "nimbus.test=triple").args();
    args.extend([
        "-D".to_string(),
        log.display().to_string(),
        "-name".into(),
        "vm-under-test".into(),
    ]);
    std::env::set_var("NIMBUS_LOG", "info");
    let out = run(&args);

    out.assert_exit_code(0);
    assert_eq!(
        out.stderr,
        "",
        "logs went to stderr instead of the file\n{}",
        out.describe()
    );
    let text = std::fs::read_to_string(&log).expect("the log file exists");
    assert!(text.contains("starting VM vm-under-test"), "{text}");
    let triple = text
        .lines()
        .find(|l| l.contains("triple fault"))
        .expect("a triple-fault line");
    // `[<secs>.<micros> <LEVEL> <thread>] message`
    let stamp = triple
        .trim_start_matches('[')
        .split_whitespace()
        .next()
        .unwrap_or("");
    let (secs, micros) = stamp
        .split_once('.')
        .expect("a timestamp with microseconds");
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{triple}");
    assert!(triple.contains("WARN"), "{triple}");
}

/// A short directory under /tmp for sockets (Unix socket paths end at 107 bytes), removed when
/// dropped.
struct SockDir(PathBuf);

impl SockDir {
    fn new(name: &str) -> SockDir {
        let dir = PathBuf::from(format!("/tmp/nimbus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        SockDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pty path of `char device redirected to /dev/pts/N (label <label>)` on stderr.
fn printed_pty(vm: &mut Vm, label: &str) -> PathBuf {
    let deadline = Instant::now() + VM_TIMEOUT;
    let suffix = format!(" (label {label})");
    loop {
        let stderr = vm.stderr_text();
        let found = stderr.lines().find_map(|l| {
            l.strip_prefix("char device redirected to ")
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .map(PathBuf::from)
        });
        if let Some(path) = found {
            return path;
        }
        if Instant::now() > deadline {
            vm.fail("no 'char device redirected to' line on stderr");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads lines from `reader` until one equals `line`; returns every line read.
fn read_until_line(reader: &mut impl BufRead, line: &str) -> Result<Vec<String>, String> {
    let mut seen = Vec::new();
    loop {
        let mut text = String::new();
        match reader.read_line(&mut text) {
            Ok(0) => return Err(format!("end of input before {line:?}; saw {seen:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("{e} before {line:?}; saw {seen:?}")),
        }
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        let done = text == line;
        seen.push(text);
        if done {
            return Ok(seen);
        }
    }
}

#[test]
fn serial_pty_is_read_and_typed_on_through_the_printed_path() {
    if !kvm_usable() {
        return;
    }
    let args = replace_arg(
        VmConfig::new(Format::Elf, 128, "console=ttyS0 nimbus.test=echo").args(),
        "-serial",
        "pty",
    );
    let mut vm = Vm::spawn(&args);
    let path = printed_pty(&mut vm, "serial0");
    assert!(path.starts_with("/dev/pts/"), "{}", path.display());
    let pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| vm.fail(&format!("open {}: {e}", path.display())));
    let mut reader = BufReader::new(pty.try_clone().expect("clone"));
    let mut writer = pty;
    if let Err(e) = read_until_line(&mut reader, "echo: ready") {
        vm.fail(&e);
    }
    writer.write_all(b"typed on the pty\n").expect("type");
    let seen = read_until_line(&mut reader, "NIMBUS-GUEST done").unwrap_or_else(|e| vm.fail(&e));
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    assert!(
        seen.iter().any(|l| l == "echo: typed on the pty"),
        "{seen:?}"
    );
    assert_eq!(out.stdout, "", "-serial pty leaves stdout alone");
}

/// Connects to `path` and returns the first complete `count: N` line's N.
fn first_count(path: &Path) -> u64 {
    let stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(VM_TIMEOUT)).expect("timeout");
    let mut reader = BufReader::new(stream);
    // The first line may have started before the client came: skip it, and the boot report.
    let mut partial = String::new();
    reader.read_line(&mut partial).expect("a first line");
    for _ in 0..100 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a whole line");
        if let Some(n) = line.trim_end().strip_prefix("count: ") {
            return n.parse().expect("a count");
        }
    }
    panic!("no count line");
}

#[test]
fn socket_console_serves_a_new_client_after_the_previous_left() {
    if !kvm_usable() {
        return;
    }
    let dir = SockDir::new("con");
    let sock = dir.path("s");
    let mut args = replace_arg(
        VmConfig::new(
            Format::Elf,
            128,
            "nimbus.test=count nimbus.countpause=20000",
        )
        .args(),
        "-serial",
        "chardev:c0",
    );
    args.extend([
        "-chardev".to_string(),
        format!("socket,id=c0,path={},server,nowait", sock.display()),
    ]);
    let mut vm = Vm::spawn(&args);
    let deadline = Instant::now() + VM_TIMEOUT;
    while !sock.exists() {
        if Instant::now() > deadline {
            vm.fail("the chardev socket never appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = first_count(&sock);
    // Nobody listens for a while: that output is dropped, not kept for the next client.
    std::thread::sleep(Duration::from_millis(500));
    let second = first_count(&sock);
    vm.signal(libc::SIGTERM);
    let out = vm.wait(VM_TIMEOUT);
    assert!(
        second > first + 1,
        "the second client got {second} after the first's {first}: output while nobody was \
         connected must be dropped\n{}",
        out.describe()
    );
    assert_eq!(out.stdout, "", "{}", out.describe());
}

#[test]
fn query_chardev_lists_each_chardev_as_qemu_shapes_it() {
    if !kvm_usable() {
        return;
    }
    let dir = SockDir::new("qcd");
    let (qmp, sock) = (dir.path("q"), dir.path("c"));
    let log = scratch_dir().join(format!("chardev-file-{}.txt", std::process::id()));
    let mut args = replace_arg(
        VmConfig::new(Format::Elf, 128, "nimbus.test=hang").args(),
        "-serial",
        "pty",
    );
    args.extend(qmp_args(&qmp));
    args.extend([
        "-chardev".to_string(),
        format!("socket,id=c1,path={},server,nowait", sock.display()),
        "-chardev".to_string(),
        format!("file,id=f1,path={}", log.display()),
    ]);
    let mut vm = Vm::spawn(&args);
    let pty = printed_pty(&mut vm, "serial0");
    let mut client = QmpClient::connect(&qmp);
    let reply = client.execute("query-chardev", serde_json::json!({}));
    let expected = serde_json::json!([
        {"label": "c1", "filename": format!("disconnected:unix:{},server=on", sock.display()),
         "frontend-open": false},
        {"label": "f1", "filename": "file", "frontend-open": false},
        {"label": "serial0", "filename": format!("pty:{}", pty.display()), "frontend-open": true},
    ]);
    let mut got = reply["return"].as_array().cloned().unwrap_or_default();
    got.sort_by_key(|c| c["label"].as_str().unwrap_or_default().to_string());
    client.ok("quit", serde_json::json!({}));
    let out = vm.wait(VM_TIMEOUT);
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        serde_json::Value::Array(got),
        expected,
        "{}",
        out.describe()
    );
}

#[test]
fn unknown_chardev_of_the_serial_port_is_refused_in_one_line() {
    let args = replace_arg(
        VmConfig::new(Format::Elf, 128, "").args(),
        "-serial",
        "chardev:nope",
    );
    let out = run(&args);
    out.assert_one_error_line(&["-serial", "nope"]);
}

/// The bytes `conbench` sends over virtio-console in chunks of `chunk`: each chunk is the same
/// buffer of lines of 63 `y` and a newline.
fn conbench_pattern(n: usize, chunk: usize) -> Vec<u8> {
    (0..n)
        .map(|i| if i % chunk % 64 == 63 { b'\n' } else { b'y' })
        .collect()
}

fn virtconsole_args(append: &str, chardev: String) -> Vec<String> {
    let mut args = VmConfig::new(Format::Elf, 128, append).args();
    args.extend([
        "-chardev".to_string(),
        chardev,
        "-device".to_string(),
        "virtio-serial-device,id=vs0".to_string(),
        "-device".to_string(),
        "virtconsole,id=con0,chardev=c0".to_string(),
    ]);
    args
}

#[test]
fn virtconsole_output_reaches_its_file_chardev_byte_for_byte() {
    if !kvm_usable() {
        return;
    }
    let path = scratch_dir().join(format!("virtconsole-{}.out", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let n = 100_000;
    let out = run(&virtconsole_args(
        &format!("nimbus.test=conbench nimbus.conbytes={n} nimbus.conchunk=3000"),
        format!("file,id=c0,path={}", path.display()),
    ));
    let got = std::fs::read(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    out.assert_exit_code(0);
    assert!(
        out.stdout_lines()
            .contains(&format!("conbench: done bytes={n}").as_str()),
        "{}",
        out.describe()
    );
    assert!(
        got == conbench_pattern(n, 3000),
        "{} bytes, not the {n} sent",
        got.len()
    );
}

#[test]
fn virtconsole_nobody_reads_stalls_only_its_port_and_loses_nothing() {
    if !kvm_usable() {
        return;
    }
    let dir = SockDir::new("cbp");
    let (qmp, sock) = (dir.path("q"), dir.path("c"));
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let n = 4 << 20;
    let mut args = virtconsole_args(
        &format!("nimbus.test=conbench nimbus.conbytes={n} nimbus.conpolls=4000000000"),
        format!("socket,id=c0,path={}", sock.display()),
    );
    args.extend(qmp_args(&qmp));
    let mut vm = Vm::spawn(&args);
    let (mut peer, _) = listener.accept().expect("nimbus connects at start");
    vm.wait_for_line(
        &format!("conbench: start path=virtio bytes={n} chunk=4096"),
        VM_TIMEOUT,
    );
    // Nobody reads: the socket fills and the port waits, while the loop serves QMP.
    std::thread::sleep(Duration::from_millis(1500));
    let mut client = QmpClient::connect(&qmp);
    let status = client.execute("query-status", serde_json::json!({}));
    assert_eq!(status["return"]["status"], "running", "{status}");
    assert!(
        !vm.stdout_text().contains("conbench: done"),
        "4 MiB cannot all fit a socket nobody reads:\n{}",
        vm.stdout_text()
    );
    peer.set_read_timeout(Some(VM_TIMEOUT)).expect("timeout");
    let mut got = vec![0u8; n];
    peer.read_exact(&mut got)
        .unwrap_or_else(|e| vm.fail(&format!("read the console: {e}")));
    vm.wait_for_line(&format!("conbench: done bytes={n}"), VM_TIMEOUT);
    // The guest resets by itself after its last action (no QMP `quit`: it would race that).
    drop(client);
    let out = vm.wait(VM_TIMEOUT);
    out.assert_exit_code(0);
    assert!(
        got == conbench_pattern(n, 4096),
        "the bytes differ from what was sent"
    );
}
