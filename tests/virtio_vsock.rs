//! Hybrid vsock (`-device virtio-vsock-device,guest-cid=3,uds-path=P`, Firecracker's protocol)
//! driven by the test guest's polled driver (`nimbus.test=vsock-*`, see guests/README.md): a
//! host program connects to a guest port by writing `CONNECT <port>\n` to P, the guest connects
//! to host port N through a listener at `P_N`. Bytes must arrive exactly both ways, flow control
//! must keep the VMM's memory bounded, and a hostile guest must get resets while the device
//! keeps serving. Bad device options are refused naming the option.

mod common;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{kvm_usable, qmp_args, run, Format, Output, QmpClient, Vm, VmConfig};

/// The port Nimbus gives the first connection a host program makes.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long one step may take: a line of the guest, a connection, an answer.
const STEP: Duration = Duration::from_secs(30);
/// What the guest's `vsock-connect` (and the end of `vsock-hostile`) sends, and the answer.
const GUEST_HELLO: &[u8] = b"NIMBUS-GUEST-HELLO\n";
const HOST_REPLY: &str = "NIMBUS-HOST-REPLY 0123";

/// A directory for one test's sockets, removed when dropped.
struct Sockets {
    dir: PathBuf,
}

impl Sockets {
    /// Under the system's temporary directory rather than the target directory: the longest
    /// socket path must fit in sun_path's 108 bytes wherever the workspace is.
    fn new(name: &str) -> Sockets {
        let dir = std::env::temp_dir().join(format!("nimbus-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the socket directory");
        Sockets { dir }
    }

    /// The device's `uds-path`.
    fn uds(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// Where Nimbus connects the guest's connections to host port `port`.
    fn host_port(&self, port: u32) -> PathBuf {
        self.dir.join(format!("v.sock_{port}"))
    }

    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(self.host_port(port)).expect("bind a host port's listener")
    }

    fn device(&self) -> String {
        format!(
            "virtio-vsock-device,id=vsock0,guest-cid=3,uds-path={}",
            self.uds().display()
        )
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the test guest (128 MiB: the driver's buffers live at 32-38 MiB) with the device.
fn start(sockets: &Sockets, actions: &str) -> Vm {
    let mut config = VmConfig::new(Format::Elf, 128, &format!("console=ttyS0 {actions}"));
    config.extra_args = vec!["-device".into(), sockets.device()];
    Vm::spawn(&config.args())
}

/// A host program's connection to guest port `port`: `CONNECT <port>\n` on the device's socket,
/// and Nimbus's answer (up to its newline; empty when Nimbus closed the socket instead).
fn connect_guest(sockets: &Sockets, port: u32) -> io::Result<(UnixStream, String)> {
    let mut stream = UnixStream::connect(sockets.uds())?;
    stream.set_read_timeout(Some(STEP))?;
    stream.set_write_timeout(Some(STEP))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // One byte at a time: what follows the line is the guest's.
    while stream.read(&mut byte)? == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok((stream, String::from_utf8_lossy(&line).into_owned()))
}

/// The local port of Nimbus's answer `OK <port>\n`; fails the test on any other answer.
fn ok_port(vm: &mut Vm, answer: &str) -> u32 {
    match answer
        .strip_prefix("OK ")
        .and_then(|a| a.strip_suffix('\n'))
    {
        Some(port) => port
            .parse()
            .unwrap_or_else(|_| vm.fail(&format!("bad port in {answer:?}"))),
        None => vm.fail(&format!("CONNECT was answered {answer:?}, not OK <port>")),
    }
}

/// The next connection to `listener`, within `STEP`.
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(STEP.as_millis()).expect("STEP fits in an int");
    // SAFETY: poll reads and writes the one pollfd, which lives across the call.
    match unsafe { libc::poll(&mut pollfd, 1, millis) } {
        0 => Err(io::Error::new(io::ErrorKind::TimedOut, "nobody connected")),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => {
            let (stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(STEP))?;
            stream.set_write_timeout(Some(STEP))?;
            Ok(stream)
        }
    }
}

/// Writes `data` on `stream` while reading as many bytes back.
fn round_trip(stream: &UnixStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut back = vec![0u8; data.len()];
    std::thread::scope(|s| {
        let writer = s.spawn(|| (&*stream).write_all(data));
        let read = (&*stream).read_exact(&mut back);
        writer.join().expect("writer thread")?;
        read
    })?;
    Ok(back)
}

/// What the stream still holds before its end: empty if Nimbus closed it.
fn rest_of(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    Ok(rest)
}

/// `n` bytes that do not repeat with any period a packet size could hide.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Byte `i` of what the guest's `vsock-send` sends.
fn send_pattern(i: usize) -> u8 {
    ((i % 251) * 7 + 1) as u8
}

/// The checksum `vsock-recv` prints: FNV-1a over little-endian 8-byte words, the last one
/// zero-padded.
fn checksum(data: &[u8]) -> u64 {
    data.chunks(8).fold(0xcbf2_9ce4_8422_2325, |h, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        (h ^ u64::from_le_bytes(word)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The resident memory of process `pid`, in KiB; `None` once it has exited.
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The guest's lines that start with `prefix`.
fn lines_with<'a>(out: &'a Output, prefix: &str) -> Vec<&'a str> {
    out.stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The VM's end: exit status 0, and the guest got to its last line.
fn finished(vm: Vm) -> Output {
    let out = vm.wait(STEP);
    out.assert_exit_code(0);
    assert!(
        out.stdout.contains("NIMBUS-GUEST done"),
        "the guest did not finish\n{}",
        out.describe()
    );
    out
}

#[test]
fn host_bytes_come_back_exactly_from_the_guest_over_two_connections() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("echo");
    let mut vm = start(
        &sockets,
        "nimbus.test=vsock-echo vsock.port=5000 vsock.conns=2",
    );
    vm.wait_for_line("vsock: listening port=5000", STEP);

    let (stream, answer) =
        connect_guest(&sockets, 5000).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    if answer != format!("OK {FIRST_LOCAL_PORT}\n") {
        vm.fail(&format!("the first CONNECT was answered {answer:?}"));
    }
    // Several times the 64 KiB of credit each side gives.
    let data = noise(300_000);
    let back = round_trip(&stream, &data).unwrap_or_else(|e| vm.fail(&format!("echo: {e}")));
    if let Some(i) = (0..data.len()).find(|&i| back[i] != data[i]) {
        vm.fail(&format!(
            "echoed byte {i} is {:#x}, not {:#x}",
            back[i], data[i]
        ));
    }
    drop(stream);
    vm.wait_for_line(
        &format!("vsock: closed from={FIRST_LOCAL_PORT} echoed=300000"),
        STEP,
    );

    let (stream, answer) =
        connect_guest(&sockets, 5000).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    let second = ok_port(&mut vm, &answer);
    if second <= FIRST_LOCAL_PORT {
        vm.fail(&format!("the second connection got local port {second}"));
    }
    let back = round_trip(&stream, b"second connection\n")
        .unwrap_or_else(|e| vm.fail(&format!("echo: {e}")));
    assert_eq!(back, b"second connection\n");
    drop(stream);

    let out = finished(vm);
    let first = FIRST_LOCAL_PORT;
    assert_eq!(
        lines_with(&out, "vsock: "),
        [
            "vsock: cid=3".to_string(),
            "vsock: listening port=5000".into(),
            format!("vsock: accepted port=5000 from={first}"),
            format!("vsock: closed from={first} echoed=300000"),
            format!("vsock: accepted port=5000 from={second}"),
            format!("vsock: closed from={second} echoed=18"),
            "vsock: served 2".into(),
        ],
        "{}",
        out.describe()
    );
}

#[test]
fn connect_to_a_port_the_guest_does_not_listen_on_closes_the_host_socket() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("refused");
    let mut vm = start(
        &sockets,
        "nimbus.test=vsock-echo vsock.port=5000 vsock.conns=1",
    );
    vm.wait_for_line("vsock: listening port=5000", STEP);

    let (_stream, answer) =
        connect_guest(&sockets, 5001).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    if !answer.is_empty() {
        vm.fail(&format!("CONNECT to a closed port was answered {answer:?}"));
    }
    vm.wait_for_line(
        &format!("vsock: refused port=5001 from={FIRST_LOCAL_PORT}"),
        STEP,
    );

    // The device serves the next connection as usual.
    let (stream, answer) =
        connect_guest(&sockets, 5000).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    let port = ok_port(&mut vm, &answer);
    let back = round_trip(&stream, b"after a refusal\n")
        .unwrap_or_else(|e| vm.fail(&format!("echo: {e}")));
    assert_eq!(back, b"after a refusal\n");
    drop(stream);

    let out = finished(vm);
    assert_eq!(
        lines_with(&out, "vsock: "),
        [
            "vsock: cid=3".to_string(),
            "vsock: listening port=5000".into(),
            format!("vsock: refused port=5001 from={FIRST_LOCAL_PORT}"),
            format!("vsock: accepted port=5000 from={port}"),
            format!("vsock: closed from={port} echoed=16"),
            "vsock: served 1".into(),
        ],
        "{}",
        out.describe()
    );
}

#[test]
fn guest_connects_to_a_host_listener_and_reads_its_reply() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("connect");
    let listener = sockets.listen(7000);
    let mut vm = start(&sockets, "nimbus.test=vsock-connect vsock.port=7000");

    let mut peer = accept(&listener).unwrap_or_else(|e| vm.fail(&format!("accept: {e}")));
    let mut hello = vec![0u8; GUEST_HELLO.len()];
    peer.read_exact(&mut hello)
        .unwrap_or_else(|e| vm.fail(&format!("reading the guest's message: {e}")));
    assert_eq!(
        String::from_utf8_lossy(&hello),
        String::from_utf8_lossy(GUEST_HELLO)
    );
    peer.write_all(format!("{HOST_REPLY}\n").as_bytes())
        .unwrap_or_else(|e| vm.fail(&format!("answering: {e}")));
    // The guest's SHUTDOWN closes the host's end, with nothing more on the way.
    let rest = rest_of(&mut peer).unwrap_or_else(|e| vm.fail(&format!("after the reply: {e}")));
    assert!(rest.is_empty(), "bytes after the guest's message: {rest:?}");

    let out = finished(vm);
    assert_eq!(
        lines_with(&out, "vsock: "),
        [
            "vsock: cid=3",
            "vsock: connected",
            &format!("vsock: reply={HOST_REPLY}"),
            "vsock: closed"
        ],
        "{}",
        out.describe()
    );
}

#[test]
fn guest_connect_with_nothing_listening_gets_a_reset() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("nolistener");
    let out = finished(start(&sockets, "nimbus.test=vsock-connect vsock.port=7001"));
    assert_eq!(
        lines_with(&out, "vsock: "),
        ["vsock: cid=3", "vsock: reset"],
        "{}",
        out.describe()
    );
}

/// 16 MiB from the guest to a host program that reads 8 KiB at a time, checking every byte:
/// Nimbus may hold only what the credit it gives allows, so its memory stays flat.
#[test]
fn guest_megabytes_reach_a_slow_host_reader_exactly_with_bounded_memory() {
    const BYTES: usize = 16 << 20;
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("send");
    let listener = sockets.listen(7002);
    let mut vm = start(
        &sockets,
        &format!("nimbus.test=vsock-send vsock.port=7002 vsock.bytes={BYTES}"),
    );
    let mut peer = accept(&listener).unwrap_or_else(|e| vm.fail(&format!("accept: {e}")));
    vm.wait_for_line("vsock: connected", STEP);
    let base = rss_kib(vm.pid()).unwrap_or_else(|| vm.fail("no VmRSS"));
    // The guest sends once the host has said something.
    peer.write_all(b"go")
        .unwrap_or_else(|e| vm.fail(&format!("go-ahead: {e}")));

    let (mut peak, mut got, mut reads) = (base, 0, 0);
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = peer
            .read(&mut buf)
            .unwrap_or_else(|e| vm.fail(&format!("reading after {got} bytes: {e}")));
        if n == 0 {
            break;
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != send_pattern(got + i)) {
            vm.fail(&format!(
                "byte {} is {:#x}, not {:#x}",
                got + i,
                buf[i],
                send_pattern(got + i)
            ));
        }
        got += n;
        reads += 1;
        if reads % 32 == 0 {
            peak = peak.max(rss_kib(vm.pid()).unwrap_or(0));
        }
        // A slow reader: Nimbus must stop taking the guest's data, not buffer it.
        std::thread::sleep(Duration::from_millis(1));
    }
    if got != BYTES {
        vm.fail(&format!("the host got {got} bytes, not {BYTES}"));
    }
    let out = finished(vm);
    assert_eq!(
        lines_with(&out, "vsock: "),
        [
            "vsock: cid=3",
            "vsock: connected",
            &format!("vsock: sent {BYTES}"),
            "vsock: closed"
        ],
        "{}",
        out.describe()
    );
    assert!(
        peak - base < 8 << 10,
        "nimbus's resident memory grew from {base} KiB to {peak} KiB while forwarding"
    );
}

#[test]
fn host_megabytes_reach_the_guest_with_the_right_checksum() {
    // Not a multiple of 8: the guest's checksum pads the last word.
    const BYTES: usize = (3 << 20) + 5;
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("recv");
    let mut vm = start(&sockets, "nimbus.test=vsock-recv vsock.port=5000");
    vm.wait_for_line("vsock: listening port=5000", STEP);
    let (mut stream, answer) =
        connect_guest(&sockets, 5000).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    let port = ok_port(&mut vm, &answer);

    let data = noise(BYTES);
    stream
        .write_all(&data)
        .unwrap_or_else(|e| vm.fail(&format!("sending to the guest: {e}")));
    stream
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|e| vm.fail(&format!("shutdown: {e}")));
    // The guest answers the end of the stream with RST, which closes the host's end.
    let rest = rest_of(&mut stream).unwrap_or_else(|e| vm.fail(&format!("after sending: {e}")));
    assert!(rest.is_empty(), "the guest sent {} bytes back", rest.len());

    let out = finished(vm);
    assert_eq!(
        lines_with(&out, "vsock: "),
        [
            "vsock: cid=3".to_string(),
            "vsock: listening port=5000".into(),
            format!("vsock: accepted port=5000 from={port}"),
            format!("vsock: closed from={port}"),
            format!(
                "vsock: received {BYTES} bytes checksum={:#x}",
                checksum(&data)
            ),
        ],
        "{}",
        out.describe()
    );
}

/// Accepts every connection to `listener` and holds it open, until `stop` is set and one more
/// connection wakes it; returns how many came before that one.
fn hold_connections(listener: UnixListener, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            held.push(stream.expect("accept"));
        }
        held.len()
    })
}

/// Reads the guest's message on the next connection to `listener`, answers, and waits for the
/// end of the stream.
fn answer_once(listener: UnixListener) -> JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut peer = accept(&listener)?;
        let mut hello = vec![0u8; GUEST_HELLO.len()];
        peer.read_exact(&mut hello)?;
        peer.write_all(format!("{HOST_REPLY}\n").as_bytes())?;
        rest_of(&mut peer)?;
        Ok(hello)
    })
}

/// Host port P holds every connection, P + 1 never accepts (the credit lie's peer, and the
/// guest's fences), P + 2 answers once (see the `vsock-hostile` action): every malformed packet
/// gets the answer the device promises, at most 1024 connections are open at once, and the
/// device still serves a normal connection at the end.
#[test]
fn hostile_guest_gets_resets_and_the_device_keeps_serving() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("hostile");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold_connections(sockets.listen(6000), Arc::clone(&stop));
    let _deaf = sockets.listen(6001);
    let answerer = answer_once(sockets.listen(6002));
    let vm = start(&sockets, "nimbus.test=vsock-hostile vsock.port=6000");
    let out = vm.wait(2 * STEP);

    stop.store(true, Ordering::SeqCst);
    UnixStream::connect(sockets.host_port(6000)).expect("wake the holder");
    let held = holder.join().expect("holder thread");
    out.assert_exit_code(0);
    assert_eq!(
        lines_with(&out, "hostile "),
        [
            "hostile src-cid: no reply",
            "hostile dst-cid: no reply",
            "hostile unknown-op: rst",
            "hostile type: rst",
            "hostile len-over-chain: rst",
            "hostile len-too-big: rst",
            "hostile credit-lie: rst",
            "hostile flood: requests=3000 accepted=1024 rst=1976",
            &format!("hostile normal: reply={HOST_REPLY}"),
            "hostile normal: closed",
        ],
        "{}",
        out.describe()
    );
    // Four malformed-packet connections and the flood's 1024: no connection for the packets
    // with a wrong CID, none beyond the cap.
    assert_eq!(held, 4 + 1024, "connections to host port 6000");
    let hello = answerer
        .join()
        .expect("answer thread")
        .expect("the normal exchange");
    assert_eq!(hello, GUEST_HELLO);
}

#[test]
fn bad_vsock_options_are_refused_naming_the_option() {
    let sockets = Sockets::new("options");
    let uds = sockets.uds().display().to_string();
    for (device, named) in [
        (
            format!("virtio-vsock-device,id=v0,uds-path={uds}"),
            "guest-cid",
        ),
        (
            format!("virtio-vsock-device,id=v0,guest-cid=2,uds-path={uds}"),
            "guest-cid",
        ),
        (
            "virtio-vsock-device,id=v0,guest-cid=3".to_string(),
            "uds-path",
        ),
        (
            format!("virtio-vsock-device,id=v0,guest-cid=3,uds-path={uds},frob=1"),
            "frob",
        ),
    ] {
        let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
        config.extra_args = vec!["-device".into(), device.clone()];
        let out = run(&config.args());
        out.assert_exit_code(1);
        // Named in what the line says, not only in the flag's value it quotes.
        let said = out.first_stderr_line().replace(&device, "");
        assert!(
            said.contains(named),
            "-device {device}: the first line does not name {named}\n{}",
            out.describe()
        );
        assert!(!out.stdout.contains("NIMBUS-GUEST"), "{}", out.describe());
    }
}

/// vhost-vsock on a host without `/dev/vhost-vsock` (as here) is one line naming the device
/// node; an inherited descriptor that is not vhost-vsock is one line naming `vhostfd`.
#[test]
fn vhost_vsock_without_the_kernel_device_is_one_line_naming_it() {
    if std::path::Path::new("/dev/vhost-vsock").exists() {
        eprintln!("SKIP: this host has /dev/vhost-vsock; the missing-device line cannot be seen");
        return;
    }
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vec![
        "-device".into(),
        "vhost-vsock-device,id=v0,guest-cid=3".into(),
    ];
    run(&config.args()).assert_one_error_line(&["/dev/vhost-vsock"]);
    // Descriptor 0 (stdin, /dev/null here) is below 3: refused as an option; 1 and 2 likewise.
    let mut config = VmConfig::new(Format::Elf, 128, "console=ttyS0");
    config.extra_args = vec![
        "-device".into(),
        "vhost-vsock-device,id=v0,guest-cid=3,vhostfd=1".into(),
    ];
    let out = run(&config.args());
    out.assert_exit_code(1);
    assert!(
        out.first_stderr_line().contains("vhostfd"),
        "{}",
        out.describe()
    );
}

/// QMP `stop` takes the device's sockets off the loop with the rest of the device: bytes a host
/// program sends meanwhile wait in its socket, and come back from the guest after `cont`.
#[test]
fn stopped_vm_holds_host_bytes_until_cont() {
    if !kvm_usable() {
        return;
    }
    let sockets = Sockets::new("stop");
    let qmp_path = sockets.dir.join("qmp.sock");
    let mut config = VmConfig::new(
        Format::Elf,
        128,
        "console=ttyS0 nimbus.test=vsock-echo vsock.port=5000 vsock.conns=1",
    );
    config.extra_args = vec!["-device".into(), sockets.device()];
    config.extra_args.extend(qmp_args(&qmp_path));
    let mut vm = Vm::spawn(&config.args());
    vm.wait_for_line("vsock: listening port=5000", STEP);
    let mut qmp = QmpClient::connect(&qmp_path);
    let (mut stream, answer) =
        connect_guest(&sockets, 5000).unwrap_or_else(|e| vm.fail(&format!("CONNECT: {e}")));
    ok_port(&mut vm, &answer);
    let back = round_trip(&stream, b"before").unwrap_or_else(|e| vm.fail(&format!("echo: {e}")));
    assert_eq!(back, b"before");

    qmp.ok("stop", serde_json::json!({}));
    stream
        .write_all(b"while stopped")
        .unwrap_or_else(|e| vm.fail(&format!("write: {e}")));
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap_or_else(|e| vm.fail(&format!("timeout: {e}")));
    let mut buf = [0u8; 64];
    if let Ok(n) = stream.read(&mut buf) {
        vm.fail(&format!("{n} bytes came back while the VM was stopped"));
    }
    qmp.ok("cont", serde_json::json!({}));
    stream
        .set_read_timeout(Some(STEP))
        .unwrap_or_else(|e| vm.fail(&format!("timeout: {e}")));
    let mut back = vec![0u8; b"while stopped".len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| vm.fail(&format!("after cont: {e}")));
    assert_eq!(back, b"while stopped");
    drop(stream);
    let out = finished(vm);
    out.assert_exit_code(0);
}
